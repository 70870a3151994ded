"""Metric implementations against hand-computed cases and reference libraries."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from invemb.eval.retrieval import bm25_rankings, dense_rankings, retrieval_metrics
from invemb.eval.stats import anisotropy, effective_rank, variance_spectrum
from invemb.eval.wordsim import spearman


def test_retrieval_metrics_hand_computed():
    # query 0: relevant {2, 5}; ranked 1, 2, 3, 5 -> hits at ranks 2 and 4
    # query 1: relevant {0}; ranked 0 first
    out = retrieval_metrics([[1, 2, 3, 5], [0, 4, 3, 2]], [{2, 5}, {0}], ks=(1, 2, 4))
    assert out["p@1"] == pytest.approx((0 + 1) / 2)
    assert out["p@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert out["p@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert out["r@1"] == pytest.approx((0 + 1) / 2)
    assert out["r@4"] == pytest.approx((1 + 1) / 2)
    assert out["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["map"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1) / 2)
    ndcg0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert out["ndcg@10"] == pytest.approx((ndcg0 + 1) / 2)


def test_retrieval_metrics_not_found_counts_zero():
    out = retrieval_metrics([[1, 2]], [{7}], ks=(1,))
    assert out == {"p@1": 0.0, "r@1": 0.0, "mrr": 0.0, "map": 0.0, "ndcg@10": 0.0}
    with pytest.raises(ValueError, match="one ranking per query"):
        retrieval_metrics([[1]], [{1}, {2}])


def test_dense_and_bm25_rankings():
    corpus = torch.eye(3)
    queries = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.2, 0.8]])
    assert dense_rankings(queries, corpus, 2) == [[1, 0], [2, 1]]
    docs = ["the cat sat on the mat", "dogs bark loudly", "stock markets fell"]
    assert [r[0] for r in bm25_rankings(["cat mat", "markets", "bark"], docs, 3)] == [0, 2, 1]


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_embedding_statistics_known_values():
    # two orthogonal directions with equal variance: effective rank 2, half the variance each
    v = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    assert effective_rank(v) == pytest.approx(2.0)
    assert variance_spectrum(v).tolist() == pytest.approx([0.5, 0.5])
    # identical vectors: anisotropy 1; +/- pairs: mean pairwise cosine -1/3
    assert anisotropy(torch.ones(5, 3)) == pytest.approx(1.0)
    assert anisotropy(v) == pytest.approx(-1 / 3)
