"""Placer: where in the buffer does the chosen unit go (and is a placed unit misplaced)?

Shape legend: B (state, candidate) pairs, L buffer length (padded), S = L + 4 sequence length,
D encoder dim, M model width.

The sequence is ``[target, candidate, BOS, u_1 .. u_L, EOS, pad..]``: each token is a projected
vector (a unit's vector plus its local-chunk vector for buffer units) plus a type and a position
embedding. Slot i (0..L, "before u_{i+1}") is scored from the states of the two tokens around it
and the candidate's state. The move head scores "no move" (from the target token) against moving
each placed unit; the decoder turns a confident move into a remove-and-reinsert action.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from invemb.config import Config
from invemb.inversion.summary import BufferSummary

TARGET, CANDIDATE, BOS, UNIT, EOS, PAD = range(6)


@dataclasses.dataclass
class PlacerConfig(Config):
    width: int = 128
    layers: int = 2
    heads: int = 4
    max_len: int = 64  # longest buffer the position table covers
    dropout: float = 0.1

    presets = {"tiny": {"width": 32, "layers": 1, "heads": 2, "dropout": 0.0}, "default": {},
               "full": {"width": 256, "layers": 4, "heads": 8}}


class PlacerOutput(NamedTuple):
    slot_logits: torch.Tensor  # (B, L + 1), -inf beyond each buffer's own length
    move_logits: torch.Tensor  # (B, L + 1): index 0 = no move, j = move unit j - 1; -inf on padding


class Placer(nn.Module):
    def __init__(self, dim: int, cfg: PlacerConfig):
        super().__init__()
        self.dim, self.cfg = dim, cfg
        m = cfg.width
        self.proj = nn.Linear(2 * dim, m)  # (vector, chunk vector) -> width
        self.types = nn.Embedding(6, m)
        self.positions = nn.Embedding(cfg.max_len + 2, m)
        layer = nn.TransformerEncoderLayer(m, cfg.heads, 4 * m, cfg.dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(m)
        self.slot = nn.Sequential(nn.Linear(3 * m, m), nn.GELU(), nn.Linear(m, 1))
        self.move = nn.Linear(m, 1)

    def forward(self, s: BufferSummary, candidate: torch.Tensor) -> PlacerOutput:
        """``s`` summarises B buffers (one per pair), ``candidate`` (B, D) the units to place."""
        b, length, d = s.units.shape
        if length > self.cfg.max_len:
            raise ValueError(f"buffer of {length} units is longer than the Placer's max_len {self.cfg.max_len}")
        n = s.mask.sum(1)  # (B,)
        seq = length + 4
        dev = s.units.device
        vec = torch.zeros(b, seq, 2 * d, dtype=s.units.dtype, device=dev)  # (B, S, 2D)
        vec[:, 0, :d] = s.target
        vec[:, 0, d:] = s.residual
        vec[:, 1, :d] = candidate
        vec[:, 3:3 + length] = torch.cat([s.units, s.chunks], dim=-1)  # (B, L, 2D)
        arange = torch.arange(seq, device=dev)
        types = torch.full((b, seq), PAD, dtype=torch.long, device=dev)
        types[:, 0], types[:, 1], types[:, 2] = TARGET, CANDIDATE, BOS
        in_buffer = (arange >= 3) & (arange < 3 + n.unsqueeze(1))  # (B, S)
        types[in_buffer] = UNIT
        types[arange.unsqueeze(0) == 3 + n.unsqueeze(1)] = EOS
        pos = (arange - 2).clamp(0, self.cfg.max_len + 1).expand(b, seq)  # BOS 0, units 1..L, EOS L+1
        x = self.proj(vec) + self.types(types) + self.positions(pos)  # (B, S, M)
        h = self.norm(self.encoder(x, src_key_padding_mask=types == PAD))  # (B, S, M)
        left, right = h[:, 2:3 + length], h[:, 3:4 + length]  # (B, L + 1, M) tokens around each slot
        cand = h[:, 1:2].expand_as(left)  # (B, L + 1, M)
        slot_logits = self.slot(torch.cat([left, right, cand], dim=-1)).squeeze(-1)  # (B, L + 1)
        slots = torch.arange(length + 1, device=dev).unsqueeze(0)
        slot_logits = slot_logits.masked_fill(slots > n.unsqueeze(1), float("-inf"))
        unit_scores = self.move(h[:, 3:3 + length]).squeeze(-1).masked_fill(~s.mask, float("-inf"))  # (B, L)
        move_logits = torch.cat([self.move(h[:, 0]), unit_scores], dim=1)  # (B, L + 1)
        return PlacerOutput(slot_logits, move_logits)
