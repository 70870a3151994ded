"""A toy world for inversion tests: a 24-word vocabulary, sentences whose words always come in one
canonical order (so positions are learnable), and an additive encoder (a text's vector is the
normalised sum of its words' hash vectors, so units are retrievable from a sentence vector)."""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from invemb.text.vocab import Vocab, tokenize

WORDS = ("the a big small red blue cat dog bird fox sat ran slept jumped on under near over the mat rug "
         "box tree hill today").split()
CANONICAL = list(dict.fromkeys(WORDS))  # the order every toy sentence follows
UNITS = CANONICAL + ["."]


def toy_vocab() -> Vocab:
    return Vocab(UNITS, ["word"] * (len(UNITS) - 1) + ["other"], [10] * len(UNITS))


def toy_sentences(n: int, seed: int = 0, min_words: int = 3, max_words: int = 8) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(min_words, max_words + 1, (1,), generator=g))
        picked = sorted(torch.randperm(len(CANONICAL), generator=g)[:k].tolist())
        words = [CANONICAL[i] for i in picked]
        out.append(words[0].capitalize() + " " + " ".join(words[1:]) + ".")
    return out


class BagEncoder:
    """Additive fake encoder; ``calls`` counts encode() calls, ``texts`` the texts encoded."""

    def __init__(self, dim: int = 32, salt: str = ""):
        self.dim, self.salt, self.calls, self.texts = dim, salt, 0, 0

    def _word(self, w: str) -> torch.Tensor:
        seed = int(hashlib.sha256((self.salt + w.lower()).encode()).hexdigest()[:8], 16)
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, texts, batch_size: int = 64) -> torch.Tensor:
        self.calls += 1
        self.texts += len(texts)
        # position-weighted so that order changes the vector a little
        rows = []
        for t in texts:
            toks = tokenize(t)
            rows.append(sum(self._word(w) * (1.0 + 0.05 * i) for i, w in enumerate(toks)))
        return F.normalize(torch.stack(rows), dim=-1)

    def save(self, path) -> None:  # pragma: no cover
        raise NotImplementedError
