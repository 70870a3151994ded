import pytest
import torch
import torch.nn.functional as F

from invemb.encoder import EncoderOutputError
from invemb.eval.relations import RelationEvaluator
from tests.conftest import FakeEncoder
from tests.eval.conftest import BrokenEncoder

PAIRS = {"synonym": [("big", "large"), ("fast", "quick"), ("car", "automobile"), ("happy", "glad")],
         "antonym": [("good", "bad"), ("hot", "cold")]}


class TableEncoder:
    """Fixed vectors per word (unit basis vectors), so every cosine is known."""

    def __init__(self, table):
        self.table, self.dim, self.name = table, 4, "table"

    def encode(self, texts, batch_size=64):
        return F.normalize(torch.tensor([self.table[t] for t in texts], dtype=torch.float32), dim=-1)

    def save(self, path):  # pragma: no cover
        raise NotImplementedError


def test_synonyms_sharing_a_vector_get_full_margin():
    enc = FakeEncoder(dim=64, groups={b: a for a, b in PAIRS["synonym"]})
    ev = RelationEvaluator(PAIRS)
    out = ev(enc)
    assert out[ev.primary_metric] == out["synonym_margin"]
    assert out["cos_synonym_mean"] == pytest.approx(1.0, abs=1e-6)
    assert out["synonym_beats_random"] == 1.0
    assert out["synonym_margin"] == pytest.approx(1.0 - out["cos_random_mean"])
    assert out["n_synonym_pairs"] == 4 and out["n_antonym_pairs"] == 2


def test_known_cosines():
    e = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    table = {"big": e[0], "large": e[0], "fast": e[1], "quick": e[1], "car": e[2], "automobile": e[2],
             "happy": e[3], "glad": e[3], "good": e[0], "bad": [-1, 0, 0, 0], "hot": e[1], "cold": e[1]}
    out = RelationEvaluator(PAIRS)(TableEncoder(table))
    # random pairs join different basis vectors: cos 0
    assert out["cos_random_mean"] == pytest.approx(0.0, abs=1e-6)
    assert out["synonym_margin"] == pytest.approx(1.0)
    assert out["cos_antonym_mean"] == pytest.approx(0.0)  # (-1 + 1) / 2
    assert out["synonym_minus_antonym"] == pytest.approx(1.0)


def test_bad_output_and_bad_input():
    with pytest.raises(EncoderOutputError, match="broken-nan on relations"):
        RelationEvaluator(PAIRS)(BrokenEncoder("nan"))
    with pytest.raises(ValueError, match="at least 2 synonym pairs"):
        RelationEvaluator({"synonym": [("a", "b")]})(FakeEncoder())
