"""Which units a sentence vector leads to: the bag of units against its peers, on the same held-out sentences.

For held-out Wikipedia and WordNet example sentences (5-32 words), the share of each sentence's
content units (the decoder's frequent units left out: it offers those to every hypothesis) among
the first k units ranked by (a) the target's nearest units by EM vector (one dot product per unit,
what the Selector's intention starts from), (b) the sentence memory's votes, (c) the controller
run's bag of units (`invemb.inversion.bag`; trained on first use when the run has none), (d) the
bag and the memory's votes added (the vote weighted 10). Also the time each takes per sentence.

    .venv/bin/python bench/inversion_bag_recall.py --controller runs/ctl-mem-all --em runs/em-default --n 400
"""
from __future__ import annotations

import argparse

import torch
from _common import timed, write


def recall_at(scores: torch.Tensor, gold: list[list[int]], skip: torch.Tensor, ks: tuple[int, ...]) -> dict:
    """Mean over sentences with a content unit of |top-k ∩ gold| / |gold|, ``skip`` (N,) bool units ranked last."""
    top = scores.masked_fill(skip, float("-inf")).topk(max(ks), dim=1).indices.tolist()
    out = {}
    for k in ks:
        shares = [len(set(t[:k]) & set(g)) / len(g) for t, g in zip(top, gold) if g]
        out[f"recall@{k}"] = round(100 * sum(shares) / len(shares), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--controller", default="runs/controller-default")
    ap.add_argument("--em", default="runs/em-default")
    ap.add_argument("--corpus", default="data/built/corpus")
    ap.add_argument("--n", type=int, default=400, help="held-out sentences per set")
    ap.add_argument("--seed", type=int, default=7, help="which held-out sentences")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import torch.nn.functional as F

    import invemb
    from invemb.inversion import load_run
    from invemb.inversion.harness import eval_sentences, resolve_corpus
    from invemb.inversion.segment import Segmenter

    ctrl = load_run(args.controller, em=invemb.load(args.em))
    cfg, policy = ctrl.decode_cfg, ctrl.policy
    bag, memory = ctrl.unit_bag, ctrl.sentence_memory
    stand_in = policy.stand_in
    n_units = len(ctrl.vocab)
    skip = stand_in != torch.arange(n_units)  # a case twin is ranked as its stand-in
    skip[policy.frequent[: cfg.frequent_units]] = True
    segmenter = Segmenter(ctrl.vocab)
    corpus = resolve_corpus(args.corpus, args.em)
    ks = (8, 16, 32, 64)
    result = {"controller": args.controller, "memory_sentences": len(memory), "bag": bag.stats, "sets": {}}
    for which in ("wiki", "wordnet"):
        texts = eval_sentences(corpus, which, args.n, seed=args.seed)
        gold = [sorted({int(stand_in[u]) for u in segmenter.segment(t).unit_ids} - set(torch.nonzero(skip).squeeze(1).tolist()))
                for t in texts]
        targets = F.normalize(ctrl.encoder.encoder.encode(texts), dim=1)  # (n, D)
        t_em, em = timed(lambda: targets @ ctrl.unit_vectors.float().T)
        t_mem, votes = timed(lambda: memory.votes(targets, cfg.memory_k, cfg.memory_temperature, remap=stand_in))
        t_bag, bag_votes = timed(lambda: bag.votes(targets, cfg.bag_floor))
        rows = {"em_nearest": (em, t_em), "memory_votes": (votes, t_mem), "bag": (bag_votes, t_bag),
                "bag_plus_memory": (bag_votes + 10 * votes, t_bag + t_mem)}
        result["sets"][which] = {name: {**recall_at(scores, gold, skip, ks), "ms_per_sentence": round(1e3 * t / len(texts), 3)}
                                 for name, (scores, t) in rows.items()}
        result["sets"][which]["sentences"] = len(texts)
        result["sets"][which]["content_units_per_sentence"] = round(sum(map(len, gold)) / len(gold), 2)
        bag_r, em_r = result["sets"][which]["bag"]["recall@32"], result["sets"][which]["em_nearest"]["recall@32"]
        result["sets"][which]["bag_over_em_nearest_recall@32"] = round(bag_r / max(em_r, 1e-9), 2)
    write("inversion_bag_recall", result)


if __name__ == "__main__":
    main()
