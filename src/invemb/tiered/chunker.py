"""The bridge: chunk boundaries, and per-character states -> chunk vectors in E2's width.

Shape legend
    B windows, L character units, D E1 width (d_char), C chunks (padded), S E2 width (d_sem).
    ``unit_chunk`` is (B, L) long: the chunk index of each unit, -1 for spaces and padding.

Boundaries come from (a) fixed stride windows, (b) words and single punctuation / symbol
characters, or (c) a learned boundary head over H trained with BCE on the word boundaries of (b)
and annealed towards its own predictions. Within a chunk the units are pooled with learned
weights (a masked softmax of a linear score), a type embedding marks all-caps, numeric,
punctuation and emoji chunks, and Linear + LayerNorm maps into E2's width.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import NamedTuple

import torch
from torch import nn

from invemb.config import Config

MODES = ("stride", "words", "learned")
CHUNK_TYPES = ("word", "caps", "numeric", "punct", "emoji")
_WORD_OR_SYMBOL = re.compile(r"\w+|\S", re.UNICODE)


@dataclasses.dataclass
class ChunkerConfig(Config):
    mode: str = "words"  # "stride", "words" or "learned"
    stride: int = 6  # characters per chunk in "stride" mode
    threshold: float = 0.5  # start probability above which the learned head opens a chunk

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"chunker mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def chunk_type(chunk: str) -> int:
    """Index into :data:`CHUNK_TYPES` for one chunk's text."""
    cats = [unicodedata.category(ch) for ch in chunk]
    if all(c in ("So", "Sk", "Mn") or ch == "\u200d" for c, ch in zip(cats, chunk)):
        return CHUNK_TYPES.index("emoji")
    if all(c.startswith("P") or c.startswith("S") for c in cats):
        return CHUNK_TYPES.index("punct")
    if any(ch.isdigit() for ch in chunk):
        return CHUNK_TYPES.index("numeric")
    if len(chunk) > 1 and chunk.isupper():
        return CHUNK_TYPES.index("caps")
    return CHUNK_TYPES.index("word")


def word_starts(text: str) -> list[bool]:
    """Per character: does a word / symbol chunk start here? (the boundary labels of mode "words")"""
    starts = [False] * len(text)
    for m in _WORD_OR_SYMBOL.finditer(text):
        starts[m.start()] = True
    return starts


def stride_starts(text: str, stride: int) -> list[bool]:
    """A chunk starts every ``stride`` non-space characters and after every space."""
    starts, run = [], 0
    for i, ch in enumerate(text):
        starts.append(not ch.isspace() and (run % stride == 0 or text[i - 1].isspace()))
        run = 0 if ch.isspace() else run + 1
    return starts


def chunks_from_starts(text: str, starts: list[bool]) -> tuple[list[int], list[int]]:
    """Per-character chunk index (-1 on spaces) and per-chunk type, from start flags.

    A chunk always starts at the first character after a space, whatever the flags say.
    """
    char_chunk, types, spans = [], [], []
    current = -1
    for i, ch in enumerate(text):
        if ch.isspace():
            char_chunk.append(-1)
            continue
        if starts[i] or current < 0 or text[i - 1].isspace():
            current += 1
            spans.append([i, i + 1])
        spans[-1][1] = i + 1
        char_chunk.append(current)
    types = [chunk_type(text[a:b]) for a, b in spans]
    return char_chunk, types


def rule_starts(text: str, cfg: ChunkerConfig) -> list[bool]:
    """Start flags from the rules: stride windows, or words (also the learned head's labels)."""
    return stride_starts(text, cfg.stride) if cfg.mode == "stride" else word_starts(text)


class Chunks(NamedTuple):
    vectors: torch.Tensor  # (B, C, S) chunk vectors in E2's width
    mask: torch.Tensor  # (B, C) bool, True for real chunks
    raw: torch.Tensor  # (B, C, D) pooled E1 states before the projection (the probe's "E1 state")


def masked_pool_weights(scores: torch.Tensor, unit_chunk: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Softmax of ``scores`` (B, L) within each chunk -> weights (B, C, L); zero outside the chunk."""
    member = unit_chunk[:, None, :] == torch.arange(n_chunks, device=scores.device)[None, :, None]  # (B, C, L)
    logits = scores[:, None, :].masked_fill(~member, float("-inf"))  # (B, C, L)
    weights = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)  # empty (padding) chunks: all -inf rows -> zeros


class ChunkProjector(nn.Module):
    """Learned-weight masked mean pooling of H within chunks, type embedding, Linear + LayerNorm."""

    def __init__(self, d_char: int, d_sem: int):
        super().__init__()
        self.score = nn.Linear(d_char, 1)
        self.boundary = nn.Linear(d_char, 1)  # learned boundary head: logit that a chunk starts at a unit
        self.proj = nn.Linear(d_char, d_sem)
        self.type_embed = nn.Embedding(len(CHUNK_TYPES), d_sem)
        nn.init.zeros_(self.type_embed.weight)
        self.norm = nn.LayerNorm(d_sem)

    def boundary_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.boundary(states).squeeze(-1)  # (B, L)

    def forward(self, states: torch.Tensor, unit_chunk: torch.Tensor, chunk_types: torch.Tensor,
                start_gate: torch.Tensor | None = None) -> Chunks:
        """``start_gate`` (B, C): a straight-through factor (value 1) that carries the loss's gradient
        into the boundary head when chunks come from its own predictions."""
        n_chunks = chunk_types.shape[1]
        weights = masked_pool_weights(self.score(states).squeeze(-1), unit_chunk, n_chunks)  # (B, C, L)
        raw = weights @ states  # (B, C, D)
        vectors = self.norm(self.proj(raw) + self.type_embed(chunk_types.clamp(min=0)))  # (B, C, S)
        if start_gate is not None:
            vectors = vectors * start_gate[..., None]
        return Chunks(vectors, chunk_types >= 0, raw)
