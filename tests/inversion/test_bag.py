import shutil

import pytest
import torch
import torch.nn.functional as F

from invemb.inversion.bag import BAG_FILES, BagConfig, UnitBag, fit_bag
from invemb.inversion.memory import SentenceMemory
from toy import toy_sentences


def planted_memory(n_sentences: int, n_units: int = 30, dim: int = 16, seed: int = 0):
    """Sentences of 3 distinct units whose vector is the sum of a hidden rotation of their units' vectors:
    a unit's own vector says little about the sentences holding it, so the nearest units miss them."""
    unit_vectors = F.normalize(torch.randn(n_units, dim, generator=torch.Generator().manual_seed(98)), dim=1)
    g = torch.Generator().manual_seed(seed)  # the sentences: the units and the rotation are the same for every seed
    rotation = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(99)))[0]
    units = [torch.randperm(n_units, generator=g)[:3].tolist() for _ in range(n_sentences)]
    vectors = F.normalize(torch.stack([(unit_vectors[u] @ rotation).sum(0) for u in units])
                          + 0.05 * torch.randn(n_sentences, dim, generator=g), dim=1)
    return SentenceMemory.from_lists(vectors, units, n_units), unit_vectors, units


def recall_at_3(scores: torch.Tensor, units: list[list[int]]) -> float:
    top = scores.topk(3, dim=1).indices.tolist()
    return sum(len(set(t) & set(u)) / 3 for t, u in zip(top, units)) / len(units)


def test_the_bag_learns_which_units_a_vector_holds_where_the_nearest_units_miss_them(tmp_path):
    memory, unit_vectors, _ = planted_memory(1200)
    cfg = BagConfig.preset("tiny").replace(hidden=64, epochs=40.0, batch_size=128)
    bag = fit_bag(memory, unit_vectors, cfg, progress=False)
    assert bag.stats["sentences"] == 1200 and bag.stats["outputs"] == 30 and bag.stats["dev_sentences"] == 24
    fresh, _, units = planted_memory(300, seed=1)
    votes = bag.votes(fresh.vectors, floor=15.0)  # (300, 30)
    assert votes.shape == (300, 30) and (votes >= 0).all()
    assert recall_at_3(votes, units) > 0.8
    assert recall_at_3(fresh.vectors @ unit_vectors.T, units) < 0.4  # what one dot product per unit finds
    # a vote is log p + floor, floored at 0
    logp = torch.log_softmax(bag(fresh.vectors), dim=1)
    assert torch.allclose(votes[:, bag.unit_ids], (logp + 15.0).clamp_min(0), atol=1e-5)
    assert torch.allclose(bag.votes(fresh.vectors * 3.0, 15.0), votes, atol=1e-5)  # the scale says nothing

    bag.save(tmp_path)
    back = UnitBag.load(tmp_path)
    assert torch.equal(back.votes(fresh.vectors, 15.0), votes) and back.stats == bag.stats and back.cfg == bag.cfg
    with pytest.raises(ValueError, match="dimension 16"):
        bag.votes(torch.randn(2, 8), 15.0)


def test_units_held_by_too_few_sentences_get_no_output_and_no_vote():
    g = torch.Generator().manual_seed(0)
    vectors = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    units = [[0, 1] if i % 2 else [0, 2] for i in range(39)] + [[3]]  # unit 3 once, unit 4 never
    memory = SentenceMemory.from_lists(vectors, units, 5)
    bag = fit_bag(memory, F.normalize(torch.randn(5, 8, generator=g), dim=1),
                  BagConfig.preset("tiny").replace(min_count=2, dev=0.0, epochs=30.0), progress=False)
    assert bag.unit_ids.tolist() == [0, 1, 2] and "dev_loss" not in bag.stats
    votes = bag.votes(vectors, floor=15.0)
    assert (votes[:, 3:] == 0).all()
    assert votes[:39, 0].mean() > votes[:39, 1:3].mean() + 0.5  # unit 0 in every one of them, 1 and 2 in half each
    # case twins: with a stand-in, unit 2's sentences count as unit 1's
    twin = fit_bag(memory, F.normalize(torch.randn(5, 8, generator=g), dim=1),
                   BagConfig.preset("tiny").replace(min_count=2, dev=0.0), stand_in=torch.tensor([0, 1, 1, 3, 4]),
                   progress=False)
    assert twin.unit_ids.tolist() == [0, 1]


def test_bad_bag_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r"bag.hidden=0 \(at least 1\)"):
        BagConfig(hidden=0)
    with pytest.raises(ValueError, match=r"bag.epochs=0.0 \(above 0\)"):
        BagConfig(epochs=0.0)
    with pytest.raises(ValueError, match=r"bag.dev=1.0"):
        BagConfig(dev=1.0)
    memory, unit_vectors, _ = planted_memory(20)
    with pytest.raises(ValueError, match="29 unit vectors for a memory of 30 units"):
        fit_bag(memory, unit_vectors[:29], progress=False)
    with pytest.raises(ValueError, match="no unit is held by 100 memory sentences"):
        fit_bag(memory, unit_vectors, BagConfig(min_count=100), progress=False)


def test_the_bag_offers_its_units_until_the_buffer_holds_them(toy_run):
    from invemb.inversion.controller import Controller
    from invemb.inversion.decode import Hypothesis

    run, encoder, _ = toy_run
    sentence = toy_sentences(1, seed=5)[0]
    target = encoder.encode([sentence])  # (1, D)
    plain = Controller.load(run, em=encoder, lm_weight=0.0, bag_weight=0.0)
    cfg = plain.decode_cfg
    offered = {a.unit for a in plain.policy.propose(target, [Hypothesis([])], cfg)[0].actions}
    absent = next(u for u in range(len(plain.vocab)) if u not in offered and int(plain.policy.stand_in[u]) == u)
    # a bag sure of the absent unit alone
    bag = UnitBag(encoder.dim, torch.tensor([absent, min(offered)]), len(plain.vocab), BagConfig.preset("tiny"))
    with torch.no_grad():
        bag.bias.copy_(torch.tensor([40.0, 0.0]))
    ctrl = Controller(plain.encoder.encoder, plain.vocab, plain.unit_vectors, plain.model, cfg, plain.info, run=run, bag=bag)
    on = cfg.replace(bag_weight=2.0)
    assert absent in {a.unit for a in ctrl.policy.propose(target, [Hypothesis([])], on)[0].actions}
    assert ctrl.policy.bag_votes(target, [Hypothesis([absent])], on)[0, absent] == 0  # placed: no more vote
    assert ctrl.policy.bag_votes(target, [Hypothesis([])], on)[0, absent] > 14
    assert {a.unit for a in ctrl.policy.propose(target, [Hypothesis([])], cfg)[0].actions} == offered  # off: as before
    assert ctrl.policy.bag_votes(target, [Hypothesis([])], cfg) is None
    res = ctrl.invert_vector(target[0], on)
    assert res.text and res.cosine is not None
    from invemb.inversion.controller import ModelPolicy

    bare = ModelPolicy(plain.model, plain.unit_vectors, plain.index)
    with pytest.raises(ValueError, match="bag_weight=2.0 needs a bag of units"):
        bare.propose(target, [Hypothesis([])], on)


def test_a_run_trains_its_bag_on_first_use_and_a_grown_memory_trains_it_again(toy_run, tmp_path, capsys):
    from invemb.inversion.controller import Controller
    from invemb.inversion.train import extend_memory

    run, encoder, _ = toy_run
    older = tmp_path / "older"
    shutil.copytree(run, older, ignore=shutil.ignore_patterns(*BAG_FILES, "checkpoints"))
    ctrl = Controller.load(older, em=encoder, bag_weight=0.5)
    assert not UnitBag.exists(older)  # training leaves it out; nothing is trained until a decode needs it
    ctrl.invert_vector(encoder.encode([toy_sentences(1, seed=4)[0]])[0])
    assert "training the decoder's bag of units" in capsys.readouterr().err
    first = UnitBag.load(older)
    memory = SentenceMemory.load(older)
    assert first.stats["sentences"] == len(memory)
    from invemb.inversion.controller import stand_ins

    again = fit_bag(memory, ctrl.unit_vectors, BagConfig.preset("tiny"), progress=False,
                    stand_in=stand_ins(ctrl.unit_vectors, ctrl.vocab.units, ctrl.vocab.counts))
    assert torch.allclose(first.outputs, again.outputs, atol=1e-3)  # the run's memory and bag settings, seeded

    # extending a memory that lacks nothing keeps the bag; --no-bag never trains one
    assert "bag_dev_recall_at_32" not in extend_memory(older, encoder=encoder, progress=False)
    (older / BAG_FILES[0]).unlink()
    assert "bag_dev_recall_at_32" not in extend_memory(older, encoder=encoder, progress=False, bag=False)
    assert not UnitBag.exists(older)
    assert extend_memory(older, encoder=encoder, progress=False)["bag_dev_recall_at_32"] == UnitBag.load(older).stats["dev_recall_at_32"]


def test_top_votes_are_the_likeliest_units_voting_their_log_odds_over_the_next_one():
    memory, unit_vectors, _ = planted_memory(300)
    bag = fit_bag(memory, unit_vectors, BagConfig.preset("tiny").replace(hidden=16, epochs=3.0), progress=False)
    vectors = memory.vectors[:7]
    ids, votes = bag.top_votes(vectors, 5, chunk=3)  # chunks of 3 rows give what one pass gives
    assert ids.shape == votes.shape == (7, 5)
    logp = torch.log_softmax(bag(vectors), dim=1)  # (7, V) over the bag's outputs
    ranked = logp.sort(dim=1, descending=True)
    assert torch.equal(ids, bag.unit_ids[ranked.indices[:, :5]])
    assert torch.allclose(votes, ranked.values[:, :5] - ranked.values[:, 5:6], atol=1e-5)
    assert (votes[:, :-1] >= votes[:, 1:]).all() and (votes >= 0).all()
    with pytest.raises(ValueError, match="dimension 16"):
        bag.top_votes(torch.randn(2, 8), 5)
