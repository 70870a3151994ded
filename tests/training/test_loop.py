import json

import pytest
import torch
from torch import nn

from invemb.training.checkpoint import flatten_state, latest_checkpoint, unflatten_state
from invemb.training.loop import StepContext, Trainer, TrainConfig, iterate_minibatches
from invemb.training.metrics_log import read_metrics


class ToyTask:
    """Linear regression with dropout and noise, so RNG handling matters for resume."""

    def __init__(self, n: int = 96, batch: int = 8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.Linear(16, 1))
        self.batch = batch
        self.evals = 0

    def batch_plan(self, epoch, generator):
        return list(iterate_minibatches(len(self.x), self.batch, generator))

    def loss(self, model, batch, ctx: StepContext):
        idx = torch.tensor(batch)
        noise = torch.randn(len(batch), 4) * 0.01
        pred = model(self.x[idx] + noise).squeeze(-1)
        loss = ((pred - self.y[idx]) ** 2).mean()
        return loss, {"loss": loss.item()}

    def evaluate(self, epoch):
        self.evals += 1
        with torch.no_grad():
            return {"dev_mse": ((self.model(self.x).squeeze(-1) - self.y) ** 2).mean().item()}

    def state_dict(self):
        return {"evals": self.evals, "buf": torch.arange(3.0)}

    def load_state_dict(self, state):
        self.evals = state.get("evals", 0)


class Killed(RuntimeError):
    pass


class KilledTask(ToyTask):
    """ToyTask whose loss raises :class:`Killed` at optimizer step ``at_step`` (a kill mid-run)."""

    def __init__(self, at_step: int):
        super().__init__()
        self.at_step = at_step

    def loss(self, model, batch, ctx):
        if ctx.step == self.at_step:
            raise Killed()
        return super().loss(model, batch, ctx)


def _cfg(**kw):
    return TrainConfig(epochs=3, lr=1e-2, warmup_steps=2, progress=False, **kw)


def test_loss_falls_and_run_folder(tmp_path):
    torch.manual_seed(0)
    task = ToyTask()
    first = task.evaluate(0)["dev_mse"]
    final = Trainer(task, _cfg(), tmp_path).fit()
    assert final["dev_mse"] < first * 0.5
    steps = read_metrics(tmp_path / "metrics.jsonl", "step")
    epochs = read_metrics(tmp_path / "metrics.jsonl", "epoch")
    assert len(steps) == 3 * 12 and len(epochs) == 3
    assert {"lr", "loss", "items_per_s", "grad_norm"} <= set(steps[0])
    assert latest_checkpoint(tmp_path) is not None


def test_resume_mid_epoch_matches_uninterrupted(tmp_path):
    torch.manual_seed(0)
    full = Trainer(ToyTask(), _cfg(), tmp_path / "a").fit()

    torch.manual_seed(0)
    with pytest.raises(Killed):
        Trainer(KilledTask(at_step=17), _cfg(checkpoint_every=5), tmp_path / "b").fit()
    assert json.loads((tmp_path / "b/checkpoints/latest.json").read_text())["step"] == 15
    torch.manual_seed(123)  # a different process state must not matter
    resumed = Trainer(ToyTask(), _cfg(checkpoint_every=5), tmp_path / "b").fit(resume=True)
    assert resumed["dev_mse"] == pytest.approx(full["dev_mse"], rel=1e-6, abs=1e-8)
    steps = read_metrics(tmp_path / "b/metrics.jsonl", "step")
    assert [r["step"] for r in steps] == list(range(1, 37))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(ToyTask(), _cfg(), tmp_path).fit(resume=True)


def test_resume_without_checkpoint_can_restart_from_step_zero(tmp_path):
    """A run killed before its first checkpoint: with ``require_checkpoint=False`` the loop starts over,
    drops the dead run's metric rows and ends where an uninterrupted run ends."""
    torch.manual_seed(0)
    full = Trainer(ToyTask(), _cfg(), tmp_path / "a").fit()
    torch.manual_seed(0)
    with pytest.raises(Killed):
        Trainer(KilledTask(at_step=5), _cfg(checkpoint_every=100), tmp_path / "b").fit()
    assert not (tmp_path / "b/checkpoints/latest.json").exists()
    assert read_metrics(tmp_path / "b/metrics.jsonl", "step")  # the dead run logged steps
    torch.manual_seed(0)
    again = Trainer(ToyTask(), _cfg(), tmp_path / "b").fit(resume=True, require_checkpoint=False)
    assert again["dev_mse"] == pytest.approx(full["dev_mse"], rel=1e-6, abs=1e-8)
    assert [r["step"] for r in read_metrics(tmp_path / "b/metrics.jsonl", "step")] == list(range(1, 37))


def test_grad_accumulation_equals_bigger_batch(tmp_path):
    """Accumulating 2 micro-batches of 8 gives the step of one batch of 16 (no dropout/noise)."""

    class Plain(ToyTask):
        def __init__(self, batch):
            super().__init__(batch=batch)
            self.model = nn.Linear(4, 1)

        def batch_plan(self, epoch, generator):
            return [list(range(i, i + self.batch)) for i in range(0, 32, self.batch)]

        def loss(self, model, batch, ctx):
            idx = torch.tensor(batch)
            loss = ((model(self.x[idx]).squeeze(-1) - self.y[idx]) ** 2).mean()
            return loss, {"loss": loss.item()}

    torch.manual_seed(0)
    a = Plain(8)
    torch.manual_seed(0)
    b = Plain(16)
    Trainer(a, TrainConfig(epochs=1, grad_accum=2, progress=False, clip_norm=0), tmp_path / "a").fit()
    Trainer(b, TrainConfig(epochs=1, grad_accum=1, progress=False, clip_norm=0), tmp_path / "b").fit()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_state_flatten_round_trip():
    state = {"a": 1, "b": [torch.ones(2), {"c": torch.zeros(1), "d": "x"}], 3: None}
    meta, tensors = flatten_state(state)
    back = unflatten_state(json.loads(json.dumps(meta)), tensors)
    assert back["a"] == 1 and back["b"][1]["d"] == "x" and back[3] is None
    torch.testing.assert_close(back["b"][0], torch.ones(2))
