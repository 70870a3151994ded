"""The EM part of ``make demo`` from nothing built: wall time, its phases and peak memory.

Runs ``invemb demo --no-inversion`` in a subprocess with ``$INVEMB_DATA`` pointing at a fresh
folder that holds only the raw corpora and the nltk data (copied from ``--data``), so the corpus,
vocabulary, lexicon and feature cache are all built, as on a fresh clone. Reports the wall time,
the run's own phase timings (data, features, train), and the peak RSS of the demo process against
the EM issue's budget (15 minutes, 6 GB on 2 cores). The machine's load average is recorded beside
them: other work on the cores stretches the time, not the memory.

    .venv/bin/python bench/em_demo_cost.py --preset default
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--data", default=os.environ.get("INVEMB_DATA", "data"), help="data folder holding raw/ and nltk_data/")
    ap.add_argument("--keep", default="", help="keep the built data and run in this folder (default: a temporary one)")
    args = ap.parse_args()

    data = Path(args.data)
    missing = [p for p in ("raw", "nltk_data") if not (data / p).is_dir()]
    if missing:
        sys.exit(f"{data} has no {', '.join(missing)}: run `make data` (scripts/install_data.sh) first")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="em_demo_cost_"))
    fresh = root / "data"
    if fresh.exists():
        sys.exit(f"{fresh} exists: pick an empty --keep folder (the point is building everything)")
    fresh.mkdir(parents=True)
    for part in ("raw", "nltk_data"):
        shutil.copytree(data / part, fresh / part)
    run = root / "run"
    invemb = Path(sys.executable).parent / "invemb"
    env = {**os.environ, "INVEMB_DATA": str(fresh)}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([str(invemb), "demo", "--preset", args.preset, "--out", str(run), "--no-inversion"], env=env, check=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the demo process (KiB on Linux)
    final = json.loads((run / "final_metrics.json").read_text())
    report = {"preset": args.preset, "wall_s": round(wall, 1),
              "phases_s": {k: round(final[k], 1) for k in ("data_s", "features_s", "train_s", "total_s")},
              "peak_rss_mb": round(peak_mb, 1),  # the demo's, not this script's
              "load_avg_1m_before": load_before,
              "target_wall_s": 900, "target_peak_rss_mb": 6 * 1024,
              "within_targets": wall <= 900 and peak_mb <= 6 * 1024 if args.preset == "default" else None}
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    write(f"em_demo_cost_{args.preset}" if args.preset != "default" else "em_demo_cost", report)


if __name__ == "__main__":
    main()
