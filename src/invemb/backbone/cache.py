"""On-disk, memory-mapped cache of frozen-backbone features.

The backbone is frozen, so its features are a pure function of (backbone, pooling, prompt, max
length, text): computed once, stored, reused by every epoch and every later run. One folder per
backbone setting (``<root>/<cache_key>/``) holds:

- ``pooled.f32``: (N, H) float32 pooled features, row i for text i;
- ``tokens.f16`` + ``offsets.i64``: the token states of every text, (sum T_i, H) float16, text i
  at rows ``offsets[i]:offsets[i+1]`` (for order-aware heads);
- ``texts.jsonl``: the texts in row order; ``meta.json``: backbone identity and row counts.

Appends are crash-safe: data is appended and fsynced first, ``meta.json`` (the row count) is
replaced atomically last, and on open anything past the recorded count is ignored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from invemb.backbone.hf import HFBackbone
from invemb.io import atomic_write_json


class FeatureCache:
    def __init__(self, root: str | Path, backbone: HFBackbone, with_tokens: bool = True):
        self.backbone = backbone
        self.with_tokens = with_tokens
        self.dir = Path(root) / backbone.cache_key()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hidden = backbone.hidden
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            self.n, self.total_tokens = meta["n"], meta["total_tokens"]
            texts = (self.dir / "texts.jsonl").read_text(encoding="utf-8").splitlines()[: self.n]
            self.texts = [json.loads(t) for t in texts]
        else:
            self.n, self.total_tokens, self.texts = 0, 0, []
            atomic_write_json(meta_path, self._meta())
        self.rows = {t: i for i, t in enumerate(self.texts)}
        self._truncate_to_meta()
        self._open()

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

    def ensure(self, texts: list[str], batch_size: int = 128, progress: bool = True) -> np.ndarray:
        """Row indices of ``texts``, computing and appending the missing ones."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if missing:
            self._append(missing, batch_size, progress)
        return np.array([self.rows[t] for t in texts], dtype=np.int64)

    def _append(self, texts: list[str], batch_size: int, progress: bool) -> None:
        chunk = 4096  # compute and persist in chunks, so a killed extraction keeps what it did
        it = range(0, len(texts), chunk)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="backbone features", unit="text", dynamic_ncols=True, mininterval=0.5)
        for start in it:
            part = texts[start:start + chunk]
            pooled, tokens = self.backbone.features(part, batch_size=batch_size, with_tokens=True)
            lengths = np.array([t.shape[0] for t in tokens], dtype=np.int64)
            with open(self.dir / "pooled.f32", "ab") as fh:
                pooled.numpy().astype(np.float32).tofile(fh)
                fh.flush()
                os.fsync(fh.fileno())
            with open(self.dir / "tokens.f16", "ab") as fh:
                for t in tokens:
                    t.numpy().astype(np.float16).tofile(fh)
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
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
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
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self._offsets[rows], self._offsets[rows + 1]
        lengths = ends - starts
        if max_tokens:
            lengths = np.minimum(lengths, max_tokens)
        T = int(lengths.max()) if len(rows) else 0
        out = np.zeros((len(rows), T, self.hidden), dtype=np.float32)  # (B, T, H)
        mask = np.zeros((len(rows), T), dtype=bool)  # (B, T)
        for b, (s, n) in enumerate(zip(starts, lengths)):
            out[b, :n] = self._tokens[s:s + n]
            mask[b, :n] = True
        return torch.from_numpy(out), torch.from_numpy(mask)


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

    def ensure(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
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
            self._last_key, self._last = key, (pooled.float(), states.float(), mask.bool())
        return self._last

    def pooled(self, rows) -> torch.Tensor:
        return self._run(rows)[0]

    def tokens(self, rows, max_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        _, states, mask = self._run(rows)
        return (states[:, :max_tokens], mask[:, :max_tokens]) if max_tokens else (states, mask)
