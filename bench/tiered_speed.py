"""Inference cost of the tiered model against a BPE transformer encoder of equal parameter count.

Same texts, same batch size, same threads, one run: characters/s and sentences/s of
``encode``, and the ratio tiered time / BPE time (target: at most 1.5). The BPE peer is the
scratch family's encoder (its trained BPE tokenizer from ``--bpe``) with width and depth chosen
so its parameter count matches the tiered model's inference parameters (E1, bridge, E2); speed
does not depend on its weights, so it is built untrained. Most of a small BPE encoder's
parameters sit in its embedding table, so "equal parameters" holds for very different depths,
and their speeds differ by 2x or more: the headline ratio is against the peer closest in
parameters (the two configs bracketing the target, below and above, are both timed), and one
equal-parameter peer per depth 2-6 (the width closest to the target at that depth) is timed too,
so the figure can be read against every depth. The trained ``--bpe`` run is timed too, and the
tiered model a second time with its E1 cache warm.

    python bench/tiered_speed.py --tiered RUN --bpe RUN2 [--n 1000]
"""
from __future__ import annotations

import argparse

import torch
from _common import timed, write

import invemb
from invemb.eval.data import wiki_sentences
from invemb.scratch.train import ScratchEncoder
from invemb.scratch.transformer import SentenceEncoderModel


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bpe_grid(bpe_run: ScratchEncoder) -> list[tuple[int, int, object]]:
    """(parameters, depth, config) of the scratch encoder at depth 2..6 and width 32..512 (multiples of 8)."""
    grid = []
    for depth in range(2, 7):
        for dim in range(32, 513, 8):
            cfg = bpe_run.cfg.replace(**{"model.dim": dim, "model.depth": depth, "model.heads": 4, "model.ffn_hidden": 2 * dim})
            grid.append((n_params(SentenceEncoderModel(cfg.model)), depth, cfg))
    return grid


def build_peer(bpe_run: ScratchEncoder, cfg) -> ScratchEncoder:
    torch.manual_seed(0)
    return ScratchEncoder(SentenceEncoderModel(cfg.model).eval(), bpe_run.tokenizer, cfg)


def bpe_peers(bpe_run: ScratchEncoder, target: int) -> tuple[dict[str, ScratchEncoder], str]:
    """Equal-parameter peers of a ``target``-parameter model, and the name of the closest one: the
    grid configs just below and just above ``target`` (most of a small BPE encoder's parameters sit
    in its embedding table, so near-equal sizes can differ in depth, and speed, by a lot: both sides
    are timed), and for each depth the width whose parameter count is closest to ``target``."""
    grid = bpe_grid(bpe_run)
    below = max((g for g in grid if g[0] <= target), key=lambda g: g[0])
    above = min((g for g in grid if g[0] > target), key=lambda g: g[0])
    out = {"bpe_equal_params_below": build_peer(bpe_run, below[2]), "bpe_equal_params_above": build_peer(bpe_run, above[2])}
    for depth in range(2, 7):
        best = min((g for g in grid if g[1] == depth), key=lambda g: abs(g[0] - target))
        out[f"bpe_equal_params_depth{depth}"] = build_peer(bpe_run, best[2])
    closest = "bpe_equal_params_below" if target - below[0] <= above[0] - target else "bpe_equal_params_above"
    return out, closest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiered", required=True)
    ap.add_argument("--bpe", required=True, help="scratch run trained with --tokenizer bpe (its tokenizer is reused)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    texts = wiki_sentences(n=args.n, split="test")
    tiered = invemb.load(args.tiered)
    bpe_run = invemb.load(args.bpe)
    # Parameters used at inference only: E1, bridge and E2, not the training-only heads (chunk
    # order, masked chunk), which would let the BPE peer grow for free.
    inference_params = sum(n_params(m) for m in (tiered.model.e1, tiered.model.bridge, tiered.model.e2))
    peers, closest = bpe_peers(bpe_run, inference_params)
    encoders = {"tiered": tiered, **peers, "bpe_trained_run": bpe_run}
    cached = invemb.load(args.tiered, cache_e1=True)
    cached.encode(texts, batch_size=args.batch_size)  # fill the E1 cache
    encoders["tiered_e1_cache_warm"] = cached
    # Interleaved: every repeat times each encoder once in turn, so a drift in the shared machine's
    # speed hits all of them alike; each keeps its fastest repeat.
    best = {name: float("inf") for name in encoders}
    for _ in range(args.repeat):
        for name, enc in encoders.items():
            best[name] = min(best[name], timed(enc.encode, texts, batch_size=args.batch_size)[0])
    chars = sum(len(t) for t in texts)
    rows = {name: {"params": inference_params if name.startswith("tiered") else n_params(enc.model),
                   "seconds": round(best[name], 3),
                   "sentences_per_s": round(len(texts) / best[name], 1), "chars_per_s": round(chars / best[name], 1),
                   **({"config": {k: getattr(enc.cfg.model, k) for k in ("dim", "depth", "ffn_hidden")}} if name in peers else {})}
            for name, enc in encoders.items()}
    for name, row in rows.items():
        print(name, row, flush=True)
    ratios = {name: round(rows["tiered"]["seconds"] / rows[name]["seconds"], 3) for name in peers}
    write("tiered_speed", {"texts": len(texts), "chars": chars, "batch_size": args.batch_size,
                           "threads": args.threads, "closest_peer": closest,
                           "ratio_time_tiered_over_bpe_equal_params": ratios[closest],
                           "ratio_time_tiered_over_bpe_below_above": [ratios["bpe_equal_params_below"], ratios["bpe_equal_params_above"]],
                           "ratio_time_tiered_over_bpe_by_depth": {name.removeprefix("bpe_equal_params_"): r for name, r in ratios.items()
                                                                   if "depth" in name},
                           "ratio_time_tiered_over_bpe_trained_run": round(rows["tiered"]["seconds"] / rows["bpe_trained_run"]["seconds"], 3),
                           "target_ratio_at_most": 1.5, "models": rows})


if __name__ == "__main__":
    main()
