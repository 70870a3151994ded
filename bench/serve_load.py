"""The HTTP service under load: a real `invemb serve` (uvicorn, subprocess) on loopback, 64 concurrent
async httpx clients posting OpenAI-style /v1/embeddings requests for 60 s, against calling the same
model's ``encode`` directly on the same texts in this run.

    .venv/bin/python bench/serve_load.py [--model backbone | RUN] [--duration 60] [--clients 64]
        [--texts-per-request 1:8] [--encoding-format base64] [--server-set max_wait_ms=5 ...]

Reports requests sent / answered / failed / lost (target: 0 failed, 0 lost), wrong vectors (each
returned row is checked against the direct encode of its text), p50 / p99 latency, served texts/s,
and the ratio served / direct texts/s (target >= 0.7; direct is timed before and after the load,
mean of the two, so drifting machine load hits both sides alike), and the server's resident memory
sampled every half second over the run (target: flat within 10%; first / last / max reported). The load
generator shares the machine's cores with the server: its CPU time and the load average are
reported beside the figures. Texts: Brown corpus sentences (`make data`) or ``--input F.jsonl``.
Writes bench/out/serve_load.json (and the server's log beside it).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import OUT, peak_rss_mb


def load_texts(path: str | None, n: int, seed: int) -> list[str]:
    if path:
        from invemb.io import read_jsonl_texts

        texts = [t for t in read_jsonl_texts(path) if t.strip()]
    else:
        from invemb.text.sources import brown_documents

        texts = [s for _, sents in brown_documents() for s in sents if 3 <= len(s.split()) <= 60]
    texts = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(texts)
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} distinct texts; need --pool {n}")
    return texts[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "invemb.cli", "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", args.server_log_level]
    for kv in args.server_set:
        cmd += ["--set", kv]
    env = {k: v for k, v in os.environ.items() if k != "INVEMB_API_KEY"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> dict:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}; see {OUT / 'serve_load.server.log'}")
        try:
            return httpx.get(url + "/healthz", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("server did not become ready")


def time_direct(encoder, texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    vecs = encoder.encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - t0), vecs.float().numpy()


class Tally:
    def __init__(self):
        self.sent = self.ok = self.failed = self.lost = self.texts = self.wrong = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.first_errors: list[str] = []  # when and what, for the first few

    def error(self, key: str, t: float, detail: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"t={t:.1f}s {key}: {detail[:200]}")


async def load(url: str, pool: list[str], ref: np.ndarray, args, seconds: float, pid: int | None) -> tuple[Tally, dict]:
    """``args.clients`` workers, each posting one request after another until ``seconds`` pass;
    requests in flight at the deadline are awaited and counted. Samples the server's RSS every --rss-every seconds."""
    import httpx
    import psutil

    lo, hi = (int(x) for x in args.texts_per_request.split(":")) if ":" in args.texts_per_request \
        else (int(args.texts_per_request),) * 2
    tally, rss = Tally(), []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    t_start = time.perf_counter()
    stop_at = t_start + seconds

    async def worker(seed: int, c: httpx.AsyncClient):
        rng = random.Random(seed)
        while time.perf_counter() < stop_at:
            idx = [rng.randrange(len(pool)) for _ in range(rng.randint(lo, hi))]
            body = {"input": [pool[i] for i in idx], "model": "bench", "encoding_format": args.encoding_format}
            tally.sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/embeddings", json=body)
            except httpx.HTTPError as err:  # no answer at all: lost
                tally.lost += 1
                tally.error(type(err).__name__, t0 - t_start, f"after {time.perf_counter() - t0:.1f}s: {err!r}")
                continue
            latency = time.perf_counter() - t0
            if r.status_code != 200:
                tally.failed += 1
                tally.error(str(r.status_code), t0 - t_start, r.text)
                continue
            rows = r.json()["data"]
            if args.encoding_format == "base64":
                got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in rows])
            else:
                got = np.asarray([d["embedding"] for d in rows], dtype=np.float32)
            # every row must be its own text's vector (no mix-up when requests share a call)
            if got.shape != (len(idx), ref.shape[1]):
                tally.wrong += len(idx)
            else:
                tally.wrong += int(((got * ref[idx]).sum(1) < 0.999).sum())
            tally.ok += 1
            tally.texts += len(idx)
            tally.latencies.append(latency)

    async def sample_rss():
        proc = psutil.Process(pid) if pid else None
        while proc is not None and time.perf_counter() < stop_at:
            rss.append((round(time.perf_counter() - t_start, 1), proc.memory_info().rss / 2**20))
            await asyncio.sleep(args.rss_every)

    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.timeout) as c:
        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(worker(args.seed * 1000 + i, c) for i in range(args.clients)))
        await sampler
    elapsed = time.perf_counter() - t_start
    return tally, {"elapsed_s": elapsed, "rss": rss, "client_cpu_s": sum(me.cpu_times()[:2]) - cpu0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="backbone", help="`backbone` (bundled MiniLM) or an EM / model run folder")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring (not counted)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--texts-per-request", default="1:8", help="N, or LO:HI drawn uniformly per request")
    ap.add_argument("--encoding-format", default="base64", choices=["base64", "float"],
                    help="base64 is what the openai client asks for by default")
    ap.add_argument("--pool", type=int, default=2000, help="distinct texts the requests draw from")
    ap.add_argument("--direct-after", type=int, default=1000, help="texts re-timed directly after the load")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="encode batch size of the direct peer (default: the server's encode_batch_size)")
    ap.add_argument("--input", default=None, help='JSONL of {"text": ...} (default: Brown sentences)')
    ap.add_argument("--server-set", action="append", default=[], help="ServeConfig override for the server (repeat)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout, seconds")
    ap.add_argument("--server-log-level", default="warning")
    ap.add_argument("--rss-every", type=float, default=0.5, help="seconds between server RSS samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import psutil
    import torch

    import invemb

    from invemb.config import parse_overrides
    from invemb.serve.app import ServeConfig

    if args.batch_size is None:  # the direct peer encodes in the same chunks as the server
        args.batch_size = ServeConfig().replace(**parse_overrides(args.server_set)).encode_batch_size
    OUT.mkdir(parents=True, exist_ok=True)
    pool = load_texts(args.input, args.pool, args.seed)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = OUT / "serve_load.server.log"
    proc = start_server(args, port, log)
    try:
        health = wait_ready(url, proc)
        server = psutil.Process(proc.pid)
        rss_loaded = server.memory_info().rss / 2**20
        encoder = invemb.load(args.model)  # the direct peer: same model, same threads, this process
        encoder.encode(pool[:32], batch_size=args.batch_size)
        load_before = os.getloadavg()[0]
        direct_before, ref = time_direct(encoder, pool, args.batch_size)
        print(f"direct encode before: {direct_before:.1f} texts/s over {len(pool)} texts", flush=True)
        if args.warmup > 0:
            asyncio.run(load(url, pool, ref, args, args.warmup, None))
        server_cpu0 = sum(server.cpu_times()[:2])
        load_start = os.getloadavg()[0]
        tally, run = asyncio.run(load(url, pool, ref, args, args.duration, proc.pid))
        server_cpu = sum(server.cpu_times()[:2]) - server_cpu0
        load_end = os.getloadavg()[0]
        stats = wait_ready(url, proc)["batching"]
        direct_after, _ = time_direct(encoder, pool[:args.direct_after], args.batch_size)
        print(f"direct encode after: {direct_after:.1f} texts/s over {args.direct_after} texts", flush=True)
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    lat = np.asarray(tally.latencies) * 1000
    served = tally.texts / run["elapsed_s"]
    direct = (direct_before + direct_after) / 2
    rss = [m for _, m in run["rss"]]
    # RSS swings with each encode call's activations; a leak shows as a rising envelope, so the max
    # and min of each 10 s window are reported beside first / last / max.
    windows = {}
    for t, m in run["rss"]:
        windows.setdefault(int(t // 10), []).append(m)
    envelope = [[round(min(v), 1), round(max(v), 1)] for _, v in sorted(windows.items())]
    payload = {
        "bench": "serve_load", "model": args.model, "dim": health["dim"], "clients": args.clients,
        "duration_s": round(run["elapsed_s"], 1), "texts_per_request": args.texts_per_request,
        "encoding_format": args.encoding_format, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "server_set": args.server_set, "direct_batch_size": args.batch_size,
        "requests": {"sent": tally.sent, "answered_ok": tally.ok, "failed": tally.failed, "lost": tally.lost,
                     "wrong_vectors": tally.wrong, "errors": tally.errors, "first_errors": tally.first_errors},
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1)} if len(lat) else {},
        "served_texts_per_s": round(served, 1),
        "direct_texts_per_s": {"before": round(direct_before, 1), "after": round(direct_after, 1), "mean": round(direct, 1)},
        "ratio_served_vs_direct": round(served / direct, 3),
        "server_batching": stats,
        "server_rss_mib": {"after_load": round(rss_loaded, 1), "first": round(rss[0], 1), "last": round(rss[-1], 1),
                           "max": round(max(rss), 1), "min": round(min(rss), 1),
                           "max_over_first": round(max(rss) / rss[0] - 1, 4), "last_over_first": round(rss[-1] / rss[0] - 1, 4),
                           "window_10s_min_max": envelope,
                           "last_window_max_over_first_window_max": round(envelope[-1][1] / envelope[0][1] - 1, 4),
                           # The floor between encode calls: it rises if memory leaks, while the peaks
                           # carry each call's transient activations (a sawtooth, not growth).
                           "window_floor_spread": round(max(lo for lo, _ in envelope) / min(lo for lo, _ in envelope) - 1, 4),
                           "samples": [round(m, 1) for m in rss]} if rss else {},
        "cpu_s": {"server": round(server_cpu, 1), "load_generator": round(run["client_cpu_s"], 1)},
        "load_avg_1m": {"before_direct": load_before, "start": load_start, "end": load_end},
        "bench_peak_rss_mb": round(peak_rss_mb(), 1),
    }
    path = OUT / "serve_load.json"
    path.write_text(json.dumps(payload, indent=2))
    r, L, m = payload["requests"], payload["latency_ms"], payload["server_rss_mib"]
    print(f"requests: {r['sent']} sent, {r['answered_ok']} ok, {r['failed']} failed, {r['lost']} lost, "
          f"{r['wrong_vectors']} wrong vectors")
    print(f"latency ms: p50 {L.get('p50')}  p99 {L.get('p99')}  max {L.get('max')}")
    print(f"throughput: served {served:.1f} texts/s, direct {direct:.1f} texts/s (before {direct_before:.1f}, "
          f"after {direct_after:.1f}) -> ratio {served / direct:.3f} (target >= 0.7); "
          f"mean batch {stats['mean_batch_texts']} texts")
    if m:
        print(f"server RSS MiB: first {m['first']}  last {m['last']}  max {m['max']}  min {m['min']}  (max/first - 1 = "
              f"{m['max_over_first']:+.1%}, target within 10%); per 10 s window min-max "
              + " ".join(f"{lo:.0f}-{hi:.0f}" for lo, hi in m["window_10s_min_max"])
              + f" (last/first window max - 1 = {m['last_window_max_over_first_window_max']:+.1%}; "
              f"window floors within {m['window_floor_spread']:.1%} of each other)")
    print(f"cpu s: server {payload['cpu_s']['server']}, load generator {payload['cpu_s']['load_generator']}; "
          f"load avg 1m {load_start:.2f} -> {load_end:.2f} on {os.cpu_count()} cores")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
