"""E1, the character encoder: text -> character units -> per-character states H.

Shape legend
    B texts (windows) in a batch, L character units (padded), D ``dim`` (d_char),
    NH attention heads, HD head width (D / NH), V unit vocabulary.
    ``mask`` is (B, L) bool, True for real units.

Units are Unicode code points (hashed into ``vocab_size`` buckets, so every script and emoji gets
an id and nothing is dropped) or UTF-8 bytes. Control and format characters are removed, all
whitespace becomes one space, and lower-casing is optional (:func:`clean_text`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import unicodedata

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config

PAD_ID, MASK_ID, N_SPECIAL = 0, 1, 2
_WS = re.compile(r"\s+")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")  # ASCII Cc that str.isspace() does not keep
_KEEP_FORMAT = {"\u200d"}  # zero-width joiner: part of emoji sequences (family, flags of people)


@dataclasses.dataclass
class CharEncoderConfig(Config):
    # "codepoint" (ord % buckets: beyond the first ~2k code points unrelated characters share a unit,
    # so two CJK words can collide) or "bytes" (UTF-8, vocab 258: longer inputs, no collisions)
    units: str = "codepoint"
    vocab_size: int = 2048
    lowercase: bool = False
    max_chars: int = 256  # units per window; longer texts are streamed window by window
    kind: str = "transformer"  # "transformer" (rotary attention) or "conv" (depthwise-separable stack)
    dim: int = 64
    depth: int = 2
    heads: int = 4
    ffn_mult: int = 2
    conv_kernel: int = 5
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.units not in ("codepoint", "bytes"):
            raise ValueError(f"units must be codepoint or bytes, got {self.units!r}")
        if self.kind not in ("transformer", "conv"):
            raise ValueError(f"E1 kind must be transformer or conv, got {self.kind!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.units == "bytes":
            self.vocab_size = 256 + N_SPECIAL


def clean_text(text: str, lowercase: bool = False) -> str:
    """NFC, control/format characters removed (whitespace kept as one space), optional lower-case."""
    if text.isascii():
        # ASCII is already NFC and has no format characters; its only controls to drop are the
        # non-whitespace ones. One regex instead of a Python-level check of every character.
        text = _ASCII_CONTROL.sub("", text)
    else:
        text = unicodedata.normalize("NFC", text)
        text = "".join(ch for ch in text if ch.isspace() or ch in _KEEP_FORMAT
                       or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    text = _WS.sub(" ", text).strip()
    return text.lower() if lowercase else text


def char_units(ch: str, cfg: CharEncoderConfig) -> list[int]:
    """The unit ids of one character: one hashed code point, or its UTF-8 bytes."""
    if cfg.units == "bytes":
        return [N_SPECIAL + b for b in ch.encode("utf-8")]
    return [N_SPECIAL + ord(ch) % (cfg.vocab_size - N_SPECIAL)]


@functools.lru_cache(maxsize=128)
def _rotary_phases(length: int, hd: int, device: torch.device) -> torch.Tensor:
    """exp(i * position * frequency), (L, HD/2) complex64; cached, as every batch of a length reuses it."""
    with torch.inference_mode(False):  # a normal tensor, usable by autograd even if first built under inference
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None]  # (L, HD/2)
        return torch.polar(torch.ones_like(angles), angles)


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on (B, NH, L, HD), returned in float32; HD must be even.

    Each pair of channels (2j, 2j+1) is one complex number rotated by position * frequency_j, so
    the rotation is a single complex multiply: (x1 + i x2)(cos + i sin).
    """
    *lead, length, hd = x.shape
    pairs = torch.view_as_complex(x.float().reshape(*lead, length, hd // 2, 2))  # (B, NH, L, HD/2)
    return torch.view_as_real(pairs * _rotary_phases(length, hd, x.device)).flatten(-2)  # (B, NH, L, HD)


class RotaryBlock(nn.Module):
    """Pre-norm transformer block with rotary self-attention (shared by E1 and E2)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, NH, L, HD)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, L): padding is never attended to
        # Attention in float32 also in a bfloat16 model (runtime "bf16"): rotary works in float32, and
        # on CPU the float32 attention kernel is the faster one at these lengths.
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v.float(), attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0).to(x.dtype)
        x = x + F.dropout(self.out(y.transpose(1, 2).reshape(b, length, d)), self.dropout, self.training)  # (B, L, D)
        return x + self.ffn(self.norm2(x))


class ConvBlock(nn.Module):
    """Depthwise-separable convolution block: depthwise conv over L, pointwise MLP, residual."""

    def __init__(self, dim: int, kernel: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.pointwise = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) * mask[..., None]  # padding contributes nothing to its neighbours
        # The depthwise conv as a 2-D conv on a (B, D, 1, L) channels-last view of h: the same
        # memory as (B, L, D), so no transposed copies on the way in or out, and oneDNN's
        # channels-last depthwise kernel (~10x faster on CPU than Conv1d on a transposed input).
        k = self.depthwise.kernel_size[0]
        h = F.conv2d(h.unsqueeze(1).permute(0, 3, 1, 2), self.depthwise.weight.unsqueeze(2), self.depthwise.bias,
                     padding=(0, k // 2), groups=self.depthwise.groups)  # (B, D, 1, L), channels-last
        return x + self.pointwise(h.permute(0, 2, 3, 1).squeeze(1))  # (B, L, D)


class CharEncoder(nn.Module):
    """E1: unit ids (B, L) -> states H (B, L, D); ``mlm_logits`` predicts masked units (tied embedding)."""

    def __init__(self, cfg: CharEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(cfg.dim))
        if cfg.kind == "transformer":
            self.blocks = nn.ModuleList(RotaryBlock(cfg.dim, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.depth))
        else:
            self.blocks = nn.ModuleList(ConvBlock(cfg.dim, cfg.conv_kernel, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def mlm_logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.embed.weight.T  # (B, L, V)
