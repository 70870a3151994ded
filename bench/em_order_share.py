"""The order sub-space's share as a dial, read on one trained EM: order discrimination against
sentence retrieval when the two parts of every text vector are re-weighted at evaluation time.

    .venv/bin/python bench/em_order_share.py [--run runs/em-default] [--shares 0.35,0.5,0.65,0.8,0.95]

A single word has no order part, so word-level metrics and a sentence's ranking of single-word
units do not move; phrases and sentences do. Rows other than the run's own share read the same
weights with another share (not retrained): what the dial alone can buy on that run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _common import order_and_retrieval, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/em-default")
    ap.add_argument("--shares", default="0.35,0.5,0.65,0.8,0.95")
    ap.add_argument("--sentences", type=int, default=500)
    ap.add_argument("--no-retrieval", action="store_true", help="order discrimination only (a minute)")
    args = ap.parse_args()
    import invemb
    from invemb.eval.data import wiki_sentences
    from invemb.eval.order import OrderEvaluator

    em = invemb.load(Path(args.run))
    if not em.head.cfg.order_dims:
        raise SystemExit(f"{args.run} has no order sub-space (head.order_dims=0): nothing to re-weight")
    order = OrderEvaluator(wiki_sentences(args.sentences, split="test"))  # as bench/em_quality.py
    trained = em.head.cfg.order_share
    rows = []
    for share in [float(s) for s in args.shares.split(",")]:
        em.head.cfg.order_share = share
        row = {"share": share, "trained_share": trained, **order_and_retrieval(em, order, not args.no_retrieval)}
        rows.append(row)
        print(row, flush=True)
    write("em_order_share", {"run": args.run, "rows": rows})


if __name__ == "__main__":
    main()
