import hashlib

import pytest
import torch
import torch.nn.functional as F

from invemb.em.order_bind import OrderBindConfig, OrderBoundEncoder, build_run, word_counts
from invemb.text.vocab import tokenize


class WordSumEncoder:
    """Order-blind fake EM: a text is the sum of its words' vectors; ``synonyms`` share a vector up to noise."""

    def __init__(self, dim: int = 24, synonyms: dict[str, str] | None = None):
        self.dim, self.synonyms, self.calls = dim, synonyms or {}, 0

    def word(self, w: str) -> torch.Tensor:
        def vec(key: str, scale: float) -> torch.Tensor:
            seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
            return scale * torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

        w = w.lower()
        return vec(self.synonyms.get(w, w), 1.0) + vec("noise " + w, 0.2)

    def encode(self, texts, batch_size: int = 64) -> torch.Tensor:
        self.calls += 1
        return F.normalize(torch.stack([sum(self.word(w) for w in tokenize(t)) for t in texts]), dim=-1)


def test_a_swap_moves_the_bound_view_further_than_a_synonym_where_the_em_cannot_tell():
    em = WordSumEncoder(synonyms={"hound": "dog"})
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=512, max_positions=16, codes="em"),
                                   unit_vectors=em.encode(["dog", "cat", "chased", "the"]))
    texts = ["the dog chased the cat", "the cat chased the dog", "the hound chased the cat"]
    base, bound = em.encode(texts), view.encode(texts)
    assert bound.shape == (3, 24 + 512) and torch.allclose(bound.norm(dim=1), torch.ones(3))
    assert (base[0] @ base[1]).item() == pytest.approx(1.0, abs=1e-5)  # a sum cannot see the swap
    assert bound[0] @ bound[1] < bound[0] @ bound[2] < 1.0
    # its EM part is the EM's own vector, weighted sqrt(1 - share)
    assert torch.allclose(bound[:, :24], 0.5 ** 0.5 * base, atol=1e-6)


def test_the_bound_part_matches_a_hand_computation_and_a_single_word_has_none():
    em = WordSumEncoder()
    cfg = OrderBindConfig(width=16, share=0.3, max_positions=4, codes="em")
    view = OrderBoundEncoder.build(em, cfg, unit_vectors=torch.randn(10, 24, generator=torch.Generator().manual_seed(1)))
    got = view.encode(["red apple", "apple"])
    v = (em.encode(["red", "apple"]) - view.center) @ view.projection  # (2, 16) centred, projected word vectors
    bound = F.normalize(v[0] + view.signs[1] * v[1][view.perms[1]], dim=0)  # position 0 keeps its coordinates
    want = F.normalize(torch.cat([0.7 ** 0.5 * em.encode(["red apple"])[0], 0.3 ** 0.5 * bound]), dim=0)
    assert torch.allclose(got[0], want, atol=1e-5)
    assert torch.allclose(got[1], torch.cat([em.encode(["apple"])[0], torch.zeros(16)]), atol=1e-6)
    # words past max_positions are left out of the bound part, and each word is encoded once
    calls = em.calls
    view.encode(["red apple red apple red apple", "apple red"])
    assert em.calls == calls + 1  # the texts themselves; every word was known


def shake_code(word: str, width: int) -> torch.Tensor:
    bits = "".join(f"{byte:08b}" for byte in hashlib.shake_256(f"0\t{word}".encode()).digest(width // 8))
    return torch.tensor([1.0 if b == "1" else -1.0 for b in bits]) / width ** 0.5


def test_identity_codes_bind_each_lowercased_word_weighted_by_its_idf_and_never_encode_words():
    import math

    em = WordSumEncoder()
    counts = {"the": 90, "red": 5, "apple": 5}
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=16, share=0.3, max_positions=4), word_counts=counts)
    assert view.cfg.word_codes == "identity"  # "auto" with binding positions
    got = view.encode(["Red apple pie", "apple"])
    assert em.calls == 1  # the texts themselves: no word is encoded
    idf = {"red": math.log(100 / 5), "apple": math.log(100 / 5), "pie": math.log(100 / 1)}  # unseen: counted once
    v = {w: idf[w] * shake_code(w, 16) for w in idf}
    bound = F.normalize(v["red"] + (view.signs[1] * v["apple"][view.perms[1]]) + view.signs[2] * v["pie"][view.perms[2]], dim=0)
    want = F.normalize(torch.cat([0.7 ** 0.5 * em.encode(["Red apple pie"])[0], 0.3 ** 0.5 * bound]), dim=0)
    assert torch.allclose(got[0], want, atol=1e-5)
    assert torch.allclose(got[1], torch.cat([em.encode(["apple"])[0], torch.zeros(16)]), atol=1e-6)


def test_identity_codes_see_a_swap_of_near_synonyms_and_keep_unrelated_texts_apart():
    em = WordSumEncoder(synonyms={"scared": "frightened", "priest": "friar"})
    counts = {w: 10 for w in "the priest scared friar frightened cat dog a chased man".split()}
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=2048), word_counts=counts)
    bound = view.bound_texts(["the priest scared the friar", "the friar scared the priest", "the priest frightened the friar",
                              "a dog chased a cat", "the man"])
    cos = bound @ bound.T
    # the swapped words are near-synonyms to the EM (one vector up to noise); their codes are unrelated
    assert cos[0, 1] < cos[0, 2] < 1.0
    assert abs(cos[0, 3]) < 0.1  # no word at the same place
    assert cos[0, 4] > 0.2  # "the" in the same place: about 1 / sqrt(5 * 2)


def test_word_counts_sum_case_variants_of_one_word_units():
    from invemb.text.vocab import Vocab

    vocab = Vocab(["The", "the", "New York", "cat"], ["word", "word", "entity", "word"], [3, 7, 5, 2])
    assert word_counts(vocab) == {"the": 10, "cat": 2}


def test_settings_and_tensors_are_checked():
    with pytest.raises(ValueError, match=r"share=1.0 \(in \(0, 1\)\)"):
        OrderBindConfig(share=1.0)
    with pytest.raises(ValueError, match="width=0"):
        OrderBindConfig(width=0)
    em = WordSumEncoder()
    with pytest.raises(ValueError, match="needs the EM's unit vectors"):
        OrderBoundEncoder.build(em, OrderBindConfig(width=8, codes="em"))
    with pytest.raises(ValueError, match="identity codes need the EM run's word counts"):
        OrderBoundEncoder.build(em, OrderBindConfig(width=8))
    with pytest.raises(ValueError, match=r"codes='hash' \(auto or identity or em\)"):
        OrderBindConfig(codes="hash")
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=8, center=False, codes="em"))
    assert torch.equal(view.center, torch.zeros(24))
    with pytest.raises(ValueError, match="do not fit an EM of dimension 12"):
        OrderBoundEncoder(WordSumEncoder(dim=12), view.cfg, {"center": view.center, "projection": view.projection,
                                                             "signs": view.signs, "perms": view.perms})
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        view.encode(["the cat", " "])


def test_an_order_binding_run_loads_through_invemb_load_and_the_cli(tiny_em_run, tmp_path):
    import json

    from typer.testing import CliRunner

    import invemb
    from invemb.cli import app

    run, _, _ = tiny_em_run
    summary = build_run(run, tmp_path / "bound", OrderBindConfig.preset("tiny"))
    assert summary["dim"] == invemb.load(run).dim + 64
    loaded = invemb.load(tmp_path / "bound")
    assert isinstance(loaded, OrderBoundEncoder) and loaded.dim == summary["dim"]
    texts = ["the cat sat on the mat", "the mat sat on the cat"]
    tensors = {"center": loaded.center, "projection": loaded.projection, "signs": loaded.signs, "perms": loaded.perms}
    assert loaded.cfg.word_codes == "identity" and loaded.word_counts["the"] > loaded.word_counts.get("mat", 0)
    fresh = OrderBoundEncoder(invemb.load(run), loaded.cfg, tensors, word_counts=loaded.word_counts)
    assert torch.allclose(loaded.encode(texts), fresh.encode(texts), atol=1e-6)
    # a view saved before identity codes (no "codes" in its config) bound EM vectors, and still does
    build_run(run, tmp_path / "old", OrderBindConfig.preset("tiny", codes="em"))
    info = json.loads((tmp_path / "old" / "config.json").read_text())
    want = invemb.load(tmp_path / "old").encode(texts)
    del info["config"]["codes"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(info))
    old = invemb.load(tmp_path / "old")
    assert old.cfg.word_codes == "em" and torch.allclose(old.encode(texts), want, atol=1e-6)
    with pytest.raises(FileExistsError, match="is not empty"):
        build_run(run, tmp_path / "bound")

    runner = CliRunner()
    res = runner.invoke(app, ["order-bind", "--em", str(run), "--out", str(tmp_path / "cli"), "--preset", "tiny",
                              "--set", "share=0.4"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["config"]["share"] == 0.4
    res = runner.invoke(app, ["order-bind", "--em", str(run), "--out", str(tmp_path / "bad"), "--set", "share=2"])
    assert res.exit_code == 2 and "share=2.0 (in (0, 1))" in res.output
    res = runner.invoke(app, ["neighbours", "bank", "--model", str(tmp_path / "cli")])
    assert res.exit_code == 2 and f"is an order-bound view of the EM run {run}" in res.output
    assert f"--model {run}" in " ".join(res.output.split())


def test_the_word_table_grows_and_starts_over_past_its_bound_with_the_same_vectors():
    em = WordSumEncoder()
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=16, codes="em"), unit_vectors=torch.randn(10, 24, generator=torch.Generator().manual_seed(1)))
    want = {w: (em.encode([w])[0] - view.center) @ view.projection for w in ("red", "green", "blue", "apple", "pear")}
    view.max_words_kept = 3
    assert torch.allclose(view.word_vectors(["red", "green", "red"]), torch.stack([want["red"], want["green"], want["red"]]), atol=1e-5)
    # two known and two new words pass the bound: the table starts over with the four of this call
    got = view.word_vectors(["red", "blue", "apple", "green"])
    assert torch.allclose(got, torch.stack([want[w] for w in ("red", "blue", "apple", "green")]), atol=1e-5)
    assert len(view._word_row) == 4
    # one word at a time grows the table and leaves earlier rows as they were
    view.max_words_kept = 100
    view.word_vectors(["pear"])
    assert torch.allclose(view.word_vectors(["pear", "red"]), torch.stack([want["pear"], want["red"]]), atol=1e-5)


@pytest.mark.parametrize("binding", ["pairs", "positions"])
def test_bound_parts_of_edits_of_a_text_equal_binding_each_text(binding):
    em = WordSumEncoder()
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=64, max_positions=6, binding=binding, codes="em"),
                                   unit_vectors=torch.randn(10, 24, generator=torch.Generator().manual_seed(2)))
    base = "the old dog chased a cat"
    edits = [base, "the dog chased a cat", "the old brown dog chased a cat", "the old dog chased the cat",
             "The old dog chased a cat", "old dog chased a cat", "the old dog chased a", "the old dog chased a cat today",
             "a cat chased the old dog", "dog", "cat cat", "the old dog chased a cat and the cat ran",  # past max_positions
             "the the old dog chased a cat", "the old dog dog chased a cat"]
    assert torch.allclose(view.bound_edits(base, edits), view.bound_texts(edits), atol=1e-5)
    assert torch.allclose(view.bound_edits("dog", edits), view.bound_texts(edits), atol=1e-5)  # a base with no pairs
    # random edits of random texts over a small vocabulary (so words repeat at both ends)
    g = torch.Generator().manual_seed(3)
    words = ["a", "b", "c", "d"]
    pick = lambda n: " ".join(words[int(i)] for i in torch.randint(0, 4, (n,), generator=g))  # noqa: E731
    for _ in range(40):
        base, texts = pick(int(torch.randint(0, 8, (1,), generator=g))), [pick(int(torch.randint(0, 8, (1,), generator=g))) for _ in range(5)]
        assert torch.allclose(view.bound_edits(base, texts), view.bound_texts(texts), atol=1e-5), (base, texts)


def test_the_demo_writes_the_order_view_beside_the_em_run_and_prints_both_figures(tiny_em_run, tmp_path, capsys):
    import shutil

    import invemb
    from invemb.em.probe import demo_order_view
    from invemb.eval.order import OrderEvaluator
    from tests.eval.conftest import FakeLemma as L
    from tests.eval.conftest import FakeSynset, FakeWordNet

    run, _, _ = tiny_em_run
    em_run = tmp_path / "em"
    shutil.copytree(run, em_run)
    wn = FakeWordNet({"big": [FakeSynset(L("big", 5), L("large", 9))], "quick": [FakeSynset(L("quick", 4), L("fast", 6))]})
    evaluator = OrderEvaluator(["The big dog chased the small cat.", "A quick fox jumped over the lazy dog.",
                                "The big house stood near the old river."], wn=wn)
    summary = demo_order_view(em_run, evaluator, "tiny")
    view = invemb.load(tmp_path / "em-ordered")
    assert summary["run"] == str(tmp_path / "em-ordered") and view.cfg.word_codes == "identity" and view.cfg.width == 64
    assert summary["probes"] == 3
    assert summary["em"] == evaluator(invemb.load(em_run))["order_discrimination"]
    assert summary["view"] == evaluator(view)["order_discrimination"]
    assert f"EM {summary['em']:.3f} -> view {summary['view']:.3f}" in capsys.readouterr().out
    demo_order_view(em_run, evaluator, "tiny")  # a second demo writes the view again
