"""Each evaluator on encoders with known answers, and loud failures on bad output."""
import json

import pytest
import torch
import torch.nn.functional as F

from invemb.encoder import EncoderOutputError
from invemb.eval.base import NotRun
from invemb.eval.classification import KNNClassificationEvaluator
from invemb.eval.inversion import InversionEvaluator
from invemb.eval.retrieval import RetrievalEvaluator, RetrievalTask
from invemb.eval.stats import EmbeddingStatsEvaluator
from invemb.eval.typo import TypoEvaluator, level_name
from invemb.eval.wordsim import WordSimEvaluator
from tests.conftest import FakeEncoder
from tests.eval.conftest import BrokenEncoder


class ScoreEncoder:
    """Word w -> (cos a, sin a) with a = table[w]: cos(w1, w2) = cos(a1 - a2), fully known."""

    def __init__(self, angles):
        self.angles, self.dim, self.name = angles, 2, "angles"

    def encode(self, texts, batch_size=64):
        a = torch.tensor([self.angles[t] for t in texts])
        return torch.stack([a.cos(), a.sin()], dim=-1)

    def save(self, path):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("# comment\nA\tb\t9.0\na\tc\t5.0\na\td\t1.0\nb\tc\t4.0\nzz\ta\t3.0\n")
    return str(p)


def test_wordsim_perfect_order_and_oov_counted(pairs_file):
    # angles from "a": b 0.1, c 0.5, d 1.5 -> cosine order b > c > d, like the human scores
    enc = ScoreEncoder({"a": 0.0, "b": 0.1, "c": 0.5, "d": 1.5, "zz": 3.0})
    out = WordSimEvaluator(pairs_file, vocab={"a", "b", "c", "d"})(enc)
    assert out["n_oov"] == 1 and out["n_pairs"] == 4
    # b-c: angle 0.4 (cos .92) would rank above a-c (cos .88) but humans rate it lower: one swap
    assert out["spearman"] == pytest.approx(0.8)
    assert WordSimEvaluator(pairs_file)(enc)["n_oov"] == 0


def test_sentence_pair_file_header_and_bad_lines(tmp_path):
    from invemb.eval.wordsim import load_word_pairs

    f = tmp_path / "sts.tsv"
    f.write_text("sentence1\tsentence2\tscore\na cat\ta dog\t3.5\n")
    assert load_word_pairs(str(f)) == [("a cat", "a dog", 3.5)]  # a header row is skipped
    f.write_text("a cat\ta dog\t3.5\nb\tc\thigh\n")
    with pytest.raises(ValueError, match=r"sts.tsv:2: the score 'high' is not a number"):
        load_word_pairs(str(f))
    f.write_text("a cat,a dog,3.5\n")
    with pytest.raises(ValueError, match=r"sts.tsv:1: expected three tab-separated columns"):
        load_word_pairs(str(f))


def test_wordsim_bundled_sets_and_missing_file(tmp_path):
    ev = WordSimEvaluator("simlex999")
    assert len(ev.rows) == 999 and ev.rows[0] == ("old", "new", 1.58)
    assert len(WordSimEvaluator("wordsim353").rows) == 353
    with pytest.raises(NotRun, match="not found"):
        WordSimEvaluator(str(tmp_path / "nope.tsv"))(FakeEncoder())


def test_retrieval_evaluator_known_answer_and_bm25():
    corpus = ["blue sky", "red apples", "green pears", "yellow sun"]
    task = RetrievalTask("toy", ["fruit one", "fruit two", "sky"], corpus, [{1}, {2}, {0}])
    # queries share the vector of their answer: perfect dense retrieval
    enc = FakeEncoder(dim=32, groups={"fruit one": "red apples", "fruit two": "green pears", "sky": "blue sky"})
    ev = RetrievalEvaluator(task)
    out = ev(enc)
    assert out["mrr"] == pytest.approx(1.0) and out["p@1"] == pytest.approx(1.0) and out["ndcg@10"] == pytest.approx(1.0)
    assert out["n_queries"] == 3 and out["n_corpus"] == 4
    # only "sky" shares a word with its answer; all-zero BM25 scores rank by position (id 0 first)
    assert ev.bm25()["p@1"] == pytest.approx(1 / 3)
    with pytest.raises(EncoderOutputError, match="broken-dim on toy"):
        ev(BrokenEncoder("dim"))
    with pytest.raises(ValueError, match="at least one relevant"):
        RetrievalTask("bad", ["q"], ["d"], [set()])


def test_knn_classification_separable_labels():
    texts = [f"{label} {i}" for label in ("x", "y", "z") for i in range(6)]
    labels = [t.split()[0] for t in texts]
    # all texts of a label share one vector -> neighbours always agree
    enc = FakeEncoder(dim=16, groups={t: t.split()[0] for t in texts})
    out = KNNClassificationEvaluator(texts, labels, k=3, folds=3)(enc)
    assert out["accuracy"] == 1.0 and out["macro_f1"] == 1.0 and out["n_labels"] == 3
    with pytest.raises(ValueError, match="fewer than 7 folds"):
        KNNClassificationEvaluator(texts, labels, k=3, folds=7)(enc)


def test_stats_evaluator_and_nan_refused():
    texts = [f"text {i}" for i in range(50)]
    out = EmbeddingStatsEvaluator(texts)(FakeEncoder(dim=8))
    assert out["norm_mean"] == pytest.approx(1.0) and 1.0 < out["effective_rank"] <= 8.0
    assert abs(out["anisotropy"]) < 0.1  # random directions
    assert 1 <= out["dims_90"] <= 8
    with pytest.raises(EncoderOutputError, match="broken-nan on stats"):
        EmbeddingStatsEvaluator(texts)(BrokenEncoder("nan"))


class CharEncoder:
    """Bag of character trigrams: a few typos barely move it."""

    dim, name = 64, "chars"

    def encode(self, texts, batch_size=64):
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for j in range(len(t) - 2):
                out[i, hash(t[j:j + 3]) % self.dim] += 1  # str hash: stable within the process
        return F.normalize(out + 1e-6, dim=-1)

    def save(self, path):  # pragma: no cover
        raise NotImplementedError


def test_typo_robustness_levels_and_curve(tmp_path):
    sentences = ["the government announced a new policy on education", "their friend received the package yesterday",
                 "scientists believe the experiment was successful", "a beautiful garden grows behind the old house"]
    ev = TypoEvaluator(sentences, rates=(0.05, 0.2), seed=0)
    assert ev.primary_metric == "mrr_noise20"
    out = ev(CharEncoder())
    assert set(out) >= {"cos_noise5", "cos_noise20", "mrr_noise5", "mrr_noise20", "cos_real", "mrr_real"}
    assert 1.0 >= out["cos_noise5"] > out["cos_noise20"] > 0.3
    assert out["real_changed_share"] > 0.5  # these words all have codespell misspellings
    # a hashed-text encoder: any edit gives an unrelated vector
    hashed = ev(FakeEncoder(dim=64))
    assert hashed["cos_noise20"] < 0.5
    # Rates that round to one percent keep their own names (2 and 2.5 were both "noise2").
    assert {level_name(r) for r in (0.02, 0.025, 0.1, 0.125)} == {"noise2", "noise2.5", "noise10", "noise12.5"}
    from invemb.eval.report import plot_typo_curves

    halves = TypoEvaluator(sentences, rates=(0.025, 0.05), seed=0)(CharEncoder())
    assert {"cos_noise2.5", "mrr_noise5"} <= set(halves)
    assert plot_typo_curves({"results": {"typo": {"char": halves}}}, tmp_path / "typo.png").stat().st_size > 0
    assert TypoEvaluator(sentences, rates=(0.2, 0.05, 0.4)).primary_metric == "mrr_noise20"  # the middle, in any order
    for rates in ((), (0.1, 0.1), (0.1, 0.1000000001), (0.0,), (1.5,)):
        with pytest.raises(ValueError, match="typo rates must be distinct shares"):
            TypoEvaluator(sentences, rates=rates)


def test_inversion_hook(monkeypatch, tmp_path):
    import sys
    import types

    with pytest.raises(NotRun, match="no controller run given"):
        InversionEvaluator(controller=None, sentences=["a b"])(FakeEncoder())
    monkeypatch.setitem(sys.modules, "invemb.inversion.metrics", None)  # the package without its metrics
    with pytest.raises(NotRun, match="invemb.inversion provides no metrics"):
        InversionEvaluator(controller="runs/ctrl", sentences=["a b"])(FakeEncoder())
    calls = []
    fake = types.SimpleNamespace(evaluate_inversion=lambda enc, ctrl, sents: calls.append((enc, ctrl, sents)) or {"bleu": 12})
    monkeypatch.setitem(sys.modules, "invemb.inversion.metrics", fake)
    enc = FakeEncoder()
    from invemb.eval.base import MemoEncoder

    assert InversionEvaluator("runs/ctrl", sentences=["a b"])(MemoEncoder(enc)) == {"bleu": 12.0}
    assert calls == [(enc, "runs/ctrl", ["a b"])]  # the suite's memo wrapper is taken off
    from invemb.inversion.units import encoder_fingerprint

    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    (ctrl / "config.json").write_text(json.dumps({"kind": "controller", "em": "runs/em-x",
                                                  "encoder_fingerprint": encoder_fingerprint(enc)}))
    assert InversionEvaluator(str(ctrl), sentences=["a b"])(MemoEncoder(enc)) == {"bleu": 12.0}
    with pytest.raises(NotRun, match=r"trained on another encoder \(runs/em-x\)"):
        InversionEvaluator(str(ctrl), sentences=["a b"])(FakeEncoder(dim=8))
