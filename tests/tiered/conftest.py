"""Tiny tiered configs and a synthetic corpus, so the tests need no real data."""
from __future__ import annotations

import random

import pytest
import torch

from invemb.tiered import TieredConfig

WORDS = ("the cat dog river bank money loan city walks runs sleeps quickly slowly green small large old new "
         "house garden tree bird sings reads book teacher student music plays piano").split()


def toy_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", "!", "?", ", indeed."]))
    return out


def tiny_config(**overrides) -> TieredConfig:
    base = {"train.progress": False, "train.epochs": 3, "batch_size": 8, "data.words_per_batch": 8,
            "data.dev_sentences": 16}
    return TieredConfig.preset("tiny").replace(**{**base, **overrides})


@pytest.fixture
def toy_corpus() -> dict[str, list[str]]:
    sentences = toy_sentences(96)
    return {"train": sentences[:80], "dev": sentences[80:]}


@pytest.fixture
def make_cfg():
    return tiny_config


@pytest.fixture
def make_sentences():
    return toy_sentences


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads of tiny ops spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
