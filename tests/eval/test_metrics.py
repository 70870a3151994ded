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


def test_spearman_hand_computed_with_ties():
    # x ranks (ties averaged): 1, 2.5, 2.5, 4; y ranks: 2, 1, 3, 4 -> Pearson of the rank vectors
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([2, 1, 3, 4.0])
    expected = float(((rx - rx.mean()) * (ry - ry.mean())).sum() / np.sqrt(((rx - rx.mean()) ** 2).sum() * ((ry - ry.mean()) ** 2).sum()))
    assert expected == pytest.approx(0.6324555, abs=1e-6)
    assert spearman([0.1, 0.5, 0.5, 0.9], [2.0, 1.0, 3.0, 4.0]) == pytest.approx(expected)


def test_bleu_and_rouge_l_hand_computed():
    """Fixed inputs worked out by hand: corpus BLEU from n-gram precisions and the brevity penalty,
    ROUGE-L from the longest common subsequence (what sacrebleu / rouge-score must agree with)."""
    from invemb.inversion.metrics import bleu, rouge_l

    ref = "the cat sat on the red mat today"  # 8 tokens
    hyp = "the cat sat on a red mat"  # 7 tokens
    # matched n-grams: 1-grams 6/7, 2-grams 4/6 (the cat, cat sat, sat on, red mat), 3-grams 2/5, 4-grams 1/4
    precisions = [6 / 7, 4 / 6, 2 / 5, 1 / 4]
    bp = math.exp(1 - 8 / 7)
    expected = 100 * bp * math.exp(sum(math.log(p) for p in precisions) / 4)
    assert bleu([hyp], [ref]) == pytest.approx(expected, abs=1e-6)
    # LCS = "the cat sat on red mat" (6): P = 6/7, R = 6/8
    p, r = 6 / 7, 6 / 8
    assert rouge_l([hyp], [ref]) == pytest.approx(100 * 2 * p * r / (p + r), abs=1e-6)
