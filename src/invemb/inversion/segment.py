"""Sentence -> sequence of vocabulary units.

Greedy longest match over the research-code tokens: at each position the longest span (up to
``max_span`` tokens) that is a unit wins, so phrases, multi-word entities and numbers come out
whole, then single words. A token that is no unit is first tried lowercased (sentence-initial
capitals; with ``fold_case``, any capital: for an uncased EM "Neckar" and the unit "neckar" have one
vector), then split into sub-units at hyphens; what is still left is kept as an ``oov`` segment,
counted in the coverage, never silently dropped.
"""
from __future__ import annotations

import dataclasses

from invemb.text.vocab import Vocab, category, detokenize, tokenize


@dataclasses.dataclass
class Segment:
    text: str  # the unit (or the raw token for an OOV segment)
    unit_id: int  # -1 for OOV
    start: int  # first token index in the sentence
    end: int  # one past the last token index
    source_text: str = ""  # the original tokens joined, when they differ from the unit (case)

    @property
    def oov(self) -> bool:
        return self.unit_id < 0


@dataclasses.dataclass
class Segmentation:
    tokens: list[str]
    segments: list[Segment]

    @property
    def unit_ids(self) -> list[int]:
        return [s.unit_id for s in self.segments if not s.oov]

    @property
    def coverage(self) -> float:
        """Share of tokens covered by vocabulary units."""
        covered = {i for s in self.segments if not s.oov for i in range(s.start, s.end)}  # sub-units share a token
        return len(covered) / max(1, len(self.tokens))

    @property
    def oov_tokens(self) -> list[str]:
        return [s.text for s in self.segments if s.oov]

    def text(self) -> str:
        """The units joined back into text; sub-units of one token are joined without spaces."""
        words: list[str] = []
        for i, s in enumerate(self.segments):
            if i and (s.start, s.end) == (self.segments[i - 1].start, self.segments[i - 1].end):
                words[-1] += s.text
            else:
                words.append(s.text)
        return detokenize(words)


class Segmenter:
    def __init__(self, vocab: Vocab, max_span: int = 7, fold_case: bool = False):
        from spacy.lang.en.stop_words import STOP_WORDS

        self.vocab, self.max_span, self.fold_case = vocab, max_span, fold_case
        self.stop = set(STOP_WORDS)  # the vocabulary's list (invemb.text.vocab.build_vocab)

    def _lookup(self, tokens: list[str], i: int, j: int, initial: bool) -> tuple[str, int] | None:
        span = " ".join(tokens[i:j])
        uid = self.vocab.ids.get(span)
        if uid is not None:
            return span, uid
        # As the vocabulary counts them: a capital that only starts the sentence (nothing but
        # punctuation before it), or a capitalised stop word anywhere ("I", "The"), is the
        # lowercase word; the rest of the span is kept.
        if tokens[i][:1].isupper() and (initial or tokens[i].lower() in self.stop):
            lowered = " ".join([tokens[i].lower()] + tokens[i + 1:j])
            uid = self.vocab.ids.get(lowered)
            if uid is not None:
                return lowered, uid
        if self.fold_case and span != span.lower():
            uid = self.vocab.ids.get(span.lower())
            if uid is not None:
                return span.lower(), uid
        return None

    def segment(self, sentence: str) -> Segmentation:
        tokens = tokenize(sentence)
        segments: list[Segment] = []
        lead = next((k for k, t in enumerate(tokens) if category(t) != "other"), len(tokens))  # opening punctuation
        i = 0
        while i < len(tokens):
            for j in range(min(len(tokens), i + self.max_span), i, -1):
                hit = self._lookup(tokens, i, j, initial=i <= lead)
                if hit is not None:
                    unit, uid = hit
                    src = " ".join(tokens[i:j])
                    segments.append(Segment(unit, uid, i, j, src if src != unit else ""))
                    i = j
                    break
            else:
                segments.extend(self._fallback(tokens[i], i))
                i += 1
        return Segmentation(tokens, segments)

    def _fallback(self, token: str, i: int) -> list[Segment]:
        """Sub-units of a hyphenated OOV token ("ultra-modern" -> ultra, -, modern), else OOV."""
        if "-" in token:
            parts = [p for p in token.replace("-", " - ").split() if p]
            ids = [self.vocab.ids.get(p, self.vocab.ids.get(p.lower(), -1)) for p in parts]
            if all(x >= 0 for x in ids):
                return [Segment(self.vocab.units[x], x, i, i + 1, token) for x in ids]
        return [Segment(token, -1, i, i + 1)]
