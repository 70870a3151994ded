"""Sentence-embedding losses on raw tensors (vectors are L2-normalised unless said otherwise).

Shapes: B pairs, P embedding width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, label: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Hadsell et al. on cosine distance: positives pulled to 0, negatives pushed past ``margin``.

    a, b (B, P); label (B,) 1 for similar, 0 for dissimilar.
    """
    dist = 1.0 - F.cosine_similarity(a, b, dim=-1)  # (B,)
    label = label.to(dist.dtype)
    return 0.5 * (label * dist.pow(2) + (1 - label) * F.relu(margin - dist).pow(2)).mean()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """max(0, d(a, p) - d(a, n) + margin) with cosine distance."""
    d_pos = 1.0 - F.cosine_similarity(anchor, positive, dim=-1)  # (B,)
    d_neg = 1.0 - F.cosine_similarity(anchor, negative, dim=-1)  # (B,)
    return F.relu(d_pos - d_neg + margin).mean()


def multiple_negatives_ranking_loss(a: torch.Tensor, b: torch.Tensor, scale: float = 20.0, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row i of ``a`` must pick column i of ``b`` among all B.

    ``symmetric`` also makes each ``b`` pick its ``a`` and averages the two directions.
    """
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    return 0.5 * (loss + F.cross_entropy(logits.t(), target)) if symmetric else loss


def cosine_similarity_loss(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between cos(a, b) and a target similarity in [-1, 1] (B,)."""
    return F.mse_loss(F.cosine_similarity(a, b, dim=-1), target.to(a.dtype))
