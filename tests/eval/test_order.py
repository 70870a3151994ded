import dataclasses
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
    # "It is what it is." has no content words; in "The cats chased the dogs." every content word
    # is inflected, so no synonym's base form fits
    assert [p.sentence for p in probes] == ["The big dog chased the cat.", "A quick dog runs home."]
    assert probes == make_order_probes(SENTENCES, seed=3, wn=fake_wn)
    # per-sentence seeding: the list's order does not change a sentence's probe
    assert make_order_probes(SENTENCES[::-1], seed=3, wn=fake_wn)[::-1] == probes
    for p in probes:
        a, b = p.swap
        assert a.lower() != b.lower() and words(p.swapped) == words(p.sentence) and p.swapped != p.sentence
        assert words(p.shuffled) == words(p.sentence)
        old, new = p.substitution
        assert p.synonym == p.sentence.replace(old, new, 1)
    # two nouns are swapped where a sentence has them, not a noun and an adjective
    assert probes[0].swap == ("dog", "cat") and probes[0].swapped == "The big cat chased the dog."



def test_extra_swaps_are_other_pairs_and_leave_the_first_probe_unchanged(fake_wn):
    plain = make_order_probes(SENTENCES, seed=3, wn=fake_wn)
    more = make_order_probes(SENTENCES, seed=3, wn=fake_wn, extra_swaps=5)
    assert [dataclasses.replace(p, more_swaps=()) for p in more] == plain
    assert all(p.more_swaps == () for p in plain)
    # "The big dog chased the cat.": content words big, dog, chased, cat -> 6 pairs, 5 besides the first
    first = more[0]
    assert len(first.more_swaps) == 5 and len(set(first.more_swaps)) == 5
    assert first.swapped not in first.more_swaps and first.sentence not in first.more_swaps
    for text in first.more_swaps:  # each swaps exactly two words, keeping the bag of words
        assert words(text) == words(first.sentence)
        assert sum(x != y for x, y in zip(text.split(), first.sentence.split())) == 2
    assert len(make_order_probes(SENTENCES, seed=3, wn=fake_wn, extra_swaps=2)[0].more_swaps) == 2

def test_synonym_is_most_frequent_common_word_of_the_same_part_of_speech(fake_wn):
    subs = {p.substitution for p in make_order_probes(["The big man.", "A quick man."], seed=0, wn=fake_wn)}
    assert subs == {("big", "large"), ("quick", "fast")}
    # "large" (big's synonym) is already in the sentence: only "dog" -> "hound" is left
    assert make_order_probes(["The big dog saw a large cat."], seed=0, wn=fake_wn)[0].substitution == ("dog", "hound")
    # "home" as an adverb takes the adverb sense's synonym, which is rarer than min_zipf allows
    assert make_order_probes(["The big man went home."], seed=0, wn=fake_wn)[0].substitution == ("big", "large")
    assert make_order_probes(["The big man went home."], seed=0, wn=fake_wn, min_zipf=0.0)[0].substitution in {
        ("big", "large"), ("home", "homeward")}
    # inflected forms ("cats", "chased") are never replaced by a base form; "true_cat" is multi-word
    assert make_order_probes(["The cats chased the cat."], seed=0, wn=fake_wn) == []


def test_bag_of_words_encoder_never_discriminates_order(fake_wn):
    ev = OrderEvaluator(SENTENCES, wn=fake_wn)
    out = ev(BagOfWordsEncoder())
    assert ev.primary_metric in out
    assert out["order_discrimination"] == 0.0
    assert out["cos_swap_mean"] == pytest.approx(1.0, abs=1e-5)
    assert out["cos_shuffle_mean"] == pytest.approx(1.0, abs=1e-5)
    assert out["cos_substituted_mean"] < 0.99
    assert out["n_probes"] == 2 and out["n_skipped"] == 2


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
