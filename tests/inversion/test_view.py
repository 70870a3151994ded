"""Inverting an order-bound view's vectors (invemb.em.order_bind): the policy reads their EM part, beam
decoding scores children with their bound part too."""

import pytest
import torch
import torch.nn.functional as F

from invemb.em.order_bind import OrderBindConfig, OrderBoundEncoder
from invemb.inversion.controller import Controller
from invemb.inversion.decode import Action, BoundTargets, CountingEncoder, DecodeConfig, Proposal, beam_decode
from toy import BagEncoder, toy_sentences

WORDS = ["the", "dog", "chased", "cat"]


class SumEncoder:
    """Order-blind: a text is the normalised sum of its words' vectors, so "the dog chased the cat" and "the cat
    chased the dog" are one vector."""

    def __init__(self):
        self.dim, self.bag = 32, BagEncoder(dim=32)

    def encode(self, texts, batch_size: int = 64) -> torch.Tensor:
        from invemb.text.vocab import tokenize

        return F.normalize(torch.stack([sum(self.bag._word(w) for w in tokenize(t)) for t in texts]), dim=1)


class AnyUnitAnywhere:
    """Proposes every unit at every slot, all equally likely: the encoder's cosine alone chooses."""

    def propose(self, targets, hyps, cfg, bound=None):
        return [Proposal([Action(u, slot, 0.0) for u in range(len(WORDS)) for slot in range(len(h.units) + 1)],
                         stop_prob=0.0) for h in hyps]


def decode(view: OrderBoundEncoder, text: str, bound: bool) -> str:
    cfg = DecodeConfig(beam=6, expand=40, patience=0, max_words=5, max_steps=5, lm_weight=0, length_weight=0,
                       model_weight=0, repeat_penalty=0, view_weight=0.7)
    main, parts = view.split(view.encode([text]))
    extra = BoundTargets(parts, view.bound_texts, view.cfg.share) if bound else None
    return beam_decode(main[0], AnyUnitAnywhere(), CountingEncoder(view.em), WORDS, cfg, bound=extra).text


@pytest.mark.parametrize("binding,codes", [("positions", "em"), ("positions", "identity"), ("pairs", "em")])
def test_the_bound_part_decodes_the_order_an_order_blind_encoder_cannot_see(binding, codes):
    em = SumEncoder()
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=256, max_positions=8, binding=binding, codes=codes),
                                   unit_vectors=em.encode(WORDS), word_counts={w.lower(): 5 + i for i, w in enumerate(WORDS)})
    texts = ["The dog chased the cat", "The cat chased the dog"]
    assert torch.allclose(*em.encode(texts), atol=1e-6)
    plain = [decode(view, t, bound=False) for t in texts]
    # the EM part alone finds the words, and cannot get both orders right: the two targets are one vector
    assert all(sorted(p.lower().split()) == sorted(t.lower().split()) for p, t in zip(plain, texts))
    assert sum(p == t for p, t in zip(plain, texts)) <= 1
    assert [decode(view, t, bound=True) for t in texts] == texts


def test_pair_binding_matches_a_hand_computation():
    em = SumEncoder()
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=16, max_positions=4, binding="pairs"),
                                   unit_vectors=em.encode(WORDS))
    v = (em.encode(["the", "dog", "chased"]) - view.center) @ view.projection  # (3, 16)
    first = lambda x: x[view.perms[1]] * view.signs[1]  # noqa: E731 - the first word of a pair, bound
    want = F.normalize(first(v[0]) * v[1] + first(v[1]) * v[2], dim=0)
    got = view.bound_texts(["the dog chased", "dog"])
    assert torch.allclose(got[0], want, atol=1e-5) and torch.equal(got[1], torch.zeros(16))
    with pytest.raises(ValueError, match=r"binding='triples' \(positions or pairs\)"):
        OrderBindConfig(binding="triples")
    with pytest.raises(ValueError, match=r"expected \(2, 48\) order-bound vectors \(EM 32 \+ bound 16\), got shape \(2, 32\)"):
        view.split(torch.randn(2, 32))


def test_a_controller_given_a_view_inverts_its_vectors_and_reports_the_views_cosine(toy_run):
    run, encoder, _ = toy_run
    from safetensors.torch import load_file

    view = OrderBoundEncoder.build(encoder, OrderBindConfig(width=64, max_positions=16, binding="pairs"),
                                   load_file(str(run / "unit_vectors.safetensors"))["units"])
    ctrl = Controller.load(run, em=view)
    assert ctrl.dim == 32 + 64 and ctrl.target_encoder is view and ctrl.encoder.encoder is encoder
    assert ctrl.policy.pairs is not None and ctrl.policy.pairs.view is view  # words read off its pairs
    sentences = toy_sentences(4, seed=5, min_words=4)
    rows = ctrl.invert_texts(sentences)
    for row in rows:
        want = float(view.encode([row["reconstruction"]])[0] @ view.encode([row["text"]])[0])
        assert row["cosine"] == pytest.approx(want, abs=1e-4)  # the view's cosine, not the score's mix
        assert row["steps"][-1]["cosine"] == pytest.approx(row["cosine"], abs=1e-4)
    alone = ctrl.invert_vector(view.encode(sentences[:1])[0])
    assert alone.text == rows[0]["reconstruction"]
    # the EM's own vectors are not the view's
    with pytest.raises(ValueError, match=r"vector 0: target vector has shape \(32,\); this encoder needs \(96,\)"):
        ctrl.invert_vectors(encoder.encode(sentences))
    # view_weight 0 (scores by the EM part alone), no words read off the bound part, no polish: the plain decoding
    plain = Controller.load(run, em=encoder).invert_texts(sentences)
    zero = ctrl.invert_texts(sentences, ctrl.decode_cfg.replace(view_weight=0.0, view_neighbours=0, view_polish=0))
    assert [r["reconstruction"] for r in zero] == [r["reconstruction"] for r in plain]
    with pytest.raises(ValueError, match=r"view_weight=1.5 \(at most 1\)"):
        DecodeConfig(view_weight=1.5)


def test_unbinding_a_pair_bound_target_proposes_each_placed_words_neighbours():
    from invemb.inversion.decode import Hypothesis
    from invemb.inversion.view import PairNeighbours

    em = SumEncoder()
    units = WORDS + ["a", "red", "bird", "sat", "on", "mat", "big", "ran", "the red"]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=512, max_positions=8, binding="pairs"),
                                   unit_vectors=em.encode(units))
    pairs = PairNeighbours(view, units, em.encode(units))
    assert "the red" not in [units[u] for u in pairs.word_ids.tolist()]  # words are proposed, phrases are not
    bound = view.bound_texts(["the dog chased a red cat"])[0]
    found = pairs(bound, b"t", [("dog", True), ("red", True), ("chased", False), ("cat", False)], k=1)
    assert {q: units[v[0]] for q, v in found.items()} == {("dog", True): "chased", ("red", True): "cat",
                                                          ("chased", False): "dog", ("cat", False): "red"}
    # as actions: the follower after a placed unit, the one before it, each as likely as the best action
    hyp = Hypothesis([units.index("chased")])
    props = [Proposal([Action(units.index("bird"), 0, -0.5)])]
    pairs.actions([hyp], bound[None], props, k=1)
    assert [(units[a.unit], a.slot, a.logp) for a in props[0].actions] == [("bird", 0, -0.5), ("a", 1, -0.5), ("dog", 0, -0.5)]
    # between two units: the word whose pairs with both fit (at a text's end, with the one neighbour there)
    between = pairs.between(bound, [(units.index("dog"), units.index("a")), (units.index("a"), units.index("cat")),
                                    (None, units.index("dog")), (units.index("red"), None)], k=1)
    assert [units[v[0]] for v in between] == ["chased", "red", "the", "cat"]
    with pytest.raises(ValueError, match="binds positions with em codes"):
        PairNeighbours(OrderBoundEncoder.build(em, OrderBindConfig(width=64, codes="em"), unit_vectors=em.encode(units)),
                       units, em.encode(units))
    identity = OrderBoundEncoder.build(em, OrderBindConfig(width=64, binding="pairs", codes="identity"),
                                       word_counts={u: 1 for u in units})
    with pytest.raises(ValueError, match="binds pairs with identity codes"):
        PairNeighbours(identity, units, em.encode(units))


def test_the_harness_reports_every_method_in_the_views_space(toy_run):
    from safetensors.torch import load_file

    from invemb.inversion.harness import controller_methods, run_methods

    run, encoder, _ = toy_run
    view = OrderBoundEncoder.build(encoder, OrderBindConfig(width=64, max_positions=16, binding="pairs"),
                                   load_file(str(run / "unit_vectors.safetensors"))["units"])
    ctrl = Controller.load(run, em=view)
    sentences = toy_sentences(3, seed=7, min_words=4)
    res = run_methods(controller_methods(ctrl, ["controller", "bag"]), sentences, ctrl.target_encoder, progress=False)
    for method, out in res.items():
        for row in out["rows"]:
            want = float(view.encode([row["reconstruction"]])[0] @ view.encode([row["text"]])[0])
            assert row["cosine"] == pytest.approx(want, abs=1e-4), method
    assert res["controller"]["summary"].keys() == res["bag"]["summary"].keys()


class ScriptPolicy:
    """Proposes one fixed (unit, slot) action per step, then nothing: a search that inserts what it is told."""

    def __init__(self, script):
        self.script = script

    def propose(self, targets, hyps, cfg, bound=None):
        return [Proposal([Action(*self.script[len(h.units)], 0.0)] if len(h.units) < len(self.script) else [])
                for h in hyps]


def test_polishing_deletes_the_units_a_search_placed_around_the_text(monkeypatch):
    """Inserting only, a search that placed stray units first keeps them; polishing a view's inversion keeps the
    span the vector says is the text, names what it deleted and counts the encoder calls it spent. The EM's own
    vectors are not polished."""
    from invemb.inversion.decode import beam_decode_many

    em = BagEncoder()
    units = ["dog", "big cat", "sat", "on the mat", "today"]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=256, max_positions=16, binding="pairs"),
                                   unit_vectors=em.encode(units))
    main, parts = view.split(view.encode(["big cat sat on the mat"]))
    bound = BoundTargets(parts, view.bound_texts, view.cfg.share)
    script = [(0, 0), (4, 1), (1, 1), (2, 2), (3, 3)]  # dog, today, then big cat sat on the mat between them
    # the exact stop off: the rounds after the text is rebuilt are counted below
    cfg = dict(beam=1, patience=0, lm_weight=0, length_weight=0, view_polish=64, exact_cosine=2.0)

    def run(bound, **overrides):
        encoder = CountingEncoder(em)
        return beam_decode(main[0], ScriptPolicy(script), encoder, units, DecodeConfig(**{**cfg, **overrides}),
                           bound=bound)

    plain, as_is = run(bound, view_polish=0), run(None)
    assert plain.text == as_is.text == "Dog big cat sat on the mat today" and plain.encoder_calls == 5
    polished = run(bound)
    assert polished.text == "Big cat sat on the mat" and polished.cosine == pytest.approx(1.0, abs=1e-5)
    assert polished.steps[-1] == {"deleted": "dog today", "cosine": pytest.approx(1.0, abs=1e-4)}
    # round 1: of 5 units, 14 spans deleted (all but the whole) + 6 inner spans kept; round 2, of 3: 5 + 1, no gain
    assert polished.encoder_calls == 5 + 20 + 6
    # with the exact stop, no round 2: round 1 left the target's own text
    assert run(bound, exact_cosine=0.9999).encoder_calls == 5 + 20
    assert run(bound, view_polish=4).text == polished.text  # the bound part ranks the right cut among the first 4
    # one text encoded a round: of the 20 cuts only the 4 whose bound part comes nearest are ranked, the right one too
    from functools import partial

    from invemb.inversion import decode as decode_module
    from invemb.inversion.view import order_cosines

    built = []
    edited = decode_module._edited
    monkeypatch.setattr(decode_module, "_edited", lambda *a, **k: (built.append(a[3]), edited(*a, **k))[1])
    ranked = BoundTargets(parts, view.bound_texts, view.cfg.share, order_cosines=partial(order_cosines, view))
    one = run(ranked, view_polish=1)
    assert one.text == polished.text and one.encoder_calls == 5 + 1 + 1
    assert len(built) <= 4 + 4  # rounds of 5 and 3 units: 4 of their 20 and 6 cuts rendered each
    built.clear()
    assert run(bound, view_polish=1).text == polished.text and len(built) == 20 + 6  # no cheap cosines: all ranked
    done = []  # a progress bar's updates: each search counts once, when its polished text is final
    many = beam_decode_many(main.repeat(2, 1), ScriptPolicy(script), CountingEncoder(em), units, DecodeConfig(**cfg),
                            on_done=done.append, bound=BoundTargets(parts.repeat(2, 1), view.bound_texts, view.cfg.share))
    assert [r.text for r in many] == [polished.text] * 2 and sum(done) == 2
    with pytest.raises(ValueError, match=r"view_polish=-1 \(at least 0\), view_whole_words=-1 \(at least 0\)"):
        DecodeConfig(view_polish=-1, view_whole_words=-1)


def test_a_views_known_words_are_looked_up_not_encoded():
    """A controller hands its unit vectors to the view: candidate texts' words are looked up in them (the
    one-word units; the vectors given are the ones used), and only other words reach the encoder."""
    em = SumEncoder()
    encoded = []
    encode = em.encode
    em.encode = lambda texts, batch_size=64: (encoded.extend(texts), encode(texts))[1]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=64, max_positions=8, binding="pairs"),
                                   unit_vectors=torch.randn(4, 32))
    units = ["the", "dog", "the cat"]
    given = torch.randn(3, 32)
    view.know(units, given)
    got = view.word_vectors(["dog", "the", "zebra", "dog"])
    assert torch.allclose(got[0], (given[1] - view.center) @ view.projection, atol=1e-5)
    assert torch.allclose(got[1], (given[0] - view.center) @ view.projection, atol=1e-5)
    assert torch.equal(got[0], got[3]) and encoded == ["zebra"]  # "the cat" is no word: never looked up
    with pytest.raises(ValueError, match=r"expected \(3, 32\) vectors for 3 texts, got \(2, 32\)"):
        view.know(units, given[:2])


@pytest.mark.parametrize("script, edit, off", [
    ([(1, 0), (4, 1), (6, 1), (2, 1)], {"replaced": "in", "by": "on"}, "view_edits"),
    ([(1, 0), (4, 1), (2, 1)], {"inserted": "on", "slot": 2}, "view_edits"),
    ([(4, 0), (1, 1), (2, 2), (3, 3)], {"moved": "the mat", "slot": 3}, "view_moves")])
def test_polishing_a_pair_bound_inversion_replaces_inserts_and_moves(script, edit, off):
    """"big cat sat in the mat", "big cat sat the mat" (the mat placed before sat, so the search keeps it) and "the
    mat big cat sat on": the word the bound part puts between "sat" and "the mat" replaces the wrong one or fills the
    gap, and the span move the bound part ranks first puts "the mat" last; with that kind of edit off, the text
    stays wrong."""
    from functools import partial

    from invemb.inversion.view import PairNeighbours, best_moves, order_cosines

    em = BagEncoder()
    units = ["dog", "big cat", "sat", "on", "the mat", "today", "in"]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=512, max_positions=16, binding="pairs"),
                                   unit_vectors=em.encode(units))
    main, parts = view.split(view.encode(["big cat sat on the mat"]))
    bound = BoundTargets(parts, view.bound_texts, view.cfg.share,
                         between=PairNeighbours(view, units, em.encode(units)).between, moves=partial(best_moves, view),
                         order_cosines=partial(order_cosines, view))
    cfg = DecodeConfig(beam=1, patience=0, lm_weight=0, length_weight=0, view_polish=64, view_edits=1)
    res = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg, bound=bound)
    assert res.text == "Big cat sat on the mat" and res.cosine == pytest.approx(1.0, abs=1e-5)
    assert {k: v for k, v in res.steps[-1].items() if k != "cosine"} == edit
    plain = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg.replace(**{off: 0}), bound=bound)
    assert plain.text != res.text


def test_the_best_span_moves_are_ranked_by_the_exact_bound_cosine():
    """best_moves computes each move's bound part from junction terms alone: its ranking is the one binding
    every moved text gives, and the best move of "the mat big cat sat on" is the target's order."""
    from invemb.inversion.view import best_moves

    em = BagEncoder()
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=512, max_positions=16, binding="pairs"),
                                   unit_vectors=em.encode(["big", "cat", "sat", "on", "the", "mat"]))
    target = view.bound([["big", "cat", "sat", "on", "the", "mat"]])[0]
    texts = ["the mat", "big cat", "sat", "on"]
    moves = best_moves(view, target, texts, k=50)
    assert moves[0] == ([1, 2, 3, 0], (0, 1, 3))  # "the mat" taken out and put after what is left
    exact = [float(view.bound([[w for i in order for w in texts[i].split()]])[0] @ target) for order, _ in moves]
    assert exact[0] == pytest.approx(1.0, abs=1e-5) and exact == sorted(exact, reverse=True)
    assert len(moves) == len({tuple(o) for o, _ in moves}) == 10  # of 4 units: 10 distinct orders one move makes
    assert best_moves(view, target, ["big cat"], k=5) == []
    # any order of some of the units: cut, kept alone, moved; one word alone has no bound part
    from invemb.inversion.view import order_cosines

    orders = [[1, 2, 3], [1, 2], [0, 3, 1], [2], [1]]
    want = [float(view.bound([[w for i in o for w in texts[i].split()]])[0] @ target) for o in orders]
    assert order_cosines(view, target, texts, orders).tolist() == pytest.approx(want, abs=1e-5)


def test_order_cosines_of_any_orders_equal_binding_their_texts():
    """Orders of many runs (random subsets in random order, repeats, one unit, the buffer itself), mixed in one
    call with cuts and moves, each against binding the text it spells; and the runs an order is read as."""
    import random

    import numpy as np

    from invemb.inversion.view import _runs, order_cosines

    assert [a.tolist() for a in _runs([[0, 1, 2], [3, 0, 1], [2]], 4)] == [
        [[0, 0], [3, 0], [2, 0]], [[3, 0], [4, 2], [3, 0]], [[-1], [12], [-1]]]
    em = BagEncoder()
    texts = ["big cat", "sat", "on the", "mat", "today", "in the park", "dog"]
    words = [w for t in texts for w in t.split()]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=512, max_positions=32, binding="pairs"),
                                   unit_vectors=em.encode(words))
    target = view.bound([["the", "big", "dog", "sat", "on", "the", "mat", "in", "the", "park"]])[0]
    rng = random.Random(0)
    orders = [list(range(7)), [4], [1, 2], [0, 1, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [2, 2, 3, 2]]
    orders += [rng.sample(range(7), rng.randrange(1, 8)) for _ in range(40)]
    want = [float(view.bound([[w for i in o for w in texts[i].split()]])[0] @ target) for o in orders]
    got = order_cosines(view, target, texts, orders)
    assert isinstance(got, np.ndarray) and got.tolist() == pytest.approx(want, abs=1e-5)
    assert order_cosines(view, target, texts, []).shape == (0,)


def test_residual_polishing_reads_the_missing_pair_not_the_ones_in_place():
    """"the cat saw the cat and the": unbinding the last "the" off the whole target says "cat" (two of its three
    pairs with "the" are "the cat"), so with ``view_residual=0`` the only insertion tried at the end is a repeat and
    the text stays short; off what the text leaves unexplained (``view_residual=1``) it says "dog"."""
    from invemb.inversion.view import PairNeighbours

    em = BagEncoder()
    units = ["the", "cat", "saw", "dog", "and", "big", "ran", "sat"]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=256, max_positions=16, binding="pairs"),
                                   unit_vectors=em.encode(units))
    main, parts = view.split(view.encode(["the cat saw the cat and the dog"]))
    seen = []  # the bound parts the new words were read off
    neighbours = PairNeighbours(view, units, em.encode(units))
    bound = BoundTargets(parts, view.bound_texts, view.cfg.share,
                         between=lambda b, sides, k: (seen.append(b), neighbours.between(b, sides, k))[1])
    script = [(0, 0), (1, 1), (2, 2), (0, 3), (1, 4), (4, 5), (0, 6)]  # the cat saw the cat and the
    cfg = DecodeConfig(beam=1, patience=0, lm_weight=0, length_weight=0, view_polish=64, view_edits=1, view_moves=0,
                       view_residual=0.0, view_whole_words=0, view_chain=0)  # runs of words: their own test
    whole = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg, bound=bound)
    assert whole.text == "The cat saw the cat and the" and torch.equal(seen[0], parts[0])
    seen.clear()
    residual = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg.replace(view_residual=1.0),
                           bound=bound)
    assert residual.text == "The cat saw the cat and the dog" and residual.cosine == pytest.approx(1.0, abs=1e-5)
    assert {k: v for k, v in residual.steps[-1].items() if k != "cosine"} == {"inserted": "dog", "slot": 7}
    own = view.bound_texts(["the cat saw the cat and the"])[0]
    assert float(seen[0] @ own) == pytest.approx(0.0, abs=1e-5)  # nothing of the text's own pairs is left
    seen.clear()  # view_whole_words: the words read off the whole target are tried beside the residual's
    both = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units,
                       cfg.replace(view_residual=1.0, view_whole_words=1), bound=bound)
    assert both.text == residual.text and both.encoder_calls > residual.encoder_calls
    assert float(seen[0] @ own) == pytest.approx(0.0, abs=1e-5) and torch.equal(seen[1], parts[0])
    with pytest.raises(ValueError, match=r"view_residual=1.5 \(at most 1\)"):
        DecodeConfig(view_residual=1.5)


def test_edits_that_each_gain_are_combined_in_one_round():
    """"big cat sat the mat" short of "on" and "today": each insertion alone beats the text; in one round, combining
    makes both (one more text encoded, one step naming both), where one round without it makes one."""
    from invemb.inversion.decode import _combined
    from invemb.inversion.view import PairNeighbours

    em = BagEncoder()
    units = ["dog", "big cat", "sat", "on", "the mat", "today", "in"]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=512, max_positions=16, binding="pairs"),
                                   unit_vectors=em.encode(units))
    main, parts = view.split(view.encode(["big cat sat on the mat today"]))
    bound = BoundTargets(parts, view.bound_texts, view.cfg.share, between=PairNeighbours(view, units, em.encode(units)).between)
    script = [(1, 0), (4, 1), (2, 1)]  # big cat, the mat, then sat between them
    cfg = DecodeConfig(beam=1, patience=0, lm_weight=0, length_weight=0, view_polish=64, view_edits=1, view_moves=0,
                       view_polish_rounds=1, view_combine=False)
    one = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg, bound=bound)
    assert one.text in ("Big cat sat on the mat", "Big cat sat the mat today")
    both = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg.replace(view_combine=True), bound=bound)
    assert both.text == "Big cat sat on the mat today" and both.cosine == pytest.approx(1.0, abs=1e-5)
    assert both.encoder_calls == one.encoder_calls + 1
    assert sorted(both.steps[-1]["combined"], key=str) == [{"inserted": "on", "slot": 2}, {"inserted": "today", "slot": 3}]
    # changes sharing a unit or junction are not made together: the best one is
    assert _combined([10, 11, 12], [("insert", 1, 7), ("replace", 1, 8), ("delete", 2, 3), ("insert", 3, 9)]) == \
        ([10, 7, 11], [("insert", 1, 7), ("delete", 2, 3)])
    assert _combined([10, 11, 12], [("replace", 0, 7), ("insert", 3, 9)]) == ([7, 11, 12, 9], [("replace", 0, 7), ("insert", 3, 9)])
    assert _combined([10, 11], [("insert", 0, 7), ("insert", 2, 7)]) == ([7, 10, 11], [("insert", 0, 7)])  # a unit once


def test_chains_put_a_missing_run_of_words_in_one_round():
    """"big cat sat" short of "on the mat": a run of three words read off what the text leaves unexplained, forwards
    from "sat", goes in in one polishing round, where single words go in one a round."""
    from invemb.inversion.decode import _chains
    from invemb.inversion.view import PairNeighbours

    em = BagEncoder()
    units = ["dog", "big", "cat", "sat", "on", "the", "mat", "today", "in"]
    view = OrderBoundEncoder.build(em, OrderBindConfig(width=1024, max_positions=16, binding="pairs"),
                                   unit_vectors=em.encode(units))
    main, parts = view.split(view.encode(["big cat sat on the mat"]))
    bound = BoundTargets(parts, view.bound_texts, view.cfg.share, between=PairNeighbours(view, units, em.encode(units)).between)
    buffer = [1, 2, 3]  # big cat sat
    own = view.bound_texts(["big cat sat"])[0]
    residual = parts[0] - (own @ parts[0]) * own
    runs = {(step["inserted"], step["slot"]): kept for kept, step, order, change in _chains(buffer, residual, bound, units, 3)}
    assert runs[("on the", 3)] == [1, 2, 3, 4, 5] and runs[("on the mat", 3)] == [1, 2, 3, 4, 5, 6]
    assert all(len(kept) - len(buffer) in (2, 3) for kept in runs.values())  # one word alone is the between edits'
    assert len(runs) == 2 * 3 + 2 * 3  # forwards into slots 1-3, backwards into slots 0-2; runs of 2 and 3
    script = [(1, 0), (2, 1), (3, 2)]
    cfg = DecodeConfig(beam=1, patience=0, lm_weight=0, length_weight=0, view_polish=64, view_edits=1, view_moves=0,
                       view_polish_rounds=1, view_combine=False, view_whole_words=0, view_chain=0)
    single = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg, bound=bound)
    assert single.text == "Big cat sat on"  # one word a round
    chained = beam_decode(main[0], ScriptPolicy(script), CountingEncoder(em), units, cfg.replace(view_chain=3), bound=bound)
    assert chained.text == "Big cat sat on the mat" and chained.cosine == pytest.approx(1.0, abs=1e-5)
    assert {k: v for k, v in chained.steps[-1].items() if k != "cosine"} == {"inserted": "on the mat", "slot": 3}
    with pytest.raises(ValueError, match=r"view_chain=-1 \(at least 0\)"):
        DecodeConfig(view_chain=-1)
