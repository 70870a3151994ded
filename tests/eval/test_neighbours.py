import pytest

from invemb.eval.neighbours import NeighbourPurityEvaluator, WordNetRelations, wordnet_units
from tests.conftest import FakeEncoder

pytestmark = pytest.mark.slow  # real WordNet (about 5 s to load)

GROUPS = [["car", "automobile", "motorcar"], ["big", "large"], ["begin", "start", "commence"], ["happy", "glad"]]


@pytest.fixture(scope="module")
def wn():
    from invemb.text.sources import ensure_wordnet

    return ensure_wordnet()


def test_labels(wn):
    r = WordNetRelations(wn)
    assert r.label("bank", "banks") == "same_lemma"
    assert r.label("car", "automobile") == "synonym"
    assert r.label("good", "bad") == "antonym"
    assert r.label("dog", "canine") == "hypernym"
    assert r.label("dog", "poodle") == "hyponym"
    assert r.label("wheel", "car") == "other_related"  # wheel is part of a car (holonym)
    assert r.label("dog", "piano") == "unrelated"


def test_synonyms_sharing_a_vector_get_purity_one(wn):
    units = [u for g in GROUPS for u in g]
    enc = FakeEncoder(dim=32, groups={u: g[0] for g in GROUPS for u in g})
    ev = NeighbourPurityEvaluator(units=units, n_sample=100, k=1, wn=wn)
    out = ev(enc)
    assert out[ev.primary_metric] == 1.0 and out["share_synonym"] == 1.0 and out["antonym_intrusion"] == 0.0
    assert out["n_queries"] == len(units)


def test_random_encoder_is_mostly_unrelated(wn):
    units, categories = wordnet_units(300, wn)
    assert len(units) == 300 and units[0] == "be" and categories[0].startswith("verb.")
    out = NeighbourPurityEvaluator(units=units, n_sample=50, k=5, wn=wn)(FakeEncoder(dim=32))
    assert out["purity"] < 0.5 and out["share_unrelated"] > 0.5
    assert sum(out[k] for k in out if k.startswith("share_")) == pytest.approx(1.0)
