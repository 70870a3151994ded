"""Unit indexes at scale: flat, HNSW and IVF-PQ over 1M MiniLM-sized (384-d) vectors, in one run.

    .venv/bin/python bench/index_scale.py [--n 1000000] [--queries 1000] [--threads 2]

Vectors. The real ones are the bundled all-MiniLM-L6-v2 vectors (mean pooled, L2-normalised) of
every unit of the built vocabulary (``data/built/vocab-*.json``, the newest), read from the feature
cache ``make demo`` leaves under ``data/built/features`` (read-only: this bench never appends to
a cache another process may be writing) and encoded for units the cache lacks. Without a built
vocabulary, the 30,000 most frequent English words (``wordfreq``) are encoded instead. They are
padded to ``--n`` with synthetic vectors, each a perturbation of a random real one:
``normalize(r_i + 0.35 r_j + 0.35 g)``, r_i and r_j real unit vectors and g a Gaussian vector of
norm ~1 (seeded), so the padding shares the real vectors' geometry (cosine to r_i about 0.9).

Queries: MiniLM vectors of held-out Wikipedia sentences (the controller's use: units near a
sentence vector). Ground truth: the exact top 10 of the flat index. For each kind: build time,
index size (FAISS's serialised bytes), resident-memory growth and peak during the build, batch
latency (all queries in one call) and single-query latency (p50 / p99 over 200 calls; 20 for flat), and
recall@10 against flat, over a sweep of efSearch (HNSW) and nprobe (IVF-PQ).

HNSW at 1M x 384 is the slow build: on 2 shared cores M=32 / efConstruction=200 (the library
defaults) takes well over the 10-minute budget, so this bench builds M=16, efConstruction=40
(``--hnsw-m``, ``--ef-construction``) and lets efSearch buy the recall back at query time.
IVF-PQ: 1024 lists, 48 sub-quantisers of 8 bits (48 bytes a vector), trained on 40,960 vectors;
its recall is bounded by the quantisation, so a second variant re-ranks 8 * k PQ candidates with
the exact vectors (``refine_k_factor``; memory of flat plus the codes).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so each build's peak is its own (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def read_cache(folder: Path) -> tuple[dict[str, int], np.ndarray]:
    """A feature cache's text -> row map and pooled features, read-only (no truncation, no append)."""
    meta = json.loads((folder / "meta.json").read_text())
    n, hidden = meta["n"], meta["hidden"]
    lines = (folder / "texts.jsonl").read_text(encoding="utf-8").splitlines()[:n] if n else []
    pooled = np.memmap(folder / "pooled.f32", dtype=np.float32, mode="r", shape=(n, hidden)) if n else np.zeros((0, hidden), np.float32)
    return {json.loads(t): i for i, t in enumerate(lines)}, pooled


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def real_vectors(backbone, max_encode: int) -> tuple[np.ndarray, dict]:
    from invemb.text.vocab import Vocab

    vocabs = sorted((ROOT / "data" / "built").glob("vocab*.json"), key=lambda p: p.stat().st_mtime)
    if vocabs:
        units, source = Vocab.load(vocabs[-1]).units, f"vocabulary {vocabs[-1].name}"
    else:
        import wordfreq

        units, source = [w for w in wordfreq.top_n_list("en", 40000) if w.strip()][:30000], "wordfreq top 30000 (no built vocabulary)"
    cache_dir = ROOT / "data" / "built" / "features" / backbone.cache_key()
    rows, pooled = read_cache(cache_dir) if (cache_dir / "meta.json").exists() else ({}, None)
    cached = [u for u in units if u in rows]
    missing = [u for u in units if u not in rows][:max_encode]
    parts = []
    if cached:
        parts.append(np.asarray(pooled[np.array([rows[u] for u in cached])], dtype=np.float32))
    if missing:
        log(f"encoding {len(missing)} units the cache lacks")
        parts.append(backbone.features(missing, batch_size=256).numpy())
    x = normalize(np.concatenate(parts))
    return x, {"source": source, "units_in_vocabulary": len(units), "from_cache": len(cached), "encoded": len(missing)}


def pad(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((max(n, len(real)), real.shape[1]), dtype=np.float32)
    out[: len(real)] = real
    d = real.shape[1]
    for start in range(len(real), n, 100_000):
        m = min(100_000, n - start)
        i, j = rng.integers(0, len(real), m), rng.integers(0, len(real), m)
        g = rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        out[start:start + m] = normalize(real[i] + 0.35 * real[j] + 0.35 * g)
    return out


def index_bytes(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        return Path(f.name).stat().st_size


def recall_at_10(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / 10 for a, e in zip(ids, exact)]))


def search_stats(index, q: np.ndarray, exact: np.ndarray | None, singles: int) -> dict:
    t = time.perf_counter()
    _, ids = index.search(q, 10)
    batch_s = time.perf_counter() - t
    lat = []
    for i in range(min(singles, len(q))):
        t = time.perf_counter()
        index.search(q[i:i + 1], 10)
        lat.append((time.perf_counter() - t) * 1000)
    out = {"batch_s": round(batch_s, 4), "batch_ms_per_query": round(batch_s * 1000 / len(q), 4),
           "batch_qps": round(len(q) / batch_s, 1), "single_p50_ms": round(float(np.percentile(lat, 50)), 3),
           "single_p99_ms": round(float(np.percentile(lat, 99)), 3)}
    if exact is not None:
        out["recall@10"] = round(recall_at_10(ids, exact), 4)
    return out, ids


def build(kind: str, x: np.ndarray, cfg) -> tuple[object, dict]:
    from invemb.index import UnitIndex

    gc.collect()
    has_peak = reset_peak()
    before = rss_mb()
    t = time.perf_counter()
    index = UnitIndex.build(x, _Names(len(x)), cfg).index  # the FAISS index; unit names are not the point here
    build_s = time.perf_counter() - t
    stats = {"build_s": round(build_s, 2), "index_mb": round(index_bytes(index) / 2**20, 1),
             "rss_growth_mb": round(rss_mb() - before, 1),
             "build_peak_rss_mb": round(hwm_mb(), 1) if has_peak else None, "config": cfg.to_dict()}
    log(f"{kind}: built in {build_s:.1f} s, {stats['index_mb']} MB")
    return index, stats


class _Names:
    """A stand-in for the unit-name list (1M strings would only add memory to every figure)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=200, help="single-query calls timed per setting")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-encode", type=int, default=20000, help="units the cache lacks that are encoded at most")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", default="16,32,64,128,256,512")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", default="8,16,32,64")
    ap.add_argument("--pq-m", type=int, default=48)
    ap.add_argument("--train-size", type=int, default=40960)
    ap.add_argument("--refine", type=int, default=8, help="k_factor of the ivfpq+refine variant (0: skip it)")
    args = ap.parse_args()

    import faiss
    import torch

    from invemb.backbone.hf import BackboneConfig, HFBackbone
    from invemb.eval.data import wiki_sentences
    from invemb.index import IndexConfig
    from invemb.index.faiss_index import set_nprobe

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    t_all = time.perf_counter()
    backbone = HFBackbone(BackboneConfig())  # the bundled all-MiniLM-L6-v2
    real, real_info = real_vectors(backbone, args.max_encode)
    log(f"{len(real)} real unit vectors ({real_info['source']})")
    texts = wiki_sentences(args.queries, seed=0, split="test")
    q = normalize(backbone.features(texts, batch_size=128).numpy()).astype(np.float32)
    del backbone
    x = pad(real, args.n)
    log(f"{len(x)} vectors ({len(x) - len(real)} synthetic), {len(q)} queries")
    results: dict[str, dict] = {}

    flat, st = build("flat", x, IndexConfig(kind="flat", threads=args.threads))
    s, exact = search_stats(flat, q, None, min(args.singles, 20))  # ~0.1-0.5 s a call at 1M: 20 calls
    results["flat"] = {**st, "search": {"exact": {**s, "recall@10": 1.0}}}
    del flat
    log(f"flat: {s}")

    ivf_cfg = IndexConfig(kind="ivfpq", ivf_nlist=args.nlist, pq_m=args.pq_m, pq_bits=8, ivf_train_size=args.train_size,
                          threads=args.threads)
    ivf, st = build("ivfpq", x, ivf_cfg)
    sweep = {}
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        ivf.nprobe = nprobe
        sweep[f"nprobe={nprobe}"], _ = search_stats(ivf, q, exact, args.singles)
        log(f"ivfpq nprobe={nprobe}: {sweep[f'nprobe={nprobe}']}")
    results["ivfpq"] = {**st, "search": sweep}
    del ivf

    if args.refine:
        ref, st = build("ivfpq_refine", x, ivf_cfg.replace(refine_k_factor=args.refine))
        sweep = {}
        for nprobe in (int(v) for v in args.nprobe.split(",")):
            set_nprobe(ref, nprobe)
            sweep[f"nprobe={nprobe}"], _ = search_stats(ref, q, exact, args.singles)
            log(f"ivfpq+refine nprobe={nprobe}: {sweep[f'nprobe={nprobe}']}")
        results["ivfpq_refine"] = {**st, "search": sweep}
        del ref

    hnsw_cfg = IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, hnsw_ef_construction=args.ef_construction, threads=args.threads)
    hnsw, st = build("hnsw", x, hnsw_cfg)
    sweep = {}
    for ef in (int(v) for v in args.ef_search.split(",")):
        hnsw.hnsw.efSearch = ef
        sweep[f"efSearch={ef}"], _ = search_stats(hnsw, q, exact, args.singles)
        log(f"hnsw efSearch={ef}: {sweep[f'efSearch={ef}']}")
    results["hnsw"] = {**st, "search": sweep}
    del hnsw

    write("index_scale", {
        "n": len(x), "dim": int(x.shape[1]), "real": len(real), "synthetic": len(x) - len(real), "real_vectors": real_info,
        "queries": len(q), "query_source": "MiniLM vectors of held-out (test split) Wikipedia sentences",
        "threads": args.threads, "vectors_mb": round(x.nbytes / 2**20, 1), "total_s": round(time.perf_counter() - t_all, 1),
        "indexes": results,
        "notes": ("index_mb: FAISS's serialised size; rss_growth_mb: resident memory added by the build (the vectors "
                  "themselves are held by the bench); build_peak_rss_mb: the process's peak during that build; "
                  "single-query latency uses the same FAISS threads as the batch"),
    })


if __name__ == "__main__":
    main()
