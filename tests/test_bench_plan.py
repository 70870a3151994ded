"""bench/run_all.py's plan: finished training steps are not repeated, a killed one resumes, and a
step whose inputs a previous step trains is looked at only when the loop reaches it."""
import importlib.util
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parent.parent / "bench" / "run_all.py"


@pytest.fixture
def run_all(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def _touch(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("{}")


def test_plan_skips_finished_resumes_killed_and_looks_late(run_all, tmp_path):
    steps = ["moe_train", "train_tiered", "train_bpe_small", "tiered_typo"]
    rows = {name: (cmd, status) for name, cmd, status in run_all.plan(steps, [])}
    assert all(status == "" for _, status in list(rows.values())[:3]) and "--resume" not in rows["train_tiered"][0]
    assert rows["tiered_typo"][1] == "skipped: runs/tiered-default/model.safetensors missing"

    _touch(tmp_path, "runs/compare-moe-default/compare.json")  # finished
    _touch(tmp_path, "runs/tiered-default/config.json")  # killed part-way
    rows = {name: (cmd, status) for name, cmd, status in run_all.plan(steps, [])}
    assert rows["moe_train"][1] == "already trained"
    assert rows["train_tiered"][0][-1] == "--resume" and rows["train_tiered"][1] == ""
    assert "--resume" not in rows["train_bpe_small"][0]

    walk = run_all.plan(steps, [])
    for name, _, _ in walk:
        if name == "train_bpe_small":  # by now train_tiered has run
            _touch(tmp_path, "runs/tiered-default/model.safetensors")
            break
    assert next(walk)[0:3:2] == ("tiered_typo", "")
