"""Every benchmark, in an order that trains what the later ones read, one after another (they
share the machine's cores, so nothing runs in parallel). ``make bench`` runs this.

    .venv/bin/python bench/run_all.py [--only em_quality,eval_suite] [--skip index_scale] [--list]

Each step is a subprocess (``bench/NAME.py`` or an ``invemb`` command that trains a run the
benches read); a run folder that is already finished is not trained again, so a killed
``make bench`` continues where it stopped. Every bench writes ``bench/out/NAME.json``; at the end
the RATIO lines and the peak memory of each step are printed together, with the wall time of
each step and whether it failed. Steps whose inputs are missing are reported as skipped, with why.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUNS = {
    "em": "runs/em-default", "controller": "runs/controller-default", "tiered": "runs/tiered-default",
    "compare": "runs/compare-moe-default",
    "bpe_small": "runs/scratch-bpe-small",  # the tiered model's typo peer: a BPE encoder of similar size
}


def invemb(*args: str) -> list[str]:
    return [str(BIN / "invemb"), *args]


def bench(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args]


def step_peak_mb(name: str, since: float) -> float | None:
    """Peak memory a step's bench wrote: bench/out/NAME.json, or NAME_<variant>.json (em_cache_bind,
    moe_train_default), whichever this step wrote last."""
    outs = [p for p in (ROOT / "bench" / "out").glob(f"{name}*.json") if p.stat().st_mtime >= since]
    if not outs:
        return None
    payload = json.loads(max(outs, key=lambda p: p.stat().st_mtime).read_text())
    return payload.get("peak_rss_mb") or payload.get("peak_rss_mib")


def finished(path: str, marker: str) -> bool:
    return (ROOT / path / marker).exists()


# name -> (command, needs: (run folder, file that marks it finished) or None, what produces it)
STEPS: list[tuple[str, list[str], tuple[str, str] | None]] = [
    ("em_demo_cost", bench("em_demo_cost"), None),  # the EM part from nothing built, in its own data folder
    ("demo", invemb("demo", "--preset", "default", "--out", RUNS["em"], "--controller-out", RUNS["controller"]), None),
    ("em_features", bench("em_features"), None),
    ("em_cache", bench("em_cache"), (RUNS["em"], "final_metrics.json")),
    ("em_quality", bench("em_quality", "--run", RUNS["em"]), (RUNS["em"], "final_metrics.json")),
    ("em_order_share", bench("em_order_share", "--run", RUNS["em"]), (RUNS["em"], "final_metrics.json")),
    ("eval_suite", bench("eval_suite", "--encoder", "backbone", "--encoder", RUNS["em"],
                         "--out", "bench/out/eval_suite_report"), (RUNS["em"], "final_metrics.json")),
    ("inversion_eval", bench("inversion_eval", "--controller", RUNS["controller"], "--em", RUNS["em"], "--n", "50",
                             "--n-blackbox", "6", "--threads", "2"), (RUNS["controller"], "model.safetensors")),
    ("inversion_oracle", bench("inversion_oracle", "--controller", RUNS["controller"], "--em", RUNS["em"], "--n", "100"),
     (RUNS["controller"], "model.safetensors")),
    # the demo controller's own memory (its 30k training states): its bag is trained on first use, 2 minutes
    ("inversion_bag_recall", bench("inversion_bag_recall", "--controller", RUNS["controller"], "--em", RUNS["em"]),
     (RUNS["controller"], "model.safetensors")),
    ("inversion_vocab_ceiling", bench("inversion_vocab_ceiling", "--em", RUNS["em"]), (RUNS["em"], "final_metrics.json")),
    ("backbone_runtime", bench("backbone_runtime", "--em", RUNS["em"]), (RUNS["em"], "final_metrics.json")),
    ("inversion_speed", bench("inversion_speed", "--controller", RUNS["controller"], "--em", RUNS["em"], "--expands", "5"),
     (RUNS["controller"], "model.safetensors")),
    ("serve_invert", bench("serve_invert", "--controller", RUNS["controller"], "--em", RUNS["em"]),
     (RUNS["controller"], "model.safetensors")),
    ("moe_layer", bench("moe_layer"), None),
    ("moe_layer_full", bench("moe_layer", "--preset", "full", "--repeats", "30", "--out", "bench/out/moe_layer_full.json"), None),
    ("moe_train", bench("moe_train", "--preset", "default", "--out", RUNS["compare"]), None),
    ("train_tiered", invemb("train", "tiered", "--preset", "default", "--out", RUNS["tiered"]), None),
    # 644k parameters (BPE vocabulary 8000 x 64 + 4 blocks) against the tiered default's 655k (with its teacher head)
    ("train_bpe_small", invemb("train", "scratch", "--preset", "default", "--tokenizer", "bpe", "--set", "model.dim=64",
                               "--set", "model.ffn_hidden=128", "--set", "model.moe.expert_hidden=128",
                               "--out", RUNS["bpe_small"]), None),
    ("tiered_typo", bench("tiered_typo", "--tiered", RUNS["tiered"], "--bpe", RUNS["bpe_small"]),
     (RUNS["tiered"], "model.safetensors")),
    ("tiered_speed", bench("tiered_speed", "--tiered", RUNS["tiered"], "--bpe", RUNS["bpe_small"]),
     (RUNS["tiered"], "model.safetensors")),
    ("serve_load", bench("serve_load", "--model", RUNS["em"]), (RUNS["em"], "final_metrics.json")),
    ("index_scale", bench("index_scale"), None),
    ("ddp", bench("ddp"), None),
]
# Training steps that are skipped when their run is already finished.
DONE = {"demo": (RUNS["controller"], "model.safetensors"), "train_tiered": (RUNS["tiered"], "model.safetensors"),
        "moe_train": (RUNS["compare"], "compare.json"), "train_bpe_small": (RUNS["bpe_small"], "model.safetensors")}

# Training steps that take --resume when their run folder was started (the demo and moe_train continue by themselves).
RESUME = {"train_tiered": RUNS["tiered"], "train_bpe_small": RUNS["bpe_small"]}


def plan(only: list[str], skip: list[str]) -> Iterator[tuple[str, list[str], str]]:
    """(name, command, why it does not run or "") for each selected step, looked at as the loop reaches
    it (a generator: a step's inputs may be trained by the steps before it)."""
    for name, cmd, needs in STEPS:
        if (only and name not in only) or name in skip:
            continue
        if name in DONE and finished(*DONE[name]):
            yield name, cmd, "already trained"
            continue
        if name in RESUME and finished(RESUME[name], "config.json"):
            cmd = cmd + ["--resume"]  # a killed training run continues; the plain command refuses its folder
        yield name, cmd, f"skipped: {needs[0]}/{needs[1]} missing" if needs and not finished(*needs) else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma list of step names")
    ap.add_argument("--skip", default="", help="comma list of step names")
    ap.add_argument("--list", action="store_true", help="print the steps (whether each would run now) and exit")
    args = ap.parse_args()
    names = [s[0] for s in STEPS]
    only = [n for n in args.only.split(",") if n]
    skip = [n for n in args.skip.split(",") if n]
    for n in only + skip:
        if n not in names:
            sys.exit(f"error: unknown step {n!r}; steps: {', '.join(names)}")
    if args.list:  # what each step would do if it were reached now
        for name, cmd, status in plan(only, skip):
            print(f"{name:16s} {status or 'runs':16s} {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}")
        return
    summary = []
    for name, cmd, status in plan(only, skip):
        if status:
            summary.append({"step": name, "status": status, "seconds": 0.0})
            continue
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        start, start_wall = time.perf_counter(), time.time()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True)
        sys.stdout.write(proc.stdout)
        ratios = re.findall(r"^.*RATIO.*$|^.*ratio.*=.*$", proc.stdout, flags=re.M)
        peak = step_peak_mb(name, start_wall)
        summary.append({"step": name, "status": "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                        "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak, "ratios": ratios})
    print("\n=== summary")
    for row in summary:
        print(f"{row['step']:15s} {row['status']:40s} {row['seconds']:8.1f} s"
              + (f"  peak {row['peak_rss_mb']:.0f} MB" if row.get("peak_rss_mb") else ""))
        for line in row.get("ratios", []):
            print(f"    {line.strip()}")
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "run_all.json").write_text(json.dumps(summary, indent=2))
    if any(r["status"].startswith("failed") for r in summary):
        sys.exit(1)


if __name__ == "__main__":
    main()
