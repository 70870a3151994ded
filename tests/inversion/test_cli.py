import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from invemb.cli import app
from invemb.io import write_jsonl
from toy import toy_sentences, toy_vocab

runner = CliRunner()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("cli")
    toy_vocab().save(root / "vocab.json")
    write_jsonl(root / "train.jsonl", [{"text": s} for s in toy_sentences(60, seed=3)])
    res = runner.invoke(app, ["train", "controller", "--em", tiny_bert_dir, "--preset", "tiny", "--out", str(root / "run"),
                              "--vocab", str(root / "vocab.json"), "--set", f"train_file={root / 'train.jsonl'}",
                              "--set", "max_sentences=60", "--set", "train.epochs=1"])
    assert res.exit_code == 0, res.output
    return root, tiny_bert_dir


def test_train_writes_a_controller_run(cli_run):
    root, _ = cli_run
    run = root / "run"
    info = json.loads((run / "config.json").read_text())
    assert info["kind"] == "controller" and info["units"] == len(toy_vocab()) and info["preset"] == "tiny"
    for name in ("model.safetensors", "unit_vectors.safetensors", "vocab.json", "metrics.jsonl", "report.md"):
        assert (run / name).exists(), name
    assert list((run / "plots").glob("*.png"))
    res = runner.invoke(app, ["train", "controller", "--em", cli_run[1], "--preset", "tiny", "--out", str(run)])
    assert res.exit_code == 2 and "not empty" in res.output


def test_invert_text_vectors_and_jsonl(cli_run, tmp_path):
    root, em = cli_run
    run = str(root / "run")
    res = runner.invoke(app, ["invert", "Big fox near.", "--em", em, "--controller", run])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)
    assert row["text"] == "Big fox near." and row["reconstruction"] and -1 <= row["cosine"] <= 1
    assert row["steps"] and {"unit", "slot", "cosine"} <= set(row["steps"][0]) and row["encoder_calls"] > 0

    write_jsonl(tmp_path / "in.jsonl", [{"text": "The cat sat on the mat."}, {"text": ""}])
    res = runner.invoke(app, ["invert", "--em", em, "--controller", run, "--input", str(tmp_path / "in.jsonl"),
                              "--output", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"text", "reconstruction", "cosine", "steps", "encoder_calls", "seconds"}
    assert rows[1]["reconstruction"] == "" and rows[1]["cosine"] is None

    import invemb

    vecs = invemb.encode(["A dog ran."], model=em).numpy()
    np.save(tmp_path / "v.npy", vecs)
    res = runner.invoke(app, ["invert", "--em", em, "--controller", run, "--vectors", str(tmp_path / "v.npy"),
                              "--output", str(tmp_path / "v.jsonl")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "v.jsonl").read_text())["cosine"] > 0



def test_invert_to_jsonl_continues_after_a_kill(cli_run, tmp_path, monkeypatch):
    """Killed after its first chunk, the same call keeps those rows and inverts only the rest, to the
    rows an uninterrupted run writes; other inputs do not pick up the dead run's rows."""
    from invemb.inversion import load_run
    from invemb.inversion.controller import Controller, invert_to_jsonl

    root, em = cli_run
    ctrl = load_run(root / "run", em=em)
    texts = ["Big fox near.", "The cat sat on the mat.", "", "A dog ran.", "Old tree."]
    full = invert_to_jsonl(ctrl, tmp_path / "full.jsonl", texts=texts, chunk=2)
    real, calls = Controller.invert_texts, []

    def dies_on_second_chunk(self, part, **kw):
        calls.append(list(part))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, part, **kw)

    monkeypatch.setattr(Controller, "invert_texts", dies_on_second_chunk)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        invert_to_jsonl(ctrl, out, texts=texts, chunk=2)
    kept = [x for f in sorted((tmp_path / "out.jsonl.partial").glob("chunk_*.jsonl")) for x in f.read_text().splitlines()]
    assert not out.exists() and len(kept) == 2  # the first chunk's rows
    shutil.copytree(tmp_path / "out.jsonl.partial", tmp_path / "other.jsonl.partial")  # beside another output
    calls.clear()
    monkeypatch.setattr(Controller, "invert_texts", lambda self, part, **kw: calls.append(list(part)) or real(self, part, **kw))
    rows = invert_to_jsonl(ctrl, out, texts=texts, chunk=2)
    assert calls == [texts[2:4], texts[4:]]  # the first chunk was kept
    assert not (tmp_path / "out.jsonl.partial").exists()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(full) == strip([json.loads(x) for x in out.read_text().splitlines()])

    calls.clear()  # the dead run's chunks beside another output, of other texts: not reused
    invert_to_jsonl(ctrl, tmp_path / "other.jsonl", texts=texts[:2], chunk=2)
    assert calls == [texts[:2]]


@pytest.mark.parametrize("gap", [0.0, 0.5])
def test_placer_pruning_keeps_every_search_the_same(cli_run, gap):
    """The Placer skips the pairs that cannot yield a kept action: fewer Placer rows, same inversions."""
    from invemb.inversion import load_run

    root, em = cli_run
    ctrl = load_run(root / "run", em=em, expand_gap=gap, units_k=6, expand=1, lm_pool=2)  # the decoder reads 2 actions
    placed = []
    hook = ctrl.policy.model.placer.register_forward_hook(lambda mod, args, out: placed.append(len(args[1])))
    texts = ["Big fox near the old tree.", "The cat sat on the mat.", "A dog ran."]
    rows = {}
    for prune in (True, False):
        ctrl.policy.prune_placer = prune
        placed.clear()
        rows[prune] = ([{k: v for k, v in r.items() if k != "seconds"} for r in ctrl.invert_texts(texts)], sum(placed))
    hook.remove()
    assert rows[True][0] == rows[False][0]
    assert rows[True][1] < rows[False][1]


def test_invert_decode_overrides_change_the_search(cli_run):
    root, em = cli_run
    base = ["invert", "Big fox near the old tree.", "--em", em, "--controller", str(root / "run")]
    wide = json.loads(runner.invoke(app, base + ["--decode", "expand=6"]).output)
    narrow = runner.invoke(app, base + ["--decode", "expand=1", "--decode", "beam=1"])
    assert narrow.exit_code == 0, narrow.output
    # one child per step, one hypothesis: one encoder call per step taken
    assert json.loads(narrow.output)["encoder_calls"] <= len(json.loads(narrow.output)["steps"]) + 3
    assert json.loads(narrow.output)["encoder_calls"] < wide["encoder_calls"]
    flag = runner.invoke(app, base + ["--decode", "expand=1", "--beam", "1"])  # --beam is the beam override
    assert json.loads(flag.output)["reconstruction"] == json.loads(narrow.output)["reconstruction"]
    bad = runner.invoke(app, base + ["--decode", "widht=3"])
    assert bad.exit_code == 2 and "unknown DecodeConfig key: widht" in bad.output


def test_invert_on_the_onnx_runtime_decodes_the_same(cli_run):
    root, em = cli_run
    base = ["invert", "Big fox near the old tree.", "--em", em, "--controller", str(root / "run")]
    on_torch = json.loads(runner.invoke(app, base).output)
    res = runner.invoke(app, base + ["--runtime", "onnx"])
    assert res.exit_code == 0, res.output
    on_onnx = json.loads(res.output)
    assert on_onnx["reconstruction"] == on_torch["reconstruction"]
    assert on_onnx["cosine"] == pytest.approx(on_torch["cosine"], abs=1e-4)
    bad = runner.invoke(app, base + ["--runtime", "tpu"])
    assert bad.exit_code == 2 and "unknown runtime 'tpu'" in bad.output

@pytest.mark.parametrize("bad, message", [(np.zeros((1, 5), np.float32), "shape"),
                                          (np.full((1, 32), np.nan, np.float32), "NaN"),
                                          (np.zeros((1, 32), np.float32), "all zeros"),
                                          (np.ones((1, 32), np.complex64), "expected real-valued vectors")])
def test_invert_bad_vectors_exit_2(cli_run, tmp_path, bad, message):
    root, em = cli_run
    np.save(tmp_path / "bad.npy", bad)
    res = runner.invoke(app, ["invert", "--em", em, "--controller", str(root / "run"), "--vectors", str(tmp_path / "bad.npy"),
                              "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_bad_settings_are_refused_before_any_decoding(cli_run, tmp_path):
    root, em = cli_run
    base = ["invert", "Big fox near the old tree.", "--em", em, "--controller", str(root / "run")]
    for extra, needle in ((["--decode", "expand=0"], "bad decoding settings: expand=0 (at least 1)"),
                          (["--beam", "0"], "beam=0 (at least 1)")):
        res = runner.invoke(app, base + extra)
        assert res.exit_code == 2 and needle in res.output, res.output
    (tmp_path / "in.jsonl").write_text('{"text": "Big fox."}\n')
    (tmp_path / "out").mkdir()
    res = runner.invoke(app, ["invert", "--em", em, "--controller", str(root / "run"), "--input", str(tmp_path / "in.jsonl"),
                              "--output", str(tmp_path / "out")])
    assert res.exit_code == 2 and "out: is a folder" in res.output and not (tmp_path / "out.partial").exists()
    evaluate = ["eval", "inversion", "--em", em, "--controller", str(root / "run"), "--method", "controller", "--method", "bag"]
    res = runner.invoke(app, evaluate + ["--n", "-3"])
    assert res.exit_code == 2 and "--n must be at least 1 sentence, got -3" in res.output
    res = runner.invoke(app, evaluate + ["--preset", "huge"])
    assert res.exit_code == 2 and "unknown preset 'huge'" in res.output
    (tmp_path / "afile").write_text("")
    for extra, needle in ((["--out", str(tmp_path / "afile")], "afile: is a file; give a folder for the results"),
                          (["--corpus", str(tmp_path / "nocorpus")], "nocorpus: no built corpus here")):
        res = runner.invoke(app, evaluate + extra)  # refused, not swapped for the EM's corpus or failing after decoding
        assert res.exit_code == 2 and needle in res.output, res.output
    (tmp_path / "v.jsonl").write_text('{"text": "x"}\n')
    res = runner.invoke(app, ["invert", "--em", em, "--controller", str(root / "run"), "--vectors", str(tmp_path / "v.jsonl"),
                              "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "v.jsonl: not a .npy file of vectors" in res.output
    res = runner.invoke(app, ["train", "controller", "--em", str(tmp_path / "no-em"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "no-em: no such run or model folder (--em)" in res.output


def test_mismatched_em_is_refused(cli_run, tmp_path):
    root, em = cli_run
    from invemb.backbone.hf import save_tiny_bert

    other = save_tiny_bert(tmp_path / "other", ["the", "cat"], hidden=32, layers=1, seed=5)
    res = runner.invoke(app, ["invert", "A dog.", "--em", other, "--controller", str(root / "run")])
    assert res.exit_code == 2 and "trained on encoder" in res.output


def test_index_build(cli_run, tmp_path):
    root, em = cli_run
    res = runner.invoke(app, ["index", "build", "--model", str(root / "run"), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    from invemb.index import UnitIndex

    idx = UnitIndex.load(tmp_path / "idx")
    assert idx.units == toy_vocab().units and idx.meta["vocab_fingerprint"] == toy_vocab().fingerprint()
    res = runner.invoke(app, ["index", "build", "--model", str(root / "run"), "--vocab", str(root / "vocab.json"),
                              "--out", str(tmp_path / "idx3")])
    assert res.exit_code == 2 and "--vocab does not apply to a controller run" in res.output
    res = runner.invoke(app, ["index", "build", "--model", em, "--vocab", str(root / "vocab.json"), "--out", str(tmp_path / "idx2"),
                              "--kind", "hnsw"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kind"] == "hnsw"


def test_eval_inversion_cli_writes_metrics_rows_and_plots(cli_run, tmp_path):
    """`invemb eval inversion` on a hand-made corpus folder: held-out (test split) sentences per set,
    every method's metrics side by side, rows and the F1-against-length plot."""
    root, em = cli_run
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sentences = toy_sentences(8, seed=11)
    rows = [{"text": s, "split": "test", "source": "wiki", "doc": f"d{i}"} for i, s in enumerate(sentences)]
    rows += [{"text": "a gloss that is skipped", "split": "test", "source": "wordnet", "doc": "syn1"},
             {"text": sentences[0], "split": "test", "source": "wordnet", "doc": "syn1"}]
    (corpus / "sentences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (corpus / "manifest.json").write_text("{}")
    out = tmp_path / "rep"
    res = runner.invoke(app, ["eval", "inversion", "--em", em, "--controller", str(root / "run"), "--corpus", str(corpus),
                              "--n", "4", "--method", "controller", "--method", "bag", "--preset", "tiny",
                              "--set", "wiki", "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"wiki"} and set(results["wiki"]) == {"controller", "bag"}
    summary = results["wiki"]["controller"]["summary"]
    assert {"token_f1", "bleu", "rouge_l", "exact_match", "cosine", "encoder_calls", "seconds"} <= set(summary)
    assert summary["encoder_calls"] > 0 and results["wiki"]["bag"]["summary"]["encoder_calls"] == 0
    assert len((out / "rows_wiki_controller.jsonl").read_text().splitlines()) == 4
    assert (out / "f1_vs_length_wiki.png").stat().st_size > 0
    # Each row keeps the units in the order they were chosen; by_step scores the choice at each step.
    first = json.loads((out / "rows_wiki_controller.jsonl").read_text().splitlines()[0])
    assert len(first["placed"]) <= first["steps"] and all(isinstance(u, str) for u in first["placed"])
    by_step = results["wiki"]["bag"]["by_step"]  # the bag "places" its top units in rank order
    assert by_step and by_step[0]["step"] == 1 and by_step[0]["rows"] == 4 and 0 <= by_step[0]["precision"] <= 100
    assert (out / "precision_by_step_wiki.png").stat().st_size > 0
    # --seed draws another sample of the held-out sentences: 4 of the 8, not the same 4
    res = runner.invoke(app, ["eval", "inversion", "--em", em, "--controller", str(root / "run"), "--corpus", str(corpus),
                              "--n", "4", "--method", "bag", "--preset", "tiny", "--set", "wiki", "--seed", "1",
                              "--out", str(tmp_path / "rep1")])
    assert res.exit_code == 0, res.output
    texts = [json.loads(line)["text"] for line in (tmp_path / "rep1" / "rows_wiki_bag.jsonl").read_text().splitlines()]
    first_sample = [json.loads(line)["text"] for line in (out / "rows_wiki_bag.jsonl").read_text().splitlines()]
    assert len(texts) == 4 and set(texts) <= set(sentences) and texts != first_sample
    res = runner.invoke(app, ["eval", "inversion", "--em", em, "--controller", str(root / "run"), "--corpus", str(corpus),
                              "--method", "oracle"])
    assert res.exit_code == 2 and "unknown method(s) oracle" in res.output


def test_invert_and_eval_an_order_bound_views_vectors(cli_run, tmp_path):
    """`--em` naming an `invemb order-bind` view of the controller's encoder: its vectors are inverted and every
    cosine is the view's."""
    from safetensors.torch import load_file

    import invemb
    from invemb.em.order_bind import OrderBindConfig, OrderBoundEncoder

    root, em = cli_run
    run = root / "run"
    view = OrderBoundEncoder.build(invemb.load(em), OrderBindConfig.preset("tiny").replace(binding="pairs"),
                                   load_file(str(run / "unit_vectors.safetensors"))["units"], em_path=em)
    view.save(tmp_path / "view")
    res = runner.invoke(app, ["invert", "The big dog ran under the tree.", "--em", str(tmp_path / "view"),
                              "--controller", str(run)])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)
    loaded = invemb.load(tmp_path / "view")
    want = float(loaded.encode([row["reconstruction"]])[0] @ loaded.encode([row["text"]])[0])
    assert row["cosine"] == pytest.approx(want, abs=1e-4)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"text": s, "split": "test", "source": "wiki", "doc": f"d{i}"} for i, s in enumerate(toy_sentences(4, seed=12))]
    (corpus / "sentences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (corpus / "manifest.json").write_text("{}")
    res = runner.invoke(app, ["eval", "inversion", "--em", str(tmp_path / "view"), "--controller", str(run), "--corpus",
                              str(corpus), "--n", "2", "--method", "controller", "--method", "bag", "--preset", "tiny",
                              "--set", "wiki", "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    for method in ("controller", "bag"):
        for line in (tmp_path / "rep" / f"rows_wiki_{method}.jsonl").read_text().splitlines():
            r = json.loads(line)
            want = float(loaded.encode([r["reconstruction"]])[0] @ loaded.encode([r["text"]])[0])
            assert r["cosine"] == pytest.approx(want, abs=1e-4), method
    res = runner.invoke(app, ["invert", "Big fox.", "--em", str(tmp_path / "view"), "--controller", str(run),
                              "--decode", "view_weight=2"])
    assert res.exit_code == 2 and "view_weight=2.0 (at most 1)" in res.output
    # served (`invemb serve --model VIEW --controller RUN`): the embeddings are the view's, and so is what is inverted
    from fastapi.testclient import TestClient

    from invemb.serve.app import create_app, load_service

    service = load_service(str(tmp_path / "view"), str(run))
    with TestClient(create_app(service)) as client:
        got = client.post("/v1/embeddings", json={"input": ["The big dog ran."]}).json()["data"][0]["embedding"]
        assert torch.allclose(torch.tensor(got), loaded.encode(["The big dog ran."])[0], atol=1e-5)
        r = client.post("/v1/invert", json={"vector": got})
        assert r.status_code == 200, r.text
        want = float(loaded.encode([r.json()["reconstruction"]])[0] @ torch.tensor(got))
        assert r.json()["cosine"] == pytest.approx(want, abs=1e-4)


def test_eval_inversion_with_workers_gives_the_rows_of_one_process(cli_run, tmp_path):
    """The controller's decodings in spawned workers: the same reconstructions, steps and calls in input order,
    seconds rescaled to sum to the wall time, one pool for several calls; the CLI takes --workers; bad settings
    refused."""
    import functools

    from invemb.inversion import load_run
    from invemb.inversion.controller import invert_vectors_in_workers, worker_pool
    from invemb.inversion.harness import compare_methods

    root, em = cli_run
    ctrl = load_run(root / "run", em=em)
    loader = functools.partial(load_run, root / "run", em=em)
    vectors = ctrl.target_encoder.encode(["A dog ran.", "Old tree.", "Big fox near.", "The cat sat on the mat.", "The dog sat."])
    greedy = ctrl.decode_cfg.replace(beam=1)
    one = ctrl.invert_vectors(vectors, greedy)
    same = lambda rs: [(r.text, r.steps, r.encoder_calls, r.cosine) for r in rs]  # noqa: E731
    with worker_pool(loader, 2) as pool:
        for chunk in (2, 16):  # two workers, then the same pool again with one chunk
            t0 = time.perf_counter()
            two = invert_vectors_in_workers(vectors, pool, greedy, chunk=chunk)
            wall = time.perf_counter() - t0
            assert same(two) == same(one)
            assert 0 < sum(r.seconds for r in two) <= wall
    with pytest.raises(ValueError, match="needs a loader"):
        compare_methods(ctrl, {"wiki": ["A dog ran."]}, ["controller"], workers=2)
    with pytest.raises(ValueError, match="at least 1"):
        compare_methods(ctrl, {"wiki": ["A dog ran."]}, ["controller"], workers=0)

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"text": s, "split": "test", "source": "wiki", "doc": f"d{i}"} for i, s in enumerate(toy_sentences(6, seed=5))]
    (corpus / "sentences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (corpus / "manifest.json").write_text("{}")
    base = ["eval", "inversion", "--em", em, "--controller", str(root / "run"), "--corpus", str(corpus), "--n", "3",
            "--method", "greedy", "--method", "bag", "--set", "wiki"]
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        res = runner.invoke(app, base + ["--out", str(tmp_path / name)] + extra)
        assert res.exit_code == 0, res.output
    read = lambda name: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                         for line in (tmp_path / name / "rows_wiki_greedy.jsonl").read_text().splitlines()]
    assert read("two") == read("one") and len(read("one")) == 3


def test_eval_inversion_continues_after_a_kill(cli_run, monkeypatch, tmp_path):
    """Killed in its second method, the same evaluation again keeps the first method's rows (it does not
    decode again) and ends with the results of an uninterrupted run; other settings start over."""
    import invemb.inversion.baselines as baselines
    from invemb.inversion import load_run
    from invemb.inversion.controller import Controller
    from invemb.inversion.harness import compare_methods

    root, em = cli_run
    ctrl = load_run(root / "run", em=em)
    sets = {"wiki": toy_sentences(4, seed=11)}
    full = compare_methods(ctrl, sets, ["controller", "bag"], tmp_path / "full", "tiny", progress=False)
    real_bag = baselines.bag_of_units

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(baselines, "bag_of_units", killed)
    out = tmp_path / "rep"
    with pytest.raises(KeyboardInterrupt):
        compare_methods(ctrl, sets, ["controller", "bag"], out, "tiny", progress=False)
    assert sorted(f.name for f in (out / "partial").glob("*.jsonl")) == ["wiki_controller.jsonl"]
    monkeypatch.setattr(baselines, "bag_of_units", real_bag)
    monkeypatch.setattr(Controller, "invert_vectors", killed)  # from here the controller's rows must be reused
    with pytest.raises(KeyboardInterrupt):  # other settings (the baselines' preset): nothing is reused
        compare_methods(ctrl, sets, ["controller", "bag"], out, "default", progress=False)
    again = compare_methods(ctrl, sets, ["controller", "bag"], out, "tiny", progress=False)
    strip = lambda r: {m: {k: v for k, v in x["summary"].items() if k not in ("seconds", "sentences_per_s")}  # noqa: E731
                       for m, x in r["wiki"].items()}
    assert strip(again) == strip(full)
    assert not (out / "partial").exists() and (out / "results.json").exists()
    compare_methods(ctrl, {"wordnet": sets["wiki"]}, ["bag"], out, "tiny", progress=False)  # another evaluation, same folder
    assert sorted(f.name for f in out.glob("rows_*")) == ["rows_wordnet_bag.jsonl"]  # no stale wiki rows beside it
    assert sorted(f.name for f in out.glob("*.png")) == ["f1_vs_length_wordnet.png", "precision_by_step_wordnet.png"]


def test_demo_inversion_reuses_a_finished_controller(cli_run, monkeypatch, tmp_path):
    """`make demo` a second time inverts with the controller it trained, it does not train again."""
    import invemb.em.data
    import invemb.inversion.harness
    import invemb.inversion.train
    from invemb.em.config import EMConfig
    from invemb.em.probe import demo_inversion

    root, em = cli_run

    def no_training(*a, **k):
        raise AssertionError("train_controller called on a finished controller run")

    monkeypatch.setattr(invemb.inversion.train, "train_controller", no_training)
    monkeypatch.setattr(invemb.em.data, "corpus_dir", lambda cfg: tmp_path)
    monkeypatch.setattr(invemb.inversion.harness, "eval_sentences", lambda corpus, kind, n: toy_sentences(n, seed=9))
    summary = demo_inversion(EMConfig.preset("tiny"), Path(em), root / "run", "tiny", n=2)
    assert summary["n"] == 2 and 0.0 <= summary["token_f1"] <= 100.0
    # then the same sentences from the pair-bound view's vectors, the view saved beside the EM for later commands
    assert summary["view"]["n"] == 2 and 0.0 <= summary["view"]["token_f1"] <= 100.0
    assert json.loads(Path(f"{em}-pairs", "config.json").read_text())["config"]["binding"] == "pairs"


def test_demo_inversion_resumes_a_controller_killed_before_its_first_checkpoint(monkeypatch, tmp_path):
    """A demo killed while the controller built its states (config.json written, no checkpoint yet)
    continues that run on the next `make demo` instead of refusing a non-empty folder."""
    import invemb.em.data
    import invemb.inversion.train
    from invemb.em.config import EMConfig
    from invemb.em.probe import demo_inversion

    class Called(Exception):
        pass

    def record(em, cfg, out, resume=False, **kwargs):
        raise Called(resume)

    monkeypatch.setattr(invemb.inversion.train, "train_controller", record)
    monkeypatch.setattr(invemb.em.data, "corpus_dir", lambda cfg: tmp_path)
    started = tmp_path / "controller"
    started.mkdir()
    (started / "config.json").write_text("{}")
    with pytest.raises(Called) as called:
        demo_inversion(EMConfig.preset("tiny"), tmp_path / "em", started, "tiny", n=2)
    assert called.value.args == (True,)
    with pytest.raises(Called) as called:
        demo_inversion(EMConfig.preset("tiny"), tmp_path / "em", tmp_path / "fresh", "tiny", n=2)
    assert called.value.args == (False,)


def test_a_run_keeping_an_older_default_is_told_on_stderr(cli_run, tmp_path):
    from invemb.inversion.decode import DecodeConfig

    root, em = cli_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    info = json.loads((run / "config.json").read_text())
    info["config"]["decode"]["patience"] = DecodeConfig().patience + 2  # as if the default had changed since (tiny keeps it)
    (run / "config.json").write_text(json.dumps(info))
    res = runner.invoke(app, ["invert", "Big fox near.", "--em", em, "--controller", str(run)])
    assert res.exit_code == 0, res.output
    assert f"patience={DecodeConfig().patience + 2} (default {DecodeConfig().patience})" in res.stderr
    assert json.loads(res.stdout)["reconstruction"]  # the result itself stays on stdout
    told = runner.invoke(app, ["invert", "Big fox near.", "--em", em, "--controller", str(run), "--decode", "patience=1"])
    assert told.exit_code == 0 and "note:" not in told.stderr  # overridden: nothing kept to tell of


def test_invert_to_jsonl_with_two_workers_writes_the_rows_one_process_writes(cli_run, tmp_path):
    """Two spawned workers, each loading its own controller, invert the chunks of a file (texts and vectors)
    to the rows one process writes, in input order; the CLI takes --workers; bad settings refused."""
    import functools

    import numpy as np

    from invemb.inversion import load_run
    from invemb.inversion.controller import invert_to_jsonl

    root, em = cli_run
    ctrl = load_run(root / "run", em=em)
    texts = ["Big fox near.", "The cat sat on the mat.", "", "A dog ran.", "Old tree.", "The dog sat."]
    loader = functools.partial(load_run, root / "run", em=em)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    one = invert_to_jsonl(ctrl, tmp_path / "one.jsonl", texts=texts, chunk=2)
    two = invert_to_jsonl(ctrl, tmp_path / "two.jsonl", texts=texts, chunk=2, workers=2, loader=loader)
    assert strip(two) == strip(one) and [r["text"] for r in two] == texts
    assert strip([json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]) == strip(one)
    assert not (tmp_path / "two.jsonl.partial").exists()
    vectors = ctrl.target_encoder.encode(["A dog ran.", "Old tree.", "Big fox near."]).numpy()
    by_vectors = invert_to_jsonl(ctrl, tmp_path / "v.jsonl", vectors=vectors, chunk=1, workers=2, loader=loader)
    assert strip(by_vectors) == strip(invert_to_jsonl(ctrl, tmp_path / "v1.jsonl", vectors=vectors, chunk=1))
    with pytest.raises(ValueError, match="needs a loader"):
        invert_to_jsonl(ctrl, tmp_path / "x.jsonl", texts=texts, workers=2)
    with pytest.raises(ValueError, match="at least 1"):
        invert_to_jsonl(ctrl, tmp_path / "x.jsonl", texts=texts, workers=0)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    res = runner.invoke(app, ["invert", "--em", em, "--controller", str(root / "run"), "--input", str(tmp_path / "in.jsonl"),
                              "--output", str(tmp_path / "cli.jsonl"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["reconstruction"] for x in (tmp_path / "cli.jsonl").read_text().splitlines()] == \
        [r["reconstruction"] for r in one]


def test_index_words_cli_adds_words_that_invert_uses_unless_told_not_to(cli_run, tmp_path):
    root, em = cli_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (tmp_path / "words.txt").write_text("zebra\nwalrus\ncat\n")
    res = runner.invoke(app, ["index", "words", "--controller", str(run), "--source", str(tmp_path / "words.txt"),
                              "--numbers", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["extra_units"] == 6 and out["kind"] == "hnsw"  # zebra, walrus, 0..3 ("cat" is a unit)
    assert json.loads((run / "extra_units" / "units.json").read_text()) == ["zebra", "walrus", "0", "1", "2", "3"]
    for flag in ([], ["--no-extra-units"]):
        res = runner.invoke(app, ["invert", "Big zebra near.", "--em", em, "--controller", str(run), *flag])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["reconstruction"]
    from invemb.inversion import load_run

    assert len(load_run(run, em=em).vocab) == len(toy_vocab()) + 6
    assert len(load_run(run, em=em, extra_units=False).vocab) == len(toy_vocab())
    from invemb.serve.app import load_service

    for extra, size in ((True, len(toy_vocab()) + 6), (False, len(toy_vocab()))):  # `invemb serve [--no-extra-units]`
        assert len(load_service(em, str(run), extra_units=extra).controller.vocab) == size
    res = runner.invoke(app, ["index", "words", "--controller", str(run), "--top", "0"])
    assert res.exit_code == 2 and "top must be at least 1 word" in res.output
