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

Every model is timed in each of ``--runtimes``: ``torch`` (float32) and, where the CPU does bfloat16
natively, ``bf16`` (all weights and activations in bfloat16, :func:`invemb.encoder.use_own_runtime`),
the tiered model against its peers in the same runtime; the bf16 rows also give the cosine of
their vectors to float32's.

    python bench/tiered_speed.py --tiered RUN --bpe RUN2 [--n 1000] [--runtimes torch bf16]
"""
from __future__ import annotations

import argparse

import torch
from _common import timed, write

import invemb
from invemb.encoder import bf16_is_fast, use_own_runtime
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


def build_peer(bpe_run: ScratchEncoder, cfg, runtime: str) -> ScratchEncoder:
    torch.manual_seed(0)
    model = use_own_runtime(SentenceEncoderModel(cfg.model).eval(), runtime, "a BPE peer")
    return ScratchEncoder(model, bpe_run.tokenizer, cfg)


def bpe_peers(bpe_run: ScratchEncoder, target: int, runtime: str) -> tuple[dict[str, ScratchEncoder], str]:
    """Equal-parameter peers of a ``target``-parameter model, and the name of the closest one: the
    grid configs just below and just above ``target`` (most of a small BPE encoder's parameters sit
    in its embedding table, so near-equal sizes can differ in depth, and speed, by a lot: both sides
    are timed), and for each depth the width whose parameter count is closest to ``target``."""
    grid = bpe_grid(bpe_run)
    below = max((g for g in grid if g[0] <= target), key=lambda g: g[0])
    above = min((g for g in grid if g[0] > target), key=lambda g: g[0])
    out = {"bpe_equal_params_below": build_peer(bpe_run, below[2], runtime),
           "bpe_equal_params_above": build_peer(bpe_run, above[2], runtime)}
    for depth in range(2, 7):
        best = min((g for g in grid if g[1] == depth), key=lambda g: abs(g[0] - target))
        out[f"bpe_equal_params_depth{depth}"] = build_peer(bpe_run, best[2], runtime)
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
    ap.add_argument("--runtimes", nargs="+", default=None, choices=("torch", "bf16"),
                    help="default: torch, and bf16 where the CPU does bfloat16 natively")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runtimes = args.runtimes or (["torch", "bf16"] if bf16_is_fast(torch.device("cpu")) else ["torch"])

    texts = wiki_sentences(n=args.n, split="test")
    # Parameters used at inference only: E1, bridge and E2, not the training-only heads (chunk
    # order, masked chunk), which would let the BPE peer grow for free.
    tiered = invemb.load(args.tiered)
    inference_params = sum(n_params(m) for m in (tiered.model.e1, tiered.model.bridge, tiered.model.e2))
    encoders, peer_names, closest = {}, {}, ""
    for runtime in runtimes:
        bpe_run = invemb.load(args.bpe, runtime=runtime)
        peers, closest = bpe_peers(bpe_run, inference_params, runtime)
        peer_names[runtime] = list(peers)
        cached = invemb.load(args.tiered, cache_e1=True, runtime=runtime)
        cached.encode(texts, batch_size=args.batch_size)  # fill the E1 cache
        for name, enc in {"tiered": invemb.load(args.tiered, runtime=runtime), **peers, "bpe_trained_run": bpe_run,
                          "tiered_e1_cache_warm": cached}.items():
            encoders[(runtime, name)] = enc
    # Interleaved: every repeat times each encoder once in turn, so a drift in the shared machine's
    # speed hits all of them alike; each keeps its fastest repeat.
    best = {key: float("inf") for key in encoders}
    for _ in range(args.repeat):
        for key, enc in encoders.items():
            best[key] = min(best[key], timed(enc.encode, texts, batch_size=args.batch_size)[0])
    chars = sum(len(t) for t in texts)
    by_runtime = {}
    for runtime in runtimes:
        rows = {name: {"params": inference_params if name.startswith("tiered") else n_params(enc.model),
                       "seconds": round(best[(runtime, name)], 3),
                       "sentences_per_s": round(len(texts) / best[(runtime, name)], 1),
                       "chars_per_s": round(chars / best[(runtime, name)], 1),
                       **({"config": {k: getattr(enc.cfg.model, k) for k in ("dim", "depth", "ffn_hidden")}}
                          if name in peer_names[runtime] else {})}
                for (r, name), enc in encoders.items() if r == runtime}
        for name, row in rows.items():
            print(runtime, name, row, flush=True)
        ratios = {name: round(rows["tiered"]["seconds"] / rows[name]["seconds"], 3) for name in peer_names[runtime]}
        by_runtime[runtime] = {
            "ratio_time_tiered_over_bpe_equal_params": ratios[closest],
            "ratio_time_tiered_over_bpe_below_above": [ratios["bpe_equal_params_below"], ratios["bpe_equal_params_above"]],
            "ratio_time_tiered_over_bpe_by_depth": {name.removeprefix("bpe_equal_params_"): r for name, r in ratios.items()
                                                    if "depth" in name},
            "ratio_time_tiered_over_bpe_trained_run": round(rows["tiered"]["seconds"] / rows["bpe_trained_run"]["seconds"], 3),
            "models": rows}
        if runtime != "torch" and "torch" in runtimes:  # how far the low-precision vectors move
            for name in ("tiered", "bpe_trained_run"):
                cos = (encoders[(runtime, name)].encode(texts) * encoders[("torch", name)].encode(texts)).sum(-1)
                by_runtime[runtime][f"cosine_to_torch_{name}"] = {"min": round(cos.min().item(), 5), "mean": round(cos.mean().item(), 6)}
        print(runtime, {k: v for k, v in by_runtime[runtime].items() if k != "models"}, flush=True)
    # Each side in its faster runtime: bfloat16 speeds up the compute-bound tiered model, while the
    # small BPE peers spend their time on tokenising and per-op overhead and gain little or nothing.
    fastest = {name: min(best[(r, name)] for r in runtimes) for name in ("tiered", closest)}
    best_of_runtimes = round(fastest["tiered"] / fastest[closest], 3)
    print("each in its faster runtime: tiered / closest BPE peer", best_of_runtimes, flush=True)
    write("tiered_speed", {"texts": len(texts), "chars": chars, "batch_size": args.batch_size,
                           "ratio_time_tiered_over_bpe_equal_params_each_fastest_runtime": best_of_runtimes,
                           "threads": args.threads, "closest_peer": closest, "target_ratio_at_most": 1.5,
                           "ratio_time_tiered_over_bpe_equal_params": {r: v["ratio_time_tiered_over_bpe_equal_params"]
                                                                      for r, v in by_runtime.items()},
                           "by_runtime": by_runtime})


if __name__ == "__main__":
    main()
