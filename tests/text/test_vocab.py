import pytest

from invemb.text.vocab import Vocab, VocabConfig, build_vocab, category, detokenize, tokenize


@pytest.mark.parametrize("text, tokens", [
    ("I don't know", ["I", "do", "n't", "know"]),
    ("We can't stop", ["We", "ca", "n't", "stop"]),
    ("It won't rain", ["It", "wo", "n't", "rain"]),
    ("it's John's and we'll go", ["it", "'s", "John", "'s", "and", "we", "'ll", "go"]),
    ("paid 1,234.5 dollars", ["paid", "1,234.5", "dollars"]),
    ("the 3rd place in the mid-1990s", ["the", "3rd", "place", "in", "the", "mid-1990s"]),
    ("well @-@ known and 1 @,@ 000 or 3 @.@ 5", ["well-known", "and", "1,000", "or", "3.5"]),
    ("the U.S. said so.", ["the", "U.S.", "said", "so", "."]),
    # upper-case contractions split like lower-case ones, the host keeps its case
    ("DON'T PANIC, I'M OK", ["DO", "n't", "PANIC", ",", "I", "'m", "OK"]),
    ("Can't", ["Ca", "n't"]),
    # all-caps "CA" / "WO" would be acronyms (California), not the host of "n't"
    ("You CAN'T, WON'T", ["You", "ca", "n't", ",", "wo", "n't"]),
    # a number with separators stays whole with what is joined to it, as "10-year-old" does
    ("a 2,000-year-old 3.5-inch disk, the 1,000th", ["a", "2,000-year-old", "3.5-inch", "disk", ",", "the", "1,000th"]),
    ("10-year-old and 1,234.5.", ["10-year-old", "and", "1,234.5", "."]),
])
def test_tokenize_research_rules(text, tokens):
    assert tokenize(text) == tokens


@pytest.mark.parametrize("token, cat", [
    ("bank", "word"), ("well-known", "word"), ("n't", "word"), ("'ll", "word"),
    ("NATO", "acronym"), ("U.S.", "acronym"), ("Paris", "entity"),
    ("1,234.5", "number"), ("42", "number"), ("3rd", "numeric"), ("mid-1990s", "numeric"), (",", "other"),
    ("A", "entity"), ("2,000-year-old", "numeric"),
])
def test_category(token, cat):
    assert category(token) == cat


def test_detokenize_round_trip():
    s = "I don't think we can't go, it's 1,234.5 dollars in the mid-1990s."
    assert detokenize(tokenize(s)) == s
    assert detokenize(tokenize("DON'T PANIC, WE'LL cope")) == "DON'T PANIC, WE'LL cope"


def test_a_pronoun_i_is_the_word_and_never_ends_a_name():
    sents = ["Maybe I will go home.", "Mary and I went to Paris.", "Yesterday John and I met.", "I think so, Mary."] * 2
    v = build_vocab(sents, VocabConfig.preset("tiny"))
    entities = {u for u, c in zip(v.units, v.categories) if c == "entity"}
    assert v.counts[v.id("i")] == 8 and "I" not in v
    assert not any(e.split()[-1] in ("I", "and") for e in entities), entities  # no "Maybe I", "Mary and I"


def test_build_vocab_categories_counts_and_entities():
    sents = ["The United States is big.", "The Prime Minister of the United States said it is not good.",
             "It is not good at all, said the Prime Minister of Canada in 1990.", "NATO met in 1990 for the 3rd time.",
             "NATO did n't meet in the mid-1990s .", "It is not good ."]
    cfg = VocabConfig.preset("tiny")
    v = build_vocab(sents, cfg)
    cats = dict(zip(v.units, v.categories))
    assert cats["United States"] == "entity" and cats["Prime Minister"] == "entity"
    assert cats["not good"] == "ngram" and cats["is not good"] == "ngram"
    assert cats["NATO"] == "acronym" and cats["1990"] == "number" and cats["3rd"] == "numeric"
    assert cats["the"] == "word" and "The" not in cats  # sentence-initial capital is the word
    assert v.counts[v.id("not good")] == 3
    assert cats["n't"] == "word"
    v = build_vocab(["A dog barked at them.", "A cat sat here.", "Malcolm X spoke.", "I said a word."], cfg)
    assert v.counts[v.id("a")] == 3 and "A" not in v  # a sentence-initial "A" is the word, like "The"
    assert v.categories[v.id("Malcolm X")] == "entity" and "i" in v
    with pytest.raises(ValueError, match="no units"):
        build_vocab([], cfg)


def test_min_count_and_max_size_per_category(tmp_path):
    sents = ["alpha beta gamma"] * 3 + ["delta epsilon"]
    cfg = VocabConfig.preset("tiny").replace(min_count={"word": 2, "ngram": 3}, max_size={"word": 2, "ngram": 1})
    v = build_vocab(sents, cfg)
    words = [u for u, c in zip(v.units, v.categories) if c == "word"]
    assert words == ["alpha", "beta"]  # count 3 beats count 1; capped at 2
    assert [u for u, c in zip(v.units, v.categories) if c == "ngram"] == ["alpha beta"]
    v.save(tmp_path / "v.json")
    back = Vocab.load(tmp_path / "v.json")
    assert back.units == v.units and back.counts == v.counts and back.fingerprint() == v.fingerprint()


def test_tokenize_is_cached_but_each_caller_gets_its_own_list():
    first = tokenize("They can't stay.")
    assert first == ["They", "ca", "n't", "stay", "."]
    first.append("changed")
    assert tokenize("They can't stay.") == ["They", "ca", "n't", "stay", "."]
