"""The bridge: chunk boundaries, and per-character states -> chunk vectors in E2's width.

Shape legend
    B windows, L character units, D E1 width (d_char), C chunks (padded), S E2 width (d_sem).
    ``unit_chunk`` is (B, L) long: the chunk index of each unit, -1 for spaces and padding.

Boundaries come from (a) fixed stride windows, (b) words and single punctuation / symbol
characters, or (c) a learned boundary head over H trained with BCE on the word boundaries of (b),
or on the piece boundaries of a byte-level BPE tokenizer (``labels="bpe"``), and annealed towards
its own predictions. Within a chunk the units are pooled with learned
weights (a masked softmax of a linear score), a type embedding marks all-caps, numeric,
punctuation and emoji chunks, and Linear + LayerNorm maps into E2's width.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from typing import NamedTuple

import regex
import torch
from torch import nn

from invemb.config import Config

MODES = ("stride", "words", "learned")
LABELS = ("words", "bpe")
CHUNK_TYPES = ("word", "caps", "numeric", "punct", "emoji")
# A word keeps its combining marks (Devanagari and Thai vowel signs, a decomposed accent), which
# \w alone does not match; any other non-space grapheme (an emoji with its skin tone, a flag, a ZWJ
# family) is one chunk. The `regex` module knows \p{M} and grapheme clusters (\X); `re` does not.
_WORD_OR_SYMBOL = regex.compile(r"[\w\p{M}]+|(?!\s)\X")
# The same chunks on ASCII text (no marks; the only multi-character grapheme, CR LF, is space), with
# `re`, about twice as fast: word spans run on every encode.
_ASCII_WORD_OR_SYMBOL = re.compile(r"\w+|\S")
_NON_SPACE = re.compile(r"\S+")


@dataclasses.dataclass
class ChunkerConfig(Config):
    mode: str = "words"  # "stride", "words" or "learned"
    stride: int = 6  # characters per chunk in "stride" mode
    threshold: float = 0.5  # start probability above which the learned head opens a chunk
    labels: str = "words"  # the boundary head's targets: "words" (rule b) or "bpe" (BPE piece starts)
    bpe_tokenizer: str = ""  # tokenizer.json for labels="bpe"; "" = train tiered trains one on its sentences
    bpe_vocab: int = 4000  # vocabulary of that tokenizer

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"chunker mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.labels not in LABELS:
            raise ValueError(f"chunker labels must be one of {', '.join(LABELS)}, got {self.labels!r}")


@functools.lru_cache(maxsize=1 << 16)  # called once per chunk on every encode; most chunks are frequent words
def chunk_type(chunk: str) -> int:
    """Index into :data:`CHUNK_TYPES` for one chunk's text."""
    if chunk.isalpha():  # the common case, without a per-character category lookup
        return CHUNK_TYPES.index("caps") if len(chunk) > 1 and chunk.isupper() else 0
    if chunk.isalnum():
        return CHUNK_TYPES.index("numeric") if any(ch.isdigit() for ch in chunk) else 0
    cats = [unicodedata.category(ch) for ch in chunk]
    if "So" in cats and all(c in ("So", "Sk", "Mn", "Me") or ch == "\u200d" for c, ch in zip(cats, chunk)):
        return CHUNK_TYPES.index("emoji")  # a lone combining mark (a stride chunk can cut one off) is no emoji
    if all(c.startswith("P") or c.startswith("S") for c in cats):
        return CHUNK_TYPES.index("punct")
    if any(ch.isdigit() for ch in chunk):
        return CHUNK_TYPES.index("numeric")
    if len(chunk) > 1 and chunk.isupper():
        return CHUNK_TYPES.index("caps")
    return 0


Span = tuple[int, int]


def word_spans(text: str) -> list[Span]:
    """Mode "words": runs of word characters with their combining marks, and every other non-space
    grapheme on its own."""
    pattern = _ASCII_WORD_OR_SYMBOL if text.isascii() else _WORD_OR_SYMBOL
    return [m.span() for m in pattern.finditer(text)]


def stride_spans(text: str, stride: int) -> list[Span]:
    """Mode "stride": every ``stride`` characters of each space-free run."""
    return [(i, min(i + stride, m.end())) for m in _NON_SPACE.finditer(text) for i in range(m.start(), m.end(), stride)]


def rule_spans(text: str, cfg: ChunkerConfig) -> list[Span]:
    """Chunks from the rules: stride windows, or words (also the learned head's labels)."""
    return stride_spans(text, cfg.stride) if cfg.mode == "stride" else word_spans(text)


@functools.lru_cache(maxsize=4)
def _bpe_tokenizer(path: str):
    from invemb.scratch.tokenizer import ScratchTokenizer

    return ScratchTokenizer.load(path).tok


def bpe_spans(text: str, tokenizer_path: str) -> list[Span]:
    """The pieces a byte-level BPE tokenizer (a scratch run's ``tokenizer.json``) cuts ``text``
    into, as character spans without their leading spaces."""
    if not tokenizer_path:
        raise ValueError("chunker.labels='bpe' needs chunker.bpe_tokenizer (a tokenizer.json)")
    spans: list[Span] = []
    for a, b in _bpe_tokenizer(tokenizer_path).encode(text, add_special_tokens=False).offsets:
        a = max(a, spans[-1][1] if spans else 0)  # a lone prefix-space piece overlaps the next one
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            spans.append((a, b))
    return spans


def label_spans(text: str, cfg: ChunkerConfig) -> list[Span]:
    """The spans whose starts the boundary head learns: BPE pieces, or the rule's chunks."""
    return bpe_spans(text, cfg.bpe_tokenizer) if cfg.labels == "bpe" else rule_spans(text, cfg)


def spans_from_starts(text: str, starts: list[bool]) -> list[Span]:
    """Chunks from per-character start flags; a chunk also starts after every space, and spaces end one."""
    spans: list[list[int]] = []
    for i, ch in enumerate(text):
        if ch.isspace():
            continue
        if starts[i] or not spans or text[i - 1].isspace():
            spans.append([i, i + 1])
        spans[-1][1] = i + 1
    return [(a, b) for a, b in spans]


def starts_of(text: str, spans: list[Span]) -> list[bool]:
    flags = [False] * len(text)
    for a, _ in spans:
        flags[a] = True
    return flags


def word_starts(text: str) -> list[bool]:
    return starts_of(text, word_spans(text))


def stride_starts(text: str, stride: int) -> list[bool]:
    return starts_of(text, stride_spans(text, stride))


def chunks_from_spans(text: str, spans: list[Span]) -> tuple[list[int], list[int]]:
    """Per-character chunk index (-1 outside every chunk) and per-chunk type."""
    char_chunk = [-1] * len(text)
    for c, (a, b) in enumerate(spans):
        char_chunk[a:b] = [c] * (b - a)
    return char_chunk, [chunk_type(text[a:b]) for a, b in spans]


def chunks_from_starts(text: str, starts: list[bool]) -> tuple[list[int], list[int]]:
    return chunks_from_spans(text, spans_from_starts(text, starts))


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
