"""One training loop for every model: accumulation, clipping, schedule, AMP, DDP, resume.

A model family plugs in through a :class:`TrainTask`: it owns the model, the data plan and the
loss; the loop owns everything else. The loop is written so a run is reproducible and resumable
to the bit: the data order of an epoch comes from a generator seeded by ``(seed, epoch)``, and
the global RNG is reseeded from ``(seed, micro-batch index)`` before every micro-batch, so a run
resumed from a mid-epoch checkpoint replays exactly the steps an uninterrupted run would take.

Multi-process training (``torchrun --nproc_per_node W invemb train ...``; gloo on CPU, nccl on
CUDA). The loop wraps the task's loss in PyTorch's DistributedDataParallel and shards the work
of every optimizer step: the W*A micro-batches of a step are dealt out so that rank ``r`` takes
micro-batches ``r, r + W, r + 2W, ...`` of the epoch's plan, runs the first A-1 of them under
``no_sync()`` and lets DDP all-reduce (average) the gradients on its last one. Each loss is
scaled by ``W / (W*A)``, so W processes with accumulation A take exactly the optimizer steps of
one process with accumulation W*A (up to float summation order).

This is what ``torch.utils.data.distributed.DistributedSampler`` does, done one level up: a
DistributedSampler gives rank ``r`` the samples ``r, r + W, ...`` of a seeded permutation that
every rank draws identically. Here every rank draws the identical seeded plan of micro-batches
(index lists, a few KB; the loop checks at every epoch that the ranks agree) and takes every W-th
micro-batch. Sharding whole micro-batches rather than samples keeps (a) the batch composition,
hence in-batch negatives and every contrastive loss, identical to the single-process run, which a
per-sample sampler would not (it would give each rank a different mix of samples per batch); (b)
exact mid-epoch resume, since a checkpoint records the position in the plan, where a
DistributedSampler can only restart at an epoch boundary; and (c) the same trajectory as one
process with W-times the accumulation, which is what the tests check.

Only rank 0 writes (metrics.jsonl, checkpoints, plots, evaluation); the logged loss terms of a
step are the mean over all W*A micro-batches, gathered from every rank in micro-batch order, so
the log of a W-process run equals the log of the equivalent one-process run. ``--resume`` refuses
a checkpoint written under another world size (the plan position would mean something else).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import nn

from invemb.config import Config
from invemb.training import distributed
from invemb.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from invemb.training.metrics_log import MetricsLog
from invemb.training.schedules import warmup_cosine


@dataclasses.dataclass
class TrainConfig(Config):
    epochs: int = 3
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    lr_floor: float = 0.05
    clip_norm: float = 1.0
    seed: int = 0
    deterministic: bool = False
    amp: str = "auto"  # "auto" (bf16 on CUDA), "bf16", "off"
    device: str = "auto"  # "auto", "cpu", "cuda", "mps"
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: epoch ends only)
    keep_checkpoints: int = 2
    log_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [f"train.{k}={getattr(self, k)} (at least {least})"
               for k, least in (("epochs", 1), ("grad_accum", 1), ("warmup_steps", 0), ("checkpoint_every", 0),
                                ("keep_checkpoints", 1), ("log_every", 1)) if getattr(self, k) < least]
        if self.lr <= 0:
            bad.append(f"train.lr={self.lr} (above 0)")
        if self.amp not in ("auto", "bf16", "off"):
            bad.append(f"train.amp={self.amp!r} (auto, bf16 or off)")
        if bad:
            raise ValueError(f"bad training settings: {', '.join(bad)}")


@dataclasses.dataclass
class StepContext:
    """What a task's loss sees about the schedule."""

    step: int  # optimizer step (0-based) this micro-batch contributes to
    total_steps: int
    epoch: int
    micro_index: int  # global micro-batch index in the whole run
    device: torch.device


class TrainTask(Protocol):
    """What the loop trains. The project's tasks subclass it to inherit the defaults of the last
    four methods (every trainable parameter in one group, no extra state, the metric curves at
    each epoch end)."""

    model: nn.Module

    def batch_plan(self, epoch: int, generator: torch.Generator) -> Sequence[Any]:
        """The micro-batches of one epoch as cheap specs (e.g. index lists), in order."""

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its named terms for one micro-batch (``model`` is the bare model; under
        DDP the loop wraps this call as a whole)."""

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Held-out metrics at the end of an epoch (rank 0 only)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups; a group may carry ``lr_scale`` (e.g. 0.1 for backbone layers). By
        default one group of every trainable parameter."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def state_dict(self) -> dict[str, Any]:
        """Extra task state to checkpoint (e.g. a negative queue); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` gave; nothing by default."""

    def on_epoch_end(self, run_dir: Path, epoch: int) -> None:
        """Plots and reports (rank 0 only); by default the run's metric curves."""
        from invemb.training.plots import plot_run

        plot_run(run_dir)

    # Optional: ``after_step(step)`` runs on every rank after each optimizer step, for task state
    # that must see the whole step (e.g. a negative queue gathered from every rank).


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


dist_info = distributed.dist_info


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: bf16 on CUDA with ``amp="auto"`` (or anywhere with ``"bf16"``),
    None (full fp32) otherwise."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"train.amp must be auto, bf16 or off, got {amp!r}")
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class _LossModule(nn.Module):
    """The task's loss as one module call. DDP wraps this, not the bare model: a task may call its
    model several times per micro-batch (views, candidates, an extra head), and DDP's search for
    unused parameters then starts from the loss, which every one of those calls feeds."""

    def __init__(self, task: "TrainTask", model: nn.Module):
        super().__init__()
        self.model = model
        self._task = (task,)  # a tuple, so the task is not registered as a submodule

    def forward(self, batch: Any, ctx: StepContext):
        return self._task[0].loss(self.model, batch, ctx)


def _plan_digest(plan: Sequence[Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(list(plan), sort_keys=True, default=str).encode()).hexdigest()


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


def _micro_seed(seed: int, micro: int) -> int:
    return (seed * 1_000_003 + micro * 7_919 + 17) & 0x7FFF_FFFF


class Trainer:
    """Runs a :class:`TrainTask` into a run folder (metrics.jsonl, checkpoints, plots)."""

    def __init__(self, task: TrainTask, cfg: TrainConfig, run_dir: str | Path):
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.rank, self.world = dist_info()
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank())
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main)

    # -- helpers -----------------------------------------------------------------------------
    def _autocast(self):
        dtype = amp_dtype(self.cfg.amp, self.device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        groups = self.task.param_groups() if hasattr(self.task, "param_groups") else [{"params": [p for p in model.parameters() if p.requires_grad]}]
        for g in groups:
            g.setdefault("lr_scale", 1.0)
            g["lr"] = self.cfg.lr * g["lr_scale"]
            g.setdefault("weight_decay", self.cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def _steps_per_epoch(self, n_micro: int) -> int:
        per_step = self.cfg.grad_accum * self.world
        return math.ceil(n_micro / per_step)

    # -- main --------------------------------------------------------------------------------
    def fit(self, resume: bool = False, require_checkpoint: bool = True) -> dict[str, float]:
        """Train; returns the last held-out metrics. ``resume`` continues from the latest checkpoint.
        With ``require_checkpoint=False`` a resume that finds none starts the loop from step 0 (a run
        killed before its first checkpoint: the caller has already checked that the folder holds the
        run's own config and kept what it built before the loop)."""
        cfg, task = self.cfg, self.task
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        if self.world > 1:
            distributed.init_distributed(self.device)
        _set_seed(cfg.seed)
        model = task.model.to(self.device)
        wrapped: nn.Module = _LossModule(task, model)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # find_unused_parameters: some steps leave parts of a model out (a tier in its warm-up
            # phase, a head whose loss weight is still 0); their gradients stay None as in one process.
            wrapped = DDP(wrapped, find_unused_parameters=True)
        opt = self._optimizer(model)

        plan0 = task.batch_plan(0, torch.Generator().manual_seed(cfg.seed))
        steps_per_epoch = self._steps_per_epoch(len(plan0))
        total_steps = steps_per_epoch * cfg.epochs
        step, start_epoch, skip_micro = 0, 0, 0
        last_eval: dict[str, float] = {}
        resumed_terms: dict[str, float] = {}  # the epoch's running sums of train terms, up to the checkpoint
        resumed_steps = 0

        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if resume and ckpt is None and require_checkpoint:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        if ckpt is not None:
            model_state, state = load_checkpoint(ckpt)
            if state.get("world", 1) != self.world:
                raise ValueError(f"checkpoint was written with world size {state.get('world', 1)}, now {self.world}: "
                                 f"resume with the same number of processes")
            model.load_state_dict(model_state)
            opt.load_state_dict(state["optimizer"])
            task.load_state_dict(state.get("task", {}))
            step, start_epoch, skip_micro = state["step"], state["epoch"], state["micro_in_epoch"]
            resumed_terms, resumed_steps = state.get("epoch_terms", {}), state.get("epoch_steps", 0)
            self.log.truncate_after(step)
            last_eval = state.get("last_eval", {})
        else:
            self.log.clear()
        self.start_step = step  # where this call's training began (a resumed run's earlier steps ran elsewhen)

        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=step, desc=type(task).__name__.replace("Task", "").lower() or "train",
                       dynamic_ncols=True, mininterval=0.5)

        def checkpoint(epoch: int, micro_in_epoch: int, terms: dict[str, float], steps: int) -> None:
            if not self.is_main:
                return
            # The epoch's running term sums travel along, so that its row's train_* means after a
            # mid-epoch resume cover the whole epoch, not only the steps after the resume.
            state = {
                "optimizer": opt.state_dict(), "task": task.state_dict(), "step": step, "epoch": epoch,
                "micro_in_epoch": micro_in_epoch, "world": self.world, "last_eval": last_eval,
                "epoch_terms": terms, "epoch_steps": steps,
            }
            save_checkpoint(self.run_dir, step, model.state_dict(), state, keep=cfg.keep_checkpoints)

        per_step = cfg.grad_accum * self.world
        for epoch in range(start_epoch, cfg.epochs):
            plan = task.batch_plan(epoch, torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            if self.world > 1 and len(set(distributed.all_gather_json(_plan_digest(plan)))) > 1:
                raise RuntimeError(f"epoch {epoch}: the ranks built different batch plans; every rank must see "
                                   "the same data (build and cache it on rank 0 first)")
            mid_epoch = epoch == start_epoch and skip_micro > 0
            epoch_terms: dict[str, float] = dict(resumed_terms) if mid_epoch else {}
            epoch_steps = resumed_steps if mid_epoch else 0
            model.train()
            t_epoch = time.perf_counter()
            first = skip_micro if epoch == start_epoch else 0
            for group_start in range(first, len(plan), per_step):
                group = list(range(group_start, min(group_start + per_step, len(plan))))
                mine = group[self.rank::self.world]
                done: list[list[Any]] = []  # [micro, terms, items] of this rank's micro-batches
                t0 = time.perf_counter()
                for j, micro in enumerate(mine):
                    global_micro = epoch * len(plan) + micro
                    _set_seed(_micro_seed(cfg.seed, global_micro))
                    ctx = StepContext(step, total_steps, epoch, global_micro, self.device)
                    sync = j == len(mine) - 1 or self.world == 1
                    no_sync = wrapped.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
                    with no_sync:
                        with self._autocast():
                            loss, terms = wrapped(plan[micro], ctx)
                        # Scale by the global number of micro-batches so W ranks x A accumulation
                        # equals one rank with W*A accumulation (DDP averages over ranks).
                        (loss * (self.world / len(group))).backward()
                    items = len(plan[micro]) if hasattr(plan[micro], "__len__") else 1
                    done.append([micro, {k: float(v) for k, v in terms.items()}, items])
                if not mine:  # a rank with no micro-batch in a short last group still joins the all-reduce
                    with self._autocast():
                        loss, _ = wrapped(plan[group[0]], StepContext(step, total_steps, epoch, -1, self.device))
                    (loss * 0.0).backward()
                lr_mult = warmup_cosine(step, total_steps, cfg.warmup_steps, cfg.lr_floor)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * g.get("lr_scale", 1.0) * lr_mult
                grad_norm = float("nan")
                if cfg.clip_norm > 0:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                epoch_steps += 1
                if hasattr(task, "after_step"):
                    task.after_step(step)
                if self.world > 1:  # every rank's terms, summed in micro-batch order like one process would
                    done = [row for part in distributed.all_gather_json(done) for row in part]
                    done.sort(key=lambda row: row[0])
                dt = time.perf_counter() - t0
                terms_sum: dict[str, float] = {}
                for _, terms, _ in done:
                    for k, v in terms.items():
                        terms_sum[k] = terms_sum.get(k, 0.0) + v
                terms_mean = {k: v / max(1, len(done)) for k, v in terms_sum.items()}
                for k, v in terms_mean.items():
                    epoch_terms[k] = epoch_terms.get(k, 0.0) + v
                if step % cfg.log_every == 0:
                    self.log.write("step", step=step, epoch=epoch, lr=cfg.lr * lr_mult, grad_norm=grad_norm,
                                   items_per_s=sum(row[2] for row in done) / max(dt, 1e-9), **terms_mean)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(terms_mean.items())[:6]}, refresh=False)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    checkpoint(epoch, group[-1] + 1, epoch_terms, epoch_steps)
            # -- epoch end ---------------------------------------------------------------------
            if self.is_main:
                model.eval()
                with torch.no_grad():
                    last_eval = {k: float(v) for k, v in task.evaluate(epoch).items()}
                means = {f"train_{k}": v / max(1, epoch_steps) for k, v in epoch_terms.items()}
                self.log.write("epoch", step=step, epoch=epoch, seconds=time.perf_counter() - t_epoch, **means, **last_eval)
                if bar is not None:
                    shown = {k: f"{v:.3f}" for k, v in list(last_eval.items())[:4]}
                    bar.write(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
            checkpoint(epoch + 1, 0, {}, 0)
            if self.is_main and hasattr(task, "on_epoch_end"):
                task.on_epoch_end(self.run_dir, epoch)
            distributed.barrier()
        if bar is not None:
            bar.close()
        model.eval()
        return last_eval


def iterate_minibatches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> Iterator[list[int]]:
    """Shuffled index lists covering ``range(n)``."""
    perm = torch.randperm(n, generator=generator).tolist()
    for i in range(0, n, batch_size):
        chunk = perm[i:i + batch_size]
        if drop_last and len(chunk) < batch_size:
            break
        yield chunk
