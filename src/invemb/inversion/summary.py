"""The buffer summary the Selector and Placer read after every placement.

Shape legend: B hypotheses or training states, L buffer length (padded), D encoder dim.

Three levels: the unit vectors in buffer order, local chunks (each unit's vector averaged with its
neighbours inside a window, so a unit is seen with its context), and the encoder's vector of the
whole buffer text. The residual ``target - text`` is what the next selection should add; the
decoder gets the text vector for free from the cosine re-scoring of the previous step.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class BufferSummary(NamedTuple):
    target: torch.Tensor  # (B, D) the vector being inverted
    units: torch.Tensor  # (B, L, D) unit vectors in buffer order, zero padded
    mask: torch.Tensor  # (B, L) True where a unit is
    chunks: torch.Tensor  # (B, L, D) window means of the unit vectors
    text: torch.Tensor  # (B, D) encoder vector of the buffer text (zeros for an empty buffer)
    residual: torch.Tensor  # (B, D) target - text

    def select(self, rows: torch.Tensor) -> "BufferSummary":
        """The summaries of ``rows`` (R,) long, in that order (a row may repeat)."""
        return BufferSummary(*(x[rows] for x in self))

    @property
    def unit_mean(self) -> torch.Tensor:  # (B, D)
        m = self.mask.unsqueeze(-1).float()  # (B, L, 1)
        return (self.units * m).sum(1) / m.sum(1).clamp_min(1.0)


def summarise(target: torch.Tensor, buffers: list[list[int]], text: torch.Tensor, unit_vectors: torch.Tensor,
              chunk: int = 3) -> BufferSummary:
    """Summaries of ``buffers`` (lists of unit ids) for targets (B, D) and buffer-text vectors (B, D)."""
    b, d = target.shape
    length = max([len(x) for x in buffers] + [1])
    ids = torch.zeros(b, length, dtype=torch.long)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i, buf in enumerate(buffers):
        ids[i, : len(buf)] = torch.tensor(buf, dtype=torch.long)
        mask[i, : len(buf)] = True
    units = unit_vectors[ids] * mask.unsqueeze(-1)  # (B, L, D)
    # Window sums by a depthwise 1-D convolution over the buffer axis, divided by the window count.
    kernel = torch.ones(d, 1, chunk, dtype=units.dtype)
    sums = F.conv1d(units.transpose(1, 2), kernel, padding=chunk // 2, groups=d).transpose(1, 2)  # (B, L, D)
    counts = F.conv1d(mask.float().unsqueeze(1), torch.ones(1, 1, chunk), padding=chunk // 2).transpose(1, 2)  # (B, L, 1)
    chunks = sums[:, :length] / counts[:, :length].clamp_min(1.0) * mask.unsqueeze(-1)
    return BufferSummary(target, units, mask, chunks, text, target - text)
