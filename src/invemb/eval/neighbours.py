"""Neighbour purity: what are a unit's nearest neighbours, according to WordNet?

For ``n_sample`` query units, the top-``k`` neighbours among all units (FAISS, exact) are
labelled by the first WordNet relation that holds, in this order:

``same_lemma`` (the same word or a morphological variant: bank / banks), ``synonym`` (a shared
synset), ``antonym``, ``hypernym`` / ``hyponym`` (one step, instances included),
``other_related`` (co-hyponyms, similar-to, also-see, part/member/substance meronyms and
holonyms, attributes, entailments, derivationally related forms), else ``unrelated``.

``purity`` is the share of related neighbours, antonyms excluded: an antonym among the nearest
units is a failure for an invertible embedding, reported on its own as ``antonym_intrusion``.
"""
from __future__ import annotations

import random

from invemb.eval.base import NotRun, encode_checked

LABELS = ("same_lemma", "synonym", "antonym", "hypernym", "hyponym", "other_related", "unrelated")
PURE = {"same_lemma", "synonym", "hypernym", "hyponym", "other_related"}


class WordNetRelations:
    """Labels a (unit, neighbour) pair with the first WordNet relation that holds; cached per unit."""

    def __init__(self, wn):
        self.wn = wn
        self._info: dict[str, dict[str, set]] = {}

    def info(self, unit: str) -> dict[str, set]:
        if unit not in self._info:
            key = unit.lower().replace(" ", "_")
            synsets = set(self.wn.synsets(key))
            lemmas = [lem for s in synsets for lem in s.lemmas() if lem.name().lower() == key]
            related = set()
            for s in synsets:
                for h in s.hypernyms() + s.instance_hypernyms():
                    related.update(h.hyponyms() + h.instance_hyponyms())  # co-hyponyms
                related.update(s.similar_tos() + s.also_sees() + s.part_meronyms() + s.member_meronyms()
                               + s.substance_meronyms() + s.part_holonyms() + s.member_holonyms()
                               + s.substance_holonyms() + s.attributes() + s.entailments())
            for lem in lemmas:
                related.update(d.synset() for d in lem.derivationally_related_forms())
            self._info[unit] = {
                "bases": {key} | {b for pos in "nvar" for b in self.wn._morphy(key, pos)},
                "synsets": synsets,
                "antonyms": {a.name().lower() for lem in lemmas for a in lem.antonyms()},
                "hypernyms": {h for s in synsets for h in s.hypernyms() + s.instance_hypernyms()},
                "hyponyms": {h for s in synsets for h in s.hyponyms() + s.instance_hyponyms()},
                "related": related - synsets,
            }
        return self._info[unit]

    def known(self, unit: str) -> bool:
        return bool(self.info(unit)["synsets"])

    def label(self, unit: str, other: str) -> str:
        a, b = self.info(unit), self.info(other)
        if a["bases"] & b["bases"]:
            return "same_lemma"
        if a["synsets"] & b["synsets"]:
            return "synonym"
        if a["antonyms"] & b["bases"] or b["antonyms"] & a["bases"]:
            return "antonym"
        if a["hypernyms"] & b["synsets"]:
            return "hypernym"
        if a["hyponyms"] & b["synsets"]:
            return "hyponym"
        if a["related"] & b["synsets"] or b["related"] & a["synsets"]:
            return "other_related"
        return "unrelated"


def wordnet_units(n: int = 5000, wn=None) -> tuple[list[str], list[str]]:
    """The ``n`` most frequent WordNet lemmas (tagged-sense counts; lowercase single or multi-word)
    and, as category, the lexicographer file of each one's most frequent sense (noun.animal ...)."""
    from invemb.eval.data import wordnet_lemma_counts

    counts = wordnet_lemma_counts(wn)
    units = sorted(counts, key=lambda u: (-counts[u][0], u))[:n]
    return units, [counts[u][1] for u in units]


def vocab_units(path: str, n: int = 5000, categories: tuple[str, ...] = ("word", "ngram", "entity", "acronym")) -> tuple[list[str], list[str]]:
    """The ``n`` most frequent units of a ``Vocab`` JSON (``invemb vocab build``) in ``categories``."""
    from invemb.text.vocab import Vocab

    vocab = Vocab.load(path)
    rows = sorted((-c, u, cat) for u, cat, c in zip(vocab.units, vocab.categories, vocab.counts) if cat in categories)[:n]
    return [u for _, u, _ in rows], [cat for _, _, cat in rows]


class NeighbourPurityEvaluator:
    primary_metric = "purity"

    def __init__(self, units: list[str] | None = None, vocab_path: str | None = None, n_units: int = 5000,
                 n_sample: int = 1000, k: int = 10, seed: int = 0, wn=None, batch_size: int = 256, name: str = "neighbours"):
        self._units, self.vocab_path, self.n_units, self.n_sample, self.k = units, vocab_path, n_units, n_sample, k
        self.seed, self._wn, self.batch_size, self.name = seed, wn, batch_size, name
        self._relations: WordNetRelations | None = None
        self._queries: list[int] | None = None

    @property
    def relations(self) -> WordNetRelations:
        if self._relations is None:
            if self._wn is None:
                from invemb.text.sources import MissingDataError, ensure_wordnet

                try:
                    self._wn = ensure_wordnet()
                except MissingDataError as err:
                    raise NotRun(str(err)) from err
            self._relations = WordNetRelations(self._wn)
        return self._relations

    @property
    def units(self) -> list[str]:
        if self._units is None:
            if self.vocab_path:
                self._units = vocab_units(self.vocab_path, self.n_units)[0]
            else:
                self._units = wordnet_units(self.n_units, self.relations.wn)[0]
        return self._units

    @property
    def queries(self) -> list[int]:
        """Positions of the sampled query units (only units WordNet knows: others cannot be judged)."""
        if self._queries is None:
            known = [i for i, u in enumerate(self.units) if self.relations.known(u)]
            self._queries = sorted(random.Random(self.seed).sample(known, min(self.n_sample, len(known))))
        return self._queries

    def neighbours(self, encoder) -> list[list[int]]:
        """Top-``k`` neighbour positions of each query unit, itself left out."""
        from invemb.eval.retrieval import dense_rankings

        vectors = encode_checked(encoder, self.units, task=self.name, batch_size=self.batch_size)
        ranked = dense_rankings(vectors[self.queries], vectors, self.k + 1)
        return [[j for j in row if j != q][: self.k] for q, row in zip(self.queries, ranked)]

    def __call__(self, encoder) -> dict[str, float]:
        if len(self.units) < 2 or not self.queries:
            raise ValueError(f"{self.name}: need at least 2 units and one WordNet-known query unit")
        labels = [self.relations.label(self.units[q], self.units[j])
                  for q, row in zip(self.queries, self.neighbours(encoder)) for j in row]
        share = {f"share_{lab}": labels.count(lab) / len(labels) for lab in LABELS}
        return {"purity": sum(labels.count(lab) for lab in PURE) / len(labels),
                "antonym_intrusion": share["share_antonym"], **share,
                "n_queries": float(len(self.queries)), "n_units": float(len(self.units))}
