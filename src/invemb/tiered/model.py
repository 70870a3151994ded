"""The two-tier model (E1 -> bridge -> E2), batching of text into character units, and the Encoder.

Shape legend
    B windows, L character units (padded), D d_char, C chunks (padded), S d_sem, N texts.

A text is cleaned (:func:`~invemb.tiered.char_encoder.clean_text`) and cut at spaces into windows
of at most ``max_chars`` units; each window is one row. A text's vector is the chunk-count
weighted mean of its windows' vectors, so a very long document streams through in bounded memory.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from invemb.config import Config
from invemb.encoder import check_batch_size, check_texts, check_vectors
from invemb.tiered.char_encoder import N_SPECIAL, PAD_ID, CharEncoder, CharEncoderConfig, clean_text
from invemb.tiered.chunker import (ChunkerConfig, ChunkProjector, Chunks, chunks_from_spans, label_spans, rule_spans,
                                   spans_from_starts, starts_of)
from invemb.tiered.semantic_encoder import SemanticEncoder, SemanticEncoderConfig, SemanticOutput


@dataclasses.dataclass
class TieredModelConfig(Config):
    char: CharEncoderConfig = dataclasses.field(default_factory=CharEncoderConfig)
    chunker: ChunkerConfig = dataclasses.field(default_factory=ChunkerConfig)
    semantic: SemanticEncoderConfig = dataclasses.field(default_factory=SemanticEncoderConfig)
    teacher_dim: int = 0  # width of the word-distillation teacher (0: no teacher head)


class CharBatch(NamedTuple):
    ids: torch.Tensor  # (B, L) unit ids
    mask: torch.Tensor  # (B, L) bool
    unit_chunk: torch.Tensor  # (B, L) chunk index from the rule boundaries, -1 on spaces / padding
    chunk_types: torch.Tensor  # (B, C) type index, -1 for padding chunks
    starts: torch.Tensor  # (B, L) float: 1 where a rule chunk starts (the boundary head's labels)
    first_unit: torch.Tensor  # (B, L) bool: the unit opens its character (only there can a chunk start)
    unit_char: list[list[int]]  # per window: the character index of each unit
    texts: list[str]  # the cleaned windows


def _units_of(text: str, cfg: CharEncoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """Unit ids of a text and the character index of each unit (vectorised: this runs on every encode)."""
    if cfg.units == "codepoint":
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return N_SPECIAL + points % (cfg.vocab_size - N_SPECIAL), np.arange(len(text))
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + N_SPECIAL
    return ids, np.repeat(np.arange(len(text)), [len(ch.encode("utf-8")) for ch in text])


def windows(text: str, cfg: CharEncoderConfig) -> list[str]:
    """Cut a cleaned text at spaces into pieces of at most ``max_chars`` units (a longer word is cut hard)."""
    def size(s: str) -> int:
        return len(s.encode("utf-8")) if cfg.units == "bytes" else len(s)

    if size(text) <= cfg.max_chars:
        return [text]
    out, current = [], ""
    for word in text.split(" "):
        while size(word) > cfg.max_chars:
            cut = cfg.max_chars
            while size(word[:cut]) > cfg.max_chars:
                cut -= 1
            if current:
                out.append(current)
                current = ""
            out.append(word[:cut])
            word = word[cut:]
        joined = f"{current} {word}" if current else word
        if size(joined) <= cfg.max_chars:
            current = joined
        else:
            out.append(current)
            current = word
    if current:
        out.append(current)
    return [w for w in out if w]


def make_batch(texts: list[str], cfg: TieredModelConfig, starts: list[list[bool]] | None = None,
               labels: bool = True) -> CharBatch:
    """Unit ids and chunk assignment for cleaned windows (``starts``: per-character flags; default the
    rule's). ``labels=False`` (inference) leaves the boundary head's targets at zero: with BPE labels
    they cost a tokenizer pass per text."""
    per_text = []
    for k, text in enumerate(texts):
        rule = rule_spans(text, cfg.chunker)
        char_chunk, chunk_types = chunks_from_spans(text, rule if starts is None else spans_from_starts(text, starts[k]))
        ids, unit_char = _units_of(text, cfg.char)
        first = np.ones(len(ids), dtype=bool)
        first[1:] = unit_char[1:] != unit_char[:-1]
        if labels:
            flags = np.asarray(starts_of(text, rule if cfg.chunker.labels == "words" else label_spans(text, cfg.chunker)), dtype=bool)
            unit_labels = flags[unit_char] & first
        else:
            unit_labels = np.zeros(len(ids), dtype=bool)
        per_text.append((ids, np.asarray(char_chunk, dtype=np.int64)[unit_char], chunk_types, unit_labels, first, unit_char))
    b, length = len(texts), max(len(t[0]) for t in per_text)
    n_chunks = max(1, max(len(t[2]) for t in per_text))
    ids, unit_chunk = np.full((b, length), PAD_ID, dtype=np.int64), np.full((b, length), -1, dtype=np.int64)
    types = np.full((b, n_chunks), -1, dtype=np.int64)
    unit_starts, first = np.zeros((b, length), dtype=np.float32), np.zeros((b, length), dtype=bool)
    for k, (i, uc, ty, st, fi, _) in enumerate(per_text):
        ids[k, :len(i)], unit_chunk[k, :len(i)], types[k, :len(ty)], unit_starts[k, :len(i)], first[k, :len(i)] = i, uc, ty, st, fi
    id_t = torch.from_numpy(ids)  # (B, L)
    return CharBatch(ids=id_t, mask=id_t != PAD_ID, unit_chunk=torch.from_numpy(unit_chunk),
                     chunk_types=torch.from_numpy(types), starts=torch.from_numpy(unit_starts),
                     first_unit=torch.from_numpy(first), unit_char=[t[5].tolist() for t in per_text], texts=list(texts))


def batch_to(batch: CharBatch, device: torch.device) -> CharBatch:
    return batch._replace(**{f: getattr(batch, f).to(device) for f in ("ids", "mask", "unit_chunk", "chunk_types", "starts", "first_unit")})


class TieredOutput(NamedTuple):
    char_states: torch.Tensor  # (B, L, D) E1 states H
    boundary_logits: torch.Tensor  # (B, L)
    chunks: Chunks  # (B, C, S) vectors, (B, C) mask, (B, C, D) raw pooled E1 states
    unit_chunk: torch.Tensor  # (B, L) the chunk index of each unit actually used (-1: none)
    chunk_types: torch.Tensor  # (B, C) the types of the chunks actually used
    semantic: SemanticOutput | None  # None when E2 was not run


class TieredModel(nn.Module):
    def __init__(self, cfg: TieredModelConfig):
        super().__init__()
        self.cfg = cfg
        self.e1 = CharEncoder(cfg.char)
        self.bridge = ChunkProjector(cfg.char.dim, cfg.semantic.dim)
        self.e2 = SemanticEncoder(cfg.semantic)
        # Training-only heads (chunk-order and masked-chunk prediction); small, saved with the model.
        self.order_head = nn.Linear(cfg.semantic.dim, 1)
        self.chunk_head = nn.Linear(cfg.semantic.dim, cfg.semantic.dim)
        self.teacher_head = nn.Linear(cfg.semantic.dim, cfg.teacher_dim) if cfg.teacher_dim else None

    @property
    def dim(self) -> int:
        return self.cfg.semantic.dim

    def predicted_chunks(self, batch: CharBatch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chunk assignment from the boundary head's own predictions: (unit_chunk, chunk_types, start_gate)."""
        probs = torch.sigmoid(logits.float())  # (B, L)
        flags_units = (probs > self.cfg.chunker.threshold) & batch.first_unit
        starts = []
        for k, text in enumerate(batch.texts):
            flags = [False] * len(text)
            for j, c in enumerate(batch.unit_char[k]):
                flags[c] = flags[c] or bool(flags_units[k, j])
            starts.append(flags)
        pred = make_batch(batch.texts, self.cfg, starts, labels=False)
        unit_chunk, types = pred.unit_chunk.to(logits.device), pred.chunk_types.to(logits.device)
        # The gate of a chunk is its first unit's start probability, straight-through (value 1).
        opens = batch.first_unit & (unit_chunk >= 0) & torch.cat(
            [torch.ones_like(unit_chunk[:, :1], dtype=torch.bool), unit_chunk[:, 1:] != unit_chunk[:, :-1]], dim=1)
        gate = torch.ones(types.shape, device=logits.device, dtype=probs.dtype)
        b_idx, u_idx = opens.nonzero(as_tuple=True)
        p = probs[b_idx, u_idx]
        gate = gate.index_put((b_idx, unit_chunk[b_idx, u_idx]), p + (1 - p).detach())
        return unit_chunk, types, gate

    def forward(self, batch: CharBatch, predicted: bool = False, run_e2: bool = True, freeze_e1: bool = False,
                masked_chunks: torch.Tensor | None = None) -> TieredOutput:
        """``predicted``: chunk with the boundary head; ``freeze_e1``: no gradient reaches E1."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_e1):
            states = self.e1(batch.ids, batch.mask)  # (B, L, D)
        if freeze_e1:
            states = states.detach()
        logits = self.bridge.boundary_logits(states)
        if predicted:
            unit_chunk, types, gate = self.predicted_chunks(batch, logits)
        else:
            unit_chunk, types, gate = batch.unit_chunk, batch.chunk_types, None
        chunks = self.bridge(states, unit_chunk, types, gate)
        semantic = self.e2(chunks.vectors, chunks.mask, masked_chunks) if run_e2 else None
        return TieredOutput(states, logits, chunks, unit_chunk, types, semantic)


class TieredEncoder:
    """A trained tiered model as an :class:`invemb.Encoder`.

    ``cache_e1=True`` keeps each window's chunk vectors (E1 + bridge output, the expensive part)
    in an LRU cache of ``cache_size`` windows, so re-encoding a text runs only E2.
    """

    def __init__(self, model: TieredModel, cache_e1: bool = False, cache_size: int = 100_000, name: str = "tiered"):
        self.model, self.cfg, self.name = model, model.cfg, name
        self.dim = model.dim
        self.cache_e1, self.cache_size = cache_e1, cache_size
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_hits = 0

    def rows(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """The windows of every text and the text each window belongs to; refuses texts with nothing to
        encode (check_texts: what survives clean_text is never empty)."""
        rows, owner = [], []
        for i, text in enumerate(check_texts(texts)):
            for w in windows(clean_text(text, self.cfg.char.lowercase), self.cfg.char):
                rows.append(w)
                owner.append(i)
        return rows, owner

    @torch.no_grad()
    def chunk_vectors(self, windows_: list[str]) -> list[torch.Tensor]:
        """Per window its (C, S) chunk vectors from the E1 cache, running E1 + bridge on the missing ones."""
        device = next(self.model.parameters()).device
        todo = [w for w in dict.fromkeys(windows_) if w not in self.cache]
        if todo:
            batch = batch_to(make_batch(todo, self.cfg, labels=False), device)
            out = self.model(batch, predicted=self.cfg.chunker.mode == "learned", run_e2=False)
            for k, w in enumerate(todo):
                self.cache[w] = out.chunks.vectors[k, out.chunks.mask[k]].cpu()  # (C_k, S)
        self.cache_hits += len(windows_) - len(todo)
        vectors = [self.cache[w].to(device) for w in windows_]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return vectors

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not one string")
        check_batch_size(batch_size)
        if not texts:
            return torch.empty(0, self.dim)
        self.model.eval()
        rows, owner = self.rows(texts)
        if len(rows) > len(texts):
            warnings.warn(f"{len(rows) - len(texts)} extra window(s): long text(s) encoded in windows of "
                          f"{self.cfg.char.max_chars} {'UTF-8 bytes' if self.cfg.char.units == 'bytes' else 'characters'}"
                          " and averaged")
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))  # similar lengths share a batch: less padding
        row_vec = torch.zeros(len(rows), self.dim)
        row_weight = torch.zeros(len(rows))
        device = next(self.model.parameters()).device
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if self.cache_e1:
                vecs = self.chunk_vectors([rows[r] for r in idx])
                chunks = pad_sequence(vecs, batch_first=True)  # (B, C, S)
                lengths = torch.tensor([len(v) for v in vecs], device=chunks.device)
                mask = torch.arange(chunks.shape[1], device=chunks.device)[None] < lengths[:, None]  # (B, C)
                semantic = self.model.e2(chunks, mask)
            else:  # one pass, E1 -> bridge -> E2 on the padded batch: no per-window unpad and re-pad
                batch = batch_to(make_batch([rows[r] for r in idx], self.cfg, labels=False), device)
                out = self.model(batch, predicted=self.cfg.chunker.mode == "learned")
                semantic, lengths = out.semantic, out.chunks.mask.sum(1)
            row_vec[idx] = semantic.embedding.float().cpu()
            row_weight[idx] = lengths.float().cpu()
        out = torch.zeros(len(texts), self.dim).index_add_(0, torch.tensor(owner), row_vec * row_weight[:, None])
        out = torch.nn.functional.normalize(out, dim=-1)
        return check_vectors(out, len(texts), self.dim, who=self.name, task="encode")

    def save(self, path: str | Path) -> None:
        from invemb.tiered.train import save_model

        save_model(Path(path), self.model)
