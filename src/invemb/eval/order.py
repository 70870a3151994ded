"""Order sensitivity: does the vector notice word order, more than it notices a synonym?

For each sentence, three variants (built once, deterministically, by :func:`make_order_probes`):

- ``swapped``: two content words exchanged ("the cat chased the dog" -> "the dog chased the cat");
- ``synonym``: one content word replaced by a WordNet synonym ("the cat pursued the dog");
- ``shuffled``: all tokens in a random order.

**Order discrimination** is the fraction of sentences with cos(s, swapped) < cos(s, synonym): the
swap changed the meaning, the synonym did not, so a good encoder moves further for the swap. A
bag-of-words encoder scores 0 on it (a swap does not move it at all).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import random
import re

from invemb.eval.base import NotRun, encode_unique, quantiles, rowwise_cos
from invemb.text.sources import MissingDataError

_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


@dataclasses.dataclass(frozen=True)
class OrderProbe:
    """One sentence and its variants; ``swap`` and ``substitution`` say what was changed."""

    sentence: str
    swapped: str
    synonym: str
    shuffled: str
    swap: tuple[str, str]
    substitution: tuple[str, str]


def _stop_words() -> set[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return set(STOP_WORDS)


def _frequency_scorer():
    """Rank synonym candidates by corpus frequency: ``wordfreq`` if installed, else WordNet's
    tagged-sense counts (summed over the candidate's lemmas among the senses considered)."""
    if importlib.util.find_spec("wordfreq") is not None:
        from wordfreq import zipf_frequency

        return lambda name, lemma_count: zipf_frequency(name, "en")
    return lambda name, lemma_count: lemma_count


class _Synonyms:
    """Cached WordNet look-ups: base forms of a word, and its most frequent single-word synonym."""

    def __init__(self, wn, synsets_per_word: int):
        self.wn, self.synsets_per_word, self.score = wn, synsets_per_word, _frequency_scorer()
        self._bases: dict[str, set[str]] = {}
        self._best: dict[str, str | None] = {}

    def bases(self, low: str) -> set[str]:
        if low not in self._bases:  # every base form, any part of speech ("chased" -> chase)
            self._bases[low] = {low} | {b for pos in "nvar" for b in self.wn._morphy(low, pos)}
        return self._bases[low]

    def best(self, word: str, present: set[str]) -> str | None:
        """The synonym to substitute for ``word``, or None; ``present``: the sentence's word
        forms and their bases (a "synonym" already there would make the change half a swap)."""
        low = word.lower()
        if low not in self._best:
            counts: dict[str, int] = {}
            for synset in self.wn.synsets(low)[: self.synsets_per_word]:
                for lemma in synset.lemmas():
                    name = lemma.name()
                    # single lowercase words only: no multi-word lemmas, no proper nouns, and not
                    # the word's own base form (a morphological variant is no synonym)
                    if name.isalpha() and name.islower() and name not in self.bases(low):
                        counts[name] = counts.get(name, 0) + lemma.count()
            self._best[low] = min(counts, key=lambda n: (-self.score(n, counts[n]), n)) if counts else None
        found = self._best[low]
        if found is None or found in present:
            return None
        return found[0].upper() + found[1:] if word[0].isupper() else found


def _replace_spans(text: str, spans: list[tuple[int, int]], new: list[str]) -> str:
    out, last = [], 0
    for (start, end), word in sorted(zip(spans, new)):
        out += [text[last:start], word]
        last = end
    return "".join(out + [text[last:]])


def _shuffle_tokens(sentence: str, rng: random.Random) -> str:
    tokens = sentence.split()
    for _ in range(10):  # a shuffle can land on the original order; retry a few times
        perm = tokens[:]
        rng.shuffle(perm)
        if perm != tokens:
            break
    return " ".join(perm)


def make_order_probes(sentences: list[str], seed: int = 0, wn=None, synsets_per_word: int = 3) -> list[OrderProbe]:
    """Swapped / synonym-substituted / shuffled variants of each sentence, deterministic per
    (seed, sentence) regardless of the list's order.

    Content words are alphabetic tokens that are not (spaCy) stop words. The swap exchanges two
    content words of different spelling; the synonym is the most frequent single-word lemma,
    different from the word and its base forms, among the word's first ``synsets_per_word``
    WordNet senses, unless that synonym (or a form of it) is already in the sentence. Sentences
    without such a pair or such a synonym are skipped: ``len(sentences) - len(probes)`` of them.
    """
    if wn is None:
        from invemb.text.sources import ensure_wordnet

        wn = ensure_wordnet()
    stop = _stop_words()
    synonyms = _Synonyms(wn, synsets_per_word)
    probes = []
    for sentence in sentences:
        content = [m for m in _WORD.finditer(sentence) if m.group().isalpha() and m.group().lower() not in stop]
        pairs = [(a, b) for i, a in enumerate(content) for b in content[i + 1:] if a.group().lower() != b.group().lower()]
        present = {b for m in _WORD.finditer(sentence) for b in synonyms.bases(m.group().lower())}
        with_synonym = [(m, s) for m in content if (s := synonyms.best(m.group(), present))]
        if not pairs or not with_synonym:
            continue
        rng = random.Random(f"{seed}\t{sentence}")
        a, b = rng.choice(pairs)
        swapped = _replace_spans(sentence, [a.span(), b.span()], [b.group(), a.group()])
        word, syn = rng.choice(with_synonym)
        substituted = _replace_spans(sentence, [word.span()], [syn])
        probes.append(OrderProbe(sentence, swapped, substituted, _shuffle_tokens(sentence, rng),
                                 (a.group(), b.group()), (word.group(), syn)))
    return probes


class OrderEvaluator:
    """cos(s, swapped), cos(s, shuffled), cos(s, synonym) distributions and order discrimination.

    Probes are built on the first call and reused, so calling it every epoch costs only encoding.
    """

    primary_metric = "order_discrimination"

    def __init__(self, sentences: list[str], seed: int = 0, batch_size: int = 64, wn=None, name: str = "order"):
        self.sentences, self.seed, self.batch_size, self.wn, self.name = list(sentences), seed, batch_size, wn, name
        self._probes: list[OrderProbe] | None = None

    @property
    def probes(self) -> list[OrderProbe]:
        if self._probes is None:
            try:
                self._probes = make_order_probes(self.sentences, self.seed, self.wn)
            except MissingDataError as err:  # no WordNet here
                raise NotRun(str(err)) from err
        return self._probes

    def __call__(self, encoder) -> dict[str, float]:
        probes = self.probes
        if not probes:
            raise ValueError(f"{self.name}: none of the {len(self.sentences)} sentences has two content words and a synonym")
        n = len(probes)
        texts = [p.sentence for p in probes] + [p.swapped for p in probes] + [p.synonym for p in probes] + [p.shuffled for p in probes]
        v = encode_unique(encoder, texts, task=self.name, batch_size=self.batch_size)
        original, swapped, synonym, shuffled = v[:n], v[n:2 * n], v[2 * n:3 * n], v[3 * n:]  # each (n, dim)
        cos_swap, cos_syn, cos_shuf = rowwise_cos(original, swapped), rowwise_cos(original, synonym), rowwise_cos(original, shuffled)
        return {
            "order_discrimination": float((cos_swap < cos_syn).double().mean()),
            "synonym_minus_swap_mean": float((cos_syn - cos_swap).mean()),
            **quantiles(cos_swap, "cos_swap"),
            **quantiles(cos_shuf, "cos_shuffle"),
            **quantiles(cos_syn, "cos_substituted"),  # s with one word replaced by a synonym
            "n_probes": float(n),
            "n_skipped": float(len(self.sentences) - n),
        }
