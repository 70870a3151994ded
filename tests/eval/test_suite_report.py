"""The suite runner, the report and the `invemb eval` command."""
import json

import pytest
import torch
from typer.testing import CliRunner

from invemb.encoder import EncoderOutputError
from invemb.eval.relations import RelationEvaluator
from invemb.eval.report import combine_results, direction, markdown_report, tabulate_results, write_report
from invemb.eval.stats import EmbeddingStatsEvaluator
from invemb.eval.suite import EvalConfig, name_encoders, run_suite, suite_names
from invemb.text.sources import MissingDataError
from tests.conftest import FakeEncoder
from tests.eval.conftest import BrokenEncoder

PAIRS = {"synonym": [("big", "large"), ("fast", "quick"), ("car", "automobile")], "antonym": [("good", "bad")]}
TEXTS = [f"sentence number {i}" for i in range(30)]


class MissingData:
    primary_metric = "x"

    def __call__(self, encoder):
        raise MissingDataError("WordNet not found: run `make data`")


def evaluators():
    return {"relations": RelationEvaluator(PAIRS), "stats": EmbeddingStatsEvaluator(TEXTS), "needs_data": MissingData()}


def test_run_suite_side_by_side_and_not_run():
    synonyms = FakeEncoder(dim=16, groups={b: a for a, b in PAIRS["synonym"]}, name="syn")
    res = run_suite({"syn": synonyms, "plain": FakeEncoder(dim=16)}, evaluators=evaluators(), progress=False)
    assert res["encoders"] == ["syn", "plain"]
    assert set(res["results"]) == {"relations", "stats"}
    assert res["not_run"] == {"needs_data": "WordNet not found: run `make data`"}
    assert res["results"]["relations"]["syn"]["synonym_margin"] > res["results"]["relations"]["plain"]["synonym_margin"]
    assert res["primary"] == {"relations": "synonym_margin", "stats": "effective_rank"}


def test_an_evaluator_not_for_one_encoder_still_runs_on_the_others():
    """A controller trained on one encoder: the inversion evaluator runs on that one; the others get
    a reason under not_run and the rest of the suite is kept."""
    from invemb.eval.base import NotRun

    class OnlyFor:
        primary_metric = "x"

        def __call__(self, encoder):
            if encoder.name != "mine":
                raise NotRun(f"trained on another encoder, not {encoder.name}")
            return {"x": 1.0}

    res = run_suite({"mine": FakeEncoder(dim=16, name="mine"), "other": FakeEncoder(dim=16, name="other")},
                    evaluators={"only": OnlyFor(), "stats": EmbeddingStatsEvaluator(TEXTS)}, progress=False)
    assert res["results"]["only"] == {"mine": {"x": 1.0}} and set(res["results"]["stats"]) == {"mine", "other"}
    assert res["not_run"] == {"only (other)": "trained on another encoder, not other"}
    assert "| only (x, higher is better) | 1.0000 | – |" in markdown_report(res)
    res = run_suite({"other": FakeEncoder(dim=16, name="other")}, evaluators={"only": OnlyFor()}, progress=False)
    assert res["results"] == {} and res["not_run"] == {"only": "trained on another encoder, not other"}


def test_run_suite_fails_loudly_on_bad_encoder():
    with pytest.raises(EncoderOutputError, match="broken-nan on relations"):
        run_suite({"ok": FakeEncoder(), "bad": BrokenEncoder("nan", dim=16)}, evaluators=evaluators(), progress=False)


def test_suite_names():
    assert suite_names("word") == ["simlex999", "wordsim353", "relations", "neighbours"]
    assert suite_names("order,stats,order") == ["order", "stats"]
    assert "inversion" in suite_names("all") and "typo" in suite_names("all") and "sts" in suite_names("all")
    with pytest.raises(ValueError, match="unknown suite or evaluator 'nope'"):
        suite_names("nope")


def test_name_encoders_deduplicates():
    names = name_encoders(["backbone", "runs/em", "backbone"], load=lambda spec: spec)
    assert names == {"backbone": "backbone", "em": "runs/em", "backbone#2": "backbone"}
    assert list(name_encoders(["runs/bm25"], load=lambda spec: spec)) == ["bm25#2"]  # "bm25" is the lexical baseline's


def test_knn_with_a_small_sample_uses_fewer_neighbours_and_says_when_no_topic_is_left():
    from invemb.eval.classification import KNNClassificationEvaluator

    texts = [f"{w} text {i}" for w in ("cat", "car") for i in range(3)]
    out = KNNClassificationEvaluator(texts, ["a"] * 3 + ["b"] * 3, k=10, folds=3)(FakeEncoder())
    assert out["k"] == 4 and out["n_texts"] == 6  # a training fold holds 4 texts
    with pytest.raises(ValueError, match="no label has 3 texts in the sample"):
        KNNClassificationEvaluator([], [], k=10, folds=3)(FakeEncoder())


def test_report_marks_best_and_writes_files(tmp_path):
    synonyms = FakeEncoder(dim=16, groups={b: a for a, b in PAIRS["synonym"]}, name="syn")
    encoders = {"syn": synonyms, "plain": FakeEncoder(dim=16)}
    res = run_suite(encoders, evaluators=evaluators(), progress=False)
    text = markdown_report(res)
    margin = res["results"]["relations"]["syn"]["synonym_margin"]
    assert f"**{margin:.4f}**" in text  # the better encoder's margin is marked
    assert "n_synonym_pairs | 3.0000 | 3.0000 |" in text  # counts are never marked
    assert "needs_data**: WordNet not found" in text
    files = write_report(res, tmp_path, encoders, (TEXTS[:20], ["a", "b"] * 10))
    assert json.loads((tmp_path / "results.json").read_text())["encoders"] == ["syn", "plain"]
    names = {p.split("/")[-1] for p in files["plots"]}
    assert {"bars_relations.png", "bars_stats.png", "similarity_heatmap.png", "units_pca_tsne.png"} <= names
    assert all((tmp_path / "plots" / n).stat().st_size > 1000 for n in names)
    assert "![units_pca_tsne](plots/units_pca_tsne.png)" in (tmp_path / "report.md").read_text()


def test_direction():
    assert direction("mrr") == 1 and direction("anisotropy") == -1 and direction("cos_swap_mean") == -1
    assert direction("n_pairs") == 0 and direction("cos_swap_p10") == 0 and direction("norm_mean") == 0


def test_combine_results_for_ablations(tmp_path):
    for name, groups in (("full", {b: a for a, b in PAIRS["synonym"]}), ("no_syn", {})):
        res = run_suite({"em": FakeEncoder(dim=16, groups=groups)}, evaluators=evaluators(), progress=False)
        write_report(res, tmp_path / name)
    combined = combine_results([tmp_path / "full", tmp_path / "no_syn"])
    assert combined["encoders"] == ["full", "no_syn"]
    assert set(combined["results"]["relations"]) == {"full", "no_syn"}
    table = tabulate_results([tmp_path / "full", tmp_path / "no_syn"])
    assert "| relations (synonym_margin, higher is better) | **" in table
    with pytest.raises(FileNotFoundError, match="no results.json"):
        combine_results([tmp_path / "missing"])


def test_eval_config_presets():
    tiny = EvalConfig.preset("tiny")
    assert tiny.order_sentences < EvalConfig().order_sentences
    assert EvalConfig.preset("default").replace(typo_rates="0.1,0.3").typo_rates == [0.1, 0.3]


def test_cli_eval_on_tiny_bert(tiny_bert_dir, tmp_path):
    from invemb.cli import app

    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["eval", "--encoder", tiny_bert_dir, "--encoder", tiny_bert_dir, "--suite",
                                      "stats,wordsim353,inversion", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    rows = {r["evaluator"]: r for r in printed["primary"]}
    name = tiny_bert_dir.rstrip("/").split("/")[-1]
    assert rows["stats"]["metric"] == "effective_rank" and rows["stats"][name] == rows["stats"][f"{name}#2"]
    assert rows["inversion"]["metric"] == "not run"
    report = (out / "report.md").read_text()
    assert "| wordsim353 (spearman, higher is better) |" in report and (out / "plots" / "bars_stats.png").exists()


def test_cli_eval_bad_input():
    from invemb.cli import app

    result = CliRunner().invoke(app, ["eval", "--encoder", "backbone", "--suite", "nope"])
    assert result.exit_code == 2 and "unknown suite or evaluator 'nope'" in result.output
    result = CliRunner().invoke(app, ["eval", "--encoder", "/no/such/run", "--suite", "stats"])
    assert result.exit_code == 2 and "no such run or model folder" in result.output


@pytest.mark.parametrize("args,needle", [
    (["--vocab", "/no/vocab.json"], "/no/vocab.json: no such file or folder (given as vocab)"),
    (["--set", "sts=/no/sts.tsv"], "/no/sts.tsv: no such file or folder (given as sts)"),
    (["--set", "wiki_path=/no/wiki.json"], "(given as wiki_path)"),
    (["--out", "README.md"], "README.md: is a file; give a folder for the report"),
    (["--out", "README.md/report"], "README.md: is a file; give a folder for the report"),
    (["--set", "neighbours_k=0"], "eval sizes too small: neighbours_k=0 (at least 1)"),
    (["--set", "inversion_sentences=0"], "inversion_sentences=0 (at least 1)"),
    (["--set", "retrieval_queries=0", "--set", "knn_folds=1"], "retrieval_queries=0 (at least 1), knn_folds=1 (at least 2)"),
    (["--set", "typo_sentences=1", "--set", "knn_texts=4"], "typo_sentences=1 (at least 2), knn_folds=5 (at most knn_texts=4)"),
    (["--set", "sts=src"], "src: is a folder; sts names a file"),
    (["--vocab", "README.md"], "README.md: not a vocabulary JSON"),
    (["--controller", "src"], "src: not a controller run"),
    (["--set", "typo_rates=[0.1,0.1000000001]"], "typo_rates must be distinct shares"),
    (["--set", "typo_rates=[]"], "typo_rates must be distinct shares"),
])
def test_cli_eval_refuses_bad_settings_before_loading_a_model(args, needle):
    """Checked before any encoder loads: the encoder named here does not exist, so a check that came
    later would answer with the encoder's error instead."""
    from invemb.cli import app

    result = CliRunner().invoke(app, ["eval", "--encoder", "/no/such/run", "--suite", "stats", *args])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


def test_memo_encoder_encodes_each_text_once():
    from invemb.eval.base import MemoEncoder

    seen = []

    class Counting(FakeEncoder):
        def encode(self, texts, batch_size=64):
            seen.extend(texts)
            return super().encode(texts, batch_size)

    inner = Counting(dim=8, name="counting")
    memo = MemoEncoder(inner)
    first = memo.encode(["a", "b", "a"])
    second = memo.encode(["b", "c"])
    assert seen == ["a", "b", "c"] and memo.name == "counting"
    assert torch.equal(first[1], second[0]) and torch.equal(second, inner.encode(["b", "c"]))


def test_sts_from_a_user_file(tmp_path):
    pairs = tmp_path / "sts.tsv"
    pairs.write_text("A cat sits.\tA cat sits.\t5.0\nA cat sits.\tStocks fell.\t0.5\nA dog runs.\tA dog runs.\t4.8\n"
                     "A dog runs.\tRain today.\t0.2\n")
    res = run_suite({"fake": FakeEncoder(dim=16)}, "sts", EvalConfig(sts=str(pairs)), progress=False)
    assert res["results"]["sts"]["fake"]["n_pairs"] == 4 and res["results"]["sts"]["fake"]["spearman"] > 0.5
    res = run_suite({"fake": FakeEncoder(dim=16)}, "sts", EvalConfig(), progress=False)
    assert "no sentence-pair file given" in res["not_run"]["sts"]
