"""Shared bench helpers: peak memory, timing, JSON output under bench/out/."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, *args, repeat: int = 1, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best, result


def write(name: str, payload: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    payload = {"bench": name, "load_avg_1m": os.getloadavg()[0], "peak_rss_mb": round(peak_rss_mb(), 1), **payload}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))
    sys.stdout.flush()
    return path


def order_and_retrieval(encoder, order, retrieval: bool = True) -> dict:
    """Order discrimination of ``encoder`` on the probes of ``order`` (an OrderEvaluator) and, with
    ``retrieval``, the retrieval suite's primary metrics, as one row (names: task/metric)."""
    import torch

    from invemb.eval.suite import run_suite

    with torch.no_grad():
        row = {"order/order_discrimination": round(order(encoder)["order_discrimination"], 4)}
        if retrieval:
            res = run_suite({"em": encoder}, "retrieval", progress=False)
            row.update({f"{name}/{res['primary'][name]}": round(by_encoder["em"][res["primary"][name]], 4)
                        for name, by_encoder in res["results"].items()})
    return row
