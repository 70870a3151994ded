"""What every evaluator shares: checked encoding, the encoder's name, and "not run".

An evaluator is a class with ``__call__(encoder) -> dict[str, float]`` and a ``primary_metric``
(sentence-transformers style). It encodes through :func:`encode_checked`, so a NaN or
wrong-width vector raises :class:`~invemb.encoder.EncoderOutputError` naming the encoder and the
task instead of turning into a 0.0. Optional data that is missing raises :class:`NotRun`; the
suite records the reason and goes on with the other evaluators.
"""
from __future__ import annotations

import torch

from invemb.encoder import check_texts, check_vectors


class NotRun(RuntimeError):
    """An evaluator cannot run here (optional data or package missing); the message says why."""


def encoder_name(encoder) -> str:
    """A short human name for reports and error messages."""
    name = getattr(encoder, "name", None)
    if isinstance(name, str) and name:
        return name
    path = getattr(encoder, "path", None)
    if isinstance(path, str) and path:
        return f"{type(encoder).__name__}({path})"
    return type(encoder).__name__


def encode_checked(encoder, texts: list[str], task: str, batch_size: int = 64) -> torch.Tensor:
    """Encode ``texts`` and refuse bad output loudly: (N, dim) float32, finite, on the CPU."""
    texts = check_texts(texts)
    vectors = encoder.encode(texts, batch_size=batch_size)
    vectors = check_vectors(vectors, len(texts), int(encoder.dim), who=encoder_name(encoder), task=task)
    return vectors.detach().float().cpu()


def encode_unique(encoder, texts: list[str], task: str, batch_size: int = 64) -> torch.Tensor:
    """Like :func:`encode_checked`, but each distinct text is encoded once."""
    unique = list(dict.fromkeys(texts))
    vectors = encode_checked(encoder, unique, task, batch_size)
    row = {t: i for i, t in enumerate(unique)}
    return vectors[[row[t] for t in texts]]  # (N, dim)


def rowwise_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of matching rows of two (N, dim) tensors."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def quantiles(values: torch.Tensor, prefix: str) -> dict[str, float]:
    """Mean, standard deviation and the 10th/50th/90th percentiles of a 1-D tensor."""
    q = torch.quantile(values.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": float(values.std()) if len(values) > 1 else 0.0,
            f"{prefix}_p10": float(q[0]), f"{prefix}_p50": float(q[1]), f"{prefix}_p90": float(q[2])}


class MemoEncoder:
    """Wraps an encoder so each distinct text is encoded once per suite run.

    Evaluators share texts (the word-similarity words are units too; the typo, order and stats
    evaluators read the same sentences), and the suite's budget is mostly encoding. Output is
    not checked here: the evaluators check it, naming the wrapped encoder.
    """

    def __init__(self, encoder):
        self.encoder, self.dim, self.name = encoder, int(encoder.dim), encoder_name(encoder)
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            fresh = self.encoder.encode(missing, batch_size=batch_size)
            if not isinstance(fresh, torch.Tensor) or fresh.ndim != 2 or len(fresh) != len(missing):
                return fresh  # malformed: hand it on whole for the caller's check to reject
            fresh = fresh.detach().float().cpu()
            self._cache.update(zip(missing, fresh))
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])  # (N, dim)

    def save(self, path) -> None:
        self.encoder.save(path)
