"""WordNet synonyms and antonyms restricted to the unit vocabulary.

Multi-word units match WordNet lemmas through underscores ("prime minister" <-> prime_minister);
relations are symmetric; units with more than ``max_synonyms`` synonyms are dropped (they are
mostly polysemous function-like words whose "synonyms" are noise). Pairs are split into train
and held-out (dev) by a hash of the sorted pair, the same rule the evaluation suite uses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from invemb.config import Config
from invemb.io import atomic_write_json
from invemb.text.vocab import Vocab


def heldout(a: str, b: str) -> bool:
    """True for the ~10% of pairs held out of training (order-independent, deterministic)."""
    return int(hashlib.sha1("\t".join(sorted([a, b])).encode("utf-8")).hexdigest(), 16) % 10 == 0


@dataclasses.dataclass
class LexiconConfig(Config):
    max_synonyms: int = 25
    categories: list[str] = dataclasses.field(default_factory=lambda: ["word", "ngram", "entity", "acronym"])
    nltk_data: str = ""  # an nltk_data folder with corpora/wordnet; "" = the project's offline copy

    presets = {"tiny": {}, "default": {}, "full": {}}


@dataclasses.dataclass
class Lexicon:
    synonyms: dict[str, list[str]]
    antonyms: dict[str, list[str]]

    def pairs(self, relation: str, split: str = "train") -> list[tuple[str, str]]:
        """Unordered pairs (a < b) of one relation, in the ``train`` or ``dev`` split."""
        table = self.synonyms if relation == "synonym" else self.antonyms
        out = {(a, b) if a < b else (b, a) for a, bs in table.items() for b in bs}
        want_dev = split == "dev"
        return sorted(p for p in out if heldout(*p) == want_dev)

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), {"synonyms": self.synonyms, "antonyms": self.antonyms})

    @classmethod
    def load(cls, path: str | Path) -> "Lexicon":
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no lexicon (run `invemb vocab build`, which writes lexicon.json)")
        d = json.loads(p.read_text(encoding="utf-8"))
        return cls(d["synonyms"], d["antonyms"])

    def stats(self) -> dict[str, int]:
        return {"units_with_synonyms": len(self.synonyms), "units_with_antonyms": len(self.antonyms),
                "synonym_pairs": len(self.pairs("synonym", "train")) + len(self.pairs("synonym", "dev")),
                "antonym_pairs": len(self.pairs("antonym", "train")) + len(self.pairs("antonym", "dev"))}


def build_lexicon(vocab: Vocab, cfg: LexiconConfig | None = None, wn=None) -> Lexicon:
    cfg = cfg or LexiconConfig()
    if wn is None:
        from invemb.text.sources import ensure_wordnet

        wn = ensure_wordnet(cfg.nltk_data or None)
    keep = set(cfg.categories)

    def to_unit(lemma_name: str) -> str | None:
        name = lemma_name.replace("_", " ")
        if name in vocab.ids and vocab.categories[vocab.ids[name]] in keep:
            return name
        return None

    syn: dict[str, set[str]] = {}
    ant: dict[str, set[str]] = {}
    for unit, cat in zip(vocab.units, vocab.categories):
        if cat not in keep:
            continue
        key = unit.replace(" ", "_")
        for synset in wn.synsets(key):
            # Only senses where the unit itself is a lemma: wn.synsets() also matches inflected
            # forms through morphy ("banks" -> bank.n.01), which are variants, not synonyms.
            own = [lem for lem in synset.lemmas() if lem.name() == key]
            if not own:
                continue
            for lemma in synset.lemmas():
                other = to_unit(lemma.name())
                if other and other != unit:
                    syn.setdefault(unit, set()).add(other)
                    syn.setdefault(other, set()).add(unit)
            for a in own[0].antonyms():
                target = to_unit(a.name())
                if target and target != unit:
                    ant.setdefault(unit, set()).add(target)
                    ant.setdefault(target, set()).add(unit)
    # A pair that is both (father / mother, king / queen: two senses of one synset) is an antonym
    # pair only: a synonym term would pull together what the antonym term pushes apart.
    for unit, others in ant.items():
        if unit in syn:
            syn[unit] -= others
    # Crowded units (more than max_synonyms) leave the synonym table, where their many senses would
    # pull unrelated units together; their antonyms ("good" / "bad") stay.
    crowded = {u for u, s in syn.items() if len(s) > cfg.max_synonyms}
    synonyms = {u: sorted(s - crowded) for u, s in syn.items() if u not in crowded and s - crowded}
    antonyms = {u: sorted(s) for u, s in ant.items()}
    return Lexicon(synonyms, antonyms)
