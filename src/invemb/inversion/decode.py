"""Beam decoding over (unit, slot) actions, re-scored by the encoder.

A *policy* proposes actions for a batch of hypotheses (the trained Selector + Placer, or an oracle
that knows the gold units, for tests and upper bounds). Every child text is encoded (one batched
encoder call per step) and scored ``cos(encode(text), target) + model_weight * mean log-prob +
lm_weight * prior(text)`` (a language prior of word order: :mod:`invemb.inversion.lm`); that
same vector is the next step's buffer summary, so re-scoring costs the summary update nothing.

Beam slot 0 always follows the greedy path (best child of the greedy parent), so the beam can only
add hypotheses to what greedy decoding finds: it never returns one scored worse than greedy.
A hypothesis ends when the policy says stop, after ``patience`` steps without a better score (the
no-improvement rule; its best prefix is kept), or at ``max_words``. When an order-bound view's vector
is inverted, the search's best text is then polished: deletions of its units that score higher are kept
(``view_polish``). Ties break by order, so a run
is deterministic for a given seed. :func:`beam_decode_many` runs the searches of many targets in
lockstep (one policy call and one encoder call a step for all of them); each is the search
:func:`beam_decode` runs alone, up to float rounding (batch padding) in the re-scoring.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Protocol, Sequence

import torch

from invemb.config import Config
from invemb.encoder import Encoder, check_vectors, has_content
from invemb.text.vocab import detokenize, tokenize


@dataclasses.dataclass
class DecodeConfig(Config):
    beam: int = 3
    units_k: int = 8  # units the Selector retrieves from the index per hypothesis
    # best slots kept per unit; 3 since the language prior (below) picks among them: without it 3 changed nothing
    slots: int = 3
    # children kept per hypothesis before encoding: the encoder calls. On 50 wiki / 30 WordNet test sentences,
    # 8 -> 7 cut calls 255 -> 211 / 177 -> 160 at token F1 33.3 -> 33.2 / 48.1 -> 50.3; 6: 173 / 129, F1 31.8 / 48.6.
    # With the length prior and runs/ctl-mem's memory (150 + 150, seeds 0 / 1), 5: wiki F1 -0.2 / -1.6 at 0.67x
    # the decoding time (2.1 sentences/s on the bf16 runtime; README "Speed").
    expand: int = 7
    # Also drop children whose action log-probability is more than this below the hypothesis's best
    # action (0: off): a confident policy then spends fewer encoder calls. At least one child is kept.
    # 150 wiki test sentences, token F1 / calls: off 38.8 / 213, 1.5 38.6 / 188, 1 37.6 / 169, 0.5 35.7 / 114.
    expand_gap: float = 0.0
    model_weight: float = 0.05  # weight of the model's mean log-probability next to the cosine
    # Weight of the language prior (invemb.inversion.lm: a word-bigram model of the controller's training
    # text) in every score: lm_weight * the mean over the text's adjacent pairs of log P(w | v) / P(w), what
    # the order adds. 0: off. 150 + 150 test sentences, slots 3, wiki / WordNet token F1: off 39.6 / 56.5
    # (slots 2), 0.03 41.6 / 58.9, 0.05 43.5 / 59.8, 0.08 42.5 / 57.9, 0.12 42.2 / 56.3 (docs/inversion.md "Language prior").
    lm_weight: float = 0.05
    # With the prior on, the policy's best lm_pool * expand actions per hypothesis are re-ranked by
    # model_weight * log-prob + the child's weighted prior before the expand cut, so the prior also
    # chooses which children get encoded (1: the policy's order alone decides that)
    lm_pool: int = 3
    # Weight of the sentence memory's vote (invemb.inversion.memory: the units of the training sentences
    # nearest to the target) added to the Selector's logits; 0: off. memory_k nearest sentences, softmax
    # over cos / memory_temperature; the memory_units best-voted units join each hypothesis's candidates.
    memory_weight: float = 0.0
    memory_k: int = 100
    memory_temperature: float = 0.1
    memory_units: int = 16
    # Weight of the bag of units (invemb.inversion.bag: a classifier of the units the sentence behind the target
    # holds, trained on the sentence memory) in the Selector's logits: bag_weight * max(0, log p(unit | target)
    # + bag_floor) for every candidate unit the hypothesis does not hold yet; its bag_units likeliest such units
    # join the candidates. 0: off. 0.5 with a bag of all the training text (245k sentences), paired against 0 on
    # 150 + 150 test sentences: wiki token F1 47.5 -> 49.6 (seed 0), WordNet 62.9 -> 63.7; bags of 30k-52k
    # sentences lose WordNet F1 (-3.2 to -3.7), so it stays off unless the run's memory is large (docs/inversion.md "Bag of units").
    bag_weight: float = 0.0
    bag_units: int = 16
    bag_floor: float = 15.0
    repeat_penalty: float = 0.05  # cosine taken off units already in the buffer
    # Added to every score per word of the text, up to the words the length prior (invemb.inversion.length)
    # predicts for the target: decoding otherwise keeps prefixes of about two thirds of a wiki sentence.
    # 0: off. 150 + 150 test sentences, seeds 0 / 1, wiki token F1 46.1 / 48.6 -> 47.5 / 49.1, BLEU 6.6 / 7.2
    # -> 8.3 / 7.6, cosine 0.720 / 0.718 -> 0.738 / 0.733, WordNet F1 60.4 / 60.4 -> 60.5 / 60.6, at 1.4x the
    # decoding time; 0.01: wiki 47.3, WordNet 60.2 (seed 0); a flat bonus (no cap) of 0.004: 46.2 / 59.9.
    length_weight: float = 0.005
    # Inverting an order-bound view's vector (invemb.em.order_bind, binding "pairs"): the bound part's weight
    # in every child's cosine, (1 - view_weight) * cos(EM part) + view_weight * cos(bound part). The view's own
    # share (0.5) scores its true cosine; 150 wiki test sentences, runs/ctl-mem, token F1 / BLEU: EM alone
    # 47.6 / 8.2, 0.5 51.1 / 10.2, 0.7 52.4 / 10.9 (README "Inverting an order-bound view").
    view_weight: float = 0.7
    # Inverting a pair-bound view's vector: for each placed unit, the N words its bound part says follow and
    # precede it are proposed in the slots beside it (invemb.inversion.view; 0: off). runs/ctl-mem, bf16, 150 + 150
    # test sentences, seeds 0 / 1, wiki token F1 / BLEU 52.4 / 10.9, 53.5 / 11.5 -> 67.9 / 33.3, 67.4 / 32.5; WordNet
    # 65.4 / 20.3, 67.3 / 21.9 -> 83.1 / 49.3, 81.9 / 47.8 (60 wiki sentences, followers alone: F1 62.7, BLEU 25.4).
    view_neighbours: int = 1
    frequent_units: int = 20  # the N most frequent vocabulary units (the, of, a, ...) join every hypothesis's candidates
    stop_threshold: float = 0.5
    move_threshold: float = 0.5
    # Steps without a better score before a hypothesis ends (0: off). 2, runs/ctl-mem, bf16, 150 + 150 test
    # sentences (seed 0): wiki token F1 47.6 -> 45.9, 254 -> 198 encoder calls, WordNet 60.2 -> 60.5.
    patience: int = 3
    min_gain: float = 1e-4
    # A search whose best text reaches this cosine with its target (the view's, inverting a view) has rebuilt it:
    # it ends there, without its patience steps or polishing, even where the length bonus would pay for more words
    # (above 1: off). 150 wiki test sentences on the view (seed 0): 149 texts the same, the other now exact; 461 ->
    # 456 encoder calls
    exact_cosine: float = 0.9999
    max_words: int = 40
    max_steps: int = 48
    # Inverting an order-bound view's vector: once the search ends, its best text is edited. Each round, the texts
    # left by deleting one span of its units or keeping only one are ranked by the score's terms known without the
    # encoder (the bound part's cosine, the prior, the length bonus); the best N are encoded and the best one kept if
    # it scores higher; at most view_polish_rounds rounds (0: off). Unbinding leaves repeats and stray units around a
    # right text. runs/ctl-mem, bf16, 150 + 150 test sentences, seeds 0 / 1, 16 against 0: wiki token F1 67.9 / 67.4 ->
    # 70.6 / 68.8, WordNet 83.1 / 81.9 -> 90.4 / 89.4 (README "Inverting an order-bound view"); 32: the same as 16. On
    # the EM's own vectors, with nothing but the prior and the length bonus to rank the edits, 16 changed nothing
    # measurable (wiki -0.1, WordNet +0.4) at 1.07x the encoder calls: so it edits a view's inversions only. 12 rounds
    # against 6 (with view_residual and view_combine; seed 0, wiki): token F1 +0.7 [+0.4, +1.2], BLEU +2.3; 24: +0.1 more.
    view_polish: int = 16
    view_polish_rounds: int = 12
    # Polishing a pair-bound view's inversion edits words too: for each unit, the N words the bound part says stand
    # best between its neighbours replace it, and for each slot, the N best between the units beside it go in there.
    # 150 + 150 test sentences, seeds 0 / 1, 2 against 0: wiki token F1 70.8 / 68.8 -> 73.4 / 70.5 (recall +3.7 / +2.8),
    # BLEU 33.6 / 32.9 -> 37.3 / 35.6, WordNet 90.4 / 89.4 -> 92.7 / 92.1, BLEU 62.4 / 61.4 -> 66.7 / 67.4
    view_edits: int = 2
    # ... and moves spans: the N moves of one span (of at most 8 units) that bring the bound part nearest join the edits.
    # Seeds 0 / 1, 8 against 0: wiki BLEU 37.3 / 35.6 -> 39.1 / 37.1, token F1 73.4 / 70.5 -> 73.6 / 71.1, WordNet BLEU
    # 66.7 / 67.4 -> 69.0 / 67.8, at 1.06-1.08x the decoding time
    view_moves: int = 8
    # The words put in or swapped in are read off the target's bound part less this share of the polished text's own
    # (its projection on the text's bound part): 1 reads only what the text does not yet explain (its missing pairs),
    # 0 the whole target, where the pairs already in place dominate. 1 against 0 (seed 0, wiki): token F1 73.4 -> 79.2
    # (+5.9 [+4.4, +7.2]), BLEU 41.2 -> 46.3.
    view_residual: float = 1.0
    # After a round's edits are encoded, the ones that each beat the text and touch different pairs of it (word
    # insertions, replacements, span deletions) are made together in one more text, encoded too: a long text short of
    # several words gains them in one round instead of one a round. Alone nothing (wiki F1 -0.1); with view_residual,
    # whose edits gain at many places at once, +3.0 [+2.1, +4.2] over view_residual alone, BLEU +5.8. The three
    # together against none (runs/ctl-mem retrained 2026-12-06, bf16, 150 + 150 test sentences, seeds 0 / 1): wiki
    # token F1 73.4 / 72.4 -> 83.0 / 82.3, BLEU 41.2 / 39.9 -> 54.4 / 53.3, the view's cosine 0.826 / 0.816 -> 0.874 /
    # 0.868; WordNet unchanged (91.9 / 92.9 -> 92.1 / 93.1)
    view_combine: bool = True
    # With view_residual, also try the N words per place read off the whole target (its pairs in place included):
    # the residual alone can miss a word whose pair is half in place ("It is is the most complete extant early
    # Buddhist canon." needs "it is" -> "it"). 1 against 0 (seeds 0 / 1, paired): wiki token F1 +0.9 [-0.0, +2.1] /
    # +1.0 [+0.3, +1.9], BLEU +1.8 / +1.9, exact match 16.0 / 14.7 -> 20.7 / 18.7%; WordNet +0.4 / +0.7, exact match
    # 56.0 / 61.3 -> 59.3 / 64.0%; at 1.04x the time. 2 (seed 0): wiki F1 83.6 against 1's 83.9, at 1.18x.
    view_whole_words: int = 1
    # With view_residual, also try runs of 2..N new words in each slot: from the unit before it, the likeliest next
    # word off what the text leaves unexplained, then that word's next, and so on (and back from the unit after it).
    # A clause the search never placed needs several words in before its pairs are whole; one word a round rarely
    # beats the text. 3 against 0 (make demo's runs, the extra units, 150 wiki test sentences, seeds 0 / 1, paired):
    # token F1 82.9 / 82.9 -> 87.8 / 87.4 (+4.9 [+3.2, +7.0] / +4.5 [+2.7, +6.6]; recall +10.0 / +10.8, precision
    # -0.8 / -2.0), BLEU 51.8 / 51.9 -> 55.6 / 52.8, the view's cosine 0.870 / 0.870 -> 0.904 / 0.908, at 1.46-1.53x
    # the decoding time; WordNet F1 +0.9 [+0.2, +2.0] (docs/inversion.md "Runs of missing words"). 0: off.
    view_chain: int = 3
    seed: int = 0

    presets = {"tiny": {"beam": 2, "units_k": 4, "expand": 6, "max_steps": 12, "frequent_units": 0}, "default": {},
               "full": {"beam": 8, "units_k": 16, "expand": 24}}

    @property
    def pool(self) -> int:
        """Actions per hypothesis the decoder reads (the policy's likeliest) before the ``expand`` cut."""
        return self.expand * (self.lm_pool if self.lm_weight else 1)

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)} (at least {least})"
               for k, least in (("beam", 1), ("units_k", 1), ("slots", 1), ("expand", 1), ("max_words", 1),
                                ("max_steps", 1), ("lm_pool", 1), ("memory_k", 1), ("memory_units", 0), ("patience", 0),
                                ("frequent_units", 0), ("expand_gap", 0), ("bag_weight", 0), ("bag_units", 0), ("bag_floor", 0),
                                ("min_gain", 0), ("repeat_penalty", 0), ("length_weight", 0), ("model_weight", 0), ("lm_weight", 0),
                                ("memory_weight", 0), ("memory_temperature", 1e-6), ("view_weight", 0),
                                ("view_neighbours", 0), ("view_polish", 0), ("view_polish_rounds", 0), ("view_edits", 0), ("view_moves", 0),
                                ("view_residual", 0), ("view_whole_words", 0), ("view_chain", 0), ("exact_cosine", 0))
               if not getattr(self, k) >= least]  # NaN fails this too
        bad += [f"{k}={getattr(self, k)} (a number)" for k in ("stop_threshold", "move_threshold")
                if not math.isfinite(getattr(self, k))]
        bad += [f"{k}={getattr(self, k)} (at most 1)" for k in ("view_weight", "view_residual") if not getattr(self, k) <= 1]
        if bad:
            raise ValueError(f"bad decoding settings: {', '.join(bad)}")


@dataclasses.dataclass(frozen=True)
class Action:
    unit: int  # unit id to insert (for a move: the moved unit)
    slot: int  # insertion slot in the buffer after any removal
    logp: float
    remove: int = -1  # buffer index removed first (a move), -1 for a plain insertion


@dataclasses.dataclass
class Proposal:
    actions: list[Action]
    stop_prob: float = 0.0


@dataclasses.dataclass
class Hypothesis:
    units: list[int]
    text: str = ""
    vector: torch.Tensor | None = None  # (D,) encoder vector of ``text``; None when empty
    cosine: float = float("nan")
    logp: float = 0.0
    actions: int = 0
    steps: list[dict] = dataclasses.field(default_factory=list)
    stale: int = 0
    done: bool = False
    best: "Hypothesis | None" = None  # best-scoring hypothesis on this path (itself included)
    fluency: float = 0.0  # lm_weight * the language prior's score of ``text`` (BigramLM.mean_association)
    words: int = 0  # tokens of ``text`` (the word cap and the length bonus read them)
    length: float = 0.0  # length_weight * ``words``, at most the target's predicted words
    # Inverting an order-bound view's vector: cos(view(text), view target), what a result reports; ``cosine``,
    # which the score reads, weighs the bound part by view_weight instead of the view's share
    view_cosine: float | None = None

    def score(self, model_weight: float) -> float:
        if not self.units:
            return -math.inf
        return self.cosine + model_weight * self.logp / max(1, self.actions) + self.fluency + self.length


class Policy(Protocol):
    def propose(self, targets: torch.Tensor, hyps: Sequence[Hypothesis], cfg: DecodeConfig) -> list[Proposal]:
        """Actions (and a stop probability) for each hypothesis; ``targets`` (H, D) is each one's target. When an
        order-bound view's vectors are inverted, the decoder also passes ``bound=`` (H, W), each target's
        bound part (zeros where it has none)."""


@dataclasses.dataclass
class BoundTargets:
    """What inverting the vectors of an order-bound view (:class:`invemb.em.order_bind.OrderBoundEncoder`) adds
    to decoding: the policy reads each vector's EM part, children are scored with its bound part too."""
    targets: torch.Tensor  # (N, W) each vector's bound part, L2-normalised (zeros: a one-word text's, none)
    encode: Callable[[list[str]], torch.Tensor]  # texts -> (n, W) their bound parts
    share: float  # the view's weight of the bound part: the cosine a result reports is the view's own
    # (bound part (W,), [(left unit, right unit)], k) -> for each, the k words likeliest between them (a pair-bound
    # view's: invemb.inversion.view.PairNeighbours.between; None for none)
    between: Callable[[torch.Tensor, list, int], list[list[int]]] | None = None
    # (bound part (W,), the buffer's unit texts, k) -> the k moves of one span that bring the buffer's bound part
    # nearest, as (new order of the buffer's indices, (start, end, slot)) (invemb.inversion.view.best_moves)
    moves: Callable[[torch.Tensor, list, int], list[tuple[list[int], tuple[int, int, int]]]] | None = None
    # (bound part (W,), the buffer's unit texts, orders of the buffer's indices) -> (M,) the bound cosine of each
    # reordered or cut buffer, without binding its text (invemb.inversion.view.order_cosines); None: bind each text
    order_cosines: Callable[[torch.Tensor, list, list], Any] | None = None
    # (a text, texts that are edits of it) -> (n, W) their bound parts, from the text's by the pairs that differ
    # (OrderBoundEncoder.bound_edits); None: ``encode`` binds each
    encode_edits: Callable[[str, list[str]], torch.Tensor] | None = None

    def encode_like(self, base: str, texts: list[str]) -> torch.Tensor:
        """(n, W) the bound parts of ``texts``, edits of ``base``: the same as ``encode``, cheaper where it can be."""
        return self.encode_edits(base, texts) if self.encode_edits is not None else self.encode(texts)

    def cosines(self, em: float, bound: float, weight: float) -> tuple[float, float]:
        """(the score's cosine, the view's cosine) of a child from its EM part's and bound part's cosines."""
        return (1 - weight) * em + weight * bound, (1 - self.share) * em + self.share * bound


@dataclasses.dataclass
class InversionResult:
    text: str
    cosine: float | None  # None where undefined (empty target text / empty reconstruction)
    steps: list[dict]
    encoder_calls: int
    seconds: float
    score: float = -math.inf

    def to_dict(self) -> dict:
        return {"reconstruction": self.text, "cosine": self.cosine, "steps": self.steps,
                "encoder_calls": self.encoder_calls, "seconds": self.seconds}


class CountingEncoder:
    """Wraps an encoder and counts the texts it encodes (the 'encoder calls' every method reports)."""

    def __init__(self, encoder: Encoder):
        self.encoder, self.dim, self.calls = encoder, encoder.dim, 0

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        self.calls += len(texts)
        return check_vectors(self.encoder.encode(texts, batch_size=batch_size), len(texts), self.dim, "encoder",
                             "inversion").float()

    def save(self, path) -> None:
        self.encoder.save(path)


def fitting_words(text: str, max_words: int) -> int | None:
    """The words of a candidate text that may be a hypothesis, None for one that may not: a
    hypothesis is something an encoder can read (not a unit of invisible characters alone) of at
    most ``max_words`` words (a unit may be a phrase)."""
    if not has_content(text):
        return None
    words = len(tokenize(text))
    return words if words <= max_words else None


def fits(text: str, max_words: int) -> bool:
    """Whether a candidate text may be a hypothesis (:func:`fitting_words`)."""
    return fitting_words(text, max_words) is not None


def render(units: Sequence[str]) -> str:
    """Unit texts in buffer order -> ordinary text, first letter capitalised."""
    text = detokenize(list(units))
    return text[:1].upper() + text[1:]


def check_target(target: torch.Tensor, dim: int) -> torch.Tensor:
    """A (D,) float vector of the encoder's width, finite and non-zero, L2-normalised."""
    t = torch.as_tensor(target).float()
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1 or t.shape[0] != dim:
        raise ValueError(f"target vector has shape {tuple(t.shape)}; this encoder needs ({dim},)")
    if not torch.isfinite(t).all():
        raise ValueError("target vector contains NaN or infinite values")
    scale = t.abs().max()
    if scale == 0:
        raise ValueError("target vector is all zeros")
    t = t / scale  # first: the norm of a finite vector with 1e20 entries overflows float32
    return t / t.norm()


def _apply(h: Hypothesis, a: Action) -> list[int]:
    units = list(h.units)
    if a.remove >= 0:
        del units[a.remove]
    units.insert(a.slot, a.unit)
    return units


@dataclasses.dataclass
class _Search:
    """The beam search state of one target."""
    target: torch.Tensor  # (D,)
    beam: list[Hypothesis]
    finished: list[Hypothesis] = dataclasses.field(default_factory=list)
    live: list[Hypothesis] = dataclasses.field(default_factory=list)
    groups: list[list[Hypothesis]] = dataclasses.field(default_factory=list)
    calls: int = 0
    done: bool = False
    predicted_words: float = math.inf  # the length prior's words for ``target``: the length bonus stops there
    bound_target: torch.Tensor | None = None  # (W,) inverting an order-bound view's vector: its bound part

    def best(self, w: float) -> Hypothesis:
        return max(self.finished + [h.best for h in self.beam], key=lambda h: h.score(w), default=Hypothesis([]))

    def result(self, w: float, seconds: float) -> InversionResult:
        best = self.best(w)
        cosine = None if not best.units else _fit(best)
        return InversionResult(best.text, cosine, best.steps, self.calls, seconds, best.score(w))


def beam_decode(target: torch.Tensor, policy: Policy, encoder: CountingEncoder, unit_texts: Sequence[str],
                cfg: DecodeConfig | None = None, prior: Callable[[str], float] | None = None,
                length: Callable[[torch.Tensor], torch.Tensor] | None = None,
                bound: BoundTargets | None = None) -> InversionResult:
    """Invert one target vector (D,) with ``policy``; ``encoder`` counts the calls spent."""
    return beam_decode_many(check_target(target, encoder.dim)[None], policy, encoder, unit_texts, cfg, prior=prior,
                            length=length, bound=bound)[0]


def beam_decode_many(targets: torch.Tensor, policy: Policy, encoder: CountingEncoder, unit_texts: Sequence[str],
                     cfg: DecodeConfig | None = None, on_done=None,
                     prior: Callable[[str], float] | None = None,
                     length: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     bound: BoundTargets | None = None) -> list[InversionResult]:
    """Invert N target vectors (N, D) in lockstep: every step, one policy call for the live
    hypotheses of all targets and one encoder call for all their children (bigger batches: the index
    search and the Placer run once a step, not once a target). Each target's search is the one
    :func:`beam_decode` runs alone; its ``encoder_calls`` are its own children, and ``seconds`` is the
    batch's wall time over N. ``on_done(k)`` is called as k more searches end (a progress bar).
    ``prior``: text -> a fluency score (the controller's is :meth:`BigramLM.mean_association`), weighted
    by ``cfg.lm_weight`` into every score; needed when that weight is not 0. ``length``: (N, D) targets ->
    (N,) predicted words (the controller's is :meth:`LengthPrior.predict`), where ``cfg.length_weight``'s
    bonus stops; needed when that weight is not 0. ``bound``: the targets are an order-bound view's EM parts, and
    these their bound parts (N, W): each child is scored with ``cfg.view_weight`` of its bound part's cosine, and
    results report the view's cosine. The bound parts' words are encoded by the view (once per distinct word,
    kept), not counted as encoder calls: like the unit vectors, they are known before any search."""
    cfg = cfg or DecodeConfig()
    if cfg.lm_weight and prior is None:
        raise ValueError(f"lm_weight={cfg.lm_weight} needs a language prior, and none was given: pass prior= "
                         "(e.g. BigramLM.mean_association) or set lm_weight=0")
    if cfg.length_weight and length is None:
        raise ValueError(f"length_weight={cfg.length_weight} needs a length prior, and none was given: pass length= "
                         "(e.g. LengthPrior.predict) or set length_weight=0")
    t0 = time.perf_counter()
    targets = torch.as_tensor(targets).float()
    if targets.ndim != 2:
        raise ValueError(f"expected (N, {encoder.dim}) target vectors, got shape {tuple(targets.shape)}")
    if bound is not None and tuple(bound.targets.shape[:1]) != tuple(targets.shape[:1]):
        raise ValueError(f"{len(bound.targets)} bound parts for {len(targets)} targets")
    searches = []
    for i, t in enumerate(targets):
        root = Hypothesis([])
        root.best = root
        searches.append(_Search(check_target(t, encoder.dim), [root]))
        if bound is not None and bound.targets[i].abs().sum() > 0:  # a one-word text's view has no bound part
            searches[-1].bound_target = bound.targets[i].float()
    if cfg.length_weight and searches:
        for s, words in zip(searches, length(torch.stack([s.target for s in searches])).tolist()):
            s.predicted_words = words
    torch.manual_seed(cfg.seed)
    w = cfg.model_weight
    polishing = bool(cfg.view_polish) and bound is not None
    # polishing, a search is done once its polish is final: the progress moves then, not as its steps end
    _steps(searches, policy, encoder, unit_texts, cfg, prior, bound, on_done=None if polishing else on_done)
    if polishing:
        _polish(searches, encoder, unit_texts, cfg, prior, bound)
        if on_done is not None:
            on_done(len(searches))
    seconds = (time.perf_counter() - t0) / max(1, len(searches))
    return [s.result(w, seconds) for s in searches]


def _steps(searches: list[_Search], policy: Policy, encoder: CountingEncoder, unit_texts: Sequence[str], cfg: DecodeConfig,
          prior: Callable[[str], float] | None, bound: BoundTargets | None, on_done=None) -> None:
    """Run the searches' beams in lockstep until each ends or ``cfg.max_steps`` steps pass (see
    :func:`beam_decode_many`)."""
    w = cfg.model_weight

    def end(s: _Search) -> None:
        s.done = True
        if on_done is not None:
            on_done(1)

    for _ in range(cfg.max_steps):
        for s in searches:
            if s.done:
                continue
            s.live = [h for h in s.beam if not h.done]
            s.finished += [h.best for h in s.beam if h.done]
            if not s.live:
                s.beam = []
                end(s)
        active = [s for s in searches if not s.done]
        if not active:
            break
        hyps = [h for s in active for h in s.live]
        rows = torch.stack([s.target for s in active for _ in s.live])  # (H, D): each hypothesis's target
        with torch.no_grad():
            if bound is None:
                proposals = policy.propose(rows, hyps, cfg)
            else:  # (H, W) each hypothesis's target's bound part
                zero = torch.zeros(bound.targets.shape[1])
                bound_rows = torch.stack([zero if s.bound_target is None else s.bound_target
                                          for s in active for _ in s.live])
                proposals = policy.propose(rows, hyps, cfg, bound=bound_rows)
        texts: list[str] = []
        at = 0
        for s in active:
            s.groups = []
            for h, prop in zip(s.live, proposals[at: at + len(s.live)]):
                kids: list[Hypothesis] = []
                if prop.stop_prob < cfg.stop_threshold:
                    ranked = sorted(prop.actions, key=lambda a: -a.logp)[: cfg.pool]
                    if cfg.expand_gap > 0 and ranked:
                        ranked = [a for a in ranked if a.logp >= ranked[0].logp - cfg.expand_gap]
                    for a in ranked:
                        units = _apply(h, a)
                        text = render([unit_texts[u] for u in units])
                        words = fitting_words(text, cfg.max_words)
                        if words is None:  # a 7-word unit at 38 words: not a child
                            continue
                        kids.append(Hypothesis(units, text, logp=h.logp + a.logp, words=words,
                                               fluency=cfg.lm_weight * prior(text) if cfg.lm_weight else 0.0,
                                               length=cfg.length_weight * min(words, s.predicted_words),
                                               actions=h.actions + 1, steps=h.steps + [{"unit": unit_texts[a.unit], "slot": a.slot,
                                                                                        **({"moved_from": a.remove} if a.remove >= 0 else {})}]))
                    if len(kids) > cfg.expand:  # the score's terms known before encoding: policy, prior, length
                        kids = sorted(kids, key=lambda k: -(w * k.logp + k.fluency + k.length))[: cfg.expand]
                if not kids:
                    s.finished.append(h.best)
                s.groups.append(kids)
            at += len(s.live)
            own = list(dict.fromkeys(k.text for g in s.groups for k in g))
            if not own:
                s.beam = []
                end(s)
                continue
            s.calls += len(own)
            texts += own
        texts = list(dict.fromkeys(texts))
        if not texts:
            continue
        by_text = dict(zip(texts, encoder.encode(texts)))  # (D,) each
        bound_of = dict(zip(texts, bound.encode(texts))) if bound is not None else {}  # (W,) each
        for s in active:
            if s.done:
                continue
            for h, kids in zip(s.live, s.groups):
                for k in kids:
                    _rescore(k, s, by_text, bound_of, bound, cfg.view_weight)
                    better = k.score(w) > h.best.score(w) + cfg.min_gain
                    k.best = k if better else h.best
                    k.stale = 0 if better else h.stale + 1
                    k.done = (cfg.patience > 0 and k.stale >= cfg.patience) or k.words >= cfg.max_words
            # Slot 0 follows the greedy path; the other slots take the best remaining distinct texts.
            new_beam: list[Hypothesis] = []
            if s.live[0] is s.beam[0] and s.groups[0]:
                new_beam.append(max(s.groups[0], key=lambda k: k.score(w)))  # max keeps the first of ties
            seen = {k.text for k in new_beam}
            for k in sorted((k for g in s.groups for k in g), key=lambda k: -k.score(w)):
                if len(new_beam) >= cfg.beam:
                    break
                if k.text not in seen:
                    seen.add(k.text)
                    new_beam.append(k)
            s.beam = new_beam
            if _rebuilt(s.best(w), cfg):  # only the priors could still prefer another text
                s.finished += [h.best for h in s.beam]
                s.beam = []
                end(s)
    if on_done is not None:
        on_done(sum(not s.done for s in searches))


def _fit(h: Hypothesis) -> float:
    """A hypothesis's cosine with its target: the view's, inverting a view."""
    return h.cosine if h.view_cosine is None else h.view_cosine


def _rebuilt(h: Hypothesis, cfg: DecodeConfig) -> bool:
    """Whether ``h`` is its target's own text (``cfg.exact_cosine``): its search, polishing too, ends there."""
    return _fit(h) >= cfg.exact_cosine


def _polishable(h: Hypothesis, cfg: DecodeConfig) -> bool:
    """Whether polishing edits ``h`` (another round): two units or more to cut or move, and not the target's own text."""
    return len(h.units) >= 2 and not _rebuilt(h, cfg)


def _rescore(k: Hypothesis, s: _Search, by_text: dict, bound_of: dict, bound: BoundTargets | None,
             view_weight: float) -> None:
    """Set a child's vector and cosine from its encoded text (``by_text``: text -> (D,); ``bound_of``: text ->
    (W,) its bound part, when a view's vector is inverted), and its last step's cosine."""
    k.vector = by_text[k.text]
    k.cosine = float(k.vector @ s.target)
    if s.bound_target is not None:
        k.cosine, k.view_cosine = bound.cosines(k.cosine, float(bound_of[k.text] @ s.bound_target), view_weight)
    k.steps[-1]["cosine"] = round(k.cosine if k.view_cosine is None else k.view_cosine, 4)


def _cuts(n: int) -> list[tuple[list[int], list[int]]]:
    """Every (kept, deleted) split of the buffer indices 0..n-1 that deletes one span or keeps one, keeping
    at least one index."""
    out = []
    for i in range(n):
        for j in range(i + 1, n + 1):
            span = list(range(i, j))
            rest = list(range(i)) + list(range(j, n))
            if rest:
                out.append((rest, span))  # the span deleted
                if i > 0 and j < n:
                    out.append((span, rest))  # only the span kept (at an end, the same as a deletion)
    return out


def _edits(units: list[int], bound_target: torch.Tensor, bound: BoundTargets, unit_texts: Sequence[str],
           k: int, moves: int = 0, words_from: Sequence[tuple[torch.Tensor, int]] = (), chain: int = 0
           ) -> list[tuple[list[int], dict, list[int] | None, tuple | None]]:
    """The edited unit lists polishing tries on ``units``, each with its step: every span deleted or kept alone
    (:func:`_cuts`) and, where the view reads words between neighbours (``bound.between``) and ``k``, each unit
    replaced by the ``k`` words likeliest between its neighbours and the ``k`` likeliest put in each slot; where it
    ranks moves (``bound.moves``), the best ``moves`` moves of one span. The third item: the edit as an order of
    the buffer's indices (cuts and moves), None for a new word; the fourth: the edit as a change another can join
    (:func:`_combined`: ("delete", start, end), ("replace", index, unit), ("insert", slot, unit)), None for a span
    kept alone or moved. ``words_from``: the bound parts (W,) the new words are read off, each with its number of
    words per place (default: ``k`` off ``bound_target``); a word read off two is tried once. ``chain`` (at least 2):
    runs of 2..``chain`` new words in each slot, each word the likeliest to follow the one before it (from the unit
    before the slot) or to precede the one after it (from the unit after), read off the first of ``words_from``."""
    out = [([units[i] for i in kept], {"deleted": detokenize([unit_texts[units[i]] for i in deleted])}, kept,
            ("delete", deleted[0], deleted[-1] + 1) if deleted[-1] - deleted[0] == len(deleted) - 1 else None)
           for kept, deleted in _cuts(len(units))]
    if bound.moves is not None and moves:
        out += [([units[i] for i in order], {"moved": detokenize([unit_texts[u] for u in units[start:end]]), "slot": slot},
                 order, None) for order, (start, end, slot) in bound.moves(bound_target, [unit_texts[u] for u in units], moves)]
    if bound.between is None or not k:
        return out
    n = len(units)
    sides = [(units[j - 1] if j else None, units[j + 1] if j + 1 < n else None) for j in range(n)]  # around unit j
    sides += [(units[j - 1] if j else None, units[j] if j < n else None) for j in range(n + 1)]  # around slot j
    found: list[list[int]] = [[] for _ in sides]
    for source, n_words in words_from or [(bound_target, k)]:
        for place, words in zip(found, bound.between(source, sides, n_words)):
            place += [u for u in words if u not in place]
    for j in range(n):
        out += [(units[:j] + [u] + units[j + 1:], {"replaced": unit_texts[units[j]], "by": unit_texts[u]}, None,
                 ("replace", j, u)) for u in found[j] if u != units[j]]
    for j in range(n + 1):
        out += [(units[:j] + [u] + units[j:], {"inserted": unit_texts[u], "slot": j}, None, ("insert", j, u))
                for u in found[n + j]]
    if chain >= 2:
        out += _chains(units, words_from[0][0] if words_from else bound_target, bound, unit_texts, chain)
    return out


def _chains(units: list[int], source: torch.Tensor, bound: BoundTargets, unit_texts: Sequence[str], longest: int
            ) -> list[tuple[list[int], dict, None, None]]:
    """Runs of 2..``longest`` words put in each slot of ``units``, read off the bound part ``source`` (W,) one word
    at a time (see :func:`_edits`): forwards from the unit before the slot, backwards from the unit after it."""
    n, out = len(units), []
    for after in (True, False):
        # slot j's anchor: the unit before it (after) or after it; the run grows away from the anchor
        run = {j: [] for j in range(n + 1) if (j > 0 if after else j < n)}
        last = {j: units[j - 1] if after else units[j] for j in run}
        for length in range(1, longest + 1):
            slots = list(run)
            words = bound.between(source, [(last[j], None) if after else (None, last[j]) for j in slots], 1)
            for j, found in zip(slots, words):
                run[j] = run[j] + found if after else found + run[j]
                last[j] = found[0]
                if length >= 2:
                    out.append((units[:j] + run[j] + units[j:],
                                {"inserted": detokenize([unit_texts[u] for u in run[j]]), "slot": j}, None, None))
    return out


def _combined(units: list[int], changes: Sequence[tuple]) -> tuple[list[int], list[tuple]]:
    """``units`` with as many of ``changes`` (best first; see :func:`_edits`) made at once as change no junction
    another one taken changes, and the changes taken. Junction j is slot j (between units j - 1 and j, or an end):
    an insertion changes its slot's, a replacement of unit j junctions j and j + 1, a deletion of units i..j - 1
    junctions i to j. Each change was scored with the others' units as they were, so no two taken share a pair; nor
    do two bring in the same unit (one missing word, read off at two places, goes in once: at the better)."""
    taken, changed, brought = [], set(), set()
    for change in changes:
        kind, a, b = change
        slots = {a} if kind == "insert" else {a, a + 1} if kind == "replace" else set(range(a, b + 1))
        if not slots & changed and (kind == "delete" or b not in brought):
            taken.append(change)
            changed |= slots
            brought |= {b} if kind != "delete" else set()
    inserted = {a: b for kind, a, b in taken if kind == "insert"}
    kept: dict[int, int | None] = dict(enumerate(units))
    for kind, a, b in taken:
        if kind == "replace":
            kept[a] = b
        elif kind == "delete":
            kept.update((i, None) for i in range(a, b))
    out = []
    for j in range(len(units) + 1):
        if j in inserted:
            out.append(inserted[j])
        if j < len(units) and kept[j] is not None:
            out.append(kept[j])
    return out, taken


# Polishing ranks at most this many cuts and moves per text it encodes (view_polish), those whose bound part comes
# nearest the target's; the rest are never rendered.
CUTS_PER_POLISHED = 4


def _polish(searches: list[_Search], encoder: CountingEncoder, unit_texts: Sequence[str], cfg: DecodeConfig,
            prior: Callable[[str], float] | None, bound: BoundTargets) -> None:
    """Edit the best text of each search with a bound part (``DecodeConfig.view_polish``: cuts, moves, new words;
    :func:`_edits`), in lockstep: one encoder call a round for all searches (two with ``view_combine``). An edited
    text that scores higher joins ``finished`` with a step naming its edit."""
    w = cfg.model_weight
    current = {id(s): s.best(w) for s in searches}
    live = [s for s in searches if s.bound_target is not None and _polishable(current[id(s)], cfg)]
    for _ in range(cfg.view_polish_rounds):
        picked: list[tuple[_Search, list[Hypothesis], list[tuple | None]]] = []
        bound_of: dict[str, torch.Tensor] = {}  # text -> (W,) its bound part
        for s in live:
            h = current[id(s)]
            kids, changes, seen = [], [], {h.text}
            words_from = []  # default: off the whole target
            if cfg.view_residual and cfg.view_edits:  # what the text leaves unexplained: its missing pairs
                own = bound.encode([h.text])[0]  # (W,) L2-normalised
                words_from = [(s.bound_target - cfg.view_residual * (own @ s.bound_target) * own, cfg.view_edits)]
                if cfg.view_whole_words:  # and, beside them, words read off the whole target
                    words_from.append((s.bound_target, cfg.view_whole_words))
            edits = _edits(h.units, s.bound_target, bound, unit_texts, cfg.view_edits, cfg.view_moves, words_from,
                           cfg.view_chain if cfg.view_residual else 0)
            # the bound cosine of each cut and move from the buffer's pair terms (no text bound); a text of n units
            # has ~n^2 cuts: only the CUTS_PER_POLISHED * view_polish nearest the target are rendered and ranked
            ranked: list[tuple[tuple, float | None]] = [(e, None) for e in edits]  # (edit, its bound cosine if known)
            ordered = [i for i, e in enumerate(edits) if e[2] is not None]
            if bound.order_cosines is not None and ordered:
                cos = torch.as_tensor(bound.order_cosines(s.bound_target, [unit_texts[u] for u in h.units],
                                                          [edits[i][2] for i in ordered]), dtype=torch.float32)
                near = {ordered[j]: float(cos[j])
                        for j in cos.topk(min(CUTS_PER_POLISHED * cfg.view_polish, len(ordered))).indices.tolist()}
                ranked = [(e, near.get(i)) for i, e in enumerate(edits) if e[2] is None or i in near]
            known_cos: list[float | None] = []
            for (units, step, _, change), order_cos in ranked:
                text = render([unit_texts[u] for u in units])
                words = fitting_words(text, cfg.max_words)
                if words is None or text in seen:
                    continue
                seen.add(text)
                changes.append(change)
                known_cos.append(order_cos)
                kids.append(_edited(h, s, units, text, words, step, cfg, prior))
            if not kids:
                continue
            # new words' texts are bound to get theirs
            cos = torch.tensor([c if c is not None else 0.0 for c in known_cos])
            slow = [i for i, c in enumerate(known_cos) if c is None]
            parts: dict[int, torch.Tensor] = {}  # kid -> (W,) its bound part, where bound
            if slow:
                parts.update(zip(slow, bound.encode_like(h.text, [kids[i].text for i in slow])))
                cos[slow] = torch.stack([parts[i] for i in slow]) @ s.bound_target
            known = torch.tensor([k.fluency + k.length for k in kids]) + cfg.view_weight * cos
            top = known.topk(min(cfg.view_polish, len(kids))).indices.tolist()  # by the score's terms known before encoding
            unbound = [i for i in top if i not in parts]
            if unbound:
                parts.update(zip(unbound, bound.encode_like(h.text, [kids[i].text for i in unbound])))
            bound_of.update((kids[i].text, parts[i]) for i in top)
            picked.append((s, [kids[i] for i in top], [changes[i] for i in top]))
        texts = list(dict.fromkeys(k.text for _, kids, _ in picked for k in kids))
        if not texts:
            break
        by_text = dict(zip(texts, encoder.encode(texts)))  # (D,) each
        for s, kids, _ in picked:
            s.calls += len({k.text for k in kids})
            for k in kids:
                _rescore(k, s, by_text, bound_of, bound, cfg.view_weight)
        if cfg.view_combine:
            _combine_gains(picked, current, encoder, unit_texts, cfg, prior, bound)
        live = []
        for s, kids, _ in picked:
            best = max(kids, key=lambda k: k.score(w))
            if best.score(w) > current[id(s)].score(w) + cfg.min_gain:
                best.best = best
                current[id(s)] = best
                s.finished.append(best)
                if _polishable(best, cfg):
                    live.append(s)
        if not live:
            break


def _edited(h: Hypothesis, s: _Search, units: list[int], text: str, words: int, step: dict, cfg: DecodeConfig,
            prior: Callable[[str], float] | None) -> Hypothesis:
    """The polished text ``h`` edited to ``units`` (rendered ``text``, ``words`` long), its edit ``step`` added: the
    policy's terms kept, the prior and the length bonus of the new text."""
    return Hypothesis(units, text, logp=h.logp, actions=h.actions, words=words,
                      fluency=cfg.lm_weight * prior(text) if cfg.lm_weight else 0.0,
                      length=cfg.length_weight * min(words, s.predicted_words), steps=h.steps + [step])


def _combine_gains(picked: list, current: dict, encoder: CountingEncoder, unit_texts: Sequence[str], cfg: DecodeConfig,
                   prior: Callable[[str], float] | None, bound: BoundTargets) -> None:
    """For each search of a polishing round (``picked``: (search, its encoded edits, their changes)), make the
    edits that each beat its text together (:func:`_combined`, best first) where two or more can be, encode those
    texts in one call and add each to its search's edits, with one step naming them all."""
    w = cfg.model_weight
    made = []
    for s, kids, changes in picked:
        h = current[id(s)]
        gains = sorted(((k, c) for k, c in zip(kids, changes) if c is not None and k.score(w) > h.score(w) + cfg.min_gain),
                       key=lambda kc: -kc[0].score(w))
        if len(gains) < 2:
            continue
        units, taken = _combined(h.units, [c for _, c in gains])
        text = render([unit_texts[u] for u in units])
        words = fitting_words(text, cfg.max_words)
        if len(taken) < 2 or words is None or text == h.text or text in {k.text for k in kids}:
            continue
        steps = [{k: v for k, v in kid.steps[-1].items() if k != "cosine"} for kid, c in gains if c in taken]
        made.append((s, kids, _edited(h, s, units, text, words, {"combined": steps}, cfg, prior)))
    if not made:
        return
    texts = list(dict.fromkeys(k.text for _, _, k in made))
    by_text = dict(zip(texts, encoder.encode(texts)))
    bound_of = dict(zip(texts, bound.encode(texts)))
    for s, kids, k in made:
        s.calls += 1
        _rescore(k, s, by_text, bound_of, bound, cfg.view_weight)
        kids.append(k)


class OraclePolicy:
    """Knows the gold units of one sentence: proposes the next gold unit (in a seeded random order)
    at its gold slot, and stops when all are placed. Tests and the decoding upper bound use it."""

    def __init__(self, gold_units: Sequence[int], seed: int = 0):
        self.gold = list(gold_units)
        g = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(self.gold), generator=g).tolist()

    def propose(self, targets: torch.Tensor, hyps: Sequence[Hypothesis], cfg: DecodeConfig) -> list[Proposal]:
        out = []
        for h in hyps:
            placed = len(h.units)
            if placed >= len(self.gold):
                out.append(Proposal([], stop_prob=1.0))
                continue
            nxt = self.order[placed]
            slot = sum(1 for j in self.order[:placed] if j < nxt)
            out.append(Proposal([Action(self.gold[nxt], slot, 0.0)]))
        return out
