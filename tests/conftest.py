"""Shared test fixtures: a deterministic fake encoder and a tiny random-weight BERT folder."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


class FakeEncoder:
    """Deterministic encoder: each text's vector comes from a hash of its (optionally mapped) key.

    ``groups`` maps a text to a canonical key, so tests can make synonyms share a vector.
    """

    def __init__(self, dim: int = 16, groups: dict[str, str] | None = None, name: str = "fake"):
        self.dim = dim
        self.groups = groups or {}
        self.name = name
        self.calls = 0

    def _vec(self, text: str) -> torch.Tensor:
        key = self.groups.get(text, text)
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.dim, generator=g)

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        self.calls += 1
        return F.normalize(torch.stack([self._vec(t) for t in texts]), dim=-1) if texts else torch.empty(0, self.dim)

    def save(self, path) -> None:  # pragma: no cover - not needed by tests
        raise NotImplementedError


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    from invemb.backbone.hf import save_tiny_bert

    words = ("the a of to and in is was it bank river loan money good bad not new york city prime minister "
             "cat dog sat on mat runs fast slow big small happy sad").split()
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), words, hidden=32, layers=2)
