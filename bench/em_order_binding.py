"""Order binding (``invemb.em.order_bind``) measured beside the EM it binds: order discrimination and
the retrieval suite's primary metrics at each share, as bench/em_order_share.py measures the trained
order sub-space. Each text's vector gets a second part, the sum of its words' own EM vectors (less
the vocabulary's mean unit vector with ``--center``), projected to ``--dim`` dimensions and bound to
their positions by fixed random signed permutations; the parts are weighted ``sqrt(1 - share)`` and
``sqrt(share)``.

    .venv/bin/python bench/em_order_binding.py [--run runs/em-default] [--shares 0.4,0.5,0.65] [--dim 2048]
        [--center] [--content-only] [--codes em|identity]

``--codes identity`` binds a fixed random code per lower-cased word, weighted by its IDF, instead of the
word's EM vector (the view's default with binding positions; ``--center`` does nothing then).

``--content-only`` binds only the words that are not stop words or punctuation (the shared "The ...
of the ..." frame of two unrelated sentences then adds nothing to their similarity).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _common import order_and_retrieval, write

from invemb.em.order_bind import OrderBindConfig, OrderBoundEncoder, word_counts
from invemb.text.vocab import Vocab


class ContentBoundEncoder(OrderBoundEncoder):
    """The view binding only the words that are not stop words or punctuation."""

    def words(self, text: str) -> list[str]:
        from spacy.lang.en.stop_words import STOP_WORDS

        return [w for w in super().words(text) if w.lower() not in STOP_WORDS and any(c.isalnum() for c in w)]


def speed(em, view: OrderBoundEncoder, texts: list[str], repeats: int = 3) -> dict:
    """Encode time of ``view`` against its EM on the same texts, interleaved: the first pass with no word
    known (each new word is encoded once more, alone), then with every word known."""
    import time

    def timed(encoder) -> float:
        t0 = time.perf_counter()
        encoder.encode(texts)
        return time.perf_counter() - t0

    base = timed(em)
    cold = timed(view)
    warm, plain = [], []
    for _ in range(repeats):
        plain.append(timed(em))
        warm.append(timed(view))
    return {"texts": len(texts), "em_s": round(min([base] + plain), 3), "view_cold_s": round(cold, 3),
            "view_warm_s": round(min(warm), 3), "cold_ratio": round(cold / min([base] + plain), 2),
            "warm_ratio": round(min(warm) / min([base] + plain), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/em-default")
    ap.add_argument("--shares", default="0.4,0.5,0.65")
    ap.add_argument("--sentences", type=int, default=500)
    ap.add_argument("--dim", type=int, default=2048, help="width of the bound part")
    ap.add_argument("--center", action="store_true", help="subtract the mean unit vector from every word vector first")
    ap.add_argument("--content-only", action="store_true")
    ap.add_argument("--pairs", action="store_true", help="bind each word to the next one, not to its position "
                                                        "(the view's binding=pairs)")
    ap.add_argument("--codes", default="em", choices=["em", "identity"],
                    help="what a word binds: its EM vector (the figures before identity codes) or an IDF-weighted random code")
    ap.add_argument("--no-retrieval", action="store_true", help="order discrimination only")
    ap.add_argument("--speed", action="store_true", help="only the view's encode time against the EM's, at the first share")
    args = ap.parse_args()
    from safetensors.torch import load_file

    import invemb
    from invemb.eval.data import wiki_sentences
    from invemb.eval.order import OrderEvaluator

    em = invemb.load(Path(args.run))
    units = load_file(str(Path(args.run) / "unit_vectors.safetensors"))["units"]
    order = OrderEvaluator(wiki_sentences(args.sentences, split="test"))  # as bench/em_order_share.py
    view = ContentBoundEncoder if args.content_only else OrderBoundEncoder
    binding = "pairs" if args.pairs else "positions"
    counts = word_counts(Vocab.load(Path(args.run) / "vocab.json")) if args.codes == "identity" else None
    if args.speed:
        from _common import peak_rss_mb

        encoder = view.build(em, OrderBindConfig(width=args.dim, share=float(args.shares.split(",")[0]),
                                                 center=args.center, binding=binding, codes=args.codes), units,
                             word_counts=counts)
        row = {**speed(em, encoder, wiki_sentences(args.sentences, split="test")), "peak_rss_mb": peak_rss_mb()}
        print(row)
        write("em_order_binding_speed", row)
        return
    rows = []
    for share in [float(s) for s in args.shares.split(",")]:
        encoder = view.build(em, OrderBindConfig(width=args.dim, share=share, center=args.center, binding=binding,
                                                 codes=args.codes), units, word_counts=counts)
        row = {"share": share, **order_and_retrieval(encoder, order, not args.no_retrieval)}
        rows.append(row)
        print(row, flush=True)
    write("em_order_binding", {"run": args.run, "dim": args.dim, "center": args.center, "content_only": args.content_only,
                               "pairs": args.pairs, "codes": args.codes, "rows": rows})


if __name__ == "__main__":
    main()
