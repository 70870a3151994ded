"""Typo generators: synthetic character noise and real misspellings.

``TypoNoise(rate)`` edits ``rate`` of the letters of a text (swap with the next letter, drop,
insert a keyboard neighbour, or substitute a keyboard neighbour on a QWERTY map).
``real_misspellings`` replaces a share of the words that have a known human misspelling, taken
from codespell's dictionary (``load_codespell_table``).

Both are deterministic per (seed, text): the random stream is seeded from a hash of the two, so
the same text gets the same typos in every process and in any order of calls.
"""
from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from pathlib import Path

KINDS = ("swap", "drop", "insert", "keyboard")

_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# Rows are staggered by about half a key; two keys touch when they sit in the same row one apart,
# or in adjacent rows at most 0.75 of a key apart horizontally.
_ROW_SHIFT = (0.0, 0.5, 1.0)


def _qwerty_neighbours() -> dict[str, str]:
    pos = {c: (r, i + _ROW_SHIFT[r]) for r, row in enumerate(_QWERTY_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, x) in pos.items():
        near = [d for d, (r2, x2) in pos.items()
                if d != c and ((r2 == r and abs(x2 - x) == 1) or (abs(r2 - r) == 1 and abs(x2 - x) <= 0.75))]
        out[c] = "".join(sorted(near))
    return out


QWERTY_NEIGHBOURS: dict[str, str] = _qwerty_neighbours()
_ASCII_LOWER = "abcdefghijklmnopqrstuvwxyz"


def _rng(seed: int, text: str, salt: str) -> random.Random:
    digest = hashlib.sha256(f"{salt}\x00{seed}\x00{text}".encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _share(n: int, rate: float, rng: random.Random) -> int:
    """How many of ``n`` items to edit: ``rate * n`` with stochastic rounding, so the expected rate is exact."""
    exact = rate * n
    k = math.floor(exact)
    return min(n, k + (rng.random() < exact - k))


def _neighbour(ch: str, rng: random.Random) -> str:
    """A keyboard neighbour of ``ch`` in the same case; a random ASCII letter for keys not on the map."""
    near = QWERTY_NEIGHBOURS.get(ch.lower())
    sub = rng.choice(near) if near else rng.choice(_ASCII_LOWER.replace(ch.lower(), ""))
    return sub.upper() if ch.isupper() else sub


class TypoNoise:
    """Callable ``noise(text) -> str`` that edits ``rate`` of the letters of ``text``.

    Each chosen letter gets one edit of a kind drawn uniformly from ``kinds``: ``swap`` (with the
    next letter, which is then not edited again), ``drop``, ``insert`` (a keyboard neighbour right
    after the letter) or ``keyboard`` (substitution by a keyboard neighbour, case kept). Non-letters
    are never edited and never counted.
    """

    def __init__(self, rate: float, seed: int = 0, kinds: tuple[str, ...] = KINDS):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"TypoNoise rate must be in [0, 1], got {rate}")
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown or not kinds:
            raise ValueError(f"TypoNoise kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}")
        self.rate = rate
        self.seed = seed
        self.kinds = tuple(kinds)

    def __repr__(self) -> str:
        return f"TypoNoise(rate={self.rate}, seed={self.seed}, kinds={self.kinds})"

    def __call__(self, text: str) -> str:
        letters = [i for i, ch in enumerate(text) if ch.isalpha()]
        rng = _rng(self.seed, text, "typo")
        k = _share(len(letters), self.rate, rng)
        if k == 0:
            return text
        edits = self._plan(text, letters, k, rng)
        out: list[str] = []
        i = 0
        while i < len(text):
            ch, kind = text[i], edits.get(i)
            if kind == "swap":
                out += [text[i + 1], ch]
                i += 2
                continue
            if kind == "keyboard":
                out.append(_neighbour(ch, rng))
            elif kind == "insert":
                out += [ch, _neighbour(ch, rng)]
            elif kind != "drop":
                out.append(ch)
            i += 1
        return "".join(out)

    def _plan(self, text: str, letters: list[int], k: int, rng: random.Random) -> dict[int, str]:
        """Position -> edit kind for ``k`` letters; a swap also reserves its partner letter."""
        order = letters[:]
        rng.shuffle(order)
        edits: dict[int, str] = {}
        reserved: set[int] = set()
        for pos in order:
            if len(edits) == k:
                break
            if pos in reserved:
                continue
            kind = rng.choice(self.kinds)
            if kind == "swap":
                nxt = pos + 1
                swappable = nxt < len(text) and text[nxt].isalpha() and nxt not in reserved and text[nxt] != text[pos]
                if not swappable:
                    others = [c for c in self.kinds if c != "swap"]
                    if not others:
                        continue
                    kind = rng.choice(others)
                else:
                    reserved.add(nxt)
            edits[pos] = kind
            reserved.add(pos)
        return edits


def codespell_dictionary_path() -> Path:
    import codespell_lib

    return Path(codespell_lib.__file__).parent / "data" / "dictionary.txt"


_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


@functools.lru_cache(maxsize=4)
def _load_table(path: str) -> dict[str, tuple[str, ...]]:
    table: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            typo, sep, fixes = line.strip().partition("->")
            if not sep or not _WORD.fullmatch(typo):
                continue
            for fix in fixes.split(","):
                fix = fix.strip()
                if fix and fix != typo and _WORD.fullmatch(fix):
                    table.setdefault(fix, set()).add(typo)
    return {fix: tuple(sorted(typos)) for fix, typos in table.items()}


def load_codespell_table(path: str | Path | None = None) -> dict[str, list[str]]:
    """Correct word -> its real misspellings, from codespell's ``typo->fix[, fix2]`` dictionary.

    Only single-word typos and fixes are kept (multi-word fixes like ``about it`` are skipped).
    ``path`` defaults to the dictionary shipped by the ``codespell`` package.
    """
    path = Path(path) if path is not None else codespell_dictionary_path()
    if not path.is_file():
        raise FileNotFoundError(f"codespell dictionary not found at {path}; `pip install codespell` or pass path=")
    return {fix: list(typos) for fix, typos in _load_table(str(path)).items()}


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def real_misspellings(text: str, table: dict[str, list[str]], rate: float, seed: int = 0) -> str:
    """Replace ``rate`` of the words of ``text`` that have a known misspelling in ``table`` with one.

    Words are looked up lower-cased; the replacement keeps the word's capitalisation. Words
    without an entry are never changed and not counted in the rate.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"real_misspellings rate must be in [0, 1], got {rate}")
    spans = [m for m in _WORD.finditer(text) if m.group().lower() in table]
    rng = _rng(seed, text, "misspell")
    chosen = sorted(rng.sample(range(len(spans)), _share(len(spans), rate, rng)))
    out, last = [], 0
    for j in chosen:
        m = spans[j]
        typo = rng.choice(table[m.group().lower()])
        out += [text[last:m.start()], _match_case(m.group(), typo)]
        last = m.end()
    out.append(text[last:])
    return "".join(out)
