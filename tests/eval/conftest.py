"""Encoders with known answers for the evaluator tests."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F


def word_vector(word: str, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(hashlib.sha256(word.encode()).hexdigest()[:8], 16))
    return torch.randn(dim, generator=g)


class BagOfWordsEncoder:
    """Mean of per-word random vectors: blind to order by construction."""

    def __init__(self, dim: int = 32, name: str = "bow"):
        self.dim, self.name = dim, name

    def encode(self, texts, batch_size=64):
        return F.normalize(torch.stack([torch.stack([word_vector(w.lower().strip(".,"), self.dim) for w in t.split()]).mean(0)
                                        for t in texts]), dim=-1)

    def save(self, path):  # pragma: no cover
        raise NotImplementedError


class BrokenEncoder:
    """Returns NaN (``mode="nan"``) or vectors one column too wide (``mode="dim"``)."""

    def __init__(self, mode: str, dim: int = 8):
        self.mode, self.dim, self.name = mode, dim, f"broken-{mode}"

    def encode(self, texts, batch_size=64):
        if self.mode == "nan":
            return torch.full((len(texts), self.dim), float("nan"))
        return F.normalize(torch.randn(len(texts), self.dim + 1), dim=-1)

    def save(self, path):  # pragma: no cover
        raise NotImplementedError


class FakeLemma:
    def __init__(self, name: str, count: int = 1):
        self._name, self._count = name, count

    def name(self):
        return self._name

    def count(self):
        return self._count


class FakeSynset:
    def __init__(self, *lemmas: FakeLemma):
        self._lemmas = list(lemmas)

    def lemmas(self):
        return self._lemmas


class FakeWordNet:
    """Just what make_order_probes reads: synsets(word), _morphy(word, pos)."""

    def __init__(self, table: dict[str, list[FakeSynset]], bases: dict[str, str] | None = None):
        self.table, self.bases = table, bases or {}

    def synsets(self, word, pos=None):
        word = self.bases.get(word, word)
        return self.table.get((word, pos), self.table.get(word, []))

    def _morphy(self, word, pos):
        return [self.bases.get(word, word)]


@pytest.fixture
def fake_wn() -> FakeWordNet:
    L = FakeLemma
    return FakeWordNet({
        "big": [FakeSynset(L("big", 5), L("large", 9), L("Big_Apple", 1))],
        "dog": [FakeSynset(L("dog", 9), L("domestic_dog", 2), L("hound", 3))],
        "cat": [FakeSynset(L("cat", 9), L("true_cat", 1))],
        "chase": [FakeSynset(L("chase", 4), L("pursue", 3), L("dog", 8))],
        "quick": [FakeSynset(L("quick", 4), L("fast", 6))],
        ("home", "n"): [FakeSynset(L("home", 4), L("house", 6))],
        ("home", "r"): [FakeSynset(L("home", 4), L("homeward", 1))],
    }, bases={"chased": "chase", "cats": "cat", "dogs": "dog"})
