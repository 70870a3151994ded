"""On-disk, memory-mapped cache of frozen-backbone features.

The backbone is frozen, so its features are a pure function of (backbone, pooling, prompt, max
length, text): computed once, stored, reused by every epoch and every later run. One folder per
backbone setting (``<root>/<cache_key>/``) holds:

- ``pooled.f32``: (N, H) float32 pooled features, row i for text i;
- ``tokens.f16`` + ``offsets.i64``: the token states of every text, (sum T_i, H) float16, text i
  at rows ``offsets[i]:offsets[i+1]`` (for order-aware heads);
- ``texts.jsonl``: the texts in row order; ``meta.json``: backbone identity and row counts.

Appends are crash-safe: data is appended and fsynced first, ``meta.json`` (the row count) is
replaced atomically last, and on open anything past the recorded count is ignored. Two processes
may share a cache (two runs on one backbone, a run and a bench): opening and every appended chunk
hold an exclusive ``flock`` on ``<dir>/.lock``, and an append first catches up with rows another
process added (texts it finds already there are not written twice).

Sharded extraction: ``ensure(texts, shard=True)`` in every process of a torch.distributed group
(``torchrun``, or :func:`build_features` with ``shards > 1``, which spawns the processes itself)
splits the missing texts over the processes and merges their features into the cache in the
order one process would have written them. The split is by backbone batch: the batches are the
ones a single process forms (chunks of ``CHUNK`` texts, length-sorted batches inside a chunk) and
process ``r`` computes batches ``r, r + N, ...``, so every text is encoded in the very same padded
batch as in a one-process run, and the cache files come out byte-identical (tested on CPU with the
same thread count; on GPU, kernels may differ in the last bits between runs anyway). Each process
writes its batches of a chunk to a staging folder; rank 0 merges a chunk once all are there.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from invemb.backbone.hf import HFBackbone
from invemb.io import atomic_write_json

CHUNK = 4096  # texts computed and persisted together (a killed extraction keeps the finished chunks)


class FeatureCache:
    def __init__(self, root: str | Path, backbone: HFBackbone, with_tokens: bool = True, chunk: int = CHUNK):
        self.backbone = backbone
        self.chunk = chunk
        self.with_tokens = with_tokens
        self.dir = Path(root) / backbone.cache_key()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hidden = backbone.hidden
        meta_path = self.dir / "meta.json"
        with self._locked():
            if meta_path.exists():
                meta = json.loads(meta_path.read_text())
                self.n, self.total_tokens = meta["n"], meta["total_tokens"]
                self.texts = self._read_texts()
            else:
                self.n, self.total_tokens, self.texts = 0, 0, []
                atomic_write_json(meta_path, self._meta())
            self.rows = {t: i for i, t in enumerate(self.texts)}
            self._truncate_to_meta()
        self._open()

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive lock on the cache folder (``fcntl.flock``; a no-op where there is none)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        with open(self.dir / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_texts(self) -> list[str]:
        path = self.dir / "texts.jsonl"  # absent in a cache opened but never appended to
        lines = path.read_text(encoding="utf-8").splitlines()[: self.n] if path.exists() else []
        return [json.loads(t) for t in lines]

    def _meta(self) -> dict:
        return {"backbone": self.backbone.identity(), "n": self.n, "total_tokens": self.total_tokens,
                "hidden": self.hidden}

    def _truncate_to_meta(self) -> None:
        """Drop bytes a killed append left past the recorded row count."""
        sizes = {"pooled.f32": self.n * self.hidden * 4, "tokens.f16": self.total_tokens * self.hidden * 2,
                 "offsets.i64": (self.n + 1) * 8}
        for name, size in sizes.items():
            f = self.dir / name
            if f.exists() and f.stat().st_size > size:
                os.truncate(f, size)
        lines = (self.dir / "texts.jsonl")
        if lines.exists():
            kept = lines.read_text(encoding="utf-8").splitlines()[: self.n]
            if len(kept) < len(lines.read_text(encoding="utf-8").splitlines()):
                lines.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        if not (self.dir / "offsets.i64").exists():
            np.zeros(1, dtype=np.int64).tofile(self.dir / "offsets.i64")

    def _open(self) -> None:
        self._pooled = np.memmap(self.dir / "pooled.f32", dtype=np.float32, mode="r", shape=(self.n, self.hidden)) if self.n else np.zeros((0, self.hidden), np.float32)
        self._offsets = np.fromfile(self.dir / "offsets.i64", dtype=np.int64, count=self.n + 1)
        if self.with_tokens and self.total_tokens:
            self._tokens = np.memmap(self.dir / "tokens.f16", dtype=np.float16, mode="r", shape=(self.total_tokens, self.hidden))
        else:
            self._tokens = np.zeros((0, self.hidden), np.float16)

    def __len__(self) -> int:
        return self.n

    def ensure(self, texts: list[str], batch_size: int = 128, progress: bool = True, shard: bool = False) -> np.ndarray:
        """Row indices of ``texts``, computing and appending the missing ones.

        ``shard=True`` inside a torch.distributed group: every process must call it with the same
        texts; each computes its share of the missing features and rank 0 writes them.
        """
        from invemb.training import distributed

        missing = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if shard and distributed.active():
            self._append_sharded(missing, batch_size, progress)
        elif missing:
            self._append(missing, batch_size, progress)
        return np.array([self.rows[t] for t in texts], dtype=np.int64)

    def _append(self, texts: list[str], batch_size: int, progress: bool) -> None:
        bar = _bar(len(texts), progress)
        for start in range(0, len(texts), self.chunk):
            part = texts[start:start + self.chunk]
            pooled, tokens = self.backbone.features(part, batch_size=batch_size, with_tokens=True)
            self._write_chunk(part, pooled.numpy(), [t.numpy() for t in tokens])
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        self._open()

    def _write_chunk(self, part: list[str], pooled: np.ndarray, tokens: list[np.ndarray]) -> None:
        """Append one chunk: data files first (fsynced), meta.json (the row count) last."""
        with self._locked():
            meta = json.loads((self.dir / "meta.json").read_text())
            if meta["n"] != self.n:  # another process appended since this one looked: catch up first
                self.n, self.total_tokens = meta["n"], meta["total_tokens"]
                self.texts = self._read_texts()
                self.rows = {t: i for i, t in enumerate(self.texts)}
            keep = [i for i, t in enumerate(part) if t not in self.rows]
            if len(keep) < len(part):
                part, pooled, tokens = [part[i] for i in keep], pooled[keep], [tokens[i] for i in keep]
            if part:
                self._append_files(part, pooled, tokens)

    def _append_files(self, part: list[str], pooled: np.ndarray, tokens: list[np.ndarray]) -> None:
        lengths = np.array([t.shape[0] for t in tokens], dtype=np.int64)
        with open(self.dir / "pooled.f32", "ab") as fh:
            pooled.astype(np.float32).tofile(fh)
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.dir / "tokens.f16", "ab") as fh:
            for t in tokens:
                t.astype(np.float16).tofile(fh)
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.dir / "offsets.i64", "ab") as fh:
            (self.total_tokens + np.cumsum(lengths)).astype(np.int64).tofile(fh)
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.dir / "texts.jsonl", "a", encoding="utf-8") as fh:
            for t in part:
                fh.write(json.dumps(t, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for t in part:
            self.rows[t] = self.n
            self.texts.append(t)
            self.n += 1
        self.total_tokens += int(lengths.sum())
        atomic_write_json(self.dir / "meta.json", self._meta())

    # -- sharded extraction --------------------------------------------------------------------
    def _append_sharded(self, texts: list[str], batch_size: int, progress: bool) -> None:
        import hashlib
        import shutil

        from invemb.training import distributed

        rank, world = distributed.dist_info()
        digest = hashlib.sha256(json.dumps([self.n, texts]).encode()).hexdigest()[:16]
        if len(set(distributed.all_gather_json(digest))) > 1:
            raise RuntimeError("sharded feature extraction: the processes disagree on the cache contents or the "
                               "texts; every process must call ensure(..., shard=True) with the same texts")
        if not texts:
            return
        staging = self.dir / f".shards-{digest}"
        bar = _bar(len(texts), progress and rank == 0)
        for c, start in enumerate(range(0, len(texts), self.chunk)):
            part = texts[start:start + self.chunk]
            batches = list(self.backbone.length_sorted_batches(part, batch_size))
            mine = [idx for k, idx in enumerate(batches) if k % world == rank]
            _compute_shard(self.backbone, part, mine, staging / f"chunk{c:06d}-rank{rank:04d}")
            distributed.barrier()
            if rank == 0:
                pooled = np.zeros((len(part), self.hidden), dtype=np.float32)
                tokens: list[np.ndarray] = [np.zeros((0, self.hidden), np.float16)] * len(part)
                for r in range(world):
                    _read_shard(staging / f"chunk{c:06d}-rank{r:04d}", self.hidden, pooled, tokens)
                self._write_chunk(part, pooled, tokens)
                if bar is not None:
                    bar.update(len(part))
        distributed.barrier()
        if bar is not None:
            bar.close()
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            self._open()
        else:
            self._reload()

    def _reload(self) -> None:
        """Re-read what another process appended (meta.json first: it only counts finished rows)."""
        meta = json.loads((self.dir / "meta.json").read_text())
        self.n, self.total_tokens = meta["n"], meta["total_tokens"]
        self.texts = self._read_texts()
        self.rows = {t: i for i, t in enumerate(self.texts)}
        self._open()

    # -- reads -------------------------------------------------------------------------------
    def lengths(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return self._offsets[rows + 1] - self._offsets[rows]

    def pooled(self, rows) -> torch.Tensor:
        """(len(rows), H) float32."""
        rows = np.asarray(rows, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self._pooled[rows]))

    def tokens(self, rows, max_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token states (len(rows), T, H) float32 and mask (len(rows), T) bool."""
        out, mask = _padded(self._tokens, self._offsets, rows, max_tokens, np.float32)  # (B, T, H), (B, T)
        return torch.from_numpy(out), torch.from_numpy(mask)

    def token_ids(self, rows, max_tokens: int = 0) -> torch.Tensor:
        """The backbone's input ids of ``rows``, padded like :meth:`tokens` (len(rows), T) long.

        Not stored: the texts are tokenised again on first use (the tokenizer is deterministic and
        fast; the whole cache takes seconds) and checked against the stored token counts."""
        if getattr(self, "_ids", None) is None or len(self._ids_offsets) - 1 < self.n:
            self._tokenize_all()
        return torch.from_numpy(_padded(self._ids, self._ids_offsets, rows, max_tokens, np.int64)[0])

    def _tokenize_all(self, batch: int = 4096) -> None:
        ids = [np.asarray(x, dtype=np.int32) for i in range(0, self.n, batch)
               for x in self.backbone.tokenize(self.texts[i:i + batch], padded=False)["input_ids"]]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        if self.with_tokens and not np.array_equal(lengths, self.lengths(np.arange(self.n))):
            raise RuntimeError(f"the tokenizer no longer gives the cached token counts in {self.dir}; delete it to rebuild")
        self._ids_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)


def _padded(flat: np.ndarray, offsets: np.ndarray, rows, max_tokens: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``offsets[r]:offsets[r+1]`` of a ragged ``flat`` array, each cut to ``max_tokens`` (0: no
    cut), zero-padded to the longest: (len(rows), T, *flat.shape[1:]) and the (len(rows), T) mask."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    if max_tokens:
        lengths = np.minimum(lengths, max_tokens)
    T = int(lengths.max()) if len(rows) else 0
    out = np.zeros((len(rows), T, *flat.shape[1:]), dtype=dtype)
    mask = np.zeros((len(rows), T), dtype=bool)
    for b, (s, n) in enumerate(zip(starts, lengths)):
        out[b, :n] = flat[s:s + n]
        mask[b, :n] = True
    return out, mask


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="backbone features", unit="text", dynamic_ncols=True, mininterval=0.5)


def _compute_shard(backbone: HFBackbone, part: list[str], batches: list[list[int]], path: Path) -> None:
    """Features of ``batches`` (index lists into ``part``, each run as one backbone batch, rows in
    the given order) written to ``path``: index.i64, pooled.f32, lengths.i64, tokens.f16."""
    path.mkdir(parents=True, exist_ok=True)
    index: list[int] = []
    with open(path / "pooled.f32", "wb") as fp, open(path / "tokens.f16", "wb") as ft:
        lengths = []
        for idx in batches:
            pooled, tokens = backbone.features([part[i] for i in idx], batch_size=len(idx), with_tokens=True)
            pooled.numpy().astype(np.float32).tofile(fp)
            for t in tokens:
                t.numpy().astype(np.float16).tofile(ft)
                lengths.append(t.shape[0])
            index += idx
    np.array(lengths, dtype=np.int64).tofile(path / "lengths.i64")
    np.array(index, dtype=np.int64).tofile(path / "index.i64")  # written last: marks the shard complete


def _read_shard(path: Path, hidden: int, pooled: np.ndarray, tokens: list[np.ndarray]) -> None:
    index = np.fromfile(path / "index.i64", dtype=np.int64)
    lengths = np.fromfile(path / "lengths.i64", dtype=np.int64)
    if len(index) != len(lengths):
        raise RuntimeError(f"{path}: incomplete feature shard")
    pooled[index] = np.fromfile(path / "pooled.f32", dtype=np.float32).reshape(len(index), hidden)
    flat = np.fromfile(path / "tokens.f16", dtype=np.float16).reshape(-1, hidden)
    ends = np.cumsum(lengths)
    for i, end, n in zip(index, ends, lengths):
        tokens[i] = flat[end - n:end]


def build_features(texts: list[str], root: str | Path, backbone_cfg=None, shards: int = 1, batch_size: int = 128,
                   with_tokens: bool = True, progress: bool = True, chunk: int = CHUNK) -> dict:
    """Fill the feature cache under ``root`` for ``texts`` with ``shards`` processes.

    ``shards == 1`` computes in this process. ``shards > 1`` spawns that many processes joined in a
    process group on localhost (torch.multiprocessing; gloo, or nccl with one GPU per process),
    each computing its share. Under ``torchrun`` every rank calls this and the ranks are the shards.
    Returns the cache folder and row counts.
    """
    from invemb.backbone.hf import BackboneConfig
    from invemb.encoder import check_texts
    from invemb.training import distributed
    from invemb.training.loop import resolve_device

    check_texts(texts)
    cfg = backbone_cfg or BackboneConfig()
    if shards < 1:
        raise ValueError(f"--shards must be at least 1, got {shards}")
    world = distributed.dist_info()[1]
    if world > 1:  # launched by torchrun: this process is one of the shards
        if shards != 1:
            raise ValueError("under torchrun the processes are the shards: leave --shards at 1")
        distributed.init_distributed(resolve_device(cfg.device))
        backbone = HFBackbone(cfg).to_device()
        with distributed.main_first():
            cache = FeatureCache(root, backbone, with_tokens=with_tokens, chunk=chunk)
        before = len(cache)
        cache.ensure(texts, batch_size=batch_size, progress=progress and distributed.is_main(), shard=True)
        shards = world
    elif shards == 1:
        cache = FeatureCache(root, HFBackbone(cfg).to_device(), with_tokens=with_tokens, chunk=chunk)
        before = len(cache)
        cache.ensure(texts, batch_size=batch_size, progress=progress)
    else:
        import socket

        import torch.multiprocessing as mp

        cache = FeatureCache(root, HFBackbone(cfg), with_tokens=with_tokens, chunk=chunk)
        before = len(cache)
        with socket.socket() as s:  # a free port for the process group's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        threads = max(1, torch.get_num_threads() // shards)
        mp.spawn(_shard_worker, args=(shards, port, threads, list(texts), str(root), cfg.to_dict(), batch_size,
                                      chunk, progress), nprocs=shards, join=True)
        cache._reload()
    rows = cache.ensure(texts, progress=False)
    return {"cache": str(cache.dir), "texts": len(texts), "unique": len(set(texts)), "rows": len(cache),
            "added": len(cache) - before, "max_row": int(rows.max()) if len(rows) else -1, "shards": shards}


def _shard_worker(rank: int, world: int, port: int, threads: int, texts: list[str], root: str, cfg: dict,
                  batch_size: int, chunk: int, progress: bool) -> None:
    from invemb.backbone.hf import BackboneConfig
    from invemb.training import distributed

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(threads)
    from invemb.training.loop import resolve_device

    bcfg = BackboneConfig.from_dict(cfg)
    distributed.init_distributed(resolve_device(bcfg.device))  # nccl and cuda:RANK on a multi-GPU machine
    try:
        backbone = HFBackbone(bcfg).to_device()
        with distributed.main_first():
            cache = FeatureCache(root, backbone, chunk=chunk)
        cache.ensure(texts, batch_size=batch_size, progress=progress, shard=True)
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


class LiveFeatures:
    """The cache's read interface, computed by running the backbone on every call.

    Used when backbone layers are unfrozen (cached features would be stale; gradients flow into
    the backbone when ``grad`` is on) and by the benchmark that measures what the cache saves.
    Pooled features and token states of the same rows come from one backbone pass.
    """

    def __init__(self, backbone: HFBackbone, texts: list[str] | None = None, grad: bool = False):
        self.backbone, self.grad = backbone, grad
        self.hidden = backbone.hidden
        self.texts = list(texts or [])
        self.rows = {t: i for i, t in enumerate(self.texts)}
        self._last_key, self._last = None, None

    def __len__(self) -> int:
        return len(self.texts)

    def ensure(self, texts: list[str], batch_size: int = 128, progress: bool = False, shard: bool = False) -> np.ndarray:
        for t in texts:
            if t not in self.rows:
                self.rows[t] = len(self.texts)
                self.texts.append(t)
        return np.array([self.rows[t] for t in texts], dtype=np.int64)

    def lengths(self, rows) -> np.ndarray:
        return np.array([len(self.texts[r]) for r in np.asarray(rows)], dtype=np.int64)

    def _run(self, rows):
        key = tuple(np.asarray(rows).tolist())
        if self._last_key != key or torch.is_grad_enabled() != self.grad:
            batch = self.backbone.tokenize([self.texts[r] for r in key])
            with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
                pooled, states, mask = self.backbone(batch)
            self._last_key, self._last = key, (pooled.float(), states.float(), mask.bool(), batch["input_ids"])
        return self._last

    def pooled(self, rows) -> torch.Tensor:
        return self._run(rows)[0]

    def tokens(self, rows, max_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        _, states, mask, _ = self._run(rows)
        return (states[:, :max_tokens], mask[:, :max_tokens]) if max_tokens else (states, mask)

    def token_ids(self, rows, max_tokens: int = 0) -> torch.Tensor:
        ids = self._run(rows)[3]
        return ids[:, :max_tokens] if max_tokens else ids
