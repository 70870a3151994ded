"""Relation margins on held-out word pairs: are synonyms closer than random pairs, and than antonyms?

- ``synonym_margin`` = mean cos(synonym pairs) - mean cos(random pairs), where a random pair joins
  the first word of one synonym pair with the second word of another (same words, broken link);
- ``synonym_minus_antonym`` = mean cos(synonyms) - mean cos(antonyms): positive when antonyms
  sit further apart than synonyms (distributional encoders usually put them close);
- ``synonym_beats_random``: fraction of synonym pairs closer than their random pair.
"""
from __future__ import annotations

import random


from invemb.eval.base import NotRun, encode_unique, rowwise_cos
from invemb.text.sources import MissingDataError


class RelationEvaluator:
    """``pairs = {"synonym": [(a, b), ...], "antonym": [...]}``; ``None`` loads WordNet's held-out
    pairs (:func:`invemb.eval.data.wordnet_relation_pairs`) on the first call."""

    primary_metric = "synonym_margin"

    def __init__(self, pairs: dict[str, list[tuple[str, str]]] | None = None, seed: int = 0, batch_size: int = 256,
                 max_pairs: int = 2000, name: str = "relations"):
        self._pairs, self.seed, self.batch_size, self.max_pairs, self.name = pairs, seed, batch_size, max_pairs, name

    @property
    def pairs(self) -> dict[str, list[tuple[str, str]]]:
        if self._pairs is None:
            from invemb.eval.data import wordnet_relation_pairs

            try:
                self._pairs = wordnet_relation_pairs("dev", self.max_pairs, self.seed)
            except MissingDataError as err:  # no WordNet here
                raise NotRun(str(err)) from err
        return self._pairs

    def __call__(self, encoder) -> dict[str, float]:
        synonyms, antonyms = list(self.pairs.get("synonym", [])), list(self.pairs.get("antonym", []))
        if len(synonyms) < 2:
            raise ValueError(f"{self.name}: need at least 2 synonym pairs, got {len(synonyms)}")
        # derangement of the second words: every random pair breaks a real link
        shift = random.Random(self.seed).randrange(1, len(synonyms))
        randoms = [(a, synonyms[(i + shift) % len(synonyms)][1]) for i, (a, _) in enumerate(synonyms)]
        all_pairs = synonyms + randoms + antonyms
        v = encode_unique(encoder, [a for a, _ in all_pairs] + [b for _, b in all_pairs], task=self.name, batch_size=self.batch_size)
        cos = rowwise_cos(v[: len(all_pairs)], v[len(all_pairs):])  # (P,)
        n_syn = len(synonyms)
        cos_syn, cos_rand, cos_ant = cos[:n_syn], cos[n_syn:2 * n_syn], cos[2 * n_syn:]
        out = {
            "synonym_margin": float(cos_syn.mean() - cos_rand.mean()),
            "cos_synonym_mean": float(cos_syn.mean()),
            "cos_random_mean": float(cos_rand.mean()),
            "synonym_beats_random": float((cos_syn > cos_rand).double().mean()),
            "n_synonym_pairs": float(n_syn),
            "n_antonym_pairs": float(len(antonyms)),
        }
        if len(antonyms):
            out |= {"cos_antonym_mean": float(cos_ant.mean()),
                    "synonym_minus_antonym": float(cos_syn.mean() - cos_ant.mean()),
                    "antonym_margin": float(cos_ant.mean() - cos_rand.mean())}
        return out
