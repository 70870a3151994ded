"""FAISS index over unit vectors, saved with its id <-> unit table.

Flat inner product by default (exact; vectors are L2-normalised so IP is cosine); HNSW or IVF-PQ
when asked or above ``auto_threshold`` units. Saved as ``index.faiss`` (FAISS's own format, no
pickle) + ``units.json`` + ``index.json`` (kind, parameters, dim, encoder fingerprint).

Which kind for how many units (``bench/index_scale.py`` measures all three on 1M vectors):

- ``flat``: exact, memory 4 * dim bytes a unit, search time linear in the units; fine to ~200k.
- ``hnsw``: graph over the full vectors (memory 4 * dim + about 8 * M bytes a unit), fast and
  high-recall search; the build is the expensive part (``hnsw_m``, ``hnsw_ef_construction``).
  ``hnsw_ef_search`` trades latency for recall at query time.
- ``ivfpq``: inverted lists of product-quantised codes (``pq_m`` bytes a unit at 8 bits), by far
  the smallest; recall is bounded by the quantisation (``ivf_nprobe`` lists are scanned). The
  coarse quantiser and the codebooks are trained on a seeded sample of ``ivf_train_size`` vectors.
  ``refine_k_factor`` > 0 re-ranks ``k * refine_k_factor`` PQ candidates with the exact vectors
  (FAISS's IndexRefineFlat): recall close to flat at IVF speed, memory of flat plus the codes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from invemb.config import Config
from invemb.io import atomic_save_file, atomic_write_json

KINDS = ("flat", "hnsw", "ivfpq", "auto")


@dataclasses.dataclass
class IndexConfig(Config):
    kind: str = "auto"  # flat | hnsw | ivfpq | auto (flat below auto_threshold, else HNSW)
    auto_threshold: int = 200_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0 = 4 * sqrt(N)
    ivf_nprobe: int = 16
    ivf_train_size: int = 0  # vectors the IVF / PQ training sees (seeded sample); 0 = min(N, 64 * nlist)
    pq_m: int = 0  # sub-quantisers (bytes per code at 8 bits); 0 = dim // 8 (must divide dim)
    pq_bits: int = 8
    refine_k_factor: int = 0  # ivfpq: re-rank k * this many PQ candidates with the exact vectors (0: off)
    threads: int = 0  # 0 = FAISS default (all cores)
    seed: int = 0  # the IVF training sample

    presets = {"tiny": {}, "default": {}, "full": {"kind": "hnsw"}}

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; choose from {', '.join(KINDS)}")
        low = [f"{k}={getattr(self, k)}" for k in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe")
               if getattr(self, k) < 1]
        low += [f"{k}={getattr(self, k)}" for k in ("ivf_nlist", "ivf_train_size", "pq_m", "refine_k_factor", "threads")
                if getattr(self, k) < 0]
        if not 1 <= self.pq_bits <= 16:
            low.append(f"pq_bits={self.pq_bits} (1 to 16)")
        if low:
            raise ValueError(f"bad index settings: {', '.join(low)}")

    def kind_for(self, n: int, d: int) -> str:
        """The kind of index this config builds over ``n`` vectors of width ``d``; settings that do
        not fit them raise here, so a caller can check before spending time encoding the vectors."""
        if n == 0:
            raise ValueError("no unit vectors to index")
        kind = self.kind if self.kind != "auto" else ("flat" if n < self.auto_threshold else "hnsw")
        if kind == "ivfpq":
            nlist, m = self.nlist_for(n), self.pq_m or max(1, d // 8)
            if d % m:
                raise ValueError(f"pq_m={m} must divide the dimension {d}")
            n_train = min(n, self.ivf_train_size or 64 * nlist)
            if n_train < max(nlist, 2 ** self.pq_bits):
                raise ValueError(f"ivfpq needs at least {max(nlist, 2 ** self.pq_bits)} training vectors (nlist={nlist}, "
                                 f"pq_bits={self.pq_bits}), got {n_train}: use --kind flat or hnsw for {n} units")
        return kind

    def nlist_for(self, n: int) -> int:
        return self.ivf_nlist or max(1, int(4 * np.sqrt(n)))


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("faiss is not installed: `pip install faiss-cpu`") from None
    return faiss


def set_nprobe(index, nprobe: int) -> None:
    """nprobe of an IVF index, also when it sits under a refinement stage."""
    faiss = _faiss()
    base = faiss.downcast_index(index.base_index) if hasattr(index, "base_index") else index
    base.nprobe = nprobe


def _named(units: list[str], scores: np.ndarray, ids: np.ndarray) -> list[list[tuple[str, float]]]:
    """Search results as (unit, score) lists per query, the empty places (-1) left out."""
    return [[(units[i], float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, ids)]


class UnitIndex:
    """Nearest units of query vectors."""

    def __init__(self, index, units: list[str], cfg: IndexConfig, meta: dict | None = None):
        self.index, self.units, self.cfg = index, list(units), cfg
        self.meta = meta or {}
        self.dim = index.d
        self._flat = None  # (N, D) torch view of a flat index's vectors, made on first search

    @classmethod
    def build(cls, vectors: torch.Tensor | np.ndarray, units: list[str], cfg: IndexConfig | None = None,
              meta: dict | None = None) -> "UnitIndex":
        faiss = _faiss()
        cfg = cfg or IndexConfig()
        x = np.ascontiguousarray(vectors.detach().cpu().numpy() if isinstance(vectors, torch.Tensor) else vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(units):
            raise ValueError(f"{x.shape[0] if x.ndim == 2 else '?'} vectors for {len(units)} units")
        if not np.isfinite(x).all():
            raise ValueError("unit vectors contain NaN or infinite values")
        if cfg.threads:
            faiss.omp_set_num_threads(cfg.threads)
        n, d = x.shape
        kind = cfg.kind_for(n, d)
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.hnsw_ef_construction
            index.hnsw.efSearch = cfg.hnsw_ef_search
        else:
            nlist, m = cfg.nlist_for(n), cfg.pq_m or max(1, d // 8)
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, cfg.pq_bits, faiss.METRIC_INNER_PRODUCT)
            n_train = min(n, cfg.ivf_train_size or 64 * nlist)
            sample = x if n_train >= n else x[np.sort(np.random.default_rng(cfg.seed).choice(n, n_train, replace=False))]
            index.train(sample)
            index.nprobe = cfg.ivf_nprobe
            if cfg.refine_k_factor:
                index = faiss.IndexRefineFlat(index)
                index.k_factor = cfg.refine_k_factor
        index.add(x)
        return cls(index, units, cfg.replace(kind=kind), meta)

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), ids (Q, k)); ids are positions in ``units``."""
        q = np.ascontiguousarray(queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {q.shape[1]}, the index {self.dim}")
        if not np.isfinite(q).all():
            raise ValueError("query vectors contain NaN or infinite values")
        k = min(k, len(self.units))
        if self.cfg.kind == "flat":
            return self._flat_search(q, k)
        return self.index.search(q, k)

    def _flat_search(self, q: np.ndarray, k: int, max_scores: int = 1 << 25) -> tuple[np.ndarray, np.ndarray]:
        """Exact search as (N, D) @ (D, Q) products over FAISS's own copy of the vectors (no second
        copy): it reads the vectors once for all queries, where FAISS's flat scan below 20 queries
        reads them once per query; on 2 cores, 84k x 448: 10 / 36 ms at 3 / 24 queries against 21 / 126.
        Queries go in chunks of at most ``max_scores`` scores (128 MB): all 32k training targets
        at once would hold a 10 GB score matrix."""
        if self._flat is None:
            faiss = _faiss()
            xb = faiss.rev_swig_ptr(self.index.get_xb(), self.index.ntotal * self.dim)
            self._flat = torch.from_numpy(np.asarray(xb).reshape(-1, self.dim))  # (N, D), a view
        queries = torch.from_numpy(q)
        step = max(1, max_scores // len(self._flat))
        scores = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        for i in range(0, len(q), step):
            top = torch.topk(self._flat @ queries[i:i + step].T, k, dim=0)  # (k, chunk)
            scores[i:i + step], ids[i:i + step] = top.values.T.numpy(), top.indices.T.numpy()
        return scores, ids

    def neighbours(self, queries, k: int = 10) -> list[list[tuple[str, float]]]:
        return _named(self.units, *self.search(queries, k))

    def save(self, path: str | Path) -> None:
        faiss = _faiss()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_save_file(path / "index.faiss", lambda p: faiss.write_index(self.index, p))
        atomic_write_json(path / "units.json", self.units)
        atomic_write_json(path / "index.json", {"config": self.cfg.to_dict(), "dim": self.dim, "size": len(self.units), **self.meta})

    @classmethod
    def load(cls, path: str | Path) -> "UnitIndex":
        faiss = _faiss()
        path = Path(path)
        if not (path / "index.faiss").exists():
            raise FileNotFoundError(f"{path}: no unit index (run `invemb index build --model RUN`)")
        info = json.loads((path / "index.json").read_text())
        cfg = IndexConfig.from_dict(info.pop("config"))
        index = faiss.read_index(str(path / "index.faiss"))
        if cfg.kind == "hnsw":
            index.hnsw.efSearch = cfg.hnsw_ef_search
        elif cfg.kind == "ivfpq":
            set_nprobe(index, cfg.ivf_nprobe)
            if cfg.refine_k_factor:
                index.k_factor = cfg.refine_k_factor
        units = json.loads((path / "units.json").read_text(encoding="utf-8"))
        info.pop("dim", None)
        info.pop("size", None)
        return cls(index, units, cfg, info)


class JoinedIndex:
    """Two unit indexes searched as one, the second's ids after the first's: a controller's trained units,
    searched exactly, and the extra units added after training (:mod:`invemb.inversion.extra`), searched by
    their own (HNSW) index. A query's k best are the best k of both lists by score."""

    def __init__(self, first: UnitIndex, second: UnitIndex):
        if first.dim != second.dim:
            raise ValueError(f"cannot join indexes of dimension {first.dim} and {second.dim}")
        self.first, self.second, self.dim = first, second, first.dim
        self.units = first.units + second.units

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), ids (Q, k)); ids are positions in ``units`` (-1 and -inf where fewer were found)."""
        k = min(k, len(self.units))
        s1, i1 = self.first.search(queries, k)
        s2, i2 = self.second.search(queries, k)
        i2 = np.where(i2 >= 0, i2 + len(self.first.units), -1)
        scores = np.concatenate([np.where(i1 >= 0, s1, -np.inf), np.where(i2 >= 0, s2, -np.inf)], axis=1)
        ids = np.concatenate([i1, i2], axis=1)  # (Q, k1 + k2)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: the trained unit first
        return np.take_along_axis(scores, best, 1), np.take_along_axis(ids, best, 1)

    def neighbours(self, queries, k: int = 10) -> list[list[tuple[str, float]]]:
        return _named(self.units, *self.search(queries, k))
