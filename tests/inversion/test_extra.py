"""Extra units: words added to a trained controller's vocabulary (invemb index words)."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from invemb.index import IndexConfig, JoinedIndex, UnitIndex
from invemb.inversion.controller import Controller
from invemb.inversion.extra import ExtraUnitsConfig, add_extra_units, new_words
from invemb.text.vocab import Vocab
from toy import toy_vocab


def test_a_joined_index_finds_what_one_flat_index_over_both_finds():
    g = torch.Generator().manual_seed(0)
    vectors = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    units = [f"u{i}" for i in range(300)]
    one = UnitIndex.build(vectors, units, IndexConfig(kind="flat"))
    joined = JoinedIndex(UnitIndex.build(vectors[:200], units[:200], IndexConfig(kind="flat")),
                         UnitIndex.build(vectors[200:], units[200:], IndexConfig(kind="flat")))
    queries = torch.randn(7, 16, generator=g)
    want_scores, want_ids = one.search(queries, 12)
    scores, ids = joined.search(queries, 12)
    assert (ids == want_ids).all() and np.allclose(scores, want_scores, atol=1e-6)
    assert joined.units == units and joined.neighbours(queries[:1], 3) == one.neighbours(queries[:1], 3)
    assert any(i >= 200 for i in ids.ravel())  # the second index's ids come after the first's
    # more asked than the second holds: its empty places never outrank a found unit
    small = JoinedIndex(UnitIndex.build(vectors[:200], units[:200], IndexConfig(kind="flat")),
                        UnitIndex.build(vectors[200:203], units[200:203], IndexConfig(kind="flat")))
    scores, ids = small.search(queries, 150)
    assert (ids >= 0).all() and len(set(ids[0].tolist())) == 150
    with pytest.raises(ValueError, match="cannot join indexes of dimension 16 and 8"):
        JoinedIndex(one, UnitIndex.build(torch.randn(4, 8), units[:4], IndexConfig(kind="flat")))


def test_new_words_are_single_tokens_the_vocabulary_lacks_up_to_case_and_accents():
    vocab = Vocab(["the", "Paris", "New York", "café", "."], ["word", "entity", "entity", "word", "other"], [9, 5, 3, 2, 9])
    words = ["The", "paris", "zebra", "Zebra", "cafe", "new york", "it's", "--", "Neckar", "1999", "zebra"]
    assert new_words(vocab, words) == ["zebra", "Neckar", "1999"]


def test_the_pair_reader_finds_an_extra_word_as_the_exhaustive_scan_does():
    from invemb.em.order_bind import OrderBindConfig, OrderBoundEncoder
    from invemb.inversion.view import PairNeighbours
    from test_view import WORDS, SumEncoder

    em = SumEncoder()
    units = WORDS + ["a", "red", "bird", "sat", "on", "mat", "big", "ran"]
    vectors = em.encode(units)
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=512, max_positions=8, binding="pairs"), unit_vectors=vectors)
    trained = [u for u in units if u not in ("chased", "cat")]
    order = trained + ["chased", "cat"]  # the last two added after training
    ordered = em.encode(order)
    extra = UnitIndex.build(ordered[len(trained):], order[len(trained):], IndexConfig(kind="flat"))
    split = PairNeighbours(view, order, ordered, extra=(len(trained), extra))
    whole = PairNeighbours(view, order, ordered)
    assert len(split.word_ids) == len(trained)  # the extra words are scored through their index
    bound = view.bound_texts(["the dog chased a red cat"])[0]
    asked = [("dog", True), ("red", True), ("chased", False), ("cat", False)]
    found = split(bound, b"t", asked, k=2)
    assert found == whole(bound, b"t", asked, k=2)
    assert {q: order[v[0]] for q, v in found.items()} == {("dog", True): "chased", ("red", True): "cat",
                                                          ("chased", False): "dog", ("cat", False): "red"}
    sides = [(order.index("dog"), order.index("a")), (order.index("red"), None)]
    assert split.between(bound, sides, k=1) == whole.between(bound, sides, k=1)
    assert [order[v[0]] for v in split.between(bound, sides, k=1)] == ["chased", "cat"]


def _with_extra(toy_run, tmp_path, words):
    run, encoder, _ = toy_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    cfg = ExtraUnitsConfig(source=str(tmp_path / "words.txt"), numbers=-1, index=IndexConfig(kind="flat"))
    return copy, encoder, add_extra_units(copy, cfg, encoder=encoder, progress=False)


def test_added_words_join_the_controllers_vocabulary_and_its_decoding_places_them(toy_run, tmp_path):
    copy, encoder, out = _with_extra(toy_run, tmp_path, ["zebra", "Cat", "ran", "walrus"])
    assert out["extra_units"] == 2 and out["vocabulary"] == len(toy_vocab())  # "Cat" and "ran" are units already
    ctrl = Controller.load(copy, em=encoder)
    assert ctrl.vocab.units[len(toy_vocab()):] == ["zebra", "walrus"] and ctrl.trained_units == len(toy_vocab())
    assert ctrl.unit_vectors.shape == (len(toy_vocab()) + 2, encoder.dim)
    assert torch.allclose(ctrl.unit_vectors[-2:], encoder.encode(["zebra", "walrus"]), atol=1e-6)
    plain = Controller.load(copy, em=encoder, extra_units=False)
    assert len(plain.vocab) == len(toy_vocab()) and plain.identity != ctrl.identity  # resumed outputs never mix
    # a word the controller never saw in training is placed once it is in the index
    text = "The big zebra sat on the mat."
    assert "zebra" in ctrl.invert_texts([text])[0]["reconstruction"].lower()
    assert "zebra" not in plain.invert_texts([text])[0]["reconstruction"].lower()
    # the sentence memory and the bag of units vote over the grown vocabulary (0 for the extra units)
    votes = ctrl.sentence_memory.votes(encoder.encode([text]), 4, 0.1)
    assert votes.shape == (1, len(ctrl.vocab)) and (votes[:, -2:] == 0).all()


def test_extra_units_of_another_vocabulary_or_encoder_or_a_lossy_index_are_refused(toy_run, tmp_path):
    copy, encoder, _ = _with_extra(toy_run, tmp_path, ["zebra"])
    meta = json.loads((copy / "extra_units" / "index.json").read_text())
    (copy / "extra_units" / "index.json").write_text(json.dumps({**meta, "vocab_fingerprint": "0" * 16}))
    with pytest.raises(ValueError, match="added to another vocabulary or encoder.*invemb index words --controller"):
        Controller.load(copy, em=encoder)
    assert len(Controller.load(copy, em=encoder, extra_units=False).vocab) == len(toy_vocab())
    with pytest.raises(ValueError, match="every word is in the vocabulary"):
        _with_extra(toy_run, tmp_path / "again", ["cat", "The"])
    with pytest.raises(FileNotFoundError, match="no word list"):
        add_extra_units(copy, ExtraUnitsConfig(source=str(tmp_path / "missing.txt")), encoder=encoder, progress=False)
    with pytest.raises(ValueError, match="top must be at least 1"):
        ExtraUnitsConfig(top=0)
    with pytest.raises(ValueError, match="keeps their exact vectors, flat or hnsw"):
        ExtraUnitsConfig(index=IndexConfig(kind="ivfpq"))


def test_a_widened_memory_and_bag_vote_as_before_and_give_added_units_nothing():
    from invemb.inversion.bag import BagConfig, UnitBag
    from invemb.inversion.memory import SentenceMemory

    g = torch.Generator().manual_seed(0)
    vectors = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    memory = SentenceMemory.from_lists(vectors, [[0, 1], [2], [1, 3], [4], [0, 4], [2, 3]], 5)
    wide = memory.widened(8)
    targets = torch.randn(2, 8, generator=g)
    assert torch.equal(wide.votes(targets, 3, 0.1)[:, :5], memory.votes(targets, 3, 0.1))
    assert (wide.votes(targets, 3, 0.1)[:, 5:] == 0).all() and wide.base_rate.shape == (8,)
    bag = UnitBag(8, torch.tensor([0, 2, 4]), 5, BagConfig())
    wide_bag = bag.widened(8)
    assert wide_bag.n_units == 8 and bag.n_units == 5 and wide_bag.outputs is bag.outputs  # shared weights
    assert torch.equal(wide_bag.votes(targets, 3.0)[:, :5], bag.votes(targets, 3.0))
    assert wide_bag.votes(targets, 3.0).shape == (2, 8) and (wide_bag.votes(targets, 3.0)[:, 5:] == 0).all()
    with pytest.raises(ValueError, match="cannot narrow"):
        memory.widened(4)
    with pytest.raises(ValueError, match="cannot narrow"):
        bag.widened(4)
