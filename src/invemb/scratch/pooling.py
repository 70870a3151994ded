"""Sentence pooling over token states: mean, max, CLS, mean+max, attention; L2-normalised.

Shape legend: B batch, T tokens, D model width, P pooled width (D, or 2D for mean_max).
The mask is (B, T) bool, True for real tokens; padding never contributes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("mean", "max", "cls", "mean_max", "attention")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)


def masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)  # (B, D)


class Pooling(nn.Module):
    def __init__(self, dim: int, mode: str = "mean", normalize: bool = True):
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")
        self.mode, self.normalize = mode, normalize
        self.out_dim = 2 * dim if mode == "mean_max" else dim
        # Attention pooling: one learned query scores every token.
        self.query = nn.Parameter(torch.zeros(dim)) if mode == "attention" else None

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, D), (B, T) -> (B, P)
        if self.mode == "mean":
            pooled = masked_mean(hidden, mask)
        elif self.mode == "max":
            pooled = masked_max(hidden, mask)
        elif self.mode == "cls":
            pooled = hidden[:, 0]  # (B, D): the tokenizer puts [CLS] first
        elif self.mode == "mean_max":
            pooled = torch.cat([masked_mean(hidden, mask), masked_max(hidden, mask)], dim=-1)  # (B, 2D)
        else:
            scores = (hidden @ self.query).masked_fill(~mask, float("-inf"))  # (B, T)
            pooled = torch.einsum("bt,btd->bd", scores.softmax(-1), hidden)  # (B, D)
        # in float32 also in a bfloat16 model: vectors of unit norm to float precision
        return F.normalize(pooled.float(), dim=-1) if self.normalize else pooled
