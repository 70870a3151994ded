"""Training objectives of the tiered model (each a function on raw tensors) and the phase schedule.

E1: character masked-LM, boundary BCE, chunk identity contrastive (a word and its spelling
variants or real misspellings share a chunk vector). E2: SimCSE-style sentence contrastive (two
views of one sentence, one with typos), chunk-order prediction, masked-chunk prediction, and
optionally word-meaning distillation: E2's state of a word's chunk vector must pick out a
pretrained teacher's vector of that word among the batch's other words (``w_teacher``; the
teacher only gives targets, E2 still reads nothing but chunk vectors, and E1 gets no gradient
from it).
Phases: E1 warm-up alone, then joint training with E2 weighted higher, then E1 frozen.
"""
from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F

from invemb.config import Config
from invemb.tiered.char_encoder import MASK_ID, N_SPECIAL
from invemb.text.noise import QWERTY_NEIGHBOURS

PHASES = ("e1", "joint", "frozen")


@dataclasses.dataclass
class ObjectiveConfig(Config):
    # Phase lengths as shares of all optimizer steps: [0, e1_warmup) E1 alone,
    # [e1_warmup, freeze_e1_at) joint, [freeze_e1_at, 1] E1 frozen.
    e1_warmup: float = 0.15
    freeze_e1_at: float = 0.8
    w_mlm: float = 1.0
    w_boundary: float = 0.5
    w_chunk_identity: float = 0.5
    w_sentence: float = 2.0  # E2 terms weighted higher than E1's in the joint phase
    w_order: float = 0.5
    w_masked_chunk: float = 0.5
    # Word-meaning distillation into E2 (0: off): a pretrained HF encoder folder ("default": the bundled
    # MiniLM) embeds each word of the training word pool once; E2's state of that word's chunk vector
    # (E1 and bridge without gradient) is mapped by a linear head onto it, InfoNCE over the batch's
    # words. From 12k sentences alone E2 learns next to nothing of word meaning (lexname probe at the
    # majority baseline).
    w_teacher: float = 0.0
    teacher: str = "default"
    teacher_words_per_batch: int = 512  # pool words per micro-batch the term is computed on
    # "bare": E2 reads a pool word's chunk vector alone; "context": E2's state of each pool word inside
    # the batch's sentences (the MLM view's chunks, without gradient to E1 and the bridge), at most
    # teacher_words_per_batch of them.
    teacher_mode: str = "bare"
    mlm_rate: float = 0.15  # share of units masked in the MLM view
    masked_chunk_rate: float = 0.15
    sentence_noise: float = 0.1  # character typo rate of the second SimCSE view (0: plain dropout views)
    real_misspelling_share: float = 0.5  # of chunk-identity variants, taken from codespell where one exists
    temperature: float = 0.05
    boundary_anneal: bool = True  # learned chunker: use its own predictions with a probability rising 0 -> 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.e1_warmup <= self.freeze_e1_at <= 1.0:
            raise ValueError(f"need 0 <= e1_warmup ({self.e1_warmup}) <= freeze_e1_at ({self.freeze_e1_at}) <= 1")
        if self.teacher_mode not in ("bare", "context"):
            raise ValueError(f"objectives.teacher_mode must be bare or context, not {self.teacher_mode!r}")


def phase_at(step: int, total_steps: int, cfg: ObjectiveConfig) -> str:
    share = step / max(1, total_steps)
    if share < cfg.e1_warmup:
        return "e1"
    return "joint" if share < cfg.freeze_e1_at else "frozen"


def anneal_share(step: int, total_steps: int, cfg: ObjectiveConfig) -> float:
    """Probability of chunking with the boundary head's own predictions: 0 until E1 warm-up ends, then linear to 1."""
    start, end = cfg.e1_warmup * total_steps, cfg.freeze_e1_at * total_steps
    if not cfg.boundary_anneal or step < start:
        return 0.0
    return min(1.0, (step - start) / max(1.0, end - start))


# -- E1 ------------------------------------------------------------------------------------
def mask_units(ids: torch.Tensor, mask: torch.Tensor, rate: float, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of ``rate`` of the real units: (masked ids, (B, L) bool of masked positions)."""
    pick = (torch.rand(ids.shape, generator=generator) < rate).to(ids.device) & mask & (ids >= N_SPECIAL)
    return ids.masked_fill(pick, MASK_ID), pick


def char_mlm_loss(logits: torch.Tensor, targets: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, L, V) logits at the masked positions."""
    if not picked.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[picked].float(), targets[picked])


def boundary_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE of start logits (B, L) against 0/1 labels where ``valid`` (real first units of characters)."""
    return F.binary_cross_entropy_with_logits(logits[valid].float(), labels[valid].float())


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, keys: list | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` matches row i of ``b``; other rows are negatives.

    ``keys``: rows with equal keys are the same item (a word drawn twice), so they are not negatives.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = a @ b.T / temperature  # (N, N)
    if keys is not None:
        index: dict = {}
        ids = torch.tensor([index.setdefault(k, len(index)) for k in keys], device=a.device)  # (N,)
        same = ids[:, None] == ids[None, :]  # (N, N)
        logits = logits.masked_fill(same & ~torch.eye(len(keys), dtype=torch.bool, device=a.device), float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def spelling_variant(word: str, rng: random.Random, table: dict[str, list[str]], real_share: float) -> str:
    """A real misspelling of ``word`` (codespell) with probability ``real_share`` when one exists,
    else 1-2 random edits (swap, drop, insert or keyboard substitution): edit distance at most 2."""
    real = table.get(word.lower())
    if real and rng.random() < real_share:
        return rng.choice(real)
    chars = list(word)
    for _ in range(rng.choice((1, 2))):
        i = rng.randrange(len(chars))
        kind = rng.choice(("swap", "drop", "insert", "keyboard")) if len(chars) > 2 else "keyboard"
        near = QWERTY_NEIGHBOURS.get(chars[i].lower(), "e")
        if kind == "swap" and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif kind == "drop":
            del chars[i]
        elif kind == "insert":
            chars.insert(i + 1, rng.choice(near))
        else:
            chars[i] = rng.choice(near)
    return "".join(chars)


# -- E2 ------------------------------------------------------------------------------------
def shuffle_chunks(vectors: torch.Tensor, mask: torch.Tensor, which: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """Permute the real chunks of the rows flagged in ``which`` (B,) (chunk-order prediction negatives)."""
    out = vectors.clone()
    for row in which.nonzero(as_tuple=True)[0].tolist():
        n = int(mask[row].sum())
        perm = torch.randperm(n, generator=generator).to(vectors.device)
        out[row, :n] = vectors[row, perm]
    return out


def order_loss(logits: torch.Tensor, shuffled: torch.Tensor) -> torch.Tensor:
    """BCE: does the (B,) logit tell a shuffled sentence from the original?"""
    return F.binary_cross_entropy_with_logits(logits.float(), shuffled.float())


def masked_chunk_loss(predicted: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Predicted chunk vectors (M, S) must pick their own (detached) chunk among the M masked ones."""
    if len(predicted) < 2:
        return predicted.sum() * 0.0
    a, b = F.normalize(predicted.float(), dim=-1), F.normalize(target.detach().float(), dim=-1)
    return F.cross_entropy(a @ b.T / temperature, torch.arange(len(a), device=a.device))
