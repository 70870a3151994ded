"""An order feature that needs no training, read beside a trained EM: each text's vector gets a
second part, the sum of its tokens' own EM vectors each bound to its position (a fixed random
signed permutation per position, position 0 the identity, so a one-word text's second part is its
own vector), L2-normalised; the two parts are weighted ``sqrt(1 - share)`` and ``sqrt(share)``.

Why it might beat the trained order sub-space (bench/em_order_share.py): a swap of two words moves
two positions by the difference of two unrelated vectors, a synonym one position by the
difference of two close ones, so the bound part alone should rank nearly every swap below its
synonym. Measured on order discrimination and the retrieval suite, as em_order_share.py.

    .venv/bin/python bench/em_order_binding.py [--run runs/em-default] [--shares 0,0.3,0.5,0.65,0.8,1] [--content-only]

``--content-only`` binds only the tokens that are not stop words or punctuation (the shared "The ...
of the ..." frame of two unrelated sentences then adds nothing to their similarity).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import order_and_retrieval, write

MAX_POSITIONS = 128


class BoundEncoder:
    """A loaded EM with the position-bound part appended (dim: twice the EM's)."""

    def __init__(self, em, share: float, content_only: bool = False, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.em, self.share, self.content_only, self.dim = em, share, content_only, 2 * em.dim
        self.signs = torch.randint(0, 2, (MAX_POSITIONS, em.dim), generator=g).float() * 2 - 1  # (P, D)
        self.perms = torch.stack([torch.randperm(em.dim, generator=g) for _ in range(MAX_POSITIONS)])  # (P, D)
        self.signs[0], self.perms[0] = 1.0, torch.arange(em.dim)
        self.token_vectors: dict[str, torch.Tensor] = {}

    def tokens(self, text: str) -> list[str]:
        from spacy.lang.en.stop_words import STOP_WORDS

        from invemb.text.vocab import tokenize

        toks = tokenize(text)[:MAX_POSITIONS]
        if self.content_only:
            toks = [t for t in toks if t.lower() not in STOP_WORDS and any(c.isalnum() for c in t)]
        return toks

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        main = self.em.encode(texts, batch_size=batch_size).float()  # (N, D)
        toks = [self.tokens(t) for t in texts]
        new = sorted({w for ts in toks for w in ts if w not in self.token_vectors})
        if new:
            self.token_vectors.update(zip(new, self.em.encode(new, batch_size=256).float()))
        bound = torch.zeros_like(main)  # (N, D); zeros for a text with no token kept
        for row, ts in enumerate(toks):
            for i, w in enumerate(ts):
                bound[row] += self.signs[i] * self.token_vectors[w][self.perms[i]]
        bound = F.normalize(bound, dim=1)
        return F.normalize(torch.cat([(1 - self.share) ** 0.5 * main, self.share ** 0.5 * bound], dim=1), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/em-default")
    ap.add_argument("--shares", default="0,0.3,0.5,0.65,0.8,1")
    ap.add_argument("--sentences", type=int, default=500)
    ap.add_argument("--content-only", action="store_true")
    ap.add_argument("--no-retrieval", action="store_true", help="order discrimination only")
    args = ap.parse_args()
    import invemb
    from invemb.eval.data import wiki_sentences
    from invemb.eval.order import OrderEvaluator

    em = invemb.load(Path(args.run))
    order = OrderEvaluator(wiki_sentences(args.sentences, split="test"))  # as bench/em_order_share.py
    rows = []
    for share in [float(s) for s in args.shares.split(",")]:
        row = {"share": share, **order_and_retrieval(BoundEncoder(em, share, args.content_only), order, not args.no_retrieval)}
        rows.append(row)
        print(row, flush=True)
    write("em_order_binding", {"run": args.run, "content_only": args.content_only, "rows": rows})


if __name__ == "__main__":
    main()
