"""Does the feature cache pay? One EM epoch from the cache against the research code's loop,
which re-runs the frozen backbone on every step (same batches, same head, same losses), in one run.

    .venv/bin/python bench/em_cache.py [--steps 40] [--head bind|transformer|mlp|attention]
A full epoch of the research loop takes hours on 2 cores, so both loops run the same first
``--steps`` batches of the epoch and the ratio of their times is reported (plus the epoch time
projected from it), interleaved step by step so machine drift hits both alike. Needs the default
data and feature cache (``make demo`` builds them).
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import write


def one_step(task, batch, i, n, opt) -> float:
    from invemb.training.loop import StepContext

    t = time.perf_counter()
    torch.manual_seed(i)
    loss, _ = task.loss(task.model, batch, StepContext(i, n, 0, i, torch.device("cpu")))
    loss.backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--head", default="", help="head type (default: the EM default preset's)")
    args = ap.parse_args()
    from invemb.backbone.cache import LiveFeatures
    from invemb.backbone.hf import HFBackbone
    from invemb.em.config import EMConfig
    from invemb.em.data import prepare
    from invemb.em.model import build_head
    from invemb.em.train import EMTask, build_cache

    cfg = EMConfig.preset("default", **({"head.head": args.head} if args.head else {}))
    backbone = HFBackbone(cfg.backbone)
    cfg = cfg.replace(**{"head.hidden": backbone.hidden, "head.vocab_size": len(backbone.tokenizer)})
    data = prepare(cfg, progress=False)
    cache, unit_rows, sent_rows = build_cache(cfg, backbone, data, progress=False)
    plan = EMTask(cfg, data, cache, build_head(cfg.head, backbone), unit_rows, sent_rows).batch_plan(0, torch.Generator().manual_seed(0))
    runs = {}
    for name, source in (("cached", cache), ("research_loop", LiveFeatures(backbone, cache.texts))):
        torch.manual_seed(0)
        head = build_head(cfg.head, backbone)
        task = EMTask(cfg, data, source, head, unit_rows, sent_rows, progress=False)
        runs[name] = (task, torch.optim.AdamW(head.parameters(), lr=1e-3))
    times = {name: 0.0 for name in runs}
    for i, batch in enumerate(plan[: args.steps + 2]):
        # Interleaved step by step, so a drift in the shared machine's speed hits both loops alike;
        # the first two steps of each are warm-up.
        for name, (task, opt) in runs.items():
            dt = one_step(task, batch, i, len(plan), opt)
            times[name] += dt if i >= 2 else 0.0
    write(f"em_cache_{cfg.head.head}", {
        "head": cfg.head.head, "steps": args.steps, "steps_per_epoch": len(plan),
        "cached_s_per_step": times["cached"] / args.steps, "research_loop_s_per_step": times["research_loop"] / args.steps,
        "speedup": times["research_loop"] / times["cached"],
        "cached_epoch_s": times["cached"] / args.steps * len(plan),
        "research_loop_epoch_s_projected": times["research_loop"] / args.steps * len(plan),
    })


if __name__ == "__main__":
    main()
