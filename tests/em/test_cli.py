import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from invemb.cli import app

runner = CliRunner()


def test_help_has_examples():
    """Every command, found by walking the CLI's command tree, shows an example in its --help."""
    import typer

    def leaves(cmd, path):
        """Every command but the top: leaves, and the groups above them (their help shows one example too)."""
        subs = getattr(cmd, "commands", None)
        if path:
            yield path
        for name, sub in (subs or {}).items():
            yield from leaves(sub, path + [name])

    commands = list(leaves(typer.main.get_command(app), []))
    assert len(commands) >= 25 and ["train", "controller"] in commands and ["serve"] in commands
    for cmd in commands:
        result = runner.invoke(app, cmd + ["--help"])
        assert result.exit_code == 0, result.output
        assert "Example" in result.output and "invemb " in result.output, cmd


def test_neighbours_and_encode(tiny_em_run, tmp_path):
    run, _, _ = tiny_em_run
    result = runner.invoke(app, ["neighbours", "cat", "river bank", "--model", str(run), "-k", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"cat", "river bank"} and len(data["cat"]) == 3
    assert data["cat"][0]["unit"] == "cat"  # a unit is its own nearest neighbour
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["the cat", "a dog", "river bank"]) + "\n")
    out = tmp_path / "v.npy"
    result = runner.invoke(app, ["encode", "--model", str(run), "--input", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    vecs = np.load(out)
    assert vecs.shape == (3, json.loads(result.stdout)["dim"])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    result = runner.invoke(app, ["encode", "--model", str(run), "--input", str(src), "--output", str(out), "--runtime", "onnx"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), vecs, atol=1e-5)


def test_user_errors_are_one_line(tiny_em_run, tmp_path):
    run, _, _ = tiny_em_run
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "\\u200b "}\n')
    result = runner.invoke(app, ["encode", "--model", str(run), "--input", str(bad), "--output", str(tmp_path / "o.npy")])
    assert result.exit_code == 2  # named by its line (blank lines are skipped, so not by its position)
    assert f"{bad}:3: the text is empty or holds only whitespace / control characters" in result.output
    assert "Traceback" not in result.output
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "fine"}\n')
    for extra, needle in ((["--batch-size", "-1"], "batch size must be a whole number of at least 1, got -1"),
                          (["--batch-size", "0"], "got 0")):
        result = runner.invoke(app, ["encode", "--model", str(run), "--input", str(good), "--output", str(tmp_path / "o.npy"), *extra])
        assert result.exit_code == 2 and needle in result.output and not (tmp_path / "o.npy").exists()
    (tmp_path / "folder.npy").mkdir()
    result = runner.invoke(app, ["encode", "--model", str(run), "--input", str(good), "--output", str(tmp_path / "folder.npy")])
    assert result.exit_code == 2 and "folder.npy: is a folder; give the .npy file to write" in result.output
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "config.json").write_text(json.dumps({"kind": "controller", "em": str(run)}))
    result = runner.invoke(app, ["encode", "--model", str(ctl), "--input", str(good), "--output", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and f"{ctl} is a controller run, not an encoder: load its encoder ({run})" in result.output
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"text": "ok"}\n\xff\n')
    result = runner.invoke(app, ["encode", "--model", str(run), "--input", str(raw), "--output", str(tmp_path / "o.npy")])
    assert result.exit_code == 2 and "not UTF-8 at byte offset 15" in result.output
    result = runner.invoke(app, ["neighbours", "cat", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing: not an EM run folder (no config.json)" in result.output
    result = runner.invoke(app, ["encode", "--model", str(run), "--input", str(tmp_path / "none.jsonl"), "--output", "o.npy"])
    assert result.exit_code == 2 and f"error: {tmp_path / 'none.jsonl'}: No such file or directory\n" in result.output
    result = runner.invoke(app, ["train", "em", "--preset", "huge", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown preset" in result.output
    result = runner.invoke(app, ["train", "em", "--preset", "tiny", "--set", "loss.nope=1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown" in result.output
    # Settings that would train nothing or crash later are refused at once (not after the data is built).
    for sets, needle in ((["train.epochs=0"], "bad training settings: train.epochs=0 (at least 1)"),
                         (["train.grad_accum=0", "train.lr=0"], "train.grad_accum=0 (at least 1), train.lr=0.0 (above 0)"),
                         (["loss.hard_k=-1"], "bad loss settings: loss.hard_k=-1 (at least 0)")):
        result = runner.invoke(app, ["train", "em", "--preset", "tiny", *[a for kv in sets for a in ("--set", kv)],
                                     "--out", str(tmp_path / "r")])
        assert result.exit_code == 2 and needle in result.output and not (tmp_path / "r").exists(), result.output
    result = runner.invoke(app, ["neighbours", "cat", "--model", str(run), "-k", "0"])
    assert result.exit_code == 2 and "-k must be at least 1, got 0" in result.output


def test_train_em_cli_tiny(tiny_em_run, tmp_path):
    """`invemb train em` end to end, sharing the tiny fixture's built data and feature cache."""
    run, cfg, metrics = tiny_em_run
    args = ["train", "em", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet", "--backbone", cfg.backbone.path]
    for key in ("data_dir", "max_train_sentences", "max_dev_sentences", "dev_units"):
        args += ["--set", f"{key}={getattr(cfg, key)}"]
    args += ["--set", f"corpus.files={json.dumps(cfg.corpus.files)}", "--set", "corpus.sources=[]",
             "--set", "corpus.dev_fraction=0.3", "--set", "corpus.test_fraction=0.0", "--set", "train.epochs=1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert "dev_recon_cos" in out and (tmp_path / "run" / "head.safetensors").exists()


def test_corpus_and_vocab_build_cli(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("The United States is big. The Prime Minister spoke.\n\nIt is not good. It is not good at all.\n\n"
                   "New York is large. The cat sat on the mat.")
    result = runner.invoke(app, ["corpus", "build", "--out", str(tmp_path / "corpus"), "--file", str(txt), "--source", "files"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sentences"] == 6
    result = runner.invoke(app, ["vocab", "build", "--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "vocab.json"),
                                 "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["units"] > 10 and (tmp_path / "lexicon.json").exists()


@pytest.mark.parametrize("command, module, function", [
    (["train", "controller", "--em", "backbone", "--out", "unused"], "invemb.inversion.train", "train_controller"),
    (["train", "scratch", "--out", "unused"], "invemb.scratch.train", "train_scratch"),
    (["train", "tiered", "--out", "unused"], "invemb.tiered.train", "train_tiered"),
])
def test_train_commands_take_quiet(command, module, function, monkeypatch):
    import importlib

    seen = []

    def capture(*args, **kwargs):
        seen.append(next(a for a in args if hasattr(a, "train")).train.progress)
        return {"run": "unused"}

    monkeypatch.setattr(importlib.import_module(module), function, capture)
    for flags, progress in (([], True), (["--quiet"], False)):
        res = runner.invoke(app, command + flags)
        assert res.exit_code == 0, res.output
        assert seen[-1] is progress


def test_demo_continues_an_em_run_it_started(monkeypatch, tmp_path):
    """`make demo` after a kill: once the run folder has its config.json (features cached), the demo
    continues that run (from its checkpoint, or from step 0 before the first one); before that it
    starts afresh."""
    import invemb.em.train
    from invemb.em.probe import demo

    class Called(Exception):
        pass

    def record(cfg, out, resume=False, progress=True):
        raise Called(resume)

    monkeypatch.setattr(invemb.em.train, "train_em", record)
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text("{}")
    with pytest.raises(Called) as called:
        demo("tiny", started)
    assert called.value.args == (True,)
    with pytest.raises(Called) as called:
        demo("tiny", tmp_path / "fresh")
    assert called.value.args == (False,)


def test_error_line_unquotes_keys_and_names_paths():
    from invemb.cli import error_line

    assert error_line(KeyError("unknown key 'x.y'")) == "unknown key 'x.y'"
    assert error_line(FileNotFoundError(2, "No such file or directory", "/d/f.jsonl")) == "/d/f.jsonl: No such file or directory"
    assert error_line(ValueError("'quoted' start\nsecond line")) == "'quoted' start"
    assert error_line(ValueError("")) == "ValueError"


def test_index_build_reads_the_em_runs_own_unit_vectors(tiny_em_run, tmp_path, monkeypatch):
    """The run's unit_vectors.safetensors matches its encoder and vocabulary: nothing is encoded."""
    import invemb.inversion.units as units
    from invemb.index import UnitIndex

    run, _, _ = tiny_em_run

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded the units again")

    monkeypatch.setattr(units, "encode_units", no_encoding)
    result = runner.invoke(app, ["index", "build", "--model", str(run), "--out", str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "idx/unit_vectors.safetensors").exists()  # read from the run, not copied
    assert UnitIndex.load(tmp_path / "idx").units == json.loads((run / "vocab.json").read_text())["units"]


def test_encode_to_npy_continues_after_a_kill(tiny_em_run, tmp_path):
    """Killed after its first chunk, the same call encodes only the rest; the matrix equals one call's."""
    import invemb
    from invemb.api import encode_to_npy

    run, _, _ = tiny_em_run
    encoder = invemb.load(run)
    texts = [f"text number {i} about cats" for i in range(7)]
    whole = encoder.encode(texts).numpy()
    seen = []
    real = encoder.encode

    def dies_on_second_chunk(batch, batch_size=64):
        if len(batch) == 3 and seen:  # the probe texts of the fingerprint are another batch
            raise KeyboardInterrupt
        if len(batch) == 3:
            seen.append(batch)
        return real(batch, batch_size=batch_size)

    encoder.encode = dies_on_second_chunk
    with pytest.raises(KeyboardInterrupt):
        encode_to_npy(encoder, texts, tmp_path / "v.npy", chunk=3)
    assert sorted(p.name for p in (tmp_path / "v.npy.partial").iterdir()) == ["chunk_000000.npy", "fingerprint.json"]
    shutil.copytree(tmp_path / "v.npy.partial", tmp_path / "w.npy.partial")  # a dead run's chunks beside another output
    seen.clear()
    encoder.encode = lambda batch, batch_size=64: seen.append(list(batch)) or real(batch, batch_size=batch_size)
    assert encode_to_npy(encoder, texts, tmp_path / "v.npy", chunk=3) == (7, encoder.dim)
    assert [b for b in seen if b[0].startswith("text number")] == [texts[3:6], texts[6:]]
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), whole, atol=1e-6)
    assert not (tmp_path / "v.npy.partial").exists()
    seen.clear()  # other texts: the chunks of another input are not reused
    encode_to_npy(encoder, texts[1:3], tmp_path / "w.npy", chunk=3)
    assert [b for b in seen if b[0].startswith("text number")] == [texts[1:3]]
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), whole[1:3], atol=1e-6)
