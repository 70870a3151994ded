"""Two CPU processes (torchrun, gloo) against one process with doubled accumulation, per family.

    .venv/bin/python bench/ddp.py [--families scratch,tiered,em,controller] [--epochs 2]

For each family on the ``tiny`` preset, the same command runs twice through the CLI:
``torchrun --standalone --nproc_per_node 2 invemb train FAMILY --preset tiny`` (one thread per
process, torchrun's default) and ``invemb train FAMILY --preset tiny --set train.grad_accum=2``
(two threads: the same two cores). Reported: the max absolute difference between the per-step
loss curves of the two runs (every logged ``loss*`` term, and the largest relative one), the number
of steps, the wall time of each command, and the training time the run reports where it has one.

The scratch model runs with MoE layers (``--moe``: router, batched experts, balance and z losses).
Data: scratch and tiered read the installed Wikipedia summaries; the EM uses the bundled MiniLM
and builds its tiny corpus into a private data folder (never the shared ``data/built``, which a
demo may be writing); the 2-process run goes first, so it also builds the EM feature cache with
sharded extraction and the 1-process run reuses it (their ``data_s`` / ``features_s`` differ for
that reason; ``train_s`` is comparable). The controller trains on the EM run just made, over 400
held-out-free Wikipedia train sentences.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import OUT, write

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(cmd: list[str], threads: int, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    t = time.perf_counter()
    with open(log.with_suffix(".out"), "w") as out, open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    return wall


def curves(run_dir: Path) -> list[dict]:
    from invemb.training.metrics_log import read_metrics

    return read_metrics(run_dir / "metrics.jsonl", "step")


def compare(a: list[dict], b: list[dict]) -> dict:
    keys = sorted({k for r in a for k in r if k.startswith("loss")})
    per_key, rel = {}, 0.0
    for k in keys:
        pairs = [(x[k], y[k]) for x, y in zip(a, b) if x.get(k) is not None and y.get(k) is not None]
        per_key[k] = max(abs(x - y) for x, y in pairs)
        rel = max(rel, max(abs(x - y) / max(abs(x), 1e-12) for x, y in pairs))
    return {"steps": [len(a), len(b)], "max_abs_diff": max(per_key.values()), "max_rel_diff": rel,
            "max_abs_diff_per_term": per_key}


def family_args(family: str, work: Path, epochs: int) -> list[str]:
    common = ["--preset", "tiny", "--set", f"train.epochs={epochs}"]
    if family == "scratch":
        return ["scratch", *common, "--moe", "--set", "train.progress=false"]  # MoE: router, experts, aux losses
    if family == "tiered":
        return ["tiered", *common, "--set", "train.progress=false"]
    if family == "em":
        return ["em", *common, "--quiet", "--set", f"data_dir={work / 'em-data'}"]
    if family == "controller":
        return ["controller", "--em", str(work / "em-two"), *common, "--set", f"train_file={work / 'controller.jsonl'}",
                "--set", "max_sentences=400", "--set", "threads=0"]
    raise SystemExit(f"unknown family {family}")


def reported_train_seconds(family: str, run_dir: Path, log: Path) -> float | None:
    if family == "em":
        return json.loads((run_dir / "final_metrics.json").read_text()).get("train_s")
    if family in ("scratch", "tiered"):
        return json.loads(log.with_suffix(".out").read_text()).get("train_seconds")
    return None  # the controller does not report one


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="scratch,tiered,em,controller")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--single-threads", type=int, default=2, help="torch threads of the 1-process run (2: the same cores)")
    args = ap.parse_args()
    work = OUT / "ddp-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    families = args.families.split(",")
    if "controller" in families:
        from invemb.eval.data import wiki_sentences
        from invemb.io import write_jsonl

        if "em" not in families:
            raise SystemExit("the controller bench trains on the EM run: include em before controller")
        write_jsonl(work / "controller.jsonl", [{"text": s} for s in wiki_sentences(400, seed=0, split="train")])
    invemb = str(BIN / "invemb")
    results = {}
    t_all = time.perf_counter()
    for family in families:
        fam = family_args(family, work, args.epochs)
        two, one = work / f"{family}-two", work / f"{family}-one"
        wall_two = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", invemb, "train", *fam,
                        "--out", str(two)], 1, work / f"{family}-two.log")
        wall_one = run([invemb, "train", *fam, "--set", "train.grad_accum=2", "--out", str(one)], args.single_threads,
                       work / f"{family}-one.log")
        results[family] = {
            **compare(curves(one), curves(two)),
            "wall_s": {"two_processes": round(wall_two, 1), "one_process_accum2": round(wall_one, 1)},
            "train_s": {"two_processes": reported_train_seconds(family, two, work / f"{family}-two.log"),
                        "one_process_accum2": reported_train_seconds(family, one, work / f"{family}-one.log")},
        }
        print(family, json.dumps(results[family]), file=sys.stderr, flush=True)
    write("ddp", {"preset": "tiny", "epochs": args.epochs,
                  "threads": f"2 processes x 1 thread vs 1 process x {args.single_threads} thread(s)",
                  "total_s": round(time.perf_counter() - t_all, 1), "families": results})


if __name__ == "__main__":
    main()
