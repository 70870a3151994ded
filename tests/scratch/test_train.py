import json

import pytest
import torch
from typer.testing import CliRunner

import invemb
from invemb.encoder import bf16_is_fast
from invemb.scratch.data import DataConfig, build_pairs
from invemb.scratch.train import load_run, make_config, plot_expert_load, train_scratch
from invemb.training.metrics_log import read_metrics

COLOURS = "red green blue black white yellow purple orange brown grey".split()
ANIMALS = "cat dog horse mouse eagle shark whale snake frog tiger lion bear".split()


def _articles():
    arts = []
    for i, c in enumerate(COLOURS):
        for j, a in enumerate(ANIMALS):
            arts.append({"title": f"The {c} {a}",
                         "extract": f"The {c} {a} is an animal of colour {c}. Every {a} like this lives in zone {i * 12 + j}. "
                                    f"Keepers feed the {c} {a} at {j + 1} o'clock."})
    return arts


@pytest.fixture(scope="module")
def pairs():
    return build_pairs(DataConfig(sources=["title", "adjacent", "simcse"], eval_pairs=30), articles=_articles())


def _cfg(moe, **over):
    base = {"train.progress": "false", "train.epochs": "3", "train.lr": "3e-3", "threads": "1"}
    return make_config("tiny", moe=moe, overrides={**base, **over})


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory, pairs):
    out = tmp_path_factory.mktemp("scratch") / "moe"
    summary = train_scratch(_cfg(True), out, pairs=pairs)
    return out, summary


def test_tiny_training_loss_falls_and_run_folder(moe_run):
    out, summary = moe_run
    steps = read_metrics(out / "metrics.jsonl", "step")
    epochs = read_metrics(out / "metrics.jsonl", "epoch")
    first = sum(r["loss_main"] for r in steps[:5]) / 5
    last = sum(r["loss_main"] for r in steps[-5:]) / 5
    assert last < 0.7 * first
    assert len(epochs) == 3 and summary["steps"] == len(steps)
    assert {"moe/l0/drop_rate", "moe/l1/entropy", "moe/l0/load_e3", "loss_balance", "loss_z", "data/truncated"} <= set(steps[0])
    assert abs(sum(steps[-1][f"moe/l0/load_e{e}"] for e in range(4)) - 1) < 1e-5
    assert all(steps[-1][f"moe/l0/tokens_e{e}"] >= 0 for e in range(4)) and sum(steps[-1][f"moe/l0/tokens_e{e}"] for e in range(4)) > 0
    assert "dev_moe/l1/load_max_over_mean" in epochs[-1] and "dev_title/mrr" in epochs[-1]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "report.md", "plots/moe_expert_load.png", "plots/train_curves.png"):
        assert (out / f).exists(), f
    assert json.loads((out / "config.json").read_text())["kind"] == "scratch"
    assert summary["params"]["total"] > summary["params"]["active"]
    assert summary["eval"]["dev_title/mrr"] > 0.3  # random ranking of 30 docs gives ~0.13


def test_save_load_round_trip_through_invemb_load(moe_run, pairs):
    out, _ = moe_run
    enc = invemb.load(out)
    texts = [p.b for p in pairs["dev_title"][:5]]
    v = enc.encode(texts, batch_size=2)
    assert v.shape == (5, enc.dim) and isinstance(enc, invemb.Encoder)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(5))
    again = load_run(out)
    torch.testing.assert_close(again.encode(texts), v)
    enc.save(out.parent / "copy")
    torch.testing.assert_close(invemb.load(out.parent / "copy").encode(texts), v)
    assert plot_expert_load(out).name == "moe_expert_load.png"


def test_bad_input(moe_run):
    out, _ = moe_run
    enc = invemb.load(out)
    with pytest.raises(ValueError, match="empty"):
        enc.encode(["fine", "  "])
    assert enc.encode([]).shape == (0, enc.dim)
    with pytest.warns(UserWarning, match="1 of 2 texts truncated"):
        enc.encode(["the red cat " * 40, "the blue dog"])


def test_mismatched_tokenizer_is_refused(moe_run, tmp_path):
    import shutil

    out, _ = moe_run
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = json.loads((bad / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzz_new"] = len(data["model"]["vocab"])
    (bad / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        invemb.load(bad)


def test_dense_word_tokenizer_resume_matches_uninterrupted(tmp_path, pairs):
    cfg = _cfg(False, **{"tokenizer.kind": "word", "train.epochs": "2", "train.checkpoint_every": "20"})
    full = train_scratch(cfg, tmp_path / "a", pairs=pairs)

    class Killed(RuntimeError):
        pass

    import invemb.scratch.train as train_mod

    original = train_mod.ScratchTask.loss

    def dying(self, model, batch, ctx):
        if ctx.step == 25:
            raise Killed()
        return original(self, model, batch, ctx)

    train_mod.ScratchTask.loss = dying
    try:
        with pytest.raises(Killed):
            train_scratch(cfg, tmp_path / "b", pairs=pairs)
    finally:
        train_mod.ScratchTask.loss = original
    with pytest.raises(FileExistsError, match="--resume"):
        train_scratch(cfg, tmp_path / "b", pairs=pairs)
    resumed = train_scratch(cfg, tmp_path / "b", resume=True, pairs=pairs)
    assert resumed["steps"] == full["steps"] and resumed["resumed_from_step"] == 20 and full["resumed_from_step"] == 0
    assert "steps after 20 only" in (tmp_path / "b/report.md").read_text()
    for k, v in full["eval"].items():
        assert resumed["eval"][k] == pytest.approx(v, abs=1e-5), k
    assert json.loads((tmp_path / "b/config.json").read_text())["config"]["tokenizer"]["kind"] == "word"


def test_cli_bad_input_is_one_line(tmp_path):
    from invemb.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", "scratch", "--preset", "tiny", "--tokenizer", "chars", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "bpe or word" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["train", "scratch", "--preset", "tiny", "--set", "model.nope=1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown" in res.output
    res = runner.invoke(app, ["compare", "moe", "--preset", "tiny", "--set", "model.moe.top_k=2", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "not a fair comparison" in res.output and "model.moe.expert_hidden=32" in res.output
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_cli_compare_moe_tiny_on_real_corpus(tmp_path, monkeypatch):
    """The whole comparison through the CLI on the real Wikipedia summaries (tiny preset), killed in
    its MoE run first: the same command again keeps the dense run and finishes the MoE one."""
    import invemb.scratch.train as train_mod
    from invemb.cli import app
    from invemb.config import parse_overrides

    out = tmp_path / "cmp"
    sets = ["train.progress=false", "threads=1", "train.epochs=1", "data.max_articles=200"]
    real_loss = train_mod.ScratchTask.loss

    def dying_loss(self, model, batch, ctx):
        if self.cfg.model.use_moe and ctx.step == 3:
            raise KeyboardInterrupt
        return real_loss(self, model, batch, ctx)

    monkeypatch.setattr(train_mod.ScratchTask, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_mod.compare_moe("tiny", out, parse_overrides(sets), reference=False)
    monkeypatch.setattr(train_mod.ScratchTask, "loss", real_loss)
    dense_written = (out / "dense/model.safetensors").stat().st_mtime_ns
    assert (out / "moe/config.json").exists() and not (out / "moe/summary.json").exists()
    with pytest.raises(FileExistsError, match="other settings"):
        train_mod.compare_moe("tiny", out, parse_overrides(sets[:-1]), reference=False)

    args = ["compare", "moe", "--preset", "tiny", "--no-reference", "--out", str(out)]
    res = CliRunner().invoke(app, args + [a for kv in sets for a in ("--set", kv)])
    assert res.exit_code == 0, res.output
    assert (out / "dense/model.safetensors").stat().st_mtime_ns == dense_written  # kept, not retrained
    killed_moe = json.loads((out / "compare.json").read_text())["models"]["moe"]
    assert killed_moe["resumed_from_step"] == 0  # killed before its first checkpoint: trained from step 0
    result = json.loads((out / "compare.json").read_text())
    dense, moe = result["models"]["dense"], result["models"]["moe"]
    assert dense["steps"] == moe["steps"] and dense["train_pairs"] == moe["train_pairs"]
    assert abs(dense["params"]["active"] - moe["params"]["active"]) <= 32 * 4 * 2  # routers only
    assert moe["params"]["total"] > dense["params"]["total"]
    assert set(result["models"]) == {"dense", "moe", "bm25"}
    assert set(result["suite"]) == {"title_to_summary", "gloss_to_lemma", "first_sentence_to_rest"}
    assert {"dense", "moe", "bm25"} <= set(result["suite"]["gloss_to_lemma"])
    report = (out / "report.md").read_text()
    assert "inference tokens/s" in report and "dev_title/mrr" in report and "beats BM25 on" in report
    assert f"dense {dense['params']['active']:,}, MoE {moe['params']['active']:,}" in report
    assert invemb.load(out / "moe").dim == 32


@pytest.mark.parametrize("loss", ["triplet", "contrastive"])
def test_other_training_losses_run_and_fall(tmp_path, pairs, loss):
    summary = train_scratch(_cfg(False, loss=loss, **{"train.epochs": "2"}), tmp_path / loss, pairs=pairs)
    steps = read_metrics(tmp_path / loss / "metrics.jsonl", "step")
    assert summary["steps"] == len(steps) > 10
    assert sum(r["loss_main"] for r in steps[-5:]) < sum(r["loss_main"] for r in steps[:5])


@pytest.mark.slow
def test_cli_train_scratch_on_real_corpus(tmp_path):
    from invemb.cli import app

    out = tmp_path / "run"
    args = ["train", "scratch", "--preset", "tiny", "--moe", "--tokenizer", "word", "--out", str(out),
            "--set", "train.progress=false", "--set", "train.epochs=1", "--set", "data.max_articles=120", "--set", "threads=1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["moe"] is True and summary["steps"] > 0
    assert invemb.load(out).tokenizer.kind == "word"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--resume" in res.output


def test_inversion_controller_trains_on_a_scratch_encoder_unchanged(moe_run, tmp_path):
    """The controller only needs the Encoder protocol: train one on the MoE scratch run, load it back
    against the run folder (fingerprint check) and invert a sentence."""
    from invemb.io import write_jsonl
    from invemb.inversion import load_run as load_controller
    from invemb.inversion.train import ControllerTrainConfig, train_controller
    from invemb.text.vocab import Vocab

    out, _ = moe_run
    words = sorted({w for a in _articles() for w in a["extract"].lower().replace(".", " .").split()})
    Vocab(words, ["word"] * len(words), [1] * len(words)).save(tmp_path / "vocab.json")
    sentences = [s for a in _articles()[:40] for s in a["extract"].split(". ")[:2]]
    write_jsonl(tmp_path / "train.jsonl", [{"text": s} for s in sentences])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(tmp_path / "vocab.json"), train_file=str(tmp_path / "train.jsonl"),
                                       max_sentences=len(sentences)).replace(**{"train.epochs": 1})
    summary = train_controller(str(out), cfg, tmp_path / "ctrl")
    assert summary["sentences"] > 10
    ctrl = load_controller(tmp_path / "ctrl", em=str(out))
    row = ctrl.invert_texts(["The red cat is an animal of colour red"])[0]
    assert row["reconstruction"] and -1.0 <= row["cosine"] <= 1.0 and row["encoder_calls"] > 0


def test_encode_batches_by_length_and_keeps_the_callers_order(moe_run):
    """encode sorts texts by length into batches (less padding); row i must still be text i's vector,
    the same as encoding it alone."""
    out, _ = moe_run
    enc = invemb.load(out)
    texts = ["The red fox is an animal.", "Keepers feed the blue owl at 3 o'clock every single day of the year.",
             "An owl.", "Every fox like this lives in zone 12, far from the others."]
    together = enc.encode(texts, batch_size=2)
    alone = torch.cat([enc.encode([t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    if bf16_is_fast(torch.device("cpu")):
        low = invemb.load(out, runtime="bf16").encode(texts, batch_size=2)
        assert low.dtype == torch.float32 and (low * together).sum(-1).min() > 0.98  # MoE routing can flip in bf16
    else:
        with pytest.raises(ValueError, match="slower than 'torch'"):
            invemb.load(out, runtime="bf16")
