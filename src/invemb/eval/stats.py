"""Embedding statistics: how the vectors fill the space.

- ``anisotropy``: mean cosine between distinct texts (0 for an isotropic cloud; near 1 when all
  vectors crowd into a narrow cone);
- ``effective_rank``: exp(entropy) of the normalised eigenvalues of the covariance (Roy &
  Vetterli 2007): how many directions the variance really uses;
- ``variance_top1`` / ``variance_top10``: share of variance on the leading principal axes;
  ``dims_90``: how many axes hold 90% of it (the whole spectrum is in :meth:`spectrum`);
- norm statistics of the raw output (the Encoder contract says 1.0; this checks it).
"""
from __future__ import annotations

import torch

from invemb.eval.base import encode_checked


def variance_spectrum(vectors: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the covariance, largest first, as shares of the total variance."""
    centred = vectors.double() - vectors.double().mean(0, keepdim=True)  # (N, D)
    singular = torch.linalg.svdvals(centred)
    eig = singular**2
    return eig / eig.sum()


def effective_rank(vectors: torch.Tensor) -> float:
    p = variance_spectrum(vectors)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def anisotropy(vectors: torch.Tensor) -> float:
    """Mean cosine over distinct pairs."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)
    n = len(unit)
    total = unit.sum(0)
    return float((total @ total - n) / (n * (n - 1)))  # sum over i != j of cos(i, j)


class EmbeddingStatsEvaluator:
    primary_metric = "effective_rank"

    def __init__(self, texts: list[str] | None = None, loader=None, batch_size: int = 64, name: str = "stats"):
        if texts is None and loader is None:
            raise ValueError("EmbeddingStatsEvaluator needs texts or a loader")
        self._texts, self.loader, self.batch_size, self.name = texts, loader, batch_size, name

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = self.loader()
        return self._texts

    def spectrum(self, encoder) -> torch.Tensor:
        return variance_spectrum(encode_checked(encoder, self.texts, task=self.name, batch_size=self.batch_size))

    def __call__(self, encoder) -> dict[str, float]:
        if len(self.texts) < 3:
            raise ValueError(f"{self.name}: need at least 3 texts, got {len(self.texts)}")
        v = encode_checked(encoder, self.texts, task=self.name, batch_size=self.batch_size)
        spectrum = variance_spectrum(v)
        norms = v.double().norm(dim=-1)
        return {"effective_rank": effective_rank(v), "anisotropy": anisotropy(v),
                "variance_top1": float(spectrum[0]), "variance_top10": float(spectrum[:10].sum()),
                "dims_90": float(int((spectrum.cumsum(0) < 0.9).sum()) + 1),
                "norm_mean": float(norms.mean()), "norm_std": float(norms.std()),
                "norm_min": float(norms.min()), "norm_max": float(norms.max()), "n_texts": float(len(v))}
