"""MoE feed-forward forward throughput against a dense FFN of equal active parameters, same batch.

The dense FFN has hidden width H; the MoE has E experts of width H / top_k, so each token meets
the same number of expert weights. All run the same (B, T, D) batch with padding, interleaved;
throughput counts real (non-padding) tokens, and each ratio is the median of per-repeat ratios.
Two dense references:

- ``dense`` (the target's "dense layer on the same batch"): the dense FFN as the transformer
  block runs it, over the whole padded batch. This is the layer the MoE replaces in a model; the
  MoE routes only real tokens.
- ``dense_real_tokens`` (stricter, our own): the dense FFN on the real tokens only, gathered the
  same way the MoE gathers them (and not scattered back), i.e. a dense layer that also skips padding.

Prints the ratio MoE tokens/s / dense tokens/s against both (target >= 0.7) and peak memory.

    .venv/bin/python bench/moe_layer.py [--preset default|full] [--batch 64 --seq 40 --top-k 1]

At the ``default`` preset's width (128) the layer's cost is mostly per-op overhead of the
router and the moves, not arithmetic; at the ``full`` preset's (512, 8 experts) it is the experts.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from invemb.scratch.moe import MoEConfig, MoEFeedForward
from invemb.scratch.train import ScratchConfig
from invemb.scratch.transformer import FeedForward


def peak_rss_mib() -> float:
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", choices=sorted(ScratchConfig.presets),
                    help="take dim, hidden width and experts from this `train scratch` preset")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=40)
    ap.add_argument("--dim", type=int, help="model width (default: the preset's)")
    ap.add_argument("--hidden", type=int, help="dense hidden width; experts get hidden / top_k (default: the preset's)")
    ap.add_argument("--experts", type=int, help="(default: the preset's)")
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/moe_layer.json")
    args = ap.parse_args()
    model = ScratchConfig.preset(args.preset).model
    args.dim = args.dim or model.dim
    args.hidden = args.hidden or model.ffn_hidden
    args.experts = args.experts or model.moe.num_experts
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dense = FeedForward(args.dim, args.hidden)
    moe = MoEFeedForward(args.dim, MoEConfig(num_experts=args.experts, top_k=args.top_k,
                                             expert_hidden=args.hidden // args.top_k, expert_dropout=0.0))
    x = torch.randn(args.batch, args.seq, args.dim)  # (B, T, D)
    lengths = torch.randint(args.seq // 2, args.seq + 1, (args.batch,))
    mask = torch.arange(args.seq)[None, :] < lengths[:, None]  # (B, T): realistic padding
    n_tokens = int(mask.sum())
    dense_active = sum(p.numel() for p in dense.parameters())
    moe_active = sum(p.numel() for p in moe.experts.parameters()) * args.top_k // args.experts

    results = {}
    for mode in ("eval", "train"):
        dense.train(mode == "train")
        moe.train(mode == "train")
        runs = {"dense": lambda: dense(x), "moe": lambda: moe(x, mask),
                "dense_real_tokens": lambda: dense(x.reshape(-1, args.dim).index_select(0, mask.reshape(-1).nonzero().squeeze(1)))}
        times = {k: [] for k in runs}
        rss = {}
        with torch.no_grad():
            for name, fn in runs.items():
                for _ in range(3):
                    fn()  # warm-up
                rss[name] = peak_rss_mib()
            names = list(runs)
            for i in range(args.repeats):
                # Interleaved, so machine load hits all alike, in a rotating order, so none always
                # runs first (on a warm or a cold cache).
                for name in names[i % len(names):] + names[: i % len(names)]:
                    t0 = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - t0)
        tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
        # The machine's speed drifts within a run; the ratio of two layers timed back to back
        # does not, so each ratio is the median of the per-repeat ratios.
        paired = {ref: statistics.median(r / m for r, m in zip(times[ref], times["moe"]))
                  for ref in ("dense", "dense_real_tokens")}
        with torch.no_grad():
            routing = moe.gate(x[mask])
        # The expert buffer holds as many slots per expert as the busiest one needs (up to
        # capacity), so router imbalance is extra compute: report it beside the ratio.
        imbalance = float(routing.stats.load.max() / routing.stats.load.mean())
        buffer_over_tokens = routing.capacity * args.experts / (n_tokens * args.top_k)
        results[mode] = {"dense_tokens_per_s": round(tps["dense"]), "moe_tokens_per_s": round(tps["moe"]),
                         "dense_real_tokens_tokens_per_s": round(tps["dense_real_tokens"]),
                         "ratio_moe_over_dense": round(paired["dense"], 3),
                         "ratio_moe_over_dense_real_tokens": round(paired["dense_real_tokens"], 3),
                         "router_load_max_over_mean": round(imbalance, 3), "buffer_slots_per_assignment": round(buffer_over_tokens, 3)}
        cf = moe.cfg.capacity_factor_train if mode == "train" else moe.cfg.capacity_factor_eval
        print(f"{mode:5s} (capacity factor {cf or 'none'}): dense {tps['dense']:,.0f} tok/s  MoE {tps['moe']:,.0f} tok/s  "
              f"RATIO MoE/dense on the same batch = {paired['dense']:.3f} (target >= 0.7)  | strict, dense on real "
              f"tokens only ({tps['dense_real_tokens']:,.0f} tok/s): ratio {paired['dense_real_tokens']:.3f}  "
              f"(untrained router: busiest expert {imbalance:.2f}x mean, {buffer_over_tokens:.2f} buffer slots per routed token)")
    report = {"config": vars(args), "tokens": n_tokens, "padded_positions": args.batch * args.seq, "active_params": {"dense": dense_active, "moe": moe_active},
              "total_params": {"dense": dense_active, "moe": sum(p.numel() for p in moe.parameters())},
              "results": results, "peak_rss_mib": round(peak_rss_mib(), 1),
              "meets_target": all(r["ratio_moe_over_dense"] >= 0.7 for r in results.values()),
              "meets_target_strict": all(r["ratio_moe_over_dense_real_tokens"] >= 0.7 for r in results.values())}
    print(f"active params dense {dense_active:,} / MoE {moe_active:,} (+ router {args.dim * args.experts:,}); "
          f"peak RSS {report['peak_rss_mib']} MiB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
