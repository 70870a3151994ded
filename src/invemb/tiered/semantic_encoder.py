"""E2, the semantic encoder: a transformer over chunk vectors (never the raw text).

Shape legend
    B windows, C chunks (padded), S ``dim`` (d_sem).
    ``mask`` is (B, C) bool, True for real chunks.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config
from invemb.tiered.char_encoder import RotaryBlock


@dataclasses.dataclass
class SemanticEncoderConfig(Config):
    dim: int = 128
    depth: int = 2
    heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")


class SemanticOutput(NamedTuple):
    states: torch.Tensor  # (B, C, S) contextual chunk states
    pooled: torch.Tensor  # (B, S) masked mean of the states, before normalisation
    embedding: torch.Tensor  # (B, S) L2-normalised sentence vector


class SemanticEncoder(nn.Module):
    def __init__(self, cfg: SemanticEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.mask_vector = nn.Parameter(torch.zeros(cfg.dim))  # stands in for a masked chunk
        self.blocks = nn.ModuleList(RotaryBlock(cfg.dim, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, chunks: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor | None = None) -> SemanticOutput:
        """``masked`` (B, C) bool: chunks replaced by the mask vector (masked-chunk prediction)."""
        x = chunks if masked is None else torch.where(masked[..., None], self.mask_vector.to(chunks.dtype), chunks)
        for block in self.blocks:
            x = block(x, mask)
        states = self.norm(x)  # (B, C, S)
        weights = mask[..., None].to(states.dtype)  # (B, C, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, S)
        return SemanticOutput(states, pooled, F.normalize(pooled.float(), dim=-1))
