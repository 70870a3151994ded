"""Objective functions on raw tensors, spelling variants and the phase schedule."""
from __future__ import annotations

import random

import pytest
import torch

from invemb.tiered.objectives import (ObjectiveConfig, anneal_share, info_nce, mask_units, masked_chunk_loss, phase_at,
                                      shuffle_chunks, spelling_variant)


def osa(a: str, b: str) -> int:
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def test_info_nce_is_low_for_matching_rows_and_ignores_duplicate_keys():
    a = torch.eye(4)
    assert info_nce(a, a, 0.05) < 1e-3
    assert info_nce(a, a.roll(1, 0), 0.05) > 10
    dup = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # rows 0 and 1 are the same word: without keys they are confusable negatives, with keys not
    assert info_nce(dup, dup, 0.05, keys=["a", "a", "b"]) < 1e-3 < info_nce(dup, dup, 0.05)


def test_synthetic_spelling_variants_are_within_edit_distance_two():
    rng = random.Random(0)
    words = ["language", "river", "money", "teacher", "beautiful"]
    for _ in range(200):
        w = rng.choice(words)
        v = spelling_variant(w, rng, table={}, real_share=0.5)
        assert 1 <= osa(w, v) <= 2 or v == w  # a swap of equal letters may leave the word unchanged


def test_real_misspellings_are_used_when_known():
    rng = random.Random(0)
    table = {"river": ["rivver"]}
    got = [spelling_variant("river", rng, table, real_share=1.0) for _ in range(5)]
    assert got == ["rivver"] * 5


def test_phases_and_annealing_follow_the_config():
    cfg = ObjectiveConfig(e1_warmup=0.2, freeze_e1_at=0.6)
    assert [phase_at(s, 10, cfg) for s in range(10)] == ["e1"] * 2 + ["joint"] * 4 + ["frozen"] * 4
    assert anneal_share(1, 10, cfg) == 0.0 and anneal_share(4, 10, cfg) == pytest.approx(0.5) and anneal_share(9, 10, cfg) == 1.0
    with pytest.raises(ValueError, match="e1_warmup"):
        ObjectiveConfig(e1_warmup=0.9, freeze_e1_at=0.5)


def test_mask_units_masks_only_real_units_at_about_the_rate():
    ids = torch.randint(2, 50, (64, 100))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 80:] = False
    masked, picked = mask_units(ids, mask, 0.15, torch.Generator().manual_seed(0))
    assert not picked[:, 80:].any()
    assert picked[:, :80].float().mean() == pytest.approx(0.15, abs=0.02)
    assert (masked[picked] == 1).all() and (masked[~picked] == ids[~picked]).all()


def test_shuffle_keeps_the_chunks_of_a_row_and_masked_chunk_loss_ranks_targets():
    v = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    out = shuffle_chunks(v, mask, torch.tensor([True, False]), torch.Generator().manual_seed(1))
    assert torch.equal(out[1], v[1]) and torch.equal(out[0, 3], v[0, 3])
    assert sorted(out[0, :3, 0].tolist()) == sorted(v[0, :3, 0].tolist())
    t = torch.eye(5)
    assert masked_chunk_loss(t, t, 0.05) < 1e-3 < masked_chunk_loss(t, t.roll(1, 0), 0.05)
