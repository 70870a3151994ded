"""How close any inversion can get on a vocabulary: the EM cosine and token F1 of each held-out
sentence rebuilt from its own gold units (segmentation -> units -> text), for vocabularies built
from the training split with several size settings, and the default one with the words
`invemb index words` adds to a controller run (wordfreq's English list). No controller is involved: a unit the
vocabulary lacks cannot be placed by any decoder, so this bounds them all. The default vocabulary is
segmented twice: as the controller's training data is (case kept but for sentence-initial and stop
words) and case-folded ("folded" rows: a mid-sentence "Neckar" matched to the extra unit "neckar", which
the uncased EM gives the same vector and the decoder places); the folded rows are the ceiling.

    .venv/bin/python bench/inversion_vocab_ceiling.py [--em runs/em-default] [--n 300] [--skip-full]

Per vocabulary and set: units, token coverage, gold token F1, gold cosine, and the cosine apart for
the sentences covered whole and for those with an out-of-vocabulary token.
"""
from __future__ import annotations

import argparse

import torch

from _common import write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--em", default="runs/em-default")
    ap.add_argument("--corpus", default=None, help="built corpus folder (default: the EM run's)")
    ap.add_argument("--n", type=int, default=300, help="sentences per set")
    ap.add_argument("--skip-full", action="store_true", help="only the default vocabulary (the full sizes take minutes to build)")
    args = ap.parse_args()
    import invemb
    from invemb.inversion.decode import render
    from invemb.inversion.extra import ExtraUnitsConfig, extended_vocab, new_words, source_words
    from invemb.inversion.harness import eval_sentences, resolve_corpus
    from invemb.inversion.metrics import token_f1
    from invemb.inversion.segment import Segmenter
    from invemb.text.corpus import Corpus
    from invemb.text.vocab import VocabConfig, build_vocab

    corpus_dir = resolve_corpus(args.corpus, args.em)
    train = list(Corpus(corpus_dir).sentences("train"))
    em = invemb.load(args.em)
    sets = {which: eval_sentences(corpus_dir, which, args.n) for which in ("wiki", "wordnet")}
    targets = {which: em.encode(sentences) for which, sentences in sets.items()}  # (N, D) each
    cased = em.encode(["It lies on the Neckar river near Stuttgart.", "it lies on the neckar river near stuttgart."])
    print(f"EM cosine between a sentence and its lower-cased copy: {float(cased[0] @ cased[1]):.6f}")
    full = VocabConfig.preset("full")
    variants = {
        "default": VocabConfig.preset("default"),
        "full sizes": full,
        "full sizes, min count 2": full.replace(min_count={**full.min_count, "entity": 2, "acronym": 2, "number": 2, "numeric": 2}),
    }
    if args.skip_full:
        variants = {"default": variants["default"]}
    vocabs = {name: build_vocab(train, cfg) for name, cfg in variants.items()}
    # the default vocabulary with the words `invemb index words` adds to a controller run after training
    words = new_words(vocabs["default"], source_words(ExtraUnitsConfig()))
    vocabs["default + extra units (wordfreq)"] = extended_vocab(vocabs["default"], words)
    rows = []
    segmenters = {name: (vocab, Segmenter(vocab)) for name, vocab in vocabs.items()}
    for name in ("default", "default + extra units (wordfreq)"):
        segmenters[f"{name}, folded"] = (vocabs[name], Segmenter(vocabs[name], fold_case=True))
    for name, (vocab, segmenter) in segmenters.items():
        for which, sentences in sets.items():
            segs = [segmenter.segment(s) for s in sentences]
            rebuilt = [render([vocab.units[u] for u in g.unit_ids]) for g in segs]
            filled = [i for i, r in enumerate(rebuilt) if r.strip()]
            cos = torch.zeros(len(sentences))  # an empty rebuild counts as cosine 0
            cos[filled] = (em.encode([rebuilt[i] for i in filled]) * targets[which][filled]).sum(-1)
            whole = torch.tensor([g.coverage == 1.0 for g in segs])
            row = {"vocabulary": name, "set": which, "units": len(vocab),
                   "token_coverage": round(sum(g.coverage for g in segs) / len(segs), 4),
                   "gold_token_f1": round(sum(token_f1(r, s) for r, s in zip(rebuilt, sentences)) / len(sentences), 2),
                   "gold_cosine": round(float(cos.mean()), 4),
                   "covered_whole": int(whole.sum()),
                   "cosine_covered_whole": round(float(cos[whole].mean()), 4) if whole.any() else None,
                   "cosine_with_oov": round(float(cos[~whole].mean()), 4) if (~whole).any() else None}
            rows.append(row)
            print(row, flush=True)
    write("inversion_vocab_ceiling", {"em": args.em, "n": args.n, "rows": rows})


if __name__ == "__main__":
    main()
