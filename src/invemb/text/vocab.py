"""The unit vocabulary: words, acronyms, named entities, n-grams, numbers, numeric tokens, other.

Units are what the EM embeds and what inversion retrieves. Categories follow the research code,
each with its own minimum count and maximum size:

- ``word``: lowercase words ("bank", "well-known"), including clitics split off as in the
  research code ("do n't" -> "do", "n't"; "ca n't"; "it 's"; "we 'll");
- ``acronym``: all-caps tokens ("NATO", "U.S.");
- ``entity``: capitalised names, single or multi-word ("Paris", "United States", "Prime Minister");
- ``ngram``: lowercase n-grams of 2-7 words from consecutive lowercase runs ("not good");
- ``number``: "42", "1,234.5";  ``numeric``: tokens mixing digits and letters ("3rd", "mid-1990s");
- ``other``: everything else (punctuation, symbols, mixed case).

WikiText-style joins (``1 @,@ 234`` -> ``1,234``, ``well @-@ known`` -> ``well-known``) are undone
before tokenising.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from invemb.config import Config
from invemb.io import atomic_write_json

CATEGORIES = ("word", "acronym", "entity", "ngram", "number", "numeric", "other")

_WIKITEXT = re.compile(r" @([-,.])@ ")
_CLITIC = re.compile(r"(?i)(?<=\w)(n't|'s|'ll|'re|'ve|'m|'d)\b")
_NEGATION_HOST = re.compile(r"(?i)\b(ca|wo)(n't)\b")
_SEPARATED_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+"  # 1,234 / 1,234.5 / 3.14
_TOKEN = re.compile(
    r"(?i:n't|'(?:s|ll|re|ve|m|d))\b"  # clitics, already split off their host (any case: "DO N'T")
    r"|(?:[A-Za-z]\.){2,}"  # dotted acronyms: U.S., e.g.
    # numbers with separators, whole with what is joined to them: 1,234.5 / 2,000-year-old / 1,000th
    rf"|(?:{_SEPARATED_NUMBER})[^\W_]*(?:[-'](?:{_SEPARATED_NUMBER}|\w+))*"
    r"|\w+(?:[-'](?:\d+\.\d+|\w+))*"  # words, hyphenated words, numbers, 3rd, mid-1990s, 10-year-old
    r"|\S"  # any other single character
)
_CLITICS = ("n't", "'s", "'ll", "'re", "'ve", "'m", "'d")
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_ACRONYM = re.compile(r"(?:[A-Z]\.){2,}|[A-Z][A-Z0-9&]*[A-Z][A-Z0-9&]*")
_CONNECTORS = {"of", "de", "the", "and", "upon", "on", "du", "von", "van", "da", "del"}


def unwikitext(text: str) -> str:
    return _WIKITEXT.sub(r"\1", text)


def tokenize(text: str) -> list[str]:
    """Research-code tokenisation: clitics split ("do n't", "ca n't", "it 's"), punctuation split,
    numbers with separators and hyphenated words kept whole."""
    return list(_tokens(text))


# Inversion tokenises each candidate text three or four times (its length, its prior, its bound part): kept
@functools.lru_cache(maxsize=1 << 14)
def _tokens(text: str) -> tuple[str, ...]:
    text = unwikitext(text.replace("\u2019", "'").replace("\u2018", "'"))
    # "Can't" -> "Ca n't" (a capital that starts a sentence is resolved later, as for any word);
    # "CAN'T" -> "ca n't": "CA" and "WO" would be acronyms (California), not the verb's host.
    text = _NEGATION_HOST.sub(lambda m: f"{m[1].lower() if m[1].isupper() else m[1]} {m[2]}", text)
    text = _CLITIC.sub(r" \1", text)
    return tuple(t.lower() if t.lower() in _CLITICS else t for t in _TOKEN.findall(text))


def detokenize(tokens: list[str]) -> str:
    """Join tokens back into ordinary text ("do n't" -> "don't", "word ," -> "word,")."""
    text = " ".join(tokens)
    text = re.sub(r"\b([A-Z]{2,}) (n't|'s|'ll|'re|'ve|'m|'d)\b", lambda m: m[1] + m[2].upper(), text)  # "DO n't" -> "DON'T"
    text = re.sub(r" (n't|'s|'ll|'re|'ve|'m|'d)\b", r"\1", text)  # also "ca n't" -> "can't", "wo n't" -> "won't"
    text = re.sub(r" ([,.;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$]) ", r"\1", text)
    text = re.sub(r"`` | ''", '"', text)
    return text


def category(token: str) -> str:
    """Category of a single token."""
    if _NUMBER.fullmatch(token):
        return "number"
    if any(c.isdigit() for c in token):
        return "numeric"
    if token in _CLITICS:
        return "word"
    letters = [c for c in token if c.isalpha()]
    if not letters:
        return "other"
    if all(c.islower() for c in letters):
        return "word"
    if len(letters) >= 2 and _ACRONYM.fullmatch(token) and all(c.isupper() for c in letters):
        return "acronym"
    # A capitalised name, or one capital letter ("Malcolm X"; a sentence-initial "A" is then
    # resolved to the word "a" like "The" to "the")
    if token[0].isupper() and (any(c.islower() for c in letters) or len(token) == 1):
        return "entity"
    return "other"


@dataclasses.dataclass
class VocabConfig(Config):
    min_count: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "word": 2, "acronym": 3, "entity": 3, "ngram": 5, "number": 3, "numeric": 3, "other": 5})
    max_size: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "word": 60000, "acronym": 3000, "entity": 15000, "ngram": 20000, "number": 3000, "numeric": 2000, "other": 500})
    max_ngram: int = 7
    max_entity_words: int = 5

    presets = {
        "tiny": {"min_count": {"word": 1, "acronym": 1, "entity": 1, "ngram": 2, "number": 1, "numeric": 1, "other": 1},
                 "max_size": {"word": 3000, "acronym": 200, "entity": 800, "ngram": 600, "number": 200, "numeric": 100, "other": 100}},
        "default": {},
        "full": {"max_size": {"word": 150000, "acronym": 10000, "entity": 60000, "ngram": 100000, "number": 10000,
                              "numeric": 10000, "other": 2000}},
    }


class _Counts:
    """Counts of every category gathered over sentences."""

    def __init__(self, max_ngram: int, max_entity_words: int):
        self.max_ngram, self.max_entity_words = max_ngram, max_entity_words
        self.single: dict[str, Counter] = {c: Counter() for c in CATEGORIES if c != "ngram"}
        self.initial_caps: Counter = Counter()  # capitalised sentence-initial tokens, decided later
        self.lower_runs: list[list[str]] = []

    def add(self, tokens: list[str], stop: set[str]) -> None:
        run: list[str] = []
        ent: list[str] = []

        def close_entity() -> None:
            # Stop words go from both ends: "The United States", "Mary and I" (a lone "I" or "A"
            # is a capital, so it joins a run; it is resolved to the word "i" / "a" on its own).
            while ent and (ent[-1].lower() in _CONNECTORS or ent[-1].lower() in stop):
                ent.pop()
            while ent and ent[0].lower() in stop:
                ent.pop(0)
            # "Prime Minister of the United States": the run itself (if short enough) and its
            # connector-free parts ("Prime Minister", "United States") are all entities.
            parts, part = [], []
            for tok in ent + ["of"]:
                if tok.lower() in _CONNECTORS:
                    if part:
                        parts.append(part)
                    part = []
                else:
                    part.append(tok)
            runs = [p for p in parts if len(p) >= 2] + ([ent] if len(parts) > 1 else [])
            for r in runs:
                if len(r) <= self.max_entity_words:
                    self.single["entity"][" ".join(r)] += 1
            ent.clear()

        initial = True  # only punctuation so far: a capital here may just start the sentence
        for tok in tokens:
            cat = category(tok)
            if cat == "entity" and (initial or tok.lower() in stop):
                self.initial_caps[tok] += 1
            elif cat in self.single:
                self.single[cat][tok] += 1
            if cat == "word":
                run.append(tok)
            else:
                if len(run) >= 2:
                    self.lower_runs.append(run)
                run = []
            if cat in ("entity", "acronym") or (ent and tok in _CONNECTORS):
                ent.append(tok)
            else:
                close_entity()
            initial = initial and cat == "other"
        close_entity()
        if len(run) >= 2:
            self.lower_runs.append(run)

    def resolve_initial(self, stop: set[str]) -> None:
        """A capitalised sentence-initial token (or a capitalised stop word anywhere) is the
        lowercase word unless it is seen capitalised mid-sentence more often than lowercase
        ("The" -> "the", "Paris" stays)."""
        words, ents = self.single["word"], self.single["entity"]
        for tok, n in self.initial_caps.items():
            low = tok.lower()
            if low in stop or words[low] > ents[tok]:
                words[low] += n
            else:
                ents[tok] += n

    def ngrams(self, min_count: int) -> Counter:
        """Apriori counting: an n-gram can reach ``min_count`` only if both its (n-1)-grams do."""
        out: Counter = Counter()
        frequent: set[tuple[str, ...]] | None = None
        for n in range(2, self.max_ngram + 1):
            counts: Counter = Counter()
            for run in self.lower_runs:
                for i in range(len(run) - n + 1):
                    g = tuple(run[i:i + n])
                    if frequent is None or (g[:-1] in frequent and g[1:] in frequent):
                        counts[g] += 1
            frequent = {g for g, c in counts.items() if c >= min_count}
            if not frequent:
                break
            out.update({" ".join(g): counts[g] for g in frequent})
        return out


class Vocab:
    """Units with their category and corpus count; ids are positions in ``units``."""

    def __init__(self, units: list[str], categories: list[str], counts: list[int], config: dict | None = None):
        if not (len(units) == len(categories) == len(counts)):
            raise ValueError("units, categories and counts must have the same length")
        self.units, self.categories, self.counts = list(units), list(categories), list(counts)
        self.config = config or {}
        self.ids = {u: i for i, u in enumerate(self.units)}
        if len(self.ids) != len(self.units):
            raise ValueError("duplicate units in vocabulary")

    def __len__(self) -> int:
        return len(self.units)

    def __contains__(self, unit: str) -> bool:
        return unit in self.ids

    def id(self, unit: str) -> int:
        return self.ids[unit]

    def by_category(self) -> dict[str, int]:
        return dict(Counter(self.categories))

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), {"config": self.config, "units": self.units, "categories": self.categories,
                                       "counts": self.counts})

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        p = Path(path)
        if p.is_dir():
            p = p / "vocab.json"
        if not p.exists():
            raise FileNotFoundError(f"{p}: no vocabulary (run `invemb vocab build`)")
        d = json.loads(p.read_text(encoding="utf-8"))
        return cls(d["units"], d["categories"], d["counts"], d.get("config"))

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256("\n".join(self.units).encode("utf-8")).hexdigest()[:16]


def build_vocab(sentences: Iterable[str], cfg: VocabConfig | None = None, progress: bool = False) -> Vocab:
    cfg = cfg or VocabConfig()
    from spacy.lang.en.stop_words import STOP_WORDS

    stop = set(STOP_WORDS)
    counts = _Counts(cfg.max_ngram, cfg.max_entity_words)
    it = sentences
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(sentences, desc="vocab: counting", unit="sent", dynamic_ncols=True, mininterval=0.5)
    for s in it:
        counts.add(tokenize(s), stop)
    counts.resolve_initial(stop)
    per_cat = dict(counts.single)
    per_cat["ngram"] = counts.ngrams(cfg.min_count.get("ngram", 2))
    units, cats, cnts = [], [], []
    seen: set[str] = set()
    for cat in CATEGORIES:
        kept = [(u, c) for u, c in per_cat[cat].items() if c >= cfg.min_count.get(cat, 1)]
        kept.sort(key=lambda uc: (-uc[1], uc[0]))
        for u, c in kept[: cfg.max_size.get(cat, len(kept))]:
            if u not in seen:
                seen.add(u)
                units.append(u)
                cats.append(cat)
                cnts.append(c)
    if not units:
        raise ValueError("no units: the sentences were empty or no unit reached its minimum count")
    return Vocab(units, cats, cnts, cfg.to_dict())
