"""The GPU path, checked without a GPU: the `full` presets pick CUDA and bf16 autocast when CUDA is
there (CPU stays the default), a user-supplied backbone folder goes to the GPU for feature
extraction, and torchrun on GPUs gives each rank its own device and the nccl backend.

CUDA itself is faked (``torch.cuda.is_available`` patched, device moves recorded); running the
presets on a real GPU is not part of the test suite."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from invemb.training import distributed
from invemb.training.loop import TrainConfig, Trainer, amp_dtype, resolve_device


def _full_configs(tiny_bert_dir: str) -> dict:
    import invemb.cli  # noqa: F401  (registers the family commands; avoids a circular import below)
    from invemb.em.commands import _em_config
    from invemb.inversion.train import ControllerTrainConfig
    from invemb.scratch.train import ScratchConfig
    from invemb.tiered.train import TieredConfig

    return {"em": _em_config("full", tiny_bert_dir, []), "scratch": ScratchConfig.preset("full"),
            "tiered": TieredConfig.preset("full"), "controller": ControllerTrainConfig.preset("full")}


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_amp_choice():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype("auto", cuda) is torch.bfloat16
    assert amp_dtype("auto", cpu) is None  # CPU stays full precision by default
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("off", cuda) is None
    with pytest.raises(ValueError, match="train.amp"):
        amp_dtype("fp8", cuda)


def test_cpu_is_the_default_without_cuda(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name, cfg in _full_configs(tiny_bert_dir).items():
        dev = resolve_device(cfg.train.device)
        assert dev.type == "cpu" and amp_dtype(cfg.train.amp, dev) is None, name


def test_full_presets_select_cuda_and_bf16_autocast(tiny_bert_dir, fake_cuda, monkeypatch, tmp_path):
    made = []

    class RecordingAutocast:
        def __init__(self, device_type, dtype):
            made.append((device_type, dtype))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch, "autocast", RecordingAutocast)
    for name, cfg in _full_configs(tiny_bert_dir).items():
        assert cfg.train.device == "auto" and cfg.train.amp in ("auto", "bf16"), name
        trainer = Trainer(type("Task", (), {"model": nn.Linear(2, 2)})(), cfg.train, tmp_path / name)
        assert trainer.device.type == "cuda", name
        with trainer._autocast():
            pass
        assert made[-1] == ("cuda", torch.bfloat16), name


def test_em_full_preset_puts_a_user_backbone_on_the_gpu(tiny_bert_dir, fake_cuda):
    from invemb.backbone.hf import HFBackbone

    cfg = _full_configs(tiny_bert_dir)["em"]
    assert cfg.backbone.path == tiny_bert_dir  # --backbone PATH (e5-large-v2 in the research setting)
    assert cfg.backbone.prompt == "query: " and cfg.backbone.max_length == 256 and cfg.backbone.device == "auto"
    backbone = HFBackbone(cfg.backbone)
    moved = []
    backbone.model.to = lambda device: moved.append(torch.device(device)) or backbone.model
    backbone.to_device()  # what train_em does before extracting features
    assert moved == [torch.device("cuda")]


def test_torchrun_on_gpus_uses_nccl_and_one_device_per_rank(fake_cuda, monkeypatch, tmp_path):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    calls = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: calls.setdefault("backend", backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    trainer = Trainer(type("Task", (), {"model": nn.Linear(2, 2)})(), TrainConfig(), tmp_path)
    assert trainer.device == torch.device("cuda", 1) and not trainer.is_main
    assert distributed.init_distributed(trainer.device)
    assert calls == {"backend": "nccl", "device": 1}
    calls.clear()
    distributed.init_distributed(torch.device("cpu"))
    assert calls == {"backend": "gloo"}
