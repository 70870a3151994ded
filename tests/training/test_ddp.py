"""Multi-process training under torchrun (2 gloo processes on CPU), spawned by the tests themselves.

The contract: W processes with accumulation A follow the same loss curve as one process with
accumulation W*A (float tolerance: the processes run one thread each, this process may run two),
resume works under the same world size and is refused under another, only rank 0 writes, and a
feature cache built by sharded extraction is byte-identical to the one a single process writes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from invemb.training.metrics_log import read_metrics

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import ddp_toy  # noqa: E402


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free rendezvous port on localhost) with one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def assert_same_curve(a: Path, b: Path, keys=("loss",), rtol: float = 1e-5, atol: float = 1e-6) -> None:
    ra, rb = read_metrics(a / "metrics.jsonl", "step"), read_metrics(b / "metrics.jsonl", "step")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, len(ra) + 1))
    for key in keys:
        xa = torch.tensor([r[key] for r in ra if r.get(key) is not None], dtype=torch.float64)
        xb = torch.tensor([r[key] for r in rb if r.get(key) is not None], dtype=torch.float64)
        torch.testing.assert_close(xa, xb, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory, tiny_bert_dir):
    """One torchrun launch: an uninterrupted 2-process run, a killed-and-resumed one, a sharded cache."""
    root = tmp_path_factory.mktemp("ddp")
    torchrun(str(HERE / "ddp_toy.py"), str(root / "two"), "--kill-resume", str(root / "two_resumed"),
             "--cache", tiny_bert_dir, str(root / "cache_two"))
    torch.manual_seed(0)
    one = ddp_toy.DDPToyTask()
    ddp_toy.Trainer(one, ddp_toy.config(grad_accum=2), root / "one").fit()
    return root, one


def test_two_processes_follow_one_process_with_double_accumulation(toy_runs):
    root, one = toy_runs
    assert_same_curve(root / "one", root / "two", keys=("loss", "grad_norm", "memory", "lr"))
    two = load_file(str(root / "two" / "final.safetensors"))
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-6)
    # Rank 0 alone wrote: one row per step and per epoch, no duplicates.
    rows = read_metrics(root / "two" / "metrics.jsonl")
    assert len([r for r in rows if r["kind"] == "epoch"]) == 2
    assert len(rows) == len({(r["kind"], r["step"]) for r in rows})


def test_resume_under_the_same_world_size(toy_runs):
    root, _ = toy_runs
    assert (root / "two_resumed" / "checkpoints").exists()
    assert_same_curve(root / "two", root / "two_resumed", keys=("loss", "grad_norm", "memory"), rtol=0, atol=0)
    a = load_file(str(root / "two" / "final.safetensors"))
    b = load_file(str(root / "two_resumed" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_under_another_world_size_is_refused(toy_runs, tmp_path):
    root, _ = toy_runs
    state = json.loads((root / "two_resumed" / "checkpoints" / "latest.json").read_text())
    assert state["step"] == 26
    with pytest.raises(ValueError, match="world size 2, now 1"):
        ddp_toy.Trainer(ddp_toy.DDPToyTask(), ddp_toy.config(grad_accum=2), root / "two_resumed").fit(resume=True)


def test_sharded_cache_is_byte_identical_to_one_process(toy_runs, tiny_bert_dir):
    from invemb.backbone.cache import FeatureCache
    from invemb.backbone.hf import BackboneConfig, HFBackbone

    root, _ = toy_runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun processes ran one thread each
    try:
        one = FeatureCache(root / "cache_one", HFBackbone(BackboneConfig(path=tiny_bert_dir, max_length=32)), chunk=40)
        one.ensure(ddp_toy.cache_texts(), batch_size=8, progress=False)
    finally:
        torch.set_num_threads(threads)
    two = root / "cache_two" / one.dir.name
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.dir.iterdir())  # staging removed
    for name in ("pooled.f32", "tokens.f16", "offsets.i64", "texts.jsonl", "meta.json"):
        assert (two / name).read_bytes() == (one.dir / name).read_bytes(), name
    assert len(one) == len(set(ddp_toy.cache_texts()))


# -- a real family through the CLI ---------------------------------------------------------------
EM_SETTINGS = ["corpus.sources=[]", "corpus.dev_fraction=0.3", "corpus.test_fraction=0.0", "max_train_sentences=40",
               "max_dev_sentences=10", "dev_units=10", "train.epochs=2", "feature_batch_size=8"]


def test_train_em_under_torchrun_matches_one_process(tmp_path, tiny_bert_dir):
    """`torchrun --nproc_per_node 2 invemb train em --preset tiny` (sharded feature extraction, the
    negative queue gathered from both ranks) against `invemb train em` in-process with grad_accum=2."""
    from invemb.config import parse_overrides
    from invemb.em.config import EMConfig
    from invemb.em.data import prepare
    from invemb.em.train import train_em

    import importlib.util

    spec = importlib.util.spec_from_file_location("em_conftest", HERE.parent / "em" / "conftest.py")
    em_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(em_conftest)
    SENTENCES = em_conftest.SENTENCES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(SENTENCES[i:i + 2]) for i in range(0, len(SENTENCES), 2)) * 3)
    settings = EM_SETTINGS + [f"corpus.files=[{json.dumps(str(corpus))}]", f"data_dir={tmp_path / 'data'}"]
    cfg = EMConfig.preset("tiny").replace(**{"backbone.path": tiny_bert_dir, **parse_overrides(settings)})  # as the CLI
    prepare(cfg, progress=False)  # corpus, vocabulary, lexicon, sentences (the features are left to the ranks)
    invemb = str(Path(sys.executable).parent / "invemb")
    cli = ["train", "em", "--preset", "tiny", "--backbone", tiny_bert_dir, "--quiet"]
    proc = torchrun(invemb, *cli, "--out", str(tmp_path / "two"), *[a for s in settings for a in ("--set", s)])
    assert json.loads(proc.stdout)["dev_recon_cos"] > -1  # rank 0 printed the result once
    assert not list((tmp_path / "data" / "features").glob("*/.shards-*"))
    train_em(cfg.replace(**parse_overrides(["train.grad_accum=2"])), tmp_path / "one", progress=False)
    assert_same_curve(tmp_path / "one", tmp_path / "two", keys=("loss", "loss_contrastive", "loss_unit", "grad_norm"),
                      rtol=1e-4, atol=1e-5)
    assert len(read_metrics(tmp_path / "two" / "metrics.jsonl", "step")) == 4
    for f in ("head.safetensors", "index/index.faiss", "report.md", "plots/train_curves.png"):
        assert (tmp_path / "two" / f).exists(), f
