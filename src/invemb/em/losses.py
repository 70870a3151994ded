"""EM objectives, each a plain function of tensors (testable on small inputs).

Shapes: B anchors, D embed dim, H backbone hidden, Q queue size, K candidate units.
All embeddings are L2-normalised, so dot products are cosines.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_negative_infonce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float, top_k: int = 0,
                          extra_negatives: torch.Tensor | None = None, extra_mask: torch.Tensor | None = None,
                          queue: torch.Tensor | None = None, queue_mask: torch.Tensor | None = None,
                          extra_log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch InfoNCE: row i's positive is ``positives[i]``; negatives are the other rows'
    positives, reduced to the ``top_k`` hardest (0 = all), plus optional per-row extra negatives
    (B, E, D) with a validity mask (B, E), plus a queue (Q, D) of older vectors (``queue_mask``
    (B, Q) marks entries that must not count as negatives, e.g. the anchor's own item).
    ``extra_log_weight`` (B, E) adds log w to an extra negative's logit: it counts as w negatives
    in the partition function, so its gradient is w times as strong."""
    B = anchors.shape[0]
    sim = anchors @ positives.T / temperature  # (B, B)
    pos = sim.diagonal()  # (B,)
    eye = torch.eye(B, dtype=torch.bool, device=sim.device)
    neg = sim.masked_fill(eye, float("-inf"))  # (B, B)
    if top_k and top_k < B - 1:
        neg = neg.topk(top_k, dim=1).values  # (B, k)
    cols = [pos.unsqueeze(1), neg]
    if extra_negatives is not None:
        ex = torch.einsum("bd,bed->be", anchors, extra_negatives) / temperature  # (B, E)
        if extra_log_weight is not None:
            ex = ex + extra_log_weight
        if extra_mask is not None:
            ex = ex.masked_fill(~extra_mask, float("-inf"))
        cols.append(ex)
    if queue is not None and queue.numel():
        q = anchors @ queue.T / temperature  # (B, Q)
        if queue_mask is not None:
            q = q.masked_fill(queue_mask, float("-inf"))
        cols.append(q)
    logits = torch.cat(cols, dim=1)
    return F.cross_entropy(logits, torch.zeros(B, dtype=torch.long, device=logits.device))


def antonym_negatives(anchors: torch.Tensor, candidates: torch.Tensor, antonym_index: torch.Tensor,
                      top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row extra negative: the row's antonym's vector where it has one (``antonym_index`` >= 0
    into ``candidates``), otherwise the next-hardest in-batch negative after the ``top_k`` used by
    the contrastive term. ``candidates`` starts with the B in-batch positives (the contrastive
    term's negatives); rows after them (the pool's synonyms, antonyms, sentence units) are only
    there for ``antonym_index`` to point at. Returns (B, 1, D) vectors and a (B, 1) validity mask."""
    B = anchors.shape[0]
    has = antonym_index >= 0
    sim = (anchors @ candidates[:B].T).detach()  # (B, B): ranked as the contrastive term ranks them
    sim.fill_diagonal_(float("-inf"))
    k = min(top_k + 1, B - 1) if top_k else B - 1
    next_hardest = sim.topk(max(k, 1), dim=1).indices[:, -1]  # (B,)
    idx = torch.where(has, antonym_index.clamp_min(0), next_hardest)
    vecs = candidates[idx].unsqueeze(1)  # (B, 1, D)
    valid = torch.ones(B, 1, dtype=torch.bool, device=anchors.device) if B > 1 else has.unsqueeze(1)
    return vecs, valid


def synonym_attraction(anchors: torch.Tensor, synonyms: torch.Tensor, margin: float) -> torch.Tensor:
    """Pull synonyms to cosine >= ``margin``: mean relu(margin - cos). Empty input -> 0."""
    if anchors.numel() == 0:
        return anchors.sum() * 0.0
    return F.relu(margin - (anchors * synonyms).sum(-1)).mean()


def reconstruction_mse(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the head's reconstruction and the backbone's pooled vector (B, H)."""
    return F.mse_loss(reconstruction, target)


def semantic_anchor(embeddings: torch.Tensor, backbone_features: torch.Tensor) -> torch.Tensor:
    """MSE between the batch cosine-similarity matrices in EM space and in backbone space, so the
    head keeps the backbone's geometry where the other terms do not ask it to move."""
    z = F.normalize(embeddings, dim=-1)
    f = F.normalize(backbone_features, dim=-1)
    return F.mse_loss(z @ z.T, f @ f.T)


def orthogonality(weight: torch.Tensor) -> torch.Tensor:
    """||W W^T - I||^2 / D^2 on the last projection (D, P): decorrelates output dimensions."""
    gram = weight @ weight.T  # (D, D)
    eye = torch.eye(gram.shape[0], device=weight.device, dtype=weight.dtype)
    return ((gram - eye) ** 2).mean()


def order_contrast(anchors: torch.Tensor, positives: torch.Tensor, order_negatives: torch.Tensor,
                   negative_mask: torch.Tensor, temperature: float, margin: float = 0.0) -> torch.Tensor:
    """Word order: each sentence against its own word-swapped / shuffled copies (B, M, D) as hard
    negatives, with a meaning-preserving positive (a synonym-substituted copy, or itself under
    jitter) and the other sentences in the batch as further negatives. ``margin`` is subtracted
    from the positive's cosine (additive-margin softmax): the loss keeps pushing until the positive
    leads every negative by more than the margin."""
    pos = ((anchors * positives).sum(-1, keepdim=True) - margin) / temperature  # (B, 1)
    hard = torch.einsum("bd,bmd->bm", anchors, order_negatives) / temperature  # (B, M)
    hard = hard.masked_fill(~negative_mask, float("-inf"))
    inbatch = anchors @ positives.T / temperature  # (B, B)
    inbatch = inbatch.masked_fill(torch.eye(anchors.shape[0], dtype=torch.bool, device=anchors.device), float("-inf"))
    logits = torch.cat([pos, hard, inbatch], dim=1)
    return F.cross_entropy(logits, torch.zeros(anchors.shape[0], dtype=torch.long, device=anchors.device))


def unit_recall(sentences: torch.Tensor, units: torch.Tensor, membership: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-positive InfoNCE (SupCon form): each sentence (S, D) should rank every unit it
    contains (``membership`` (S, K) bool) above the candidate units it does not contain (K, D).
    Per positive j: -log exp(s.u_j) / (exp(s.u_j) + sum over non-members exp(s.u)); averaged
    over a sentence's positives, then over sentences. Rows with no positive are skipped."""
    logits = sentences @ units.T / temperature  # (S, K)
    has = membership.any(1)
    if not has.any():
        return logits.sum() * 0.0
    logits, membership = logits[has], membership[has]
    negatives = torch.logsumexp(logits.masked_fill(membership, float("-inf")), dim=1, keepdim=True)  # (S', 1)
    per_positive = torch.logaddexp(logits, negatives) - logits  # (S', K)
    per_sentence = (per_positive * membership).sum(1) / membership.sum(1)  # (S',)
    return per_sentence.mean()
