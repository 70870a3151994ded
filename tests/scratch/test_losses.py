import math

import pytest
import torch
import torch.nn.functional as F

from invemb.scratch.losses import contrastive_loss, cosine_similarity_loss, multiple_negatives_ranking_loss, triplet_loss

E = torch.eye(3)


def test_multiple_negatives_ranking_by_hand():
    # Orthonormal, perfectly matched pairs: logits scale*I, so each row's CE is log(1 + 2 e^-s).
    s = 2.0
    expected = math.log(1 + 2 * math.exp(-s))
    assert multiple_negatives_ranking_loss(E, E, scale=s, symmetric=False).item() == pytest.approx(expected, rel=1e-5)
    assert multiple_negatives_ranking_loss(E, E, scale=s).item() == pytest.approx(expected, rel=1e-5)
    swapped = E[[1, 0, 2]]
    assert multiple_negatives_ranking_loss(E, swapped, scale=s).item() > expected


def test_symmetric_differs_when_directions_differ():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    one = multiple_negatives_ranking_loss(a, b, symmetric=False)
    other = multiple_negatives_ranking_loss(b, a, symmetric=False)
    torch.testing.assert_close(multiple_negatives_ranking_loss(a, b), 0.5 * (one + other))


def test_contrastive_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # cosine distance 1 for both rows
    label = torch.tensor([1, 0])
    # positive: 0.5 * 1^2; negative: distance 1 > margin 0.5 -> 0; mean over 2 rows
    assert contrastive_loss(a, b, label, margin=0.5).item() == pytest.approx(0.25)
    assert contrastive_loss(a, b, torch.tensor([0, 0]), margin=1.5).item() == pytest.approx(0.5 * 0.25)


def test_triplet_loss_by_hand():
    anchor, pos, neg = E[:1], E[:1], E[1:2]  # d_pos 0, d_neg 1
    assert triplet_loss(anchor, pos, neg, margin=0.2).item() == 0.0
    assert triplet_loss(anchor, neg, pos, margin=0.2).item() == pytest.approx(1.2)


def test_cosine_similarity_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines 1 and 0
    assert cosine_similarity_loss(a, b, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0)
    assert cosine_similarity_loss(a, b, torch.tensor([0.0, 1.0])).item() == pytest.approx(1.0)
