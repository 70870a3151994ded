import math

import pytest
import torch
import torch.nn.functional as F

from invemb.em import losses


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_infonce_matches_hand_computation():
    a = _unit([1, 0], [0, 1])
    p = _unit([1, 0], [0, 1])
    tau = 0.5
    # row 0: logits [1/0.5, 0/0.5] -> -log(e^2 / (e^2 + e^0))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert losses.hard_negative_infonce(a, p, tau).item() == pytest.approx(expected, rel=1e-6)


def test_top_k_keeps_only_hardest_negatives():
    a = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0])
    p = a.clone()
    full = losses.hard_negative_infonce(a, p, 0.1, top_k=0)
    top1 = losses.hard_negative_infonce(a, p, 0.1, top_k=1)
    assert top1 < full  # dropping easy negatives lowers the loss
    # with k=1, row 0's only negative is row 3 (cos 0.99): loss = log(1 + e^{(c-1)/tau})
    c = float(a[0] @ a[3])
    row0 = math.log(1 + math.exp((c - 1) / 0.1))
    logits = torch.stack([torch.tensor([1 / 0.1, c / 0.1])])
    assert F.cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(row0, rel=1e-5)


def test_extra_negatives_and_queue_raise_loss_and_masks_work():
    a = _unit([1, 0], [0, 1])
    base = losses.hard_negative_infonce(a, a, 0.1)
    extra = a.flip(0).unsqueeze(1)  # (B, 1, D)
    close = _unit([0.99, 0.1], [0.1, 0.99]).unsqueeze(1)
    assert losses.hard_negative_infonce(a, a, 0.1, extra_negatives=close, extra_mask=torch.ones(2, 1, dtype=torch.bool)) > base
    masked = losses.hard_negative_infonce(a, a, 0.1, extra_negatives=close, extra_mask=torch.zeros(2, 1, dtype=torch.bool))
    assert masked.item() == pytest.approx(base.item())
    q = _unit([1, 0.01])
    with_q = losses.hard_negative_infonce(a, a, 0.1, queue=q)
    masked_q = losses.hard_negative_infonce(a, a, 0.1, queue=q, queue_mask=torch.tensor([[True], [False]]))
    assert with_q > masked_q > base - 1e-6
    assert extra.shape == (2, 1, 2)


def test_antonym_negatives_fall_back_to_next_hardest():
    a = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    cands = _unit([1, 0, 0], [0.8, 0.6, 0], [0.5, 0, 0.8])
    vecs, valid = losses.antonym_negatives(a, cands, torch.tensor([2, -1, -1]), top_k=0)
    assert torch.allclose(vecs[0, 0], cands[2])  # row 0 has an antonym: candidate 2
    assert valid.all() and vecs.shape == (3, 1, 3)
    # The fallback is the in-batch negative after the contrastive term's top_k, never a pool row
    # after the batch (a synonym of the anchor there would otherwise be pushed away).
    a = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1])
    positives = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1])
    pool = _unit([1, 0.01, 0])  # the anchor 0's synonym: nearer to it than any in-batch negative
    scores = a @ positives.T
    scores.fill_diagonal_(float("-inf"))
    second = scores.topk(2, dim=1).indices[:, 1]  # top_k 1 -> the 2nd hardest in-batch negative
    vecs, _ = losses.antonym_negatives(a, torch.cat([positives, pool]), torch.full((4,), -1), top_k=1)
    assert torch.allclose(vecs[:, 0], positives[second])


def test_synonym_attraction_margin():
    a = _unit([1, 0], [1, 0])
    s = _unit([1, 0], [0, 1])
    assert losses.synonym_attraction(a, s, 0.5).item() == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert losses.synonym_attraction(a[:0], s[:0], 0.5).item() == 0.0


def test_reconstruction_and_anchor_zero_when_exact():
    f = torch.randn(5, 8)
    assert losses.reconstruction_mse(f, f).item() == 0.0
    assert losses.semantic_anchor(f * 3, f).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.semantic_anchor(torch.randn(5, 8), f).item() > 0.01


def test_orthogonality_zero_for_orthonormal_rows():
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    assert losses.orthogonality(q[:4]).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.orthogonality(torch.ones(4, 8)).item() > 1


def test_order_contrast_prefers_positive_over_swap():
    s = _unit([1, 0, 0], [0, 1, 0])
    pos = _unit([0.95, 0.3, 0], [0.3, 0.95, 0])
    swap_far = _unit([0, 0, 1], [0, 0, 1]).unsqueeze(1)
    swap_close = _unit([1, 0.01, 0], [0.01, 1, 0]).unsqueeze(1)
    m = torch.ones(2, 1, dtype=torch.bool)
    assert losses.order_contrast(s, pos, swap_far, m, 0.1) < losses.order_contrast(s, pos, swap_close, m, 0.1)


def test_order_margin_is_subtracted_from_the_positive():
    """One sentence, its positive at cos 0.9, one swap at cos 0.8, no other rows: the loss is
    log(1 + exp((0.8 - (0.9 - m)) / t)), so a margin keeps a won pair's loss up."""
    s = _unit([1, 0, 0])
    pos = _unit([0.9, 0.19 ** 0.5, 0])
    swap = _unit([0.8, 0, 0.6]).unsqueeze(1)
    m = torch.ones(1, 1, dtype=torch.bool)
    for margin in (0.0, 0.2):
        expected = torch.log1p(torch.exp(torch.tensor((0.8 - (0.9 - margin)) / 0.1)))
        torch.testing.assert_close(losses.order_contrast(s, pos, swap, m, 0.1, margin), expected, rtol=1e-5, atol=1e-5)


def test_unit_recall_multi_positive():
    s = _unit([1, 1, 0], [0, 0, 1])
    units = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    member = torch.tensor([[True, True, False], [False, False, True]])
    good = losses.unit_recall(s, units, member, 0.1)
    wrong = losses.unit_recall(s, units, member.flip(0), 0.1)
    assert good < wrong
    # row 1: positive cos 1, one negative... three candidates: log(1 + e^{(0-1)/0.1} * 2)
    none = losses.unit_recall(s, units, torch.zeros(2, 3, dtype=torch.bool), 0.1)
    assert none.item() == 0.0


def test_losses_give_gradients():
    a = torch.randn(4, 8, requires_grad=True)
    z = F.normalize(a, dim=-1)
    loss = losses.hard_negative_infonce(z, z.detach().roll(1, 0), 0.1) + losses.unit_recall(z, z, torch.eye(4, dtype=torch.bool), 0.1)
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_weighted_extra_negative_counts_w_times():
    """An extra negative with log-weight log w equals w copies of it in the partition function."""
    a = _unit([1, 0], [0, 1])
    close = _unit([0.8, 0.6], [0.6, 0.8]).unsqueeze(1)  # (B, 1, D)
    ok = torch.ones(2, 1, dtype=torch.bool)
    weighted = losses.hard_negative_infonce(a, a, 0.5, extra_negatives=close, extra_mask=ok,
                                            extra_log_weight=torch.full((2, 1), math.log(3.0)))
    copies = losses.hard_negative_infonce(a, a, 0.5, extra_negatives=close.expand(2, 3, 2), extra_mask=ok.expand(2, 3))
    assert weighted.item() == pytest.approx(copies.item(), rel=1e-6)
    plain = losses.hard_negative_infonce(a, a, 0.5, extra_negatives=close, extra_mask=ok)
    assert weighted > plain
