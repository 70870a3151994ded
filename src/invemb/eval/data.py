"""Evaluation sets built from the installed corpora, held out the same way training splits them.

Wikipedia articles and WordNet synsets are taken from the corpus's ``test`` split
(:func:`invemb.text.corpus.split_of` on the same document ids the corpus uses), and
synonym/antonym pairs from the lexicon's held-out share (:func:`invemb.text.lexicon.heldout`),
so a model trained on the built corpus and lexicon is evaluated on text it has not seen.
Each loader raises :class:`~invemb.text.sources.MissingDataError` when its source is missing.
"""
from __future__ import annotations

import random
import re

from invemb.text.corpus import split_of
from invemb.text.lexicon import heldout

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_LEMMA = re.compile(r"[a-z]+(?:[ -][a-z]+)*")


def split_sentences(text: str) -> list[str]:
    """A light regex sentence split (no spaCy: evaluation sets must be cheap to rebuild)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def wiki_articles(split: str = "test", wiki_path: str | None = None) -> list[dict]:
    """Wikipedia summaries whose document falls in ``split`` (``None``: all), sorted by title."""
    from invemb.text.sources import wiki_summaries

    rows = wiki_summaries(wiki_path)
    return [r for r in rows if split is None or split_of(f"wiki:{r['title']}") == split]


def wiki_sentences(n: int = 500, seed: int = 0, split: str = "test", min_words: int = 6, max_words: int = 40,
                   wiki_path: str | None = None) -> list[str]:
    """``n`` sentences sampled from held-out Wikipedia summaries."""
    pool = [s for r in wiki_articles(split, wiki_path) for s in split_sentences(r["extract"])
            if min_words <= len(s.split()) <= max_words]
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
