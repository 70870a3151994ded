import pytest
import torch

from invemb.inversion import metrics
from invemb.inversion.segment import Segmenter
from invemb.inversion.selector import each_positive_infonce, infonce_over_logits
from invemb.inversion.summary import summarise
from invemb.text.vocab import Vocab

UNITS = ["the", "prime minister", "of", "New York", "visited", "new", "york", "on", "1,234", "days", ".", ",",
         "ultra", "-", "modern", "a", "city", "is", "big"]


def _vocab():
    return Vocab(UNITS, ["word"] * len(UNITS), [5] * len(UNITS))


@pytest.mark.parametrize("sentence", ["The prime minister of New York visited on 1,234 days.",
                                      "A city, the city, is big.", "The ultra-modern city is big."])
def test_segmenter_round_trip_with_full_coverage(sentence):
    seg = Segmenter(_vocab()).segment(sentence)
    assert seg.coverage == 1.0 and not seg.oov_tokens
    text = seg.text()
    assert text[:1].upper() + text[1:] == sentence


def test_segmenter_prefers_longest_units_and_reports_oov():
    seg = Segmenter(_vocab()).segment("The prime minister of New York visited Paris.")
    assert [s.text for s in seg.segments] == ["the", "prime minister", "of", "New York", "visited", "Paris", "."]
    assert seg.oov_tokens == ["Paris"]
    assert seg.coverage == pytest.approx(8 / 9)
    assert -1 not in seg.unit_ids and len(seg.unit_ids) == 6


def test_segmenter_lowercases_as_the_vocabulary_counts():
    from invemb.text.vocab import VocabConfig, build_vocab

    v = build_vocab(['"The cat sat," he said.', "Yesterday I went home.", "You CAN'T stay.", "I think so."] * 2,
                    VocabConfig.preset("tiny"))
    seg = Segmenter(v)
    for text, unit in [('"The dog sat," he said.', "the"), ("Then I went home.", "i"), ("You CAN'T go.", "ca")]:
        s = seg.segment(text)
        assert unit in " ".join(x.text for x in s.segments).split() and not set(s.oov_tokens) & {"The", "I", "CA"}, s.segments


def test_fold_case_matches_capitalised_words_mid_sentence_only_when_asked():
    text = "Paris visited the City of New York."
    assert Segmenter(_vocab()).segment(text).oov_tokens == ["Paris", "City"]  # "City" is not sentence-initial
    folded = Segmenter(_vocab(), fold_case=True).segment(text)
    assert [s.text for s in folded.segments] == ["Paris", "visited", "the", "city", "of", "New York", "."]
    assert folded.segments[3].source_text == "City" and folded.oov_tokens == ["Paris"]


def test_hyphen_fallback_keeps_sub_units():
    seg = Segmenter(_vocab()).segment("ultra-modern")
    assert [s.text for s in seg.segments] == ["ultra", "-", "modern"] and seg.coverage == 1.0


def test_token_f1_exact_match_bleu_rouge():
    assert metrics.token_f1("the cat sat", "The cat sat") == 100.0
    assert metrics.token_f1("cat the", "the cat sat on") == pytest.approx(100 * 2 * 1.0 * 0.5 / 1.5)
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("the the", "the") == pytest.approx(100 * 2 * 0.5 * 1.0 / 1.5)  # multiset
    assert metrics.token_overlap("the the", "the") == pytest.approx((50.0, 100.0))
    assert metrics.token_overlap("", "the cat") == (0.0, 0.0) and metrics.token_overlap("", "") == (100.0, 100.0)
    assert metrics.token_f1("", "") == 100.0 and metrics.token_f1("", "cat") == 0.0
    assert metrics.length_ratio("cat the", "the cat sat on") == 0.5 and metrics.length_ratio("cat", "") is None
    assert metrics.exact_match("The cat.", "the cat .") == 100.0 and metrics.exact_match("cat the", "the cat") == 0.0
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert metrics.bleu(["mat the on sat cat the"], ["the cat sat on the mat"]) < 30
    assert metrics.rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    assert metrics.rouge_l(["Привет мир"], ["Привет мир"]) == pytest.approx(100.0)  # rouge-score's tokenizer dropped it
    assert metrics.rouge_l(["Córdoba is far"], ["in Córdoba"]) == pytest.approx(40.0)  # 1 of 3 and 1 of 2 tokens
    rows = [{"text": "the cat sat", "reconstruction": "the cat sat", "cosine": 1.0, "encoder_calls": 10, "seconds": 0.5},
            {"text": "a b c d e f g h i j k l", "reconstruction": "", "cosine": None, "encoder_calls": 0, "seconds": 0.5}]
    s = metrics.summarise(rows)
    assert s["token_f1"] == pytest.approx(50.0) and s["cosine"] == 1.0 and s["encoder_calls"] == 5
    assert s["token_precision"] == pytest.approx(50.0) and s["token_recall"] == pytest.approx(50.0)
    assert s["length_ratio"] == pytest.approx(0.5)  # 1.0 and 0.0
    assert s["sentences_per_s"] == pytest.approx(2.0)
    assert set(metrics.by_length(rows)) == {"1-10", "11-20"}


def test_precision_by_step_counts_each_reference_token_once(tmp_path):
    steps = [{"unit": "cat", "slot": 0}, {"unit": "the", "slot": 0}, {"unit": "cat", "slot": 1, "moved_from": 0},
             {"unit": "prime minister", "slot": 2}, {"unit": "the", "slot": 0}]
    assert metrics.placed_units(steps) == ["cat", "the", "prime minister", "the"]  # the move re-places "cat"
    rows = [{"text": "The cat saw the prime minister.", "placed": ["cat", "the", "prime minister", "the"]},
            {"text": "The dog sat.", "placed": ["cat", "the", "the"]},  # the second "the" is one too many
            {"text": "A prime example.", "placed": ["prime minister"]},  # a phrase counts only whole
            {"text": "No trace.", "placed": []}]
    by_step = metrics.precision_by_step(rows, min_rows=1)
    assert [(p["step"], p["rows"]) for p in by_step] == [(1, 3), (2, 2), (3, 2), (4, 1)]
    assert [p["precision"] for p in by_step] == pytest.approx([100 / 3, 100.0, 50.0, 100.0])
    assert [p["step"] for p in metrics.precision_by_step(rows, min_rows=2)] == [1, 2, 3]  # step 4: one row only
    path = metrics.plot_precision_by_step({"controller": by_step, "blackbox": []}, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_positive_infonce_matches_formula():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    pos = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    logits = q[0] @ c.T / 0.1
    want = -(torch.logsumexp(logits[[0, 2]], 0) - torch.logsumexp(logits, 0))
    assert infonce_over_logits(q @ c.T / 0.1, pos).item() == pytest.approx(want.item(), rel=1e-5)
    assert infonce_over_logits(q @ c.T / 0.1, pos & False).item() == 0.0


def test_each_positive_infonce_matches_formula():
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0], [0.0, 3.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    pos = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    neg0 = torch.logsumexp(torch.tensor([0.5, -1.0]), 0)  # row 0's negatives
    neg1 = torch.logsumexp(torch.tensor([0.0, 1.0, 1.0]), 0)
    # Each positive against its row's negatives only (row 0's two positives never compete); a row with
    # no negative costs nothing.
    terms = [torch.logaddexp(torch.tensor(2.0), neg0) - 2.0, torch.logaddexp(torch.tensor(1.0), neg0) - 1.0,
             torch.logaddexp(torch.tensor(3.0), neg1) - 3.0] + [torch.tensor(0.0)] * 4
    assert each_positive_infonce(logits, pos).item() == pytest.approx(float(sum(terms) / len(terms)), rel=1e-6)
    assert each_positive_infonce(logits, pos & False).item() == 0.0
    # Unlike the pooled loss, it keeps charging a weak positive once a strong one is in the row.
    weak = torch.tensor([[9.0, -5.0, 0.0]])
    two = torch.tensor([[True, True, False]])
    assert infonce_over_logits(weak, two).item() < 1e-3 and each_positive_infonce(weak, two).item() > 2.0


def test_summary_levels():
    uv = torch.eye(4)
    s = summarise(torch.ones(2, 4), [[0, 1, 2], []], torch.zeros(2, 4), uv, chunk=3)
    assert s.units.shape == (2, 3, 4) and s.mask.tolist() == [[True, True, True], [False, False, False]]
    torch.testing.assert_close(s.chunks[0, 1], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))  # window of 3
    torch.testing.assert_close(s.chunks[0, 0], torch.tensor([0.5, 0.5, 0.0, 0.0]))  # edge: window of 2
    torch.testing.assert_close(s.unit_mean[0], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))
    torch.testing.assert_close(s.residual, torch.ones(2, 4))


def test_unit_neighbours_are_the_nearest_other_units():
    from invemb.inversion.train import unit_neighbours

    units = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8], [-1.0, 0.0]])
    got = unit_neighbours(units, [0, 2], 2, chunk=1)
    assert got[0].tolist() == [1, 3] and got[2].tolist() == [3, 1]  # itself left out, best first
    assert (got[[1, 3, 4]] == -1).all()  # units not asked for


def test_paired_difference_intervals():
    refs = [f"the cat number {i} sat on the mat" for i in range(40)]
    same = [{"text": t, "reconstruction": t} for t in refs]
    half = [{"text": t, "reconstruction": " ".join(t.split()[:4])} for t in refs]  # precision 100, recall 50
    res = metrics.paired_difference(same, half, resamples=200)
    assert res["token_recall"]["difference"] == pytest.approx(50.0)
    assert res["token_precision"]["difference"] == pytest.approx(0.0)
    assert res["token_f1"]["value"] == pytest.approx(100.0) and res["token_f1"]["reference"] == pytest.approx(100 * 2 / 3)
    assert res["bleu"]["difference"] > 0 and res["bleu"]["low"] <= res["bleu"]["difference"] <= res["bleu"]["high"]
    # A spread of per-sentence gains: the interval brackets the mean and excludes 0 here.
    mixed = [{"text": t, "reconstruction": t if i % 4 else " ".join(t.split()[:4])} for i, t in enumerate(refs)]
    f1 = metrics.paired_difference(mixed, half, resamples=500)["token_f1"]
    assert 0 < f1["low"] < f1["difference"] < f1["high"]
    with pytest.raises(ValueError, match="same sentences"):
        metrics.paired_difference(same[:3], half[1:4])


def test_wordnet_eval_sentences_leave_out_glosses_even_when_a_gloss_was_dropped(tmp_path):
    """The gloss is the synset's part 0; where it was too short (or a duplicate) the first row left is an
    example, which the old rule (skip each synset's first row) threw away."""
    import json

    from invemb.inversion.harness import eval_sentences

    rows = [{"text": "a bank", "source": "wordnet", "doc": "wordnet:a.n.01", "split": "test", "part": 1},
            {"text": "the gloss of b that is long enough", "source": "wordnet", "doc": "wordnet:b.n.01", "split": "test", "part": 0},
            {"text": "an example sentence of b here", "source": "wordnet", "doc": "wordnet:b.n.01", "split": "test", "part": 1},
            {"text": "she sat by the river bank today", "source": "wordnet", "doc": "wordnet:c.n.01", "split": "test", "part": 2}]
    (tmp_path / "sentences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "manifest.json").write_text("{}")
    got = eval_sentences(tmp_path, "wordnet", 10, min_words=2)
    assert sorted(got) == ["a bank", "an example sentence of b here", "she sat by the river bank today"]
