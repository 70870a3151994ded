"""The typo generator: measured edit rates match the requested rate; determinism; real misspellings."""
from __future__ import annotations

import re

import pytest

from invemb.text.noise import QWERTY_NEIGHBOURS, TypoNoise, load_codespell_table, real_misspellings

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital and most populous city of France, with 2,102,650 residents.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
    "In 1969 Apollo Eleven landed the first humans on the Moon, watched by millions.",
] * 40


def n_letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def osa_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insert, delete, substitute, adjacent transposition cost 1."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def measured_rate(noise: TypoNoise, edits) -> float:
    texts = [t + f" item {i}" for i, t in enumerate(TEXTS)]  # distinct texts -> distinct random streams
    return sum(edits(t, noise(t)) for t in texts) / sum(n_letters(t) for t in texts)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("kind,edits", [
    ("keyboard", lambda a, b: sum(x != y for x, y in zip(a, b))),
    ("drop", lambda a, b: len(a) - len(b)),
    ("insert", lambda a, b: len(b) - len(a)),
    ("swap", lambda a, b: sum(x != y for x, y in zip(a, b)) / 2),
])
def test_each_kind_edits_the_requested_share_of_letters(rate, kind, edits):
    got = measured_rate(TypoNoise(rate, seed=3, kinds=(kind,)), edits)
    assert got == pytest.approx(rate, rel=0.08), (kind, rate, got)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_mixed_kinds_rate_by_edit_distance(rate):
    # A keyboard-neighbour insert next to the same key can be shorter in edit distance only by
    # coincidence, so the distance-based rate sits at or slightly below the requested one.
    got = measured_rate(TypoNoise(rate, seed=5), osa_distance)
    assert rate * 0.9 <= got <= rate * 1.02, got


def test_deterministic_per_seed_and_text_and_seed_matters():
    text = TEXTS[0]
    assert TypoNoise(0.2, seed=1)(text) == TypoNoise(0.2, seed=1)(text)
    assert TypoNoise(0.2, seed=1)(text) != TypoNoise(0.2, seed=2)(text)
    assert TypoNoise(0.0)(text) == text


def test_only_letters_are_touched_and_keyboard_uses_neighbours_and_keeps_case():
    text = "ABC 123, def! 456"
    noisy = TypoNoise(1.0, seed=0, kinds=("keyboard",))(text)
    assert re.sub(r"[A-Za-z]", "", noisy) == re.sub(r"[A-Za-z]", "", text)
    for a, b in zip(text, noisy):
        if a.isalpha():
            assert b in QWERTY_NEIGHBOURS[a.lower()].upper() if a.isupper() else b in QWERTY_NEIGHBOURS[a]


def test_neighbour_map_is_symmetric_and_sane():
    assert set(QWERTY_NEIGHBOURS["a"]) == set("qswz")
    assert set(QWERTY_NEIGHBOURS["g"]) == set("fhtybv")
    for c, near in QWERTY_NEIGHBOURS.items():
        assert all(c in QWERTY_NEIGHBOURS[d] for d in near)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rate"):
        TypoNoise(1.5)
    with pytest.raises(ValueError, match="kinds"):
        TypoNoise(0.1, kinds=("smudge",))


def test_codespell_table_maps_fixes_to_real_typos():
    table = load_codespell_table()
    assert "hte" in table["the"]
    assert "abandonned" in table["abandoned"]
    assert len(table) > 10_000
    assert all(" " not in fix and all(" " not in t for t in typos) for fix, typos in table.items())


def test_codespell_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="codespell"):
        load_codespell_table(tmp_path / "nope.txt")


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
def test_real_misspellings_rate_and_case(rate):
    table = load_codespell_table()
    word = re.compile(r"[A-Za-z']+")
    eligible = changed = 0
    for i, text in enumerate(TEXTS):
        noisy = real_misspellings(text, table, rate, seed=i)
        a, b = word.findall(text), word.findall(noisy)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            eligible += x.lower() in table
            if x != y:
                changed += 1
                assert y.lower() in table[x.lower()]
                assert x[0].isupper() == y[0].isupper()
    assert changed / eligible == pytest.approx(rate, rel=0.1)
    assert real_misspellings(TEXTS[0], table, rate, seed=7) == real_misspellings(TEXTS[0], table, rate, seed=7)
