"""Dense vs MoE end to end: training and inference tokens/s, wall time, load balance, retrieval.

Runs ``invemb compare moe`` (both models in one process, same data, tokenizer and steps) and
prints MoE/dense ratios, each model's training time against the 20-minute budget, the expert
load balance (most-loaded / mean, target <= 1.5), retrieval beside BM25 and MiniLM, and the
process's peak memory. ``--reuse`` takes the two trained runs of an existing comparison folder and
re-measures inference (interleaved) and the suite's retrieval instead of training again.

    .venv/bin/python bench/moe_train.py --preset default --out runs/compare-moe-default --threads 1
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", default="bench/out/moe_train")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared machine)")
    ap.add_argument("--reuse", action="store_true", help="re-measure the trained runs of an existing OUT")
    args = ap.parse_args()
    out = Path(args.out)
    from invemb.scratch.train import compare_moe, finish_comparison

    if args.reuse:
        result = finish_comparison(out)
    else:
        result = compare_moe(args.preset, out, {"threads": args.threads, "train.progress": False})
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    dense, moe = result["models"]["dense"], result["models"]["moe"]
    summary = {
        "preset": result["preset"],
        "train_seconds_wall": {"dense": dense["train_seconds"], "moe": moe["train_seconds"]},
        "train_seconds_cpu": {"dense": dense.get("train_cpu_seconds"), "moe": moe.get("train_cpu_seconds")},
        "under_20_min": {"dense": dense["train_seconds"] < 1200, "moe": moe["train_seconds"] < 1200},
        "ratio_train_tokens_per_s_moe_over_dense": round(moe["train_tokens_per_s"] / dense["train_tokens_per_s"], 3),
        "ratio_infer_tokens_per_s_moe_over_dense": round(moe["infer_tokens_per_s"] / dense["infer_tokens_per_s"], 3),
        "params": {"dense": dense["params"], "moe": moe["params"]},
        "load_max_over_mean": {k: round(v, 3) for k, v in moe["eval"].items() if k.endswith("load_max_over_mean")},
        "retrieval_mrr": {name: {k: round(v, 4) for k, v in m["retrieval"].items() if k.endswith("/mrr")}
                          for name, m in result["models"].items()},
        "beats_bm25_on": {name: [t for t, m in result["suite"].items() if m[name]["mrr"] > m["bm25"]["mrr"]]
                          for name in ("dense", "moe")},
        "peak_rss_mib": round(peak, 1),
    }
    print(f"RATIO train tokens/s MoE/dense = {summary['ratio_train_tokens_per_s_moe_over_dense']}, "
          f"inference = {summary['ratio_infer_tokens_per_s_moe_over_dense']}")
    print(json.dumps(summary, indent=1))
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path(f"bench/out/moe_train_{summary['preset']}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
