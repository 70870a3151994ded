"""Evaluation sets built from the installed corpora, held out the same way training splits them.

Wikipedia articles and WordNet synsets are taken from the corpus's ``test`` split
(:func:`invemb.text.corpus.split_of` on the same document ids the corpus uses), and
synonym/antonym pairs from the lexicon's held-out share (:func:`invemb.text.lexicon.heldout`),
so a model trained on the built corpus and lexicon is evaluated on text it has not seen.
Each loader raises :class:`~invemb.text.sources.MissingDataError` when its source is missing.
"""
from __future__ import annotations

import functools
import random
import re

from invemb.text.corpus import split_of
from invemb.text.lexicon import heldout

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_LEMMA = re.compile(r"[a-z]+(?:[ -][a-z]+)*")


def split_sentences(text: str) -> list[str]:
    """A light regex sentence split (no spaCy: evaluation sets must be cheap to rebuild)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


@functools.lru_cache(maxsize=2)
def _wiki_rows(wiki_path: str | None) -> tuple[dict, ...]:
    from invemb.text.sources import wiki_summaries

    return tuple(wiki_summaries(wiki_path))  # parsed once per process: several evaluators read it


def wiki_articles(split: str = "test", wiki_path: str | None = None) -> list[dict]:
    """Wikipedia summaries whose document falls in ``split`` (``None``: all), sorted by title."""
    return [dict(r) for r in _wiki_rows(wiki_path) if split is None or split_of(f"wiki:{r['title']}") == split]


@functools.lru_cache(maxsize=4)
def _sentence_pool(split: str, min_words: int, max_words: int, wiki_path: str | None) -> tuple[str, ...]:
    """Every sentence of ``split``'s summaries within the word limits (split once per process)."""
    return tuple(s for r in wiki_articles(split, wiki_path) for s in split_sentences(r["extract"])
                 if min_words <= len(s.split()) <= max_words)


def wiki_sentences(n: int = 500, seed: int = 0, split: str = "test", min_words: int = 6, max_words: int = 40,
                   wiki_path: str | None = None) -> list[str]:
    """``n`` sentences sampled from held-out Wikipedia summaries (the sample depends on ``n`` and
    ``seed`` only)."""
    pool = list(_sentence_pool(split, min_words, max_words, wiki_path))
    rng = random.Random(seed)
    return rng.sample(pool, min(n, len(pool)))


def wordnet_relation_pairs(split: str = "dev", max_pairs: int = 2000, seed: int = 0, wn=None) -> dict[str, list[tuple[str, str]]]:
    """Synonym and antonym pairs of WordNet lemmas (single or multi-word, lowercase letters,
    spaces and hyphens), in the lexicon's ``dev`` (held-out) or ``train`` share.

    Synonyms: two lemmas of one synset; antonyms: WordNet antonym links. Each relation is
    sampled down to ``max_pairs`` (deterministically).
    """
    if wn is None:
        from invemb.text.sources import ensure_wordnet

        wn = ensure_wordnet()
    want_dev = split == "dev"
    synonyms: set[tuple[str, str]] = set()
    antonyms: set[tuple[str, str]] = set()

    def keep(a: str, b: str, table: set) -> None:
        if a != b and _LEMMA.fullmatch(a) and _LEMMA.fullmatch(b) and heldout(a, b) == want_dev:
            table.add((a, b) if a < b else (b, a))

    for synset in wn.all_synsets():
        names = [lemma.name().replace("_", " ") for lemma in synset.lemmas()]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                keep(a, b, synonyms)
        for lemma in synset.lemmas():
            for other in lemma.antonyms():
                keep(lemma.name().replace("_", " "), other.name().replace("_", " "), antonyms)
    rng = random.Random(seed)
    return {rel: sorted(rng.sample(sorted(pairs), min(max_pairs, len(pairs))))
            for rel, pairs in (("synonym", synonyms), ("antonym", antonyms))}


def _sample(rows: list, n: int, seed: int) -> list:
    if len(rows) <= n:
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]  # kept in source order


_LEMMA_COUNTS: dict[int, dict[str, tuple[int, str]]] = {}


def wordnet_lemma_counts(wn=None) -> dict[str, tuple[int, str]]:
    """Lemma (lowercase, spaces) -> (tagged-sense count over all senses, lexicographer file of its
    most frequent sense), for lemmas seen at least once in WordNet's tagged corpus.

    Read straight from ``cntlist.rev`` (``sense_key sense_number count`` lines; the sense key
    ``lemma%pos:lexfile:...`` names the lexicographer file): one pass instead of a
    ``Lemma.count()`` call per lemma, which reopens that file each time.
    """
    from invemb.text.sources import LEXNAMES

    if wn is None:
        from invemb.text.sources import ensure_wordnet

        wn = ensure_wordnet()
    if id(wn) not in _LEMMA_COUNTS:
        table: dict[str, list] = {}  # name -> [total, top sense's count, its lexicographer file]
        with wn.open("cntlist.rev") as f:
            for line in f:
                key, _, count = line.split()
                lemma, sense = key.split("%")
                name, c = lemma.replace("_", " "), int(count)
                if _LEMMA.fullmatch(name):
                    row = table.setdefault(name, [0, -1, ""])
                    row[0] += c
                    if c > row[1]:
                        row[1:] = [c, LEXNAMES[int(sense.split(":")[1])]]
        _LEMMA_COUNTS[id(wn)] = {name: (total, lexname) for name, (total, _, lexname) in table.items()}
    return _LEMMA_COUNTS[id(wn)]


def title_summary_task(n: int = 300, seed: int = 0, split: str = "test", wiki_path: str | None = None):
    """Wikipedia title -> its summary, among the summaries of the sampled held-out articles."""
    from invemb.eval.retrieval import RetrievalTask

    rows = _sample(wiki_articles(split, wiki_path), n, seed)
    return RetrievalTask("title_to_summary", [r["title"] for r in rows], [r["extract"] for r in rows],
                         [{i} for i in range(len(rows))])


def first_sentence_rest_task(n: int = 300, seed: int = 0, split: str = "test", wiki_path: str | None = None):
    """First sentence of a summary -> the rest of that summary."""
    from invemb.eval.retrieval import RetrievalTask

    pairs = []
    for r in wiki_articles(split, wiki_path):
        sentences = split_sentences(r["extract"])
        if len(sentences) >= 2:
            pairs.append((sentences[0], " ".join(sentences[1:])))
    pairs = _sample(pairs, n, seed)
    return RetrievalTask("first_sentence_to_rest", [a for a, _ in pairs], [b for _, b in pairs],
                         [{i} for i in range(len(pairs))])


def gloss_lemma_task(n: int = 300, seed: int = 0, split: str = "test", wn=None):
    """Reverse dictionary: a WordNet gloss -> its synset's lemmas, among the lemmas of all
    sampled synsets. Synsets come from the corpus's held-out split and have a lemma seen in
    WordNet's tagged corpus (so the words are not all obscure)."""
    from invemb.eval.retrieval import RetrievalTask

    if wn is None:
        from invemb.text.sources import ensure_wordnet

        wn = ensure_wordnet()
    seen = wordnet_lemma_counts(wn)
    synsets = [s for s in wn.all_synsets() if split_of(f"wordnet:{s.name()}") == split
               and any(lemma.name().replace("_", " ").lower() in seen for lemma in s.lemmas())]
    synsets = _sample(synsets, n, seed)
    lemmas = list(dict.fromkeys(lemma.name().replace("_", " ") for s in synsets for lemma in s.lemmas()))
    row = {u: i for i, u in enumerate(lemmas)}
    return RetrievalTask("gloss_to_lemma", [s.definition() for s in synsets], lemmas,
                         [{row[lemma.name().replace("_", " ")] for lemma in s.lemmas()} for s in synsets])


def topic_articles(n: int = 1000, seed: int = 0, wiki_path: str | None = None,
                   exclude: tuple[str, ...] = ("Uncategorized",), min_per_label: int = 5) -> tuple[list[str], list[str]]:
    """(summaries, topic labels) of ``n`` sampled Wikipedia articles (all splits: the labels are
    never trained on), leaving out catch-all topics and topics with fewer than ``min_per_label``
    articles in the sample (a stratified k-fold needs at least k of each)."""
    from collections import Counter

    rows = [r for r in wiki_articles(None, wiki_path) if r.get("topic") and r["topic"] not in exclude]
    rows = _sample(rows, n, seed)
    counts = Counter(r["topic"] for r in rows)
    rows = [r for r in rows if counts[r["topic"]] >= min_per_label]
    return [r["extract"] for r in rows], [r["topic"] for r in rows]
