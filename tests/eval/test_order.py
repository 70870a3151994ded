import re

import pytest

from invemb.encoder import EncoderOutputError
from invemb.eval.order import OrderEvaluator, make_order_probes
from tests.eval.conftest import BagOfWordsEncoder, BrokenEncoder

SENTENCES = ["The big dog chased the cat.", "It is what it is.", "A quick dog runs home.", "The cats chased the dogs."]


def words(text):
    return sorted(re.findall(r"[A-Za-z]+", text))


def test_probes_are_deterministic_and_skip_unusable_sentences(fake_wn):
    probes = make_order_probes(SENTENCES, seed=3, wn=fake_wn)
    assert [p.sentence for p in probes] == ["The big dog chased the cat.", "A quick dog runs home.", "The cats chased the dogs."]
    assert probes == make_order_probes(SENTENCES, seed=3, wn=fake_wn)
    # per-sentence seeding: the list's order does not change a sentence's probe
    assert make_order_probes(SENTENCES[::-1], seed=3, wn=fake_wn)[::-1] == probes
    for p in probes:
        a, b = p.swap
        assert a.lower() != b.lower() and words(p.swapped) == words(p.sentence) and p.swapped != p.sentence
        assert words(p.shuffled) == words(p.sentence)
        old, new = p.substitution
        assert p.synonym == p.sentence.replace(old, new, 1)


def test_synonym_is_most_frequent_single_word_not_in_sentence(fake_wn):
    by_sentence = {p.sentence: p for p in make_order_probes(SENTENCES, seed=0, wn=fake_wn)}
    subs = {p.substitution for p in make_order_probes(["The big man.", "A quick man."], seed=0, wn=fake_wn)}
    assert subs == {("big", "large"), ("quick", "fast")}
    # "chased" -> "dog" would be the most frequent, but "dog" (a form of "dogs") is already there
    assert by_sentence["The cats chased the dogs."].substitution == ("dogs", "hound")
    assert by_sentence["The big dog chased the cat."].substitution in {("big", "large"), ("dog", "hound")}
    # "cats" -> "cat" is the word's own base form, never a synonym; "true_cat" is multi-word
    assert make_order_probes(["The cats slept here."], seed=0, wn=fake_wn) == []


def test_bag_of_words_encoder_never_discriminates_order(fake_wn):
    ev = OrderEvaluator(SENTENCES, wn=fake_wn)
    out = ev(BagOfWordsEncoder())
    assert ev.primary_metric in out
    assert out["order_discrimination"] == 0.0
    assert out["cos_swap_mean"] == pytest.approx(1.0, abs=1e-5)
    assert out["cos_shuffle_mean"] == pytest.approx(1.0, abs=1e-5)
    assert out["cos_substituted_mean"] < 0.99
    assert out["n_probes"] == 3 and out["n_skipped"] == 1


def test_synonym_invariant_encoder_discriminates_every_sentence(fake_wn):
    from tests.conftest import FakeEncoder

    probes = make_order_probes(SENTENCES, seed=0, wn=fake_wn)
    enc = FakeEncoder(dim=32, groups={p.synonym: p.sentence for p in probes})
    out = OrderEvaluator(SENTENCES, wn=fake_wn)(enc)
    assert out["order_discrimination"] == 1.0
    assert out["cos_substituted_mean"] == pytest.approx(1.0, abs=1e-6)
    assert out["synonym_minus_swap_mean"] > 0.5


@pytest.mark.parametrize("mode", ["nan", "dim"])
def test_bad_encoder_output_fails_loudly_naming_encoder_and_task(fake_wn, mode):
    with pytest.raises(EncoderOutputError, match=f"broken-{mode} on order"):
        OrderEvaluator(SENTENCES, wn=fake_wn)(BrokenEncoder(mode))


@pytest.mark.slow
def test_real_wordnet_probes():
    probes = make_order_probes(["The big dog chased the small cat across the garden."], seed=0)
    assert len(probes) == 1 and probes[0].substitution[1] not in probes[0].sentence.lower().split()
