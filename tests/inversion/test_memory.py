import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from invemb.inversion.memory import MEMORY_FILES, SentenceMemory, text_hash
from toy import toy_sentences, toy_vocab


def small_memory() -> SentenceMemory:
    vectors = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # unit-norm rows
    return SentenceMemory.from_lists(vectors, [[3, 1, 3], [1, 2], [0, 2]], n_units=5, texts_hash=["a", "b", "c"])


def test_votes_match_a_hand_computation():
    memory = small_memory()
    assert memory.sentence_units(0) == [1, 3]  # distinct and sorted
    assert memory.base_rate.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1 / 3, 0.0])
    got = memory.votes(torch.tensor([[2.0, 0.0]]), k=2, temperature=0.5)  # the target need not be normalised
    # nearest two: sentence 0 (cos 1.0) and 1 (cos 0.8); weights softmax([1.0, 0.8] / 0.5)
    w0 = 1 / (1 + torch.exp(torch.tensor(-0.4))).item()
    expected = [0.0, max(0.0, 1.0 - 2 / 3), max(0.0, (1 - w0) - 2 / 3), w0 - 1 / 3, 0.0]
    assert got.shape == (1, 5)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)
    # case twins: unit 3 stands in for 1 and itself; it gets the better of their votes, unit 1 nothing
    twins = memory.votes(torch.tensor([[2.0, 0.0]]), k=2, temperature=0.5, remap=torch.tensor([0, 3, 2, 3, 4]))
    assert twins[0].tolist() == pytest.approx([0.0, 0.0, expected[2], max(expected[1], expected[3]), 0.0], abs=1e-6)


def test_memory_saves_loads_and_extends_without_repeats(tmp_path):
    memory = small_memory()
    memory.save(tmp_path)
    assert SentenceMemory.exists(tmp_path)
    back = SentenceMemory.load(tmp_path)
    target = torch.tensor([[0.3, 0.9]])
    assert torch.allclose(back.votes(target, 3, 0.1), memory.votes(target, 3, 0.1), atol=1e-3)  # fp16 vectors on disk
    assert back.texts_hash == ["a", "b", "c"] and back.n_units == 5
    more = SentenceMemory.from_lists(torch.tensor([[0.6, 0.8], [1.0, 0.0]]), [[4], [3]], 5, ["d", "a"])
    both = memory.extend(more)
    assert len(both) == 4 and both.texts_hash == ["a", "b", "c", "d"] and both.sentence_units(3) == [4]
    with pytest.raises(ValueError, match="different vocabularies"):
        memory.extend(SentenceMemory.from_lists(torch.ones(1, 2), [[0]], 7))
    with pytest.raises(ValueError, match="bad sentence memory"):
        SentenceMemory(torch.ones(2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3)


def test_the_memory_offers_a_unit_the_selector_does_not_retrieve(toy_run):
    from invemb.inversion.controller import Controller
    from invemb.inversion.decode import Hypothesis

    run, encoder, _ = toy_run
    sentence = toy_sentences(1, seed=5)[0]
    target = encoder.encode([sentence])  # (1, D)
    plain = Controller.load(run, em=encoder, lm_weight=0.0)
    cfg = plain.decode_cfg
    offered = {a.unit for a in plain.policy.propose(target, [Hypothesis([])], cfg)[0].actions}
    absent = next(u for u in range(len(plain.vocab)) if u not in offered)
    # a memory whose only sentence near the target holds the absent unit
    far = F.normalize(torch.randn(3, encoder.dim, generator=torch.Generator().manual_seed(0)), dim=1)
    memory = SentenceMemory.from_lists(torch.cat([target, -far]), [[absent], [0], [1], [2]], len(plain.vocab))
    ctrl = Controller(plain.encoder.encoder, plain.vocab, plain.unit_vectors, plain.model, cfg, plain.info,
                      run=run, memory=memory)
    on = cfg.replace(memory_weight=50.0, memory_k=2)  # a vote of 0.75 outweighs any logit gap
    with_memory = ctrl.policy.propose(target, [Hypothesis([])], on)[0].actions
    assert absent in {a.unit for a in with_memory}
    assert {a.unit for a in ctrl.policy.propose(target, [Hypothesis([])], cfg)[0].actions} == offered  # off: as before
    res = ctrl.invert_vector(target[0], on)
    assert res.text and res.cosine is not None


def test_a_run_builds_its_memory_from_its_states_and_extends_it_with_its_training_text(toy_run, tmp_path, capsys):
    from typer.testing import CliRunner

    from invemb.cli import app
    from invemb.inversion.controller import Controller
    from invemb.inversion.train import ControllerTrainConfig, extend_memory, train_controller
    from invemb.io import write_jsonl

    run, encoder, _ = toy_run
    # A run builds its memory from its saved training states when a decode first needs it.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(*MEMORY_FILES, "checkpoints"))
    ctrl = Controller.load(copy, em=encoder, lm_weight=0.0, memory_weight=2.0)
    assert not SentenceMemory.exists(copy)
    ctrl.invert_vector(encoder.encode([toy_sentences(1, seed=4)[0]])[0])
    assert "building the decoder's sentence memory" in capsys.readouterr().err
    built = SentenceMemory.load(copy)
    # every training sentence (the train file's lines after the 48 dev ones), with its text's hash
    assert sorted(built.texts_hash) == sorted(text_hash(t) for t in toy_sentences(240, seed=0)[48:])

    # A run trained on part of its text: extending adds the rest once, and again adds nothing.
    root = tmp_path / "part"
    root.mkdir()
    toy_vocab().save(root / "vocab.json")
    texts = toy_sentences(120, seed=1)
    assert len(set(texts)) == len(texts)  # so the counts below are sentences, not repeats
    write_jsonl(root / "train.jsonl", [{"text": s} for s in texts])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(root / "vocab.json"), train_file=str(root / "train.jsonl"),
                                       max_sentences=40, dev_sentences=20).replace(**{"train.epochs": 1, "train.progress": False})
    train_controller("toy", cfg, root / "run", encoder=encoder)
    added = extend_memory(root / "run", max_sentences=30, encoder=encoder, progress=False)
    assert (added["sentences_before"], added["sentences_added"]) == (40, 30)
    train_texts = texts[20:]  # the file's first 20 lines are dev
    added = extend_memory(root / "run", encoder=encoder, progress=False)
    assert added["sentences"] == len(train_texts)
    memory = SentenceMemory.load(root / "run")
    assert sorted(memory.texts_hash) == sorted(text_hash(t) for t in train_texts)
    # each sentence's vector is its encoding, its units its segmentation
    i = memory.texts_hash.index(text_hash(train_texts[-1]))
    assert torch.allclose(memory.vectors[i], encoder.encode([train_texts[-1]])[0], atol=1e-3)
    assert extend_memory(root / "run", encoder=encoder, progress=False)["sentences_added"] == 0

    runner = CliRunner()
    bad = runner.invoke(app, ["index", "memory", "--controller", str(root / "run"), "--source", "wiki"])
    assert bad.exit_code != 0 and "has no sources to pick" in bad.output
    bad = runner.invoke(app, ["index", "memory", "--controller", str(root / "run"), "--max-sentences", "-1"])
    assert bad.exit_code != 0 and "--max-sentences must be 0" in bad.output
    assert json.loads((root / "run" / "config.json").read_text())["kind"] == "controller"


def test_top_votes_leave_a_targets_own_group_out():
    memory = small_memory()
    full = memory.votes(memory.vectors, k=2, temperature=0.5)  # (3, 5)
    ids, votes = memory.top_votes(memory.vectors, units=3, k=2, temperature=0.5)
    assert votes[0].tolist() == pytest.approx(sorted(full[0].tolist(), reverse=True)[:3], abs=1e-6)
    assert 3 in ids[0].tolist()  # unit 3 is sentence 0's own
    assert (ids[votes <= 0] == -1).all()  # no id without a vote
    own = torch.arange(3)
    ids, votes = memory.top_votes(memory.vectors, units=3, k=2, temperature=0.5, groups=(own, own), chunk=2)
    # sentence 0 hears only from sentences 1 and 2, so its own unit 3 gets no vote
    assert 3 not in ids[0].tolist()
    assert votes[0].tolist() == pytest.approx(sorted(memory.votes(memory.vectors[:1], 2, 0.5,
                                                                  exclude=torch.tensor([[True, False, False]]))[0].tolist(),
                                                     reverse=True)[:3], abs=1e-6)


def test_memory_input_zeroes_the_votes_of_placed_units():
    from invemb.inversion.selector import MemoryInput

    mem = MemoryInput.of(torch.tensor([[3, 1, -1]]), torch.tensor([[0.5, 0.2, 0.0]]), [[1]], torch.eye(5))
    assert mem.votes.tolist() == [[0.5, 0.0, 0.0]]  # unit 1 is in the buffer
    assert mem.vectors[0, 2].abs().sum() == 0 and mem.vectors[0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert mem.votes_of(torch.tensor([3, 1, 4])).tolist() == [[0.5, 0.0, 0.0]]


def memory_reading_controller(tmp_path, **overrides):
    """A tiny controller whose Selector reads 4 memory units, trained on 160 toy sentences of a
    train_file: (encoder, config, training summary); the run is ``tmp_path / "run"``."""
    from invemb.inversion.train import ControllerTrainConfig, train_controller
    from invemb.io import write_jsonl
    from toy import BagEncoder

    encoder = BagEncoder()
    toy_vocab().save(tmp_path / "vocab.json")
    write_jsonl(tmp_path / "train.jsonl", [{"text": s} for s in toy_sentences(160, seed=3)])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(tmp_path / "vocab.json"), train_file=str(tmp_path / "train.jsonl"),
                                       max_sentences=160, dev_sentences=32).replace(
        **{"train.progress": False, "selector.memory": 4, **overrides})
    return encoder, cfg, train_controller("toy", cfg, tmp_path / "run", encoder=encoder)


def test_a_selector_trained_to_read_the_memory_reads_it_in_training_and_decoding(tmp_path):
    from invemb.inversion.controller import Controller
    from invemb.inversion.decode import Hypothesis
    from invemb.inversion.train import StateSet, memory_groups, train_controller

    encoder, cfg, summary = memory_reading_controller(tmp_path, **{"train.epochs": 3})
    k = cfg.decode.units_k
    assert 0.0 < summary[f"dev_memory_prec@{k}"] <= 1.0 and summary[f"dev_memory_hit@{k}"] > 0.5
    # a train_file has no documents: each sentence is left out of its own neighbours only
    data = StateSet.load(tmp_path / "run" / "states_train")
    memory = SentenceMemory.load(tmp_path / "run")  # built from the states for training, and kept
    mine, theirs = memory_groups(cfg, data, memory)
    assert len(memory) == len(data.units) == len(set(mine.tolist())) and torch.equal(theirs, mine)
    with pytest.raises(ValueError, match="memory_sources picks corpus sources"):
        train_controller("toy", cfg.replace(memory_sources=["wiki"]), tmp_path / "other", encoder=encoder)

    ctrl = Controller.load(tmp_path / "run", em=encoder, lm_weight=0.0)
    sentence = toy_sentences(1, seed=9)[0]
    target = encoder.encode([sentence])
    read = ctrl.policy.selector_memory(target, [Hypothesis([])])
    assert read.ids.shape == (1, 4) and (read.votes >= 0).all() and read.votes.sum() > 0
    s = ctrl.policy.summary(target, [Hypothesis([])])
    with pytest.raises(ValueError, match="reads a sentence memory"):
        ctrl.model.selector(s)
    assert ctrl.model.selector(s, read).memory_gate.item() > 0
    res = ctrl.invert_vector(target[0])
    assert res.text and res.cosine > 0.5
    # the memory's votes are kept per target across steps: a sentence decodes the same alone and in a batch
    texts = toy_sentences(3, seed=11)
    together = [r["reconstruction"] for r in ctrl.invert_texts(texts, progress=False)]
    fresh = Controller.load(tmp_path / "run", em=encoder, lm_weight=0.0)
    assert together == [fresh.invert_texts([t], progress=False)[0]["reconstruction"] for t in texts]


def test_memory_sources_join_the_memory_before_training_and_a_sentence_never_hears_its_own_document(tmp_path):
    from invemb.inversion.train import ControllerTrainConfig, StateSet, memory_groups, train_controller
    from invemb.text.corpus import Corpus, CorpusConfig, build_corpus
    from invemb.text.vocab import tokenize
    from toy import BagEncoder

    encoder = BagEncoder()
    toy_vocab().save(tmp_path / "vocab.json")
    texts = toy_sentences(240, seed=13)
    # paragraphs of three sentences: one document each
    (tmp_path / "toy.txt").write_text("\n\n".join(" ".join(texts[i:i + 3]) for i in range(0, len(texts), 3)))
    build_corpus(CorpusConfig(sources=[], files=[str(tmp_path / "toy.txt")]), tmp_path / "corpus", progress=False)
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(tmp_path / "vocab.json"), corpus=str(tmp_path / "corpus"),
                                       sources=["files"], max_sentences=40, dev_sentences=10, memory_sources=["files"]).replace(
        **{"train.epochs": 1, "train.progress": False, "selector.memory": 4})
    summary = train_controller("toy", cfg, tmp_path / "run", encoder=encoder)
    assert summary["states"] > 0
    memory = SentenceMemory.load(tmp_path / "run")
    train = [r["text"] for r in Corpus(tmp_path / "corpus").rows
             if r["split"] == "train" and cfg.min_words <= len(tokenize(r["text"])) <= cfg.max_words]
    assert len(memory) > 40 and set(memory.texts_hash) <= {text_hash(t) for t in train}
    data = StateSet.load(tmp_path / "run" / "states_train")
    mine, theirs = memory_groups(cfg.replace(corpus=str(tmp_path / "corpus")), data, memory)
    assert torch.equal(theirs[: len(mine)], mine)  # the memory's first sentences are the states'
    assert len(set(theirs.tolist())) < len(theirs)  # documents of several sentences are one group


def test_a_subset_keeps_the_chosen_sentences_in_their_new_order():
    memory = small_memory()
    part = memory.subset(torch.tensor([2, 0]))
    assert len(part) == 2 and part.n_units == 5 and part.texts_hash == ["c", "a"]
    assert [part.sentence_units(i) for i in range(2)] == [[0, 2], [1, 3]]
    assert torch.equal(part.vectors, memory.vectors[[2, 0]])


def test_a_selector_reading_the_bag_trains_on_cross_fitted_bags_and_decodes_with_the_runs_own(tmp_path):
    from invemb.inversion.bag import UnitBag, fit_bag
    from invemb.inversion.controller import Controller, stand_ins
    from invemb.inversion.decode import Hypothesis
    from invemb.inversion.train import StateSet

    encoder, cfg, summary = memory_reading_controller(tmp_path, **{"train.epochs": 2, "selector.memory_source": "bag"})
    run = tmp_path / "run"
    assert summary[f"dev_memory_hit@{cfg.decode.units_k}"] > 0.5
    assert UnitBag.exists(run) and (run / "selector_bag_votes.safetensors").exists()
    # Each training sentence read a bag of the other half of the documents (a train_file line is its own
    # document: halves by parity): sentence 1 reads the bag trained on the even sentences, never itself.
    from safetensors.torch import load_file

    data = StateSet.load(run / "states_train")
    vocab_units = toy_vocab()
    memory = SentenceMemory.from_lists(data.targets, data.units, len(vocab_units))  # as training built it (fp32)
    unit_vectors = load_file(str(run / "unit_vectors.safetensors"))["units"]
    even = fit_bag(memory.subset(torch.arange(0, len(memory), 2)), unit_vectors, cfg.bag,
                   stand_in=stand_ins(unit_vectors, vocab_units.units, vocab_units.counts), progress=False)
    kept = load_file(str(run / "selector_bag_votes.safetensors"))
    ids, votes = even.top_votes(data.targets[1:2], 4)
    assert torch.equal(kept["train_ids"][1], ids[0]) and torch.allclose(kept["train_votes"][1], votes[0])

    ctrl = Controller.load(run, em=encoder, lm_weight=0.0)
    target = encoder.encode([toy_sentences(1, seed=9)[0]])
    read = ctrl.policy.selector_memory(target, [Hypothesis([])])
    ids, votes = ctrl.unit_bag.top_votes(target, 4)  # the run's bag of the whole memory
    assert torch.equal(read.ids, ids) and torch.allclose(read.votes, votes)
    assert ctrl.invert_vector(target[0]).text
    ctrl.policy.bag = None
    with pytest.raises(ValueError, match="reads a bag of units: give the policy bag="):
        ctrl.policy.selector_memory(target, [Hypothesis([])])
