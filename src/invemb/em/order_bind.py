"""An order-bound view of an EM run: its vector, plus a part that binds each of its words to its place.

A mean-pooled sentence vector hardly moves when two words trade places. The EM's trained order
sub-space (``head.order_dims``) helps, but its 64 dimensions are a dial between order and
retrieval, not a free gain (docs/em.md, ``bench/em_order_share.py``). This view needs no training: each
text's vector gets a second part, the sum over its words of a code of the word bound to the word's
position by a fixed random signed permutation, L2-normalised. The two parts are weighted
``sqrt(1 - share)`` and ``sqrt(share)``. A text of one word gets no bound part: words rank words as
in the EM.

A word's code (``OrderBindConfig.codes``) is either

- ``identity`` (the default with positions): a fixed random +-1 code of the lower-cased word, from a
  hash, weighted by the word's IDF in the EM run's corpus counts. A swap moves two places by two
  unrelated codes and a synonym one place by one, whatever the EM thinks of the words; two texts'
  parts agree only where the same word sits at the same place, and the IDF keeps "the" at the start
  from making unrelated sentences look alike, so ranking by the EM part is nearly untouched.
  Measured on the default EM (``bench/em_order_binding.py --codes identity``, 500 test sentences'
  probes, share 0.5): order discrimination 0.964 against the EM's 0.874 (0.953 / 0.970 against
  0.858 / 0.886 on the eval suite's probes, seeds 0 / 1); title->summary / gloss->lemma / first
  sentence->rest MRR 0.977 / 0.557 / 0.820 against 0.975 / 0.580 / 0.846 (share 0.4: 0.561 / 0.839).
- ``em``: the word's own EM vector, less the vocabulary's mean unit vector, projected to ``width``
  dimensions by a fixed random matrix. Similar words bind alike, so it orders less (0.950 at share
  0.5, retrieval 0.963 / 0.551 / 0.767), but a pair-bound view's words can be read back off it.

With ``binding="pairs"`` each word is bound to the next word instead (the sum over adjacent words of
the first's code, permuted, times the second's; EM codes by default): order 0.917, first
sentence->rest 0.815. A hypothesis that misses a word keeps most of its pairs, where it shifts every
later position, so this is the binding to invert: a controller trained on the EM, given the view
(``Controller.load(run, em=view)``), reads each vector's EM part and scores its hypotheses with the
bound part too (``DecodeConfig.view_weight``; README "Inverting an order-bound view").

Saved as a run folder: ``config.json`` (kind ``order_bind``, the EM run's path, the config),
``order_bind.safetensors`` (the centre, the projection, the signs and permutations) and, for identity
codes, ``word_counts.json`` (the IDF's counts); no pickle. ``invemb.load`` loads it as an encoder of
width ``em.dim + width``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from invemb.config import Config
from invemb.io import atomic_save_file, atomic_write_json
from invemb.text.vocab import Vocab

TENSORS = "order_bind.safetensors"
WORD_COUNTS = "word_counts.json"
BINDINGS = ("positions", "pairs")
CODES = ("auto", "identity", "em")


@dataclasses.dataclass
class OrderBindConfig(Config):
    width: int = 2048  # the bound part's dimensions: 8192 gave the same figures as 2048 (EM codes), 448 less
    # the bound part's share of the squared norm. Identity codes, order on the bench's probes / the eval suite's
    # (seeds 0, 1) and first sentence->rest MRR: 0.5 0.964 / 0.953 / 0.970, 0.820; 0.4 0.964 / 0.953 / 0.962, 0.839
    # (the EM's 0.846)
    share: float = 0.5
    center: bool = True  # EM codes less the vocabulary's mean; uncentred, share 0.5: order 0.936, first sentence->rest 0.654
    max_positions: int = 128  # words bound; later ones are left out of the bound part
    # "positions": each word bound to its position; "pairs": each word bound to the next word (EM codes: 0.917 against
    # 0.950, retrieval kept better). A hypothesis that misses one word keeps most of its pairs but shifts every later
    # position: inversion scores with "pairs".
    binding: str = "positions"
    # What a word puts in the bound part. "identity": a fixed random +-1 code of the lower-cased word (a hash),
    # weighted by its IDF in the EM run's corpus counts: order 0.953-0.970 on three probe sets with retrieval nearly
    # the EM's, because two texts' parts agree only where the same word sits at the same place. "em": the word's EM
    # vector, less the vocabulary's mean, projected to ``width``: similar words bind alike, so it orders less (0.933 /
    # 0.950) and costs more retrieval, but a pair-bound view's words can be read back off a vector (inversion).
    # "auto": identity for positions, em for pairs. Views saved before this setting load as "em".
    codes: str = "auto"
    seed: int = 0

    presets = {"tiny": {"width": 64, "max_positions": 32}, "default": {}, "full": {}}

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)} (at least 1)" for k in ("width", "max_positions") if getattr(self, k) < 1]
        if not 0 < self.share < 1:
            bad.append(f"share={self.share} (in (0, 1))")
        if self.binding not in BINDINGS:
            bad.append(f"binding={self.binding!r} ({' or '.join(BINDINGS)})")
        if self.codes not in CODES:
            bad.append(f"codes={self.codes!r} ({' or '.join(CODES)})")
        if bad:
            raise ValueError(f"bad order-binding settings: {', '.join(bad)}")

    @property
    def word_codes(self) -> str:
        """``codes`` with "auto" resolved: "identity" or "em"."""
        if self.codes != "auto":
            return self.codes
        return "identity" if self.binding == "positions" else "em"


class OrderBoundEncoder:
    """An EM (any :class:`invemb.encoder.Encoder`) with the position-bound part appended: (N, em.dim + width)."""

    kind = "order_bind"
    max_words_kept = 500_000  # word vectors kept between calls; past it the table starts over

    def __init__(self, em, cfg: OrderBindConfig, tensors: dict[str, torch.Tensor], em_path: str = "",
                 word_counts: dict[str, int] | None = None):
        """``tensors``: ``center`` (D,), ``projection`` (D, W), ``signs`` (P, W), ``perms`` (P, W) (see ``build``);
        ``word_counts``: lower-cased word -> its count in the EM's corpus, the IDF of identity codes."""
        if cfg.word_codes == "identity" and not word_counts:
            raise ValueError("identity codes need the EM run's word counts (the counts of its vocab.json)")
        self.em, self.cfg, self.em_path = em, cfg.replace(codes=cfg.word_codes), em_path  # "auto" resolved: saved as used
        self.word_counts = word_counts or {}
        self._total = sum(self.word_counts.values())
        self.center, self.projection = tensors["center"].float(), tensors["projection"].float()
        self.signs, self.perms = tensors["signs"].float(), tensors["perms"].long()
        want = {"center": (em.dim,), "projection": (em.dim, cfg.width), "signs": (cfg.max_positions, cfg.width),
                "perms": (cfg.max_positions, cfg.width)}
        got = {k: tuple(tensors[k].shape) for k in want}
        if got != want:
            raise ValueError(f"order-binding tensors of shapes {got} do not fit an EM of dimension {em.dim} and {cfg}")
        self.dim = em.dim + cfg.width
        self._word_row: dict[str, int] = {}  # word -> its row of ``_word_table``
        self._word_table = torch.zeros(0, cfg.width)  # (capacity, W) the centred, projected EM vectors of the words seen
        self._known: dict[str, int] = {}  # word -> its row of ``_known_vectors``: EM vectors given, never encoded
        self._known_vectors = torch.zeros(0, em.dim)

    @classmethod
    def build(cls, em, cfg: OrderBindConfig | None = None, unit_vectors: torch.Tensor | None = None,
              em_path: str = "", word_counts: dict[str, int] | None = None) -> "OrderBoundEncoder":
        """A fresh view of ``em``: the random projection, signs and permutations drawn from ``cfg.seed``
        (position 0 keeps its coordinates), the centre the mean of ``unit_vectors`` (V, D) (the EM run's
        vocabulary), zeros when ``cfg.center`` is off; ``word_counts`` (:func:`word_counts`) for identity codes."""
        cfg = cfg or OrderBindConfig()
        if cfg.word_codes == "em" and cfg.center and unit_vectors is None:
            raise ValueError("a centred order binding needs the EM's unit vectors (its run's unit_vectors.safetensors)")
        g = torch.Generator().manual_seed(cfg.seed)
        projection = torch.randn(em.dim, cfg.width, generator=g) / cfg.width ** 0.5  # (D, W): norms kept on average
        signs = torch.randint(0, 2, (cfg.max_positions, cfg.width), generator=g).float() * 2 - 1  # (P, W)
        perms = torch.stack([torch.randperm(cfg.width, generator=g) for _ in range(cfg.max_positions)])  # (P, W)
        signs[0], perms[0] = 1.0, torch.arange(cfg.width)
        center = unit_vectors.float().mean(0) if cfg.center and unit_vectors is not None else torch.zeros(em.dim)
        return cls(em, cfg, {"center": center, "projection": projection, "signs": signs, "perms": perms}, em_path,
                   word_counts)

    def over(self, em) -> "OrderBoundEncoder":
        """The same view over ``em``, the same EM behind a wrapper (a service's lock): the tensors are shared,
        the words looked up or encoded are not."""
        tensors = {"center": self.center, "projection": self.projection, "signs": self.signs, "perms": self.perms}
        return OrderBoundEncoder(em, self.cfg, tensors, self.em_path, self.word_counts)

    def know(self, texts: list[str], vectors: torch.Tensor) -> None:
        """Take the rows of ``vectors`` (n, em.dim) as the EM vectors of ``texts`` instead of encoding them (a
        controller hands over its vocabulary's unit vectors: the words of every candidate text are then looked
        up, not encoded); the one-word texts are the ones used, and ``vectors`` is kept, not copied."""
        if tuple(vectors.shape) != (len(texts), self.em.dim):
            raise ValueError(f"expected ({len(texts)}, {self.em.dim}) vectors for {len(texts)} texts, got {tuple(vectors.shape)}")
        from invemb.text.vocab import tokenize

        self._known = {t: i for i, t in enumerate(texts) if tokenize(t) == [t]}
        self._known_vectors = vectors
        self._word_row.clear()

    def word_vectors(self, words: list[str]) -> torch.Tensor:
        """(n, W) the centred, projected EM vectors of ``words``: the ones not seen before looked up (``know``)
        or encoded in one call, every one kept."""
        rows = self._rows(words)  # first: it may grow the table
        return self._word_table[rows]

    def _rows(self, words: list[str]) -> torch.Tensor:
        """(n,) the rows of ``words`` in the word table, the new ones added first."""
        try:  # nearly always: every word seen before
            return torch.tensor([self._word_row[w] for w in words], dtype=torch.long)
        except KeyError:
            pass
        new = sorted(set(words) - self._word_row.keys())
        if len(self._word_row) + len(new) > self.max_words_kept:  # bounded: a long stream of new words never fills memory
            self._word_row.clear()
            new = sorted(set(words))
        start = len(self._word_row)
        end = start + len(new)
        if end > len(self._word_table):  # grown by half at least: a word at a time stays cheap
            table = torch.empty(max(end, len(self._word_table) * 3 // 2), self.cfg.width)
            table[:start] = self._word_table[:start]
            self._word_table = table
        self._word_table[start:end] = self._codes(new)
        self._word_row.update(zip(new, range(start, end)))
        return torch.tensor([self._word_row[w] for w in words], dtype=torch.long)

    def _codes(self, words: list[str]) -> torch.Tensor:
        """(n, W) what each of ``words`` puts in the bound part (``OrderBindConfig.codes``)."""
        if self.cfg.word_codes == "identity":
            lower = [w.lower() for w in words]
            # IDF: a word the corpus never counted weighs as one seen once
            idf = torch.tensor([math.log(self._total / min(self.word_counts.get(w, 1), self._total)) for w in lower])
            return identity_codes(lower, self.cfg.width, self.cfg.seed) * idf[:, None]
        vectors = torch.empty(len(words), self.em.dim)  # (n, D) their EM vectors: looked up (``know``) or encoded
        known = [i for i, w in enumerate(words) if w in self._known]
        unknown = [i for i, w in enumerate(words) if w not in self._known]
        if known:
            vectors[known] = self._known_vectors[[self._known[words[i]] for i in known]].float()
        if unknown:
            vectors[unknown] = self.em.encode([words[i] for i in unknown], batch_size=256).float()
        return (vectors - self.center) @ self.projection

    def bound(self, tokens: list[list[str]]) -> torch.Tensor:
        """(N, W) each text's bound part, L2-normalised; zeros for a text of fewer than two words (no order
        to bind: the text is its EM vector). ``positions``: the sum of each word's vector under its position's
        signed permutation; ``pairs``: the sum over adjacent words of the first's vector under position 1's
        signed permutation times the second's, elementwise."""
        tokens = [words[: self.cfg.max_positions] for words in tokens]
        rows = [i for i, words in enumerate(tokens) if len(words) >= 2]
        out = torch.zeros(len(tokens), self.cfg.width)
        if not rows:
            return out
        lengths = torch.tensor([len(tokens[i]) for i in rows])
        v = self.word_vectors([w for i in rows for w in tokens[i]])  # (T, W) every bound word, text after text
        if self.cfg.binding == "positions":
            at = torch.cat([torch.arange(n) for n in lengths.tolist()])  # (T,) each word's position
            bound = torch.gather(v, 1, self.perms[at]) * self.signs[at]  # (T, W)
            text = torch.tensor(rows).repeat_interleave(lengths)  # (T,) each word's text
        else:
            last = lengths.cumsum(0) - 1  # each text's last word: it starts no pair
            first = torch.ones(len(v), dtype=torch.bool)
            first[last] = False  # (T,) the words that start a pair
            starts = first.nonzero()[:, 0]  # (T - R,)
            bound = self._pairs(v[starts], v[starts + 1])  # (T - R, W)
            text = torch.tensor(rows).repeat_interleave(lengths - 1)  # (T - R,) each pair's text
        out.index_add_(0, text, bound)
        return F.normalize(out, dim=1)

    def pair_terms(self, firsts: list[str], seconds: list[str]) -> torch.Tensor:
        """(n, W) the unnormalised terms ``permuted(v_a) * v_b`` a pair-bound part sums, for the pairs (firsts[i],
        seconds[i])."""
        return self._pairs(self.word_vectors(firsts), self.word_vectors(seconds))

    def permuted_words(self, words: list[str]) -> torch.Tensor:
        """(n, W) ``permuted(v_a)`` of each word: its side of a pair term as the pair's first word."""
        return self._permuted(self.word_vectors(words))

    def _permuted(self, v: torch.Tensor) -> torch.Tensor:
        """(n, W) projected word vectors ``v`` (n, W) under position 1's signed permutation."""
        return torch.index_select(v, 1, self.perms[1]) * self.signs[1]  # index_select: 2x v[:, perm] here

    def _pairs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n, W) the pair terms of the projected word vectors ``a`` (firsts) and ``b`` (seconds), (n, W) each."""
        return self._permuted(a) * b

    def words(self, text: str) -> list[str]:
        """The words of ``text`` that are bound, in order."""
        from invemb.text.vocab import tokenize

        return tokenize(text)

    def unbind(self, bound: torch.Tensor, words: list[str], after: bool) -> torch.Tensor:
        """(n, D) for each word, an estimate of the word that follows it (``after``) or precedes it in the text
        whose pair-bound part is ``bound`` (W,), in the EM's space less the centre: its dot product with a word's
        centred EM vector is the unbound estimate's with the word's projected one. Binding "pairs" only.

        A pair's term is ``permuted(v_a) * v_b``: multiplied by ``permuted(v_a)`` again it gives ``v_b`` times
        positive weights, and by ``v_b`` it gives ``permuted(v_a)`` so; the other pairs' terms add noise that a
        2048-wide part keeps small (100 wiki test sentences: the true next word first among 50k words for 60% of
        pairs, in the first 10 for 80%)."""
        self.check_readable()
        v = self.word_vectors(words)  # (n, W)
        perm, signs = self.perms[1], self.signs[1]
        if after:
            estimate = bound * self._permuted(v)  # (n, W): v_next, weighted
        else:
            estimate = torch.empty_like(v)
            estimate[:, perm] = bound * v * signs  # (n, W): v_prev, its coordinates put back
        return estimate @ self.projection.T  # (n, D)

    def check_readable(self) -> None:
        """Refuse, in one line, a view whose words cannot be read back off its vectors: that needs each word
        bound to the next (binding "pairs") by its EM vector (codes "em")."""
        if self.cfg.binding != "pairs" or self.cfg.word_codes != "em":
            raise ValueError(f"words are read off a view with binding 'pairs' and codes 'em'; this one binds "
                             f"{self.cfg.binding} with {self.cfg.word_codes} codes (invemb order-bind --set binding=pairs)")

    def bound_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, W) the bound parts of ``texts`` (see ``bound``)."""
        return self.bound([self.words(t) for t in texts])

    def bound_edits(self, base: str, texts: list[str]) -> torch.Tensor:
        """(N, W) the bound parts of ``texts`` (as ``bound_texts``), each from ``base``'s by the pairs where they
        differ: a text that is ``base`` with a word or two changed costs those pairs' terms, not all of its own
        (polishing binds ~100 such edits of one text a round). Binding "pairs"; any other binds each text."""
        if self.cfg.binding != "pairs":
            return self.bound_texts(texts)
        limit = self.cfg.max_positions
        old = self.words(base)[:limit]
        changed: list[tuple[int, float, str, str]] = []  # (text, sign, first, second): a pair taken out or put in
        short = torch.zeros(len(texts), dtype=torch.bool)  # a text of fewer than two words has no bound part
        for i, text in enumerate(texts):
            new = self.words(text)[:limit]
            short[i] = len(new) < 2
            same = next((p for p, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            rest_old, rest_new = old[same:][::-1], new[same:][::-1]  # the ends are compared past the common start only
            tail = next((q for q, (a, b) in enumerate(zip(rest_old, rest_new)) if a != b), min(len(rest_old), len(rest_new)))
            # pair k (words k, k + 1) differs unless both words are in the common start or both in the common end
            changed += [(i, -1.0, old[k], old[k + 1]) for k in range(max(0, same - 1), min(len(old) - tail, len(old) - 1))]
            changed += [(i, 1.0, new[k], new[k + 1]) for k in range(max(0, same - 1), min(len(new) - tail, len(new) - 1))]
        out = torch.zeros(len(texts), self.cfg.width) if len(old) < 2 else self._pair_sum(old).repeat(len(texts), 1)  # (N, W)
        if changed:
            rows, signs, firsts, seconds = zip(*changed)
            out.index_add_(0, torch.tensor(rows), self.pair_terms(list(firsts), list(seconds)) * torch.tensor(signs)[:, None])
        out[short] = 0.0
        return F.normalize(out, dim=1)

    def _pair_sum(self, words: list[str]) -> torch.Tensor:
        """(1, W) the unnormalised sum of the pair terms of ``words`` (at least two)."""
        return self.pair_terms(words[:-1], words[1:]).sum(0, keepdim=True)

    def split(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A view's vectors (N, em.dim + width) -> their EM parts (N, em.dim) and bound parts (N, width), each
        L2-normalised (a one-word text's bound part stays zeros): what inverting a view's vector reads."""
        vectors = torch.as_tensor(vectors).float()
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected ({vectors.shape[0] if vectors.ndim else 'N'}, {self.dim}) order-bound vectors "
                             f"(EM {self.em.dim} + bound {self.cfg.width}), got shape {tuple(vectors.shape)}")
        main, bound = vectors[:, : self.em.dim], vectors[:, self.em.dim:]
        return F.normalize(main, dim=1), F.normalize(bound, dim=1)

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        from invemb.encoder import check_texts

        texts = check_texts(texts)
        main = self.em.encode(texts, batch_size=batch_size).float()  # (N, D)
        bound = self.bound_texts(texts)  # (N, W)
        s = self.cfg.share
        return F.normalize(torch.cat([(1 - s) ** 0.5 * main, s ** 0.5 * bound], dim=1), dim=1)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"center": self.center, "projection": self.projection, "signs": self.signs, "perms": self.perms}
        atomic_save_file(path / TENSORS, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, p))
        if self.cfg.word_codes == "identity":
            atomic_write_json(path / WORD_COUNTS, self.word_counts)
        atomic_write_json(path / "config.json", {"kind": self.kind, "em": self.em_path, "dim": self.dim,
                                                 "config": self.cfg.to_dict()})


def identity_codes(words: list[str], width: int, seed: int = 0) -> torch.Tensor:
    """(n, width) a fixed random code of +-1 / sqrt(width) per word: the bits of SHAKE-256 of (seed, word), so
    any machine gives any word the same code without a table."""
    import hashlib

    import numpy as np

    nbytes = (width + 7) // 8
    raw = b"".join(hashlib.shake_256(f"{seed}\t{w}".encode()).digest(nbytes) for w in words)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).reshape(len(words), nbytes * 8)[:, :width]
    return (torch.from_numpy(bits.astype(np.float32)) * 2 - 1) / width ** 0.5


def word_counts(vocab) -> dict[str, int]:
    """Lower-cased one-word unit -> its count in a :class:`invemb.text.vocab.Vocab` (case variants summed)."""
    counts: dict[str, int] = {}
    for unit, count in zip(vocab.units, vocab.counts):
        if len(unit.split()) == 1:
            counts[unit.lower()] = counts.get(unit.lower(), 0) + int(count)
    return counts


def build_view(em: str | Path, cfg: OrderBindConfig | None = None) -> OrderBoundEncoder:
    """A fresh order-bound view of the EM run ``em``, with what its codes need from the run (unit vectors for the
    centre of EM codes, the vocabulary's counts for identity codes)."""
    import invemb
    from safetensors.torch import load_file

    em, cfg = Path(em), cfg or OrderBindConfig()
    vectors = em / "unit_vectors.safetensors"
    if cfg.word_codes == "em" and cfg.center and not vectors.exists():
        raise FileNotFoundError(f"{vectors}: a centred order binding needs the EM run's unit vectors "
                                "(an EM run writes them when it finishes; or --set center=false)")
    unit_vectors = load_file(str(vectors))["units"] if cfg.word_codes == "em" and cfg.center else None
    counts = word_counts(Vocab.load(em / "vocab.json")) if cfg.word_codes == "identity" else None
    return OrderBoundEncoder.build(invemb.load(em), cfg, unit_vectors, em_path=str(em), word_counts=counts)


def build_run(em: str | Path, out: str | Path, cfg: OrderBindConfig | None = None) -> dict:
    """Write the order-bound view of the EM run ``em`` into the run folder ``out``; returns its summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pick a new --out")
    view = build_view(em, cfg)
    view.save(out)
    return {"run": str(out), "em": str(em), "dim": view.dim, **view.cfg.to_dict()}


def em_run(path: str | Path) -> Path:
    """The EM run the order-bound view saved in ``path`` was built on: the path it recorded; a relative one
    that is missing from the working folder is looked for beside the view's run."""
    path = Path(path)
    em = Path(json.loads((path / "config.json").read_text(encoding="utf-8"))["em"])
    if not em.is_absolute() and not em.exists() and (path.parent / em.name).exists():
        em = path.parent / em.name
    if not em.exists():
        raise FileNotFoundError(f"{em}: the EM run this order binding ({path}) was built on is missing")
    return em


def load_run(path: str | Path, runtime: str = "torch") -> OrderBoundEncoder:
    """The order-bound view saved in ``path``, its EM loaded from the run it was built on (:func:`em_run`;
    ``runtime`` as :func:`invemb.load`)."""
    import invemb
    from safetensors.torch import load_file

    path = Path(path)
    info = json.loads((path / "config.json").read_text(encoding="utf-8"))
    info["config"].setdefault("codes", "em")  # views saved before identity codes bound EM vectors
    cfg = OrderBindConfig.from_dict(info["config"])
    counts = json.loads((path / WORD_COUNTS).read_text(encoding="utf-8")) if cfg.word_codes == "identity" else None
    em = em_run(path)
    return OrderBoundEncoder(invemb.load(em, runtime=runtime), cfg, load_file(str(path / TENSORS)), em_path=str(em),
                             word_counts=counts)
