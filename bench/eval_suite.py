"""Time the evaluation suite on the raw backbone and the `default` EM together (or on the
bundled backbone twice, as "two encoders", when no EM run is given or found) and print the
figures: wall time against the 10-minute budget (and the process's CPU seconds, which a busy
shared machine does not inflate the way it inflates wall time), and the RATIO of suite time to the time the
encoders spent encoding (the peer, measured in the same run): how much the evaluators add on
top of the unavoidable encoding. Peak memory from getrusage. Output: bench/out/eval_suite.json.

    .venv/bin/python bench/eval_suite.py [--preset default] [--suite all] [--encoder backbone --encoder runs/em-default]

The report (results.json, report.md: the side-by-side table; plots/) goes to --out.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write  # noqa: E402


class TimedEncoder:
    """Passes calls through and adds up the seconds and texts spent in ``encode``."""

    def __init__(self, inner, name: str):
        self.inner, self.name, self.dim = inner, name, inner.dim
        self.seconds, self.texts = 0.0, 0

    def encode(self, texts, batch_size=64):
        start = time.perf_counter()
        out = self.inner.encode(texts, batch_size=batch_size)
        self.seconds += time.perf_counter() - start
        self.texts += len(texts)
        return out

    def save(self, path):
        self.inner.save(path)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--suite", default="all")
    ap.add_argument("--encoder", action="append", default=None,
                    help="run folder, backbone folder or `backbone` (repeat; default: backbone + runs/em-default, "
                         "or the backbone twice when that run does not exist)")
    ap.add_argument("--vocab", default=None, help="Vocab JSON for purity/OOV/plots (default: the EM run's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "eval_suite_report"))
    args = ap.parse_args()

    import torch

    import invemb
    from invemb.eval.suite import EvalConfig, evaluate

    from invemb.eval.suite import name_encoders

    torch.set_num_threads(2)
    specs = args.encoder or (["backbone", "runs/em-default"] if Path("runs/em-default/head.safetensors").exists()
                             else ["backbone", "backbone"])
    encoders = {name: TimedEncoder(enc, name) for name, enc in name_encoders(specs, invemb.load).items()}
    cfg = EvalConfig.preset(args.preset)
    vocab = args.vocab or next((str(Path(s) / "vocab.json") for s in specs if (Path(s) / "vocab.json").exists()), None)
    if vocab:
        cfg = cfg.replace(vocab=vocab)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    results = evaluate(encoders, args.suite, cfg, args.out)
    total, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    encoding = sum(e.seconds for e in encoders.values())
    write("eval_suite", {
        "preset": args.preset, "suite": args.suite, "encoders": specs, "vocab": vocab,
        "wall_s": round(total, 1), "cpu_s": round(cpu, 1), "budget_s": 600, "within_budget": total < 600,
        "encode_s": round(encoding, 1), "texts_encoded": sum(e.texts for e in encoders.values()),
        "ratio_suite_to_encoding": round(total / max(encoding, 1e-9), 2),
        "seconds_per_evaluator": {ev: round(sum(per.values()), 1) for ev, per in results["seconds"].items()},
        "primary": {ev: {c: round(m[results["primary"][ev]], 4) for c, m in per.items()}
                    for ev, per in results["results"].items()},
        "not_run": results["not_run"],
    })


if __name__ == "__main__":
    main()
