"""Selector: (target vector, buffer summary) -> intention vector for the unit index, and stop.

Shape legend: B states, D encoder dim, H hidden width, C candidate units, V all units.

The intention is ``normalise(target + MLP(features))``: at initialisation it is the target itself
(so an untrained Selector is the bag-of-units baseline), and training teaches the MLP to point at
the units the buffer still lacks, reading the residual between the target and the buffer's vector.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config
from invemb.inversion.summary import BufferSummary


@dataclasses.dataclass
class SelectorConfig(Config):
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.1
    temperature: float = 0.05  # InfoNCE temperature (cosine / temperature)

    presets = {"tiny": {"hidden": 32, "layers": 1, "dropout": 0.0}, "default": {}, "full": {"hidden": 1024, "layers": 3}}


class SelectorOutput(NamedTuple):
    intention: torch.Tensor  # (B, D), L2-normalised
    stop_logit: torch.Tensor  # (B,)


class Selector(nn.Module):
    def __init__(self, dim: int, cfg: SelectorConfig):
        super().__init__()
        self.dim, self.cfg = dim, cfg
        width = 4 * dim + 2  # target, buffer text, residual, unit mean, cos(target, text), buffer length
        blocks: list[nn.Module] = []
        for i in range(cfg.layers):
            blocks += [nn.Linear(width if i == 0 else cfg.hidden, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
        self.trunk = nn.Sequential(*blocks)
        self.to_intention = nn.Linear(cfg.hidden, dim)
        nn.init.zeros_(self.to_intention.weight)  # start as the bag-of-units query
        nn.init.zeros_(self.to_intention.bias)
        self.stop = nn.Linear(cfg.hidden, 1)

    def forward(self, s: BufferSummary) -> SelectorOutput:
        cos = (F.normalize(s.target, dim=-1) * s.text).sum(-1, keepdim=True)  # (B, 1); 0 for an empty buffer
        length = s.mask.sum(1, keepdim=True).float() / 32.0  # (B, 1)
        h = self.trunk(torch.cat([s.target, s.text, s.residual, s.unit_mean, cos, length], dim=-1))  # (B, H)
        intention = F.normalize(s.target + self.to_intention(h), dim=-1)
        return SelectorOutput(intention, self.stop(h).squeeze(-1))


def multi_positive_infonce(intention: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """Mean over rows with a positive of ``-log(sum_pos exp(s) / sum_all exp(s))``.

    intention (B, D), candidates (C, D), positive (B, C) bool: every unit still missing from the
    buffer is a positive, everything else (other states' units, hard negatives) a negative.
    """
    logits = intention @ candidates.T / temperature  # (B, C)
    rows = positive.any(1)
    if not rows.any():
        return logits.sum() * 0.0
    pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - pos)[rows].mean()
