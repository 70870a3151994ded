"""Selector: (target vector, buffer summary) -> intention vector for the unit index, and stop.

Shape legend: B states, D encoder dim, H hidden width, C candidate units, V all units, W reranker width.

The intention is ``normalise(target + MLP(features))``: at initialisation it is the target itself
(so an untrained Selector is the bag-of-units baseline), and training teaches the MLP to point at
the units the buffer still lacks, reading the residual between the target and the buffer's vector.

How a state's several missing units enter the loss (``positives``): ``pooled`` is one InfoNCE term
over the summed probability of all of them, which is satisfied as soon as any one ranks high;
``each`` gives every missing unit its own term against the state's negatives, so all of them must
rank above every wrong unit, which is what a top-k candidate list needs.

One intention vector scores every unit by a single dot product, so it cannot tell a unit the
buffer lacks from a near neighbour of one the buffer holds. The optional reranker
(``rerank`` > 0) re-scores the ``rerank`` units the intention retrieves, reading each (state,
unit) pair jointly: the unit against the Selector's hidden state, and its cosines with the
target, the residual, the buffer text and the closest placed unit. It adds to the intention's
own logit through a zero-initialised last layer, so an untrained reranker keeps the intention's
ranking.

With ``memory`` > 0 the Selector also reads the sentence memory (:mod:`invemb.inversion.memory`):
the ``memory`` units best voted by the training sentences nearest the target, their votes zeroed
for units the buffer holds. Their vote-weighted mean vector and total vote join the trunk's input,
the units join the candidates, and each candidate's logit gains ``gate * vote``, the gate a
softplus of the trunk's state: the Selector learns how far to trust the neighbours, state by state
(trained with each sentence left out of its own neighbours).

With ``memory_source="bag"`` what the Selector reads in that place is the bag of units
(:mod:`invemb.inversion.bag`) instead of the neighbours: its ``memory`` likeliest units, each voting
``log p(u) - log p`` of the next likeliest. The bag then enters selection through a gate learned
state by state, not decoding's hand weight (``--decode bag_weight``). A bag trained on a sentence
knows it, so each training sentence reads a bag trained on the other half of the memory's documents
(cross-fitted); dev states and decoding read the run's bag of the whole memory.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config
from invemb.inversion.summary import BufferSummary


@dataclasses.dataclass
class SelectorConfig(Config):
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.1
    temperature: float = 0.05  # InfoNCE temperature (cosine / temperature)
    # Units the intention retrieves for the reranker to re-score (0: no reranker). 64 on the default EM with
    # pooled positives: wiki / WordNet token F1 36.7 / 56.9 against 32.3 / 52.2, at a training loop 1.7x
    # slower; with positives="each" it adds nothing (36.6 / 55.7 against 38.8 / 56.2, docs/inversion.md "Positives").
    rerank: int = 0
    rerank_width: int = 128
    # "each" | "pooled": see the module docstring. Default EM, same training states, two seeds each, 150 test
    # sentences: wiki / WordNet token F1 38.8 / 56.2 and 36.6 / 56.3 with "each" against 36.6 / 54.2 and
    # 35.1 / 51.6 pooled (WordNet BLEU 7.4-7.6 against 5.4-5.7), same training time; runs saved before
    # this option trained pooled (it is read only in training).
    positives: str = "each"
    # Sentence-memory units the Selector reads (module docstring); 0: none. Votes from the memory_k nearest
    # training sentences, softmax over cos / memory_temperature (as decoding's memory_weight). 32 in the
    # default preset: on the default EM and the same training states, wiki / WordNet token F1 44.5 / 60.8
    # and 42.9 / 60.2 (seeds 0 / 1) against 43.5 / 59.7 and 41.2 / 59.4 without; 46.1 / 48.6 on wiki with
    # the wiki training text added to the memory (`invemb index memory --source wiki`); training 20% slower.
    memory: int = 0
    memory_k: int = 100
    memory_temperature: float = 0.1
    # What the Selector's memory read holds (module docstring): "neighbours" (the memory's nearest sentences'
    # votes) or "bag" (the bag of units' likeliest units, cross-fitted in training). "bag" was worth what the
    # neighbours are worth: wiki / WordNet token F1 at 52k 48.9 / 61.3 and 47.6 / 60.4 against 47.6 / 60.2 and
    # 49.2 / 60.2 (seeds 0 / 1), at 245k 47.6 / 63.0 and 46.2 / 64.1 against 47.5 / 62.9 and 46.4 / 64.0; less
    # than the neighbours with decoding's hand-weighted bag (245k: 49.6 / 63.7; docs/inversion.md "Bag of units").
    memory_source: str = "neighbours"

    presets = {"tiny": {"hidden": 32, "layers": 1, "dropout": 0.0}, "default": {"memory": 32},
               "full": {"hidden": 1024, "layers": 3, "memory": 32}}


class SelectorOutput(NamedTuple):
    intention: torch.Tensor  # (B, D), L2-normalised
    stop_logit: torch.Tensor  # (B,)
    hidden: torch.Tensor  # (B, H) the trunk's state, read by the reranker
    memory_gate: torch.Tensor  # (B,) weight of a candidate's memory vote in its logit; zeros without a memory


class MemoryInput(NamedTuple):
    """What the Selector reads of the sentence memory for each state (M = ``SelectorConfig.memory``)."""

    ids: torch.Tensor  # (B, M) best-voted unit ids, -1 where none
    votes: torch.Tensor  # (B, M) their votes, 0 for units in the buffer and for empty ids
    vectors: torch.Tensor  # (B, M, D) their unit vectors, zeros for empty ids

    @classmethod
    def of(cls, ids: torch.Tensor, votes: torch.Tensor, buffers: list[list[int]], unit_vectors: torch.Tensor) -> "MemoryInput":
        """The memory input of states whose best-voted units are ``ids`` (B, M) with ``votes`` (B, M)
        and whose buffers hold ``buffers`` (unit ids): votes of placed units are zeroed."""
        length = max([len(b) for b in buffers] + [1])
        placed = torch.full((len(buffers), length), -2, dtype=torch.long)  # -2 never matches an id (-1 is "none")
        for i, b in enumerate(buffers):
            placed[i, : len(b)] = torch.tensor(b, dtype=torch.long)
        in_buffer = (ids[:, :, None] == placed[:, None, :]).any(-1)  # (B, M)
        votes = votes.masked_fill(in_buffer | (ids < 0), 0.0)
        vectors = unit_vectors[ids.clamp_min(0)] * (ids >= 0).unsqueeze(-1)  # (B, M, D)
        return cls(ids, votes, vectors)

    def to(self, device: torch.device) -> "MemoryInput":
        return MemoryInput(*(t.to(device) for t in self))

    def votes_of(self, candidates: torch.Tensor) -> torch.Tensor:
        """Each candidate's vote (B, C) for candidate unit ids (B, C) or (C,): 0 where not voted."""
        candidates = candidates.expand(self.ids.shape[0], -1) if candidates.ndim == 1 else candidates
        match = candidates[:, :, None] == self.ids[:, None, :]  # (B, C, M)
        return (match * self.votes[:, None, :]).sum(-1)


class Selector(nn.Module):
    def __init__(self, dim: int, cfg: SelectorConfig):
        super().__init__()
        self.dim, self.cfg = dim, cfg
        width = 4 * dim + 2  # target, buffer text, residual, unit mean, cos(target, text), buffer length
        width += dim + 1 if cfg.memory else 0  # the memory's vote-weighted unit mean and its total vote
        blocks: list[nn.Module] = []
        for i in range(cfg.layers):
            blocks += [nn.Linear(width if i == 0 else cfg.hidden, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
        self.trunk = nn.Sequential(*blocks)
        self.to_intention = nn.Linear(cfg.hidden, dim)
        nn.init.zeros_(self.to_intention.weight)  # start as the bag-of-units query
        nn.init.zeros_(self.to_intention.bias)
        self.stop = nn.Linear(cfg.hidden, 1)
        self.reranker = Reranker(dim, cfg) if cfg.rerank > 0 else None
        self.memory_gate = None
        if cfg.memory:
            self.memory_gate = nn.Linear(cfg.hidden, 1)
            nn.init.zeros_(self.memory_gate.weight)
            # Neighbours: softplus(5) ~ 5, about decoding's best hand weight (10) on votes in [0, 1]. Bag: softplus ~ 0.5,
            # decoding's best hand weight on log p (bag_weight).
            nn.init.constant_(self.memory_gate.bias, 5.0 if cfg.memory_source == "neighbours" else -0.43)
        if cfg.positives not in ("pooled", "each"):
            raise ValueError(f"selector.positives must be 'pooled' or 'each', got {cfg.positives!r}")
        if cfg.memory_source not in ("neighbours", "bag"):
            raise ValueError(f"selector.memory_source must be 'neighbours' or 'bag', got {cfg.memory_source!r}")

    def forward(self, s: BufferSummary, memory: MemoryInput | None = None) -> SelectorOutput:
        cos = (F.normalize(s.target, dim=-1) * s.text).sum(-1, keepdim=True)  # (B, 1); 0 for an empty buffer
        length = s.mask.sum(1, keepdim=True).float() / 32.0  # (B, 1)
        feats = [s.target, s.text, s.residual, s.unit_mean, cos, length]
        if self.memory_gate is not None:
            if memory is None:
                raise ValueError("this Selector reads a sentence memory (selector.memory > 0): pass memory=")
            mass = memory.votes.sum(1, keepdim=True)  # (B, 1)
            feats += [(memory.votes.unsqueeze(-1) * memory.vectors).sum(1) / mass.clamp_min(1e-6), mass]
        h = self.trunk(torch.cat(feats, dim=-1))  # (B, H)
        intention = F.normalize(s.target + self.to_intention(h), dim=-1)
        gate = (F.softplus(self.memory_gate(h)).squeeze(-1) if self.memory_gate is not None
                else torch.zeros(h.shape[0], device=h.device, dtype=h.dtype))
        return SelectorOutput(intention, self.stop(h).squeeze(-1), h, gate)

    def memory_logits(self, sel: SelectorOutput, memory: MemoryInput | None, candidates: torch.Tensor) -> torch.Tensor | float:
        """What the memory adds (B, C) to the logits of candidate unit ids (B, C) or (C,): ``gate * vote``;
        0 without a memory."""
        if memory is None or self.memory_gate is None:
            return 0.0
        return sel.memory_gate.unsqueeze(-1) * memory.votes_of(candidates)

    def candidate_logits(self, s: BufferSummary, sel: SelectorOutput, candidates: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of each state's own candidates (B, C, D): the intention's cosine / temperature,
        plus the reranker's correction when there is one."""
        cos = torch.einsum("bd,bcd->bc", sel.intention, candidates)  # (B, C); the intention is unit length
        if self.reranker is None:
            return cos / self.cfg.temperature
        return cos / self.cfg.temperature + self.reranker(s, sel, candidates, cos)

    def selection_loss(self, logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """The selection loss of logits (B, C) with positives (B, C) bool, as ``positives`` says."""
        if self.cfg.positives == "each":
            return each_positive_infonce(logits, positive)
        return infonce_over_logits(logits, positive)


class Reranker(nn.Module):
    """Joint scorer of (state, candidate unit) pairs; see the module docstring."""

    n_features = 5  # cosines of the candidate with target, residual, buffer text, intention, closest placed unit

    def __init__(self, dim: int, cfg: SelectorConfig):
        super().__init__()
        w = cfg.rerank_width
        self.state = nn.Linear(cfg.hidden, w)
        self.unit = nn.Linear(dim, w)
        self.score = nn.Sequential(nn.Linear(2 * w + self.n_features, w), nn.GELU(), nn.Linear(w, 1))
        nn.init.zeros_(self.score[-1].weight)  # start as the intention's own ranking
        nn.init.zeros_(self.score[-1].bias)

    def forward(self, s: BufferSummary, sel: SelectorOutput, candidates: torch.Tensor,
                intention_cos: torch.Tensor) -> torch.Tensor:
        """Correction logits (B, C) for candidates (B, C, D); ``intention_cos`` (B, C) the intention's cosines."""
        def cos(v: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
            return torch.einsum("bd,bcd->bc", F.normalize(v, dim=-1), candidates)

        # Cosine with the closest placed unit; -1 for an empty buffer (summaries always have L >= 1).
        placed = torch.einsum("bld,bcd->bcl", s.units, candidates).masked_fill(~s.mask[:, None], -1.0)  # (B, C, L)
        feats = torch.stack([cos(s.target), cos(s.residual), cos(s.text), intention_cos, placed.max(-1).values], dim=-1)  # (B, C, 5)
        a = self.state(sel.hidden)[:, None]  # (B, 1, W)
        b = self.unit(candidates)  # (B, C, W)
        return self.score(torch.cat([a * b, a + b, feats], dim=-1)).squeeze(-1)  # (B, C)


def infonce_over_logits(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows with a positive of ``-log(sum_pos exp(s) / sum_all exp(s))`` for logits (B, C) and
    positives (B, C) bool: every unit still missing from the buffer is a positive, everything else
    (other states' units, hard negatives) a negative."""
    rows = positive.any(1)
    if not rows.any():
        return logits.sum() * 0.0
    pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - pos)[rows].mean()


def each_positive_infonce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over every positive (b, c) of ``-log(exp(s_bc) / (exp(s_bc) + sum_neg exp(s_bn)))``: each
    positive against its row's negatives only, never against the row's other positives."""
    if not positive.any():
        return logits.sum() * 0.0
    neg = torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1)  # (B,); -inf where all are positive
    rows, cols = positive.nonzero(as_tuple=True)
    pos = logits[rows, cols]  # (P,)
    return (torch.logaddexp(pos, neg[rows]) - pos).mean()
