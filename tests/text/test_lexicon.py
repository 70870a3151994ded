import pytest

from invemb.text.lexicon import Lexicon, LexiconConfig, build_lexicon, heldout
from invemb.text.vocab import Vocab


@pytest.fixture(scope="module")
def lexicon():
    units = ["good", "bad", "evil", "happy", "glad", "unhappy", "big", "large", "small", "little", "prime minister",
             "premier", "banks", "bank", "rely", "hot", "cold", "spicy"]
    v = Vocab(units, ["ngram" if " " in u else "word" for u in units], [1] * len(units))
    return build_lexicon(v, LexiconConfig())


def test_synonyms_antonyms_symmetric_and_multiword(lexicon):
    assert "glad" in lexicon.synonyms["happy"] and "happy" in lexicon.synonyms["glad"]
    assert "unhappy" in lexicon.antonyms["happy"] and "happy" in lexicon.antonyms["unhappy"]
    assert "premier" in lexicon.synonyms["prime minister"]  # matched through prime_minister
    assert "cold" in lexicon.antonyms["hot"]
    assert "banks" not in lexicon.synonyms.get("bank", [])  # an inflection is not a synonym
    for a, bs in lexicon.synonyms.items():
        for b in bs:
            assert a in lexicon.synonyms[b]


def test_crowded_units_dropped():
    units = ["good", "bad", "well", "full", "near", "dear", "just", "right", "safe", "sound", "ripe", "beneficial",
             "effective", "adept", "expert", "practiced", "proficient", "skillful", "honorable", "respectable",
             "commodity", "goodness", "estimable", "serious", "undecomposed", "unspoiled", "in effect", "in force",
             "salutary", "thoroughly", "soundly", "dependable", "upright", "trade good", "secure", "honest"]
    v = Vocab(units, ["ngram" if " " in u else "word" for u in units], [1] * len(units))
    lex = build_lexicon(v, LexiconConfig(max_synonyms=3))
    assert "good" not in lex.synonyms and all(len(s) <= 3 for s in lex.synonyms.values())
    assert "bad" in lex.antonyms["good"]  # dropped from the synonym table only


def test_a_pair_that_is_both_is_an_antonym_pair_only():
    units = ["father", "mother", "king", "queen", "male parent", "begetter"]
    v = Vocab(units, ["ngram" if " " in u else "word" for u in units], [1] * len(units))
    lex = build_lexicon(v)
    assert "mother" in lex.antonyms["father"] and "queen" in lex.antonyms["king"]
    both = [(a, b) for a, bs in lex.synonyms.items() for b in bs if b in lex.antonyms.get(a, [])]
    assert both == []


def test_pairs_split_and_round_trip(lexicon, tmp_path):
    train, dev = lexicon.pairs("synonym", "train"), lexicon.pairs("synonym", "dev")
    assert not set(train) & set(dev)
    assert all(heldout(a, b) for a, b in dev) and not any(heldout(a, b) for a, b in train)
    assert heldout("a", "b") == heldout("b", "a")
    lexicon.save(tmp_path / "lex.json")
    assert Lexicon.load(tmp_path / "lex.json").synonyms == lexicon.synonyms


def test_a_wordnet_copy_killed_halfway_is_rebuilt_whole(tmp_path, monkeypatch):
    from pathlib import Path

    from invemb.text.sources import ensure_wordnet

    if not Path("/usr/share/wordnet/data.noun").exists():
        pytest.fail("WordNet (wordnet-base) is not installed: run `make data`")
    monkeypatch.setenv("INVEMB_DATA", str(tmp_path))
    monkeypatch.delenv("NLTK_DATA", raising=False)
    import nltk

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))  # the test's folder leaves no trace there
    broken = tmp_path / "nltk_data" / "corpora" / "wordnet"
    broken.mkdir(parents=True)
    (broken / "data.noun").write_text("")  # what a kill after the first file used to leave
    ensure_wordnet()
    names = {p.name for p in broken.iterdir()}
    assert {"data.noun", "lexnames", "index.sense"} <= names and (broken / "data.noun").stat().st_size > 1_000_000
    assert not [p for p in broken.parent.iterdir() if p.name.startswith(".wordnet.")]  # no temporary folder left
