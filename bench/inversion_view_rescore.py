"""Prototype: invert the vector of an order-binding view (``invemb.em.order_bind``) rather than the EM's.

The view's vector is the EM's plus a bound part, so the controller can read the EM part as it
always does while beam decoding scores each hypothesis by ``(1 - a) * cos(EM(text), EM target) +
a * cos(bound(text), bound target)``: the bound part rewards words in the right order. With words
bound to the next word (``--pairs``) a hypothesis still missing words keeps most of its adjacent
pairs right; with words bound to their positions every word after a missing one is misplaced.

This is a prototype: it patches the one line of ``invemb.inversion.decode`` that scores a child
(and stops if that line changes), and reads the sentences, and the reconstructions at ``a = 0``
to check against, from an ``invemb eval inversion`` report's rows. Building it into the decoder
(a view-aware Controller, a decode weight) is the step after.

    .venv/bin/python bench/inversion_view_rescore.py --rows reports/R/rows_wiki_controller.jsonl
        [--controller runs/ctl-mem] [--runtime bf16] [--n 150] [--weights 0,0.7] [--pairs]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

SCORE_LINE = "                    k.cosine = float(k.vector @ s.target)\n"


def patched_decode():
    """``invemb.inversion.decode`` with its child-scoring line routed through a module-level ``HOOK``."""
    import invemb.inversion

    path = Path(invemb.inversion.__file__).with_name("decode.py")
    src = path.read_text()
    if SCORE_LINE not in src:
        raise SystemExit("decode.py no longer scores a child on the line this prototype patches")
    src = src.replace(SCORE_LINE, SCORE_LINE.replace("float(k.vector @ s.target)",
                                                     "HOOK(k, s) if HOOK is not None else float(k.vector @ s.target)"))
    mod = types.ModuleType("invemb.inversion.decode")
    mod.__file__ = str(path)
    sys.modules[mod.__name__] = mod  # before exec: dataclasses look their module up
    exec(compile(src + "\nHOOK = None\n", str(path), "exec"), mod.__dict__)
    invemb.inversion.decode = mod
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", required=True, help="an eval report's rows_*_controller.jsonl")
    ap.add_argument("--controller", default="runs/ctl-mem")
    ap.add_argument("--em", default="runs/em-default", help="the EM run whose unit vectors centre the view")
    ap.add_argument("--runtime", default="bf16")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--weights", default="0,0.7", help="a: the bound part's weight in each hypothesis's cosine")
    ap.add_argument("--pairs", action="store_true", help="bind each word to the next one, not to its position")
    ap.add_argument("--slots", type=int, default=3)
    args = ap.parse_args()
    decode = patched_decode()
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from _common import write
    from em_order_binding import PairBoundEncoder
    from invemb.em.order_bind import OrderBindConfig, OrderBoundEncoder
    from invemb.inversion.controller import Controller
    from invemb.inversion.metrics import bleu, token_f1

    rows = [json.loads(line) for line in open(args.rows, encoding="utf-8")][: args.n]
    texts = [r["text"] for r in rows]
    ctrl = Controller.load(args.controller, runtime=args.runtime, slots=args.slots)
    em = ctrl.encoder.encoder  # the EM itself: the view's word encodings are not the decoder's encoder calls
    view = (PairBoundEncoder if args.pairs else OrderBoundEncoder).build(
        em, OrderBindConfig(), load_file(str(Path(args.em) / "unit_vectors.safetensors"))["units"])
    targets = F.normalize(em.encode(texts).float(), dim=1)  # (N, D) to find each search's own sentence
    bound_targets = view.bound([view.words(t) for t in texts])  # (N, W): the view vector's second part
    out = []
    for a in [float(x) for x in args.weights.split(",")]:
        def hook(k, s, a=a):
            own = int((targets @ s.target).argmax())
            return (1 - a) * float(k.vector @ s.target) + a * float(view.bound([view.words(k.text)])[0] @ bound_targets[own])

        decode.HOOK = hook if a > 0 else None
        t0 = time.perf_counter()
        recs = [r["reconstruction"] for r in ctrl.invert_texts(texts, batch=16)]
        row = {"weight": a, "token_f1": round(sum(token_f1(r, t) for r, t in zip(recs, texts)) / len(texts), 2),
               "bleu": round(bleu(recs, texts), 2), "seconds_per_sentence": round((time.perf_counter() - t0) / len(texts), 3),
               "same_as_report": sum(r == x["reconstruction"] for r, x in zip(recs, rows))}
        print(row, flush=True)
        out.append(row)
    write("inversion_view_rescore", {"rows_file": args.rows, "controller": args.controller, "pairs": args.pairs,
                                     "n": len(texts), "results": out})


if __name__ == "__main__":
    main()
