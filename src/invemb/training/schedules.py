"""Learning-rate, temperature and loss-weight schedules as pure functions of the step."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Multiplier in [floor, 1]: linear warm-up for ``warmup`` steps, then cosine decay to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_between(step: int, total: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total``)."""
    progress = min(1.0, step / max(1, total))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def weight_at(kind: str, step: int, total: int, ramp_steps: int = 0) -> float:
    """Multiplier of a loss weight: ``constant``, ``warmup`` (linear ramp over ``ramp_steps``)
    or ``cosine`` (decay from 1 to 0 over the run)."""
    if kind == "constant":
        return 1.0
    if kind == "warmup":
        return min(1.0, (step + 1) / max(1, ramp_steps))
    if kind == "cosine":
        return cosine_between(step, total, 1.0, 0.0)
    raise ValueError(f"unknown weight schedule {kind!r} (constant, warmup, cosine)")
