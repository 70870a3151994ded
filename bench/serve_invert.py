"""The service's inversion queue: concurrent /v1/invert requests decoded in lockstep against one by one.

N held-out Wikipedia sentences are queued at once, as N concurrent clients would (`Service.submit_inversion`,
the path every /v1/invert request takes after its checks; HTTP adds milliseconds to a decoding of about a
second, so it is left out), with ``invert_batch`` 16 and 1, alternately, on one loaded service. Reports
inversions/s, the ratio of the batched time to one by one, mean latency (submit to answer), and how many
answers are the same as one by one's.

    .venv/bin/python bench/serve_invert.py --controller runs/controller-default --em runs/em-default --n 16
"""
from __future__ import annotations

import argparse
import time

import torch
from _common import write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--controller", default="runs/controller-default")
    ap.add_argument("--em", default="runs/em-default")
    ap.add_argument("--corpus", default="data/built/corpus")
    ap.add_argument("--n", type=int, default=16, help="concurrent inversion requests (held-out wiki sentences)")
    ap.add_argument("--batch", type=int, default=16, help="invert_batch of the batched setting")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from invemb.inversion.harness import eval_sentences, resolve_corpus
    from invemb.serve.app import ServeConfig, load_service

    sentences = eval_sentences(resolve_corpus(args.corpus, args.em), "wiki", args.n)
    service = load_service(args.em, args.controller, ServeConfig(max_pending_inversions=max(args.n, 16)),
                           runtime=args.runtime)

    def run(batch: int) -> tuple[float, float, list[dict]]:
        service.cfg = service.cfg.replace(invert_batch=batch)
        start = time.perf_counter()
        done: dict[int, float] = {}
        futures = [service.submit_inversion(text=t) for t in sentences]
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _, i=i: done.__setitem__(i, time.perf_counter()))
        rows = [f.result() for f in futures]
        seconds = time.perf_counter() - start
        return seconds, sum(done[i] - start for i in range(len(rows))) / len(rows), rows

    settings = {"lockstep": args.batch, "one_by_one": 1}
    best = {name: (float("inf"), 0.0) for name in settings}
    rows = {}
    for _ in range(args.repeat):
        for name, batch in settings.items():
            seconds, latency, rows[name] = run(batch)
            best[name] = min(best[name], (seconds, latency))
            print(f"{name}: {len(sentences) / seconds:.3f} inversions/s, mean latency {latency:.2f} s", flush=True)
    service.invert_pool().shutdown(wait=True)
    table = {name: {"inversions_per_s": round(args.n / s, 3), "mean_latency_s": round(lat, 3),
                    "ratio_time_over_one_by_one": round(s / best["one_by_one"][0], 3)}
             for name, (s, lat) in best.items()}
    table["lockstep"]["same_reconstruction_as_one_by_one"] = sum(
        a["reconstruction"] == b["reconstruction"] for a, b in zip(rows["lockstep"], rows["one_by_one"]))
    write("serve_invert", {"n": args.n, "batch": args.batch, "threads": args.threads, "runtime": args.runtime,
                           "repeat": args.repeat, "table": table})


if __name__ == "__main__":
    main()
