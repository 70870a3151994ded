"""A toy task on the shared loop, run as a script (under ``torchrun`` by tests/training/test_ddp.py
and bench/ddp.py) or imported.

The toy exercises what DDP makes hard: dropout and input noise (the per-micro-batch RNG must
match), a model called twice per micro-batch, a head used only on some micro-batches (DDP's
unused-parameter search), a task state updated after every optimizer step from all ranks (like
the EM's negative queue), and a plan whose last step is shorter than the world size.

    torchrun --standalone --nproc_per_node 2 tests/training/ddp_toy.py OUT --grad-accum 1
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from invemb.training import distributed
from invemb.training.loop import StepContext, TrainConfig, Trainer, iterate_minibatches


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 8))
        self.out = nn.Linear(8, 1)
        self.side = nn.Linear(8, 1)  # used on even micro-batches only

    def forward(self, x):
        return self.body(x)


class DDPToyTask:
    def __init__(self, n: int = 200, batch: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        torch.manual_seed(seed)
        self.model = ToyModel()
        self.batch = batch
        self.memory = torch.zeros(0)  # mean targets of past steps, gathered from every rank
        self._pending: list[tuple[int, float]] = []

    def batch_plan(self, epoch, generator):
        return list(iterate_minibatches(len(self.x), self.batch, generator))  # 25 micro-batches: last step short

    def loss(self, model, batch, ctx: StepContext):
        idx = torch.tensor(batch)
        x = self.x[idx] + torch.randn(len(batch), 4) * 0.01
        h1, h2 = model(x), model(x.flip(0))  # two calls of the model per micro-batch
        pred = model.out(h1).squeeze(-1)
        loss = ((pred - self.y[idx]) ** 2).mean() + 0.01 * (h1 - h2.flip(0)).pow(2).mean()
        if ctx.micro_index % 2 == 0:
            loss = loss + 0.1 * model.side(h1).pow(2).mean()
        if len(self.memory):
            loss = loss + 0.01 * (pred.mean() - self.memory.mean()) ** 2
        if ctx.micro_index >= 0:
            self._pending.append((ctx.micro_index, float(self.y[idx].mean())))
        return loss, {"loss": loss.item(), "memory": float(len(self.memory))}

    def after_step(self, step):
        rows = sorted(r for part in distributed.all_gather_json(self._pending) for r in part)
        self._pending = []
        self.memory = torch.cat([torch.tensor([v for _, v in rows]), self.memory])[:16]

    def evaluate(self, epoch):
        with torch.no_grad():
            return {"dev_mse": ((self.model.out(self.model(self.x)).squeeze(-1) - self.y) ** 2).mean().item()}

    def state_dict(self):
        return {"memory": self.memory}

    def load_state_dict(self, state):
        if "memory" in state:
            self.memory = state["memory"]


class Killed(RuntimeError):
    pass


class KilledToyTask(DDPToyTask):
    """Dies right after optimizer step ``kill_at`` (on every rank), before that step's checkpoint."""

    def __init__(self, kill_at: int, **kw):
        super().__init__(**kw)
        self.kill_at = kill_at

    def after_step(self, step):
        if step == self.kill_at:
            raise Killed(f"killed after step {step}")
        super().after_step(step)


def config(grad_accum: int, epochs: int = 2, checkpoint_every: int = 0) -> TrainConfig:
    return TrainConfig(epochs=epochs, grad_accum=grad_accum, lr=1e-2, warmup_steps=2, progress=False,
                       checkpoint_every=checkpoint_every, device="cpu")


def save_final(task: DDPToyTask, out: str) -> None:
    if distributed.is_main():
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in task.model.state_dict().items()}, f"{out}/final.safetensors")


def cache_texts(n: int = 150, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    words = "the cat dog sat on mat river bank money loan good bad new york city runs fast slow".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def sharded_cache(bert_dir: str, root: str, chunk: int = 40, batch_size: int = 8):
    """The feature cache of :func:`cache_texts` built with ``ensure(shard=True)`` (chunks of 40,
    batches of 8: several chunks, and batches on every rank)."""
    from invemb.backbone.cache import FeatureCache
    from invemb.backbone.hf import BackboneConfig, HFBackbone

    backbone = HFBackbone(BackboneConfig(path=bert_dir, max_length=32))
    with distributed.main_first():
        cache = FeatureCache(root, backbone, chunk=chunk)
    cache.ensure(cache_texts(), batch_size=batch_size, progress=False, shard=True)
    return cache


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--kill-resume", default="", help="also: a run killed after step 17 (checkpoints every 5 steps), resumed")
    p.add_argument("--cache", nargs=2, default=None, metavar=("BERT_DIR", "ROOT"), help="also: a sharded feature cache")
    a = p.parse_args()
    task = DDPToyTask()
    Trainer(task, config(a.grad_accum, a.epochs), a.out).fit()
    save_final(task, a.out)
    if a.kill_resume:
        try:
            Trainer(KilledToyTask(17), config(a.grad_accum, a.epochs, checkpoint_every=5), a.kill_resume).fit()
        except Killed:
            pass
        distributed.barrier()
        task = DDPToyTask()
        Trainer(task, config(a.grad_accum, a.epochs, checkpoint_every=5), a.kill_resume).fit(resume=True)
        save_final(task, a.kill_resume)
    if a.cache:
        sharded_cache(*a.cache)


if __name__ == "__main__":
    main()
