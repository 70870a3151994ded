"""Baselines in the same harness as the controller; both report their encoder calls.

- :func:`bag_of_units`: the top-n units by cosine with the target, in score order (no order model,
  no encoder call: the unit vectors were encoded once beforehand).
- :func:`black_box_search`: no trained model, only the encoder: a beam of texts edited by
  inserting a pool unit at any slot, replacing a unit, or deleting one; every candidate text is
  encoded and the beam keeps the highest cos(encode(text), target).
"""
from __future__ import annotations

import dataclasses
import time

import torch

from invemb.config import Config
from invemb.inversion.decode import CountingEncoder, InversionResult, check_target, fits, render


@dataclasses.dataclass
class BagConfig(Config):
    n: int = 12  # units returned

    presets = {"tiny": {"n": 4}, "default": {}, "full": {}}


@dataclasses.dataclass
class BlackBoxConfig(Config):
    pool: int = 100  # units from the index (nearest to the target) the edits draw from
    beam: int = 4
    insert_units: int = 12  # pool units tried at every slot, re-ranked by the residual each step
    max_steps: int = 30
    max_words: int = 40
    min_gain: float = 1e-4

    presets = {"tiny": {"pool": 8, "beam": 2, "insert_units": 4, "max_steps": 8}, "default": {},
               "full": {"pool": 300, "beam": 4, "insert_units": 40, "max_steps": 40}}


def bag_of_units(target: torch.Tensor, index, cfg: BagConfig | None = None) -> InversionResult:
    cfg = cfg or BagConfig()
    t0 = time.perf_counter()
    target = check_target(target, index.dim)
    _, ids = index.search(target, cfg.n)
    units = [index.units[i] for i in ids[0] if i >= 0]
    return InversionResult(render(units), None, [{"unit": u, "slot": i} for i, u in enumerate(units)], 0,
                           time.perf_counter() - t0)


def black_box_search(target: torch.Tensor, encoder: CountingEncoder, index, unit_vectors: torch.Tensor,
                     cfg: BlackBoxConfig | None = None) -> InversionResult:
    """Greedy-beam edit search querying only the encoder (see the module docstring)."""
    cfg = cfg or BlackBoxConfig()
    t0, calls0 = time.perf_counter(), encoder.calls
    target = check_target(target, encoder.dim)
    _, ids = index.search(target, cfg.pool)
    pool = [int(i) for i in ids[0] if i >= 0]
    pool_vecs = unit_vectors[pool]  # (P, D)
    beam: list[tuple[float, tuple[int, ...], torch.Tensor | None]] = [(-1.0, (), None)]
    best = beam[0]
    seen: set[tuple[int, ...]] = {()}
    for _ in range(cfg.max_steps):
        cands: list[tuple[int, ...]] = []
        for _, units, vec in beam:
            residual = target - (vec if vec is not None else 0.0)
            tries = [pool[j] for j in (pool_vecs @ residual).topk(min(cfg.insert_units, len(pool))).indices.tolist()]
            cands += [units[:s] + (u,) + units[s:] for u in tries for s in range(len(units) + 1)]
            cands += [units[:s] + (u,) + units[s + 1:] for u in tries[: max(1, cfg.insert_units // 3)] for s in range(len(units))]
            cands += [units[:s] + units[s + 1:] for s in range(len(units)) if len(units) > 1]
        cands = [c for c in dict.fromkeys(cands) if c not in seen]
        seen.update(cands)
        texts = [render([index.units[u] for u in c]) for c in cands]
        keep = [i for i, t in enumerate(texts) if fits(t, cfg.max_words)]  # as the controller's decoding
        cands, texts = [cands[i] for i in keep], [texts[i] for i in keep]
        if not cands:
            break
        vecs = encoder.encode(texts)  # (C, D)
        cos = (vecs @ target).tolist()
        ranked = sorted(zip(cos, range(len(cands))), key=lambda x: -x[0])[: cfg.beam]
        beam = [(c, cands[i], vecs[i]) for c, i in ranked]
        if beam[0][0] <= best[0] + cfg.min_gain:
            break
        best = beam[0]
    units = [index.units[u] for u in best[1]]
    return InversionResult(render(units), best[0] if units else None, [], encoder.calls - calls0,
                           time.perf_counter() - t0, best[0])
