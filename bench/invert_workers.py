"""Throughput of ``invemb invert --workers N``: the same held-out Wikipedia sentences inverted into a JSONL
file by one process and by N spawned worker processes (each with its own controller and 1/N of the
threads), in one run; files are inverted in chunks of 64, so ``--n`` should be at least 64 x N. Reports wall
time (worker start-up included), sentences/s, the ratio, how many reconstructions match, and peak RSS of
this process and of the largest worker.

    .venv/bin/python bench/invert_workers.py --controller runs/ctl-mem --em runs/em-default-pairs --runtime bf16 \\
        --decode view_residual=1 --decode view_combine=true --decode view_polish_rounds=12 --n 128
"""
from __future__ import annotations

import argparse
import functools
import resource
import tempfile
import time
from pathlib import Path

from _common import write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--controller", default="runs/controller-default")
    ap.add_argument("--em", default="runs/em-default")
    ap.add_argument("--corpus", default="data/built/corpus")
    ap.add_argument("--runtime", default="bf16")
    ap.add_argument("--n", type=int, default=128, help="held-out Wikipedia sentences (5-32 words)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--decode", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from invemb.config import parse_overrides
    from invemb.inversion import load_run
    from invemb.inversion.controller import invert_to_jsonl
    from invemb.inversion.harness import eval_sentences, resolve_corpus

    overrides = parse_overrides(args.decode)
    loader = functools.partial(load_run, Path(args.controller), em=args.em, runtime=args.runtime, **overrides)
    ctrl = loader()
    texts = eval_sentences(resolve_corpus(args.corpus, args.em), "wiki", args.n)
    rows, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            start = time.perf_counter()
            rows[workers] = invert_to_jsonl(ctrl, Path(tmp) / f"w{workers}.jsonl", texts=texts, workers=workers, loader=loader)
            seconds[workers] = time.perf_counter() - start
    same = sum(a["reconstruction"] == b["reconstruction"] for a, b in zip(rows[1], rows[args.workers]))
    write("invert_workers", {
        "controller": args.controller, "em": args.em, "runtime": args.runtime, "decode": overrides, "n": len(texts),
        "workers": args.workers, "seconds_1": round(seconds[1], 1), f"seconds_{args.workers}": round(seconds[args.workers], 1),
        "sentences_per_s_1": round(len(texts) / seconds[1], 3),
        f"sentences_per_s_{args.workers}": round(len(texts) / seconds[args.workers], 3),
        "throughput_ratio": round(seconds[1] / seconds[args.workers], 3), "same_reconstructions": same,
        "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    })


if __name__ == "__main__":
    main()
