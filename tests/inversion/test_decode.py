import json

import pytest
import torch

from invemb.inversion.baselines import BagConfig, BlackBoxConfig, bag_of_units, black_box_search
from invemb.inversion.controller import Controller
from invemb.inversion.decode import CountingEncoder, DecodeConfig, OraclePolicy, beam_decode
from invemb.inversion.segment import Segmenter
from invemb.inversion.train import StateSet
from invemb.training.metrics_log import read_metrics
from toy import BagEncoder, toy_sentences, toy_vocab


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_selector_and_placer_reproduce_the_sentence(fake_encoder, seed):
    vocab = toy_vocab()
    seg = Segmenter(vocab)
    enc = CountingEncoder(fake_encoder)
    for sentence in toy_sentences(4, seed=10 + seed):
        gold = seg.segment(sentence).unit_ids
        target = fake_encoder.encode([sentence])[0]
        res = beam_decode(target, OraclePolicy(gold, seed=seed), enc, vocab.units, DecodeConfig(beam=2, patience=0, lm_weight=0, length_weight=0))
        assert res.text == sentence
        assert res.cosine == pytest.approx(1.0, abs=1e-5)
        assert len(res.steps) == len(gold) and res.encoder_calls == len(gold)


def test_a_search_that_rebuilds_its_target_ends_there():
    """Without the exact stop, a policy that goes on proposing after the sentence is whole spends its patience
    steps on children that cannot score higher; with it, the search ends at the exact text."""
    from invemb.inversion.decode import Action, Proposal

    class Overeager(OraclePolicy):
        def propose(self, targets, hyps, cfg):
            out = super().propose(targets, hyps, cfg)
            return [Proposal([Action(0, len(h.units), 0.0)]) if not p.actions else p for h, p in zip(hyps, out)]

    vocab, encoder = toy_vocab(), BagEncoder()  # additive: each gold word placed raises the cosine
    seg = Segmenter(vocab)
    for sentence in toy_sentences(3, seed=20):
        gold = seg.segment(sentence).unit_ids
        target = encoder.encode([sentence])[0]
        runs = {}
        for exact in (0.9999, 2.0):
            cfg = DecodeConfig(beam=1, patience=3, lm_weight=0, length_weight=0, exact_cosine=exact)
            runs[exact] = beam_decode(target, Overeager(gold), CountingEncoder(encoder), vocab.units, cfg)
        assert runs[0.9999].text == runs[2.0].text == sentence
        assert runs[0.9999].encoder_calls == len(gold) and runs[2.0].encoder_calls == len(gold) + 3
    with pytest.raises(ValueError, match=r"exact_cosine=-1 \(at least 0\)"):
        DecodeConfig(exact_cosine=-1)


def test_placer_learns_gold_positions_on_toy_vocabulary(toy_run):
    run, _, summary = toy_run
    first = read_metrics(run / "metrics.jsonl", "step")[:3]
    assert sum(r["place_acc"] for r in first) / 3 < 0.7  # near chance before training
    assert summary["dev_place_acc"] >= 0.9
    assert summary["dev_select_hit@4"] >= summary["dev_bag_hit@4"]


def test_controller_inverts_toy_sentences_and_beam_never_worse_than_greedy(toy_run):
    run, encoder, _ = toy_run
    ctrl = Controller.load(run, em=encoder)
    sentences = toy_sentences(6, seed=99)
    targets = encoder.encode(sentences)
    f1s = []
    from invemb.inversion.metrics import token_f1

    for s, t in zip(sentences, targets):
        beam = ctrl.invert_vector(t, ctrl.decode_cfg.replace(beam=3))
        greedy = ctrl.invert_vector(t, ctrl.decode_cfg.replace(beam=1))
        assert beam.score >= greedy.score - 1e-6  # same path, texts encoded in other batches
        again = ctrl.invert_vector(t, ctrl.decode_cfg.replace(beam=3))
        assert (again.text, again.score) == (beam.text, beam.score)  # deterministic
        assert beam.encoder_calls > 0 and beam.steps and {"unit", "slot", "cosine"} <= set(beam.steps[0])
        f1s.append(token_f1(beam.text, s))
    assert sum(f1s) / len(f1s) >= 80


def test_lockstep_decoding_runs_the_same_searches_as_one_by_one(toy_run):
    run, encoder, _ = toy_run
    ctrl = Controller.load(run, em=encoder)
    sentences = toy_sentences(7, seed=5)
    targets = encoder.encode(sentences)
    alone = [ctrl.invert_vector(t) for t in targets]
    for batch in (3, 16):  # chunks of 3, 3, 1 and one chunk of all seven
        calls0 = ctrl.encoder.calls
        together = ctrl.invert_vectors(targets, batch=batch)
        assert [(r.text, r.encoder_calls, len(r.steps)) for r in together] == [(r.text, r.encoder_calls, len(r.steps)) for r in alone]
        assert [r.cosine for r in together] == pytest.approx([r.cosine for r in alone], abs=1e-5)
        # one encoder call per step for all seven; repeated children across targets are encoded once
        assert ctrl.encoder.calls - calls0 <= sum(r.encoder_calls for r in alone)
    rows = ctrl.invert_texts([sentences[0], "", sentences[1]], batch=2)
    assert [r["reconstruction"] for r in rows] == [alone[0].text, "", alone[1].text]
    assert rows[1]["cosine"] is None and rows[0]["seconds"] > 0


def test_bad_inputs_and_mismatched_pairs(toy_run, tmp_path):
    run, encoder, _ = toy_run
    ctrl = Controller.load(run, em=encoder)
    with pytest.raises(ValueError, match="shape"):
        ctrl.invert_vector(torch.ones(7))
    with pytest.raises(ValueError, match="NaN"):
        ctrl.invert_vector(torch.full((encoder.dim,), float("nan")))
    with pytest.raises(ValueError, match="all zeros"):
        ctrl.invert_vector(torch.zeros(encoder.dim))
    with pytest.raises(ValueError, match="vector 1"):
        ctrl.invert_vectors(torch.stack([torch.ones(encoder.dim), torch.zeros(encoder.dim)]))
    target = ctrl.encoder.encoder.encode(["Big fox near."])[0]
    huge = ctrl.invert_vector(target * 1e20)  # its norm overflows float32
    assert huge.text == ctrl.invert_vector(target).text != ""
    rows = ctrl.invert_texts(["", "Big fox near.", "\u200b\x00"])
    assert rows[0]["reconstruction"] == "" and rows[0]["cosine"] is None and rows[1]["cosine"] > 0.9
    assert rows[2]["reconstruction"] == "" and rows[2]["cosine"] is None  # nothing to encode, like ""
    with pytest.raises(ValueError, match="trained on encoder"):
        Controller.load(run, em=BagEncoder(salt="other"))
    with pytest.raises(ValueError, match="dimension"):
        Controller.load(run, em=BagEncoder(dim=16))
    info = json.loads((run / "config.json").read_text())
    assert info["kind"] == "controller" and info["vocab_fingerprint"] == toy_vocab().fingerprint()
    (tmp_path / "em").mkdir()
    (tmp_path / "em/config.json").write_text(json.dumps({"kind": "em", "em": {}}))
    with pytest.raises(ValueError, match="config.json kind is 'em', not 'controller'"):  # not KeyError: 'config'
        Controller.load(tmp_path / "em", em=encoder)


def test_baselines_report_encoder_calls(toy_run):
    run, encoder, _ = toy_run
    ctrl = Controller.load(run, em=encoder)
    sentence = "The big cat sat on the mat."
    target = encoder.encode([sentence])[0]
    bag = bag_of_units(target, ctrl.index, BagConfig(n=5))
    assert len(bag.steps) == 5 and bag.encoder_calls == 0
    calls0 = encoder.texts
    bb = black_box_search(target, CountingEncoder(encoder), ctrl.index, ctrl.unit_vectors, BlackBoxConfig.preset("tiny"))
    assert bb.encoder_calls == encoder.texts - calls0 > 0
    assert bb.cosine > 0.7


def test_eval_suite_hook_and_harness(toy_run):
    from invemb.inversion.harness import controller_methods, run_methods
    from invemb.inversion.metrics import evaluate_inversion

    run, encoder, _ = toy_run
    sentences = toy_sentences(3, seed=7)
    scores = evaluate_inversion(encoder, run, sentences)
    assert scores["n"] == 3 and 0 <= scores["token_f1"] <= 100 and scores["encoder_calls"] > 0
    ctrl = Controller.load(run, em=encoder)
    res = run_methods(controller_methods(ctrl, ["controller", "bag"], preset="tiny"), sentences, encoder, progress=False)
    assert res["bag"]["summary"]["encoder_calls"] == 0 and len(res["controller"]["rows"]) == 3
    assert res["controller"]["summary"]["token_f1"] > res["bag"]["summary"]["token_f1"]
    with pytest.raises(ValueError, match="unknown method"):
        controller_methods(ctrl, ["nope"])


def _toy_train_config(tmp_path):
    """A one-epoch tiny controller config on 40 toy sentences written to ``tmp_path``."""
    from invemb.io import write_jsonl
    from invemb.inversion.train import ControllerTrainConfig

    toy_vocab().save(tmp_path / "vocab.json")
    write_jsonl(tmp_path / "train.jsonl", [{"text": s} for s in toy_sentences(40, seed=5)])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(tmp_path / "vocab.json"), train_file=str(tmp_path / "train.jsonl"),
                                       max_sentences=40, dev_sentences=8).replace(**{"train.epochs": 1})
    return cfg


def test_resume_continues_from_the_last_checkpoint_with_the_runs_own_config(tmp_path, monkeypatch):
    from invemb.inversion.train import ControllerTask, train_controller

    class Killed(RuntimeError):
        pass

    original = ControllerTask.loss

    def dying_loss(self, model, batch, ctx):
        if ctx.step == 5:
            raise Killed()
        return original(self, model, batch, ctx)

    cfg = _toy_train_config(tmp_path).replace(**{"train.epochs": 2, "train.checkpoint_every": 2})
    encoder = BagEncoder()
    clean = train_controller("toy", cfg, tmp_path / "clean", encoder=encoder)
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(ControllerTask, "loss", dying_loss)
        train_controller("toy", cfg, tmp_path / "run", encoder=encoder)
    with pytest.raises(FileExistsError, match="not empty"):
        train_controller("toy", cfg, tmp_path / "run", encoder=encoder)
    texts_before = encoder.texts
    other = cfg.replace(**{"train.epochs": 4, "train.lr": 1.0, "max_sentences": 20})  # ignored: the run's own config
    resumed = train_controller("toy", other, tmp_path / "run", resume=True, encoder=encoder)
    assert encoder.texts - texts_before < 20  # states came from the run folder, not re-encoded
    epochs = read_metrics(tmp_path / "run/metrics.jsonl", "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1]
    for k, v in clean.items():
        if k.startswith("dev_"):
            assert resumed[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    with pytest.raises(ValueError, match="another encoder"):
        train_controller("toy", cfg, tmp_path / "run", resume=True, encoder=BagEncoder(salt="x"))


def test_a_run_killed_while_encoding_its_states_resumes_without_reencoding(tmp_path):
    from invemb.inversion.train import train_controller

    class Killed(RuntimeError):
        pass

    class DyingEncoder(BagEncoder):
        """Dies on its ``die_at``-th encode call (1-based)."""

        def __init__(self, die_at: int = 0):
            super().__init__()
            self.die_at = die_at

        def encode(self, texts, batch_size: int = 64):
            if self.calls + 1 == self.die_at:
                raise Killed()
            return super().encode(texts, batch_size)

    cfg = _toy_train_config(tmp_path)
    clean = DyingEncoder()
    train_controller("toy", cfg, tmp_path / "clean", encoder=clean)
    # Fingerprint, units, dev targets, dev buffers, train targets, train buffers: die on the last.
    assert clean.calls == 6
    with pytest.raises(Killed):
        train_controller("toy", cfg, tmp_path / "run", encoder=DyingEncoder(die_at=clean.calls))
    assert len(list((tmp_path / "run/states_encoded").glob("*.safetensors"))) == 3  # the finished chunks
    with pytest.raises(FileExistsError, match="not empty"):
        train_controller("toy", cfg, tmp_path / "run", encoder=DyingEncoder())
    resumed = DyingEncoder()
    train_controller("toy", cfg, tmp_path / "run", resume=True, encoder=resumed)
    assert resumed.calls == 2  # the fingerprint and the unfinished chunk (unit vectors and three chunks were kept)
    assert not (tmp_path / "run/states_encoded").exists()
    for name in ("states_train", "states_dev"):
        assert (tmp_path / "run" / f"{name}.json").read_text() == (tmp_path / "clean" / f"{name}.json").read_text()
        a, b = StateSet.load(tmp_path / "run" / name), StateSet.load(tmp_path / "clean" / name)
        assert torch.equal(a.targets, b.targets) and torch.equal(a.buffer_vecs, b.buffer_vecs)


def _toy_states(noise_share: float, seed: int = 3):
    from invemb.index import IndexConfig, UnitIndex
    from invemb.inversion.train import ControllerTrainConfig, build_states

    vocab, encoder = toy_vocab(), BagEncoder()
    unit_vectors = encoder.encode(vocab.units)
    index = UnitIndex.build(unit_vectors, vocab.units, IndexConfig(kind="flat"))
    cfg = ControllerTrainConfig.preset("tiny", noise_share=noise_share, noise_units=2, states_per_sentence=3)
    return build_states(toy_sentences(30, seed=seed), Segmenter(vocab), encoder, index, cfg, seed=1, progress=False), encoder, vocab


def test_noisy_states_hold_wrong_units_and_clean_ones_are_unchanged(tmp_path):
    from invemb.inversion.decode import render
    from invemb.inversion.train import StateSet

    clean, _, _ = _toy_states(0.0)
    noisy, encoder, vocab = _toy_states(1.0)
    assert all(not n for n in clean.noise) and clean.states == StateSet.load(_saved(clean, tmp_path / "c")).states
    assert sum(bool(n) for n in noisy.noise) == len(noisy.states)  # share 1: every state (toy targets have negatives)
    for j, (sent, placed) in enumerate(noisy.states):
        wrong = [u for _, u in noisy.noise[j]]
        assert 1 <= len(wrong) <= 2 and not set(wrong) & set(noisy.units[sent])  # hard negatives, never gold units
        buf = noisy.buffer(j)
        assert len(buf) == len(placed) + len(wrong) and [u for u in buf if u not in wrong] == [noisy.units[sent][p] for p in placed]
        assert torch.allclose(noisy.buffer_vecs[j], encoder.encode([render([vocab.units[u] for u in buf])])[0], atol=1e-5)
    loaded = StateSet.load(_saved(noisy, tmp_path / "n"))
    assert loaded.noise == noisy.noise and [loaded.buffer(j) for j in range(5)] == [noisy.buffer(j) for j in range(5)]


def _saved(states, path):
    states.save(path)
    return path


def test_training_on_noisy_states_keeps_dev_states_clean(tmp_path):
    from invemb.io import write_jsonl
    from invemb.inversion.train import ControllerTrainConfig, StateSet, train_controller

    toy_vocab().save(tmp_path / "vocab.json")
    write_jsonl(tmp_path / "train.jsonl", [{"text": s} for s in toy_sentences(40, seed=5)])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(tmp_path / "vocab.json"), train_file=str(tmp_path / "train.jsonl"),
                                       max_sentences=40, dev_sentences=8, noise_share=0.5).replace(**{"train.epochs": 1})
    summary = train_controller("toy", cfg, tmp_path / "run", encoder=BagEncoder())
    train, dev = StateSet.load(tmp_path / "run/states_train"), StateSet.load(tmp_path / "run/states_dev")
    assert 0 < sum(bool(n) for n in train.noise) < len(train.states) and not any(dev.noise)
    assert summary["states"] == len(train.states) and summary["dev_select_hit@4"] >= 0


def test_an_untrained_reranker_keeps_the_intentions_ranking():
    from invemb.inversion.selector import Selector, SelectorConfig
    from invemb.inversion.summary import summarise

    torch.manual_seed(0)
    units = torch.nn.functional.normalize(torch.randn(30, 16), dim=-1)
    target = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    s = summarise(target, [[], [2, 5], [7]], torch.randn(3, 16), units)
    plain, reranked = Selector(16, SelectorConfig.preset("tiny")), Selector(16, SelectorConfig.preset("tiny", rerank=8))
    reranked.load_state_dict(plain.state_dict(), strict=False)  # same trunk; the reranker's own weights stay fresh
    cand = units[torch.tensor([[0, 1, 2, 3], [2, 4, 5, 6], [7, 8, 9, 10]])]  # (3, 4, 16)
    with torch.no_grad():
        sel = plain(s)
        want = torch.einsum("bd,bcd->bc", sel.intention, cand) / plain.cfg.temperature
        assert torch.allclose(plain.candidate_logits(s, sel, cand), want)
        assert torch.allclose(reranked.candidate_logits(s, reranked(s), cand), want, atol=1e-6)
        # Its features: the candidate's cosine with the closest placed unit is 1 for a placed unit, -1 on an empty buffer.
        feats = []
        reranked.reranker.score.register_forward_hook(lambda m, inp, out: feats.append(inp[0][..., -1]))
        reranked.candidate_logits(s, reranked(s), cand)
    assert torch.allclose(feats[0][1, [0, 2]], torch.ones(2)) and torch.allclose(feats[0][0], -torch.ones(4))


def toy_controller_setup(tmp_path):
    """A tiny-preset controller config over the toy vocabulary and 120 toy sentences, and the bag encoder."""
    from invemb.io import write_jsonl
    from invemb.inversion.train import ControllerTrainConfig

    toy_vocab().save(tmp_path / "vocab.json")
    write_jsonl(tmp_path / "train.jsonl", [{"text": s} for s in toy_sentences(120, seed=7)])
    cfg = ControllerTrainConfig.preset("tiny", vocab=str(tmp_path / "vocab.json"), train_file=str(tmp_path / "train.jsonl"),
                                       max_sentences=120, dev_sentences=24, states_per_sentence=4)
    return cfg, BagEncoder()


def toy_inversion_f1(ctrl, encoder) -> float:
    """Mean token F1 of the controller's inversions of 6 unseen toy sentences."""
    from invemb.inversion.metrics import token_f1

    sentences = toy_sentences(6, seed=99)
    results = ctrl.invert_vectors(encoder.encode(sentences))
    return sum(token_f1(r.text, s) for r, s in zip(results, sentences)) / len(sentences)


def test_reranker_trains_saves_and_decodes(tmp_path):
    from invemb.inversion.train import train_controller

    cfg, encoder = toy_controller_setup(tmp_path)
    summary = train_controller("toy", cfg.replace(**{"train.epochs": 6, "selector.rerank": 12}), tmp_path / "run", encoder=encoder)
    steps = read_metrics(tmp_path / "run/metrics.jsonl", "step")
    assert steps[-1]["loss_rerank"] < steps[0]["loss_rerank"]
    assert {"dev_rerank_hit@4", "dev_rerank_prec@4", "dev_select_prec@4"} <= set(summary)
    assert summary["dev_rerank_prec@4"] >= summary["dev_bag_prec@4"]
    ctrl = Controller.load(tmp_path / "run", em=encoder)
    assert ctrl.model.selector.reranker is not None  # the config and weights came back
    assert toy_inversion_f1(ctrl, encoder) >= 70


def test_pooled_positives_and_neighbour_negatives_train_save_and_decode(tmp_path):
    from invemb.inversion.train import train_controller

    cfg, encoder = toy_controller_setup(tmp_path)
    summary = train_controller("toy", cfg.replace(**{"train.epochs": 6, "selector.positives": "pooled", "neighbour_negatives": 3}),
                               tmp_path / "run", encoder=encoder)
    steps = read_metrics(tmp_path / "run/metrics.jsonl", "step")
    assert steps[-1]["loss_select"] < steps[0]["loss_select"]
    assert summary["dev_select_prec@4"] >= summary["dev_bag_prec@4"]
    saved = json.loads((tmp_path / "run/config.json").read_text())["config"]
    assert (saved["selector"]["positives"], saved["neighbour_negatives"]) == ("pooled", 3)
    ctrl = Controller.load(tmp_path / "run", em=encoder)
    assert toy_inversion_f1(ctrl, encoder) >= 70
    with pytest.raises(ValueError, match="positives"):
        from invemb.inversion.selector import Selector, SelectorConfig

        Selector(16, SelectorConfig.preset("tiny", positives="all"))


def test_case_twins_with_one_vector_are_offered_as_the_more_frequent_form():
    """An uncased backbone gives "Arc" and "arc" one vector (up to float noise): the decoder offers
    the more frequent form only, so a tie cannot flip with the batch's search shape."""
    from invemb.inversion.controller import stand_ins

    vecs = torch.tensor([[1.0, 0.0], [1.0, 1e-7], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    units, counts = ["Arc", "arc", "US", "us", "ARC"], [3, 9, 5, 7, 1]
    assert stand_ins(vecs, units, counts).tolist() == [1, 1, 2, 3, 1]  # US / us differ: both kept
    # accents too, as MiniLM strips them: "café" and "cafe" are one vector ("Café" has another here: kept)
    assert stand_ins(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), ["café", "cafe", "Café"], [2, 9, 1]).tolist() == [1, 1, 2]


def test_children_an_encoder_cannot_read_or_past_the_word_cap_are_not_made():
    """A unit of invisible characters alone is not encodable (it crashed the whole lockstep batch);
    a multi-word unit that would pass max_words is not placed (the cap is a hard one)."""
    from invemb.encoder import check_texts
    from invemb.text.vocab import tokenize

    class StrictEncoder(BagEncoder):  # refuses what every real encoder refuses
        def encode(self, texts, batch_size=64):
            return super().encode(check_texts(texts), batch_size)

    encoder = CountingEncoder(StrictEncoder())
    units = ["\u2060", "big cat sat", "on the mat", "today"]
    target = encoder.encode(["big cat sat on the mat today"])[0]
    alone = beam_decode(target, OraclePolicy([0]), encoder, units, DecodeConfig(beam=1, patience=0, lm_weight=0, length_weight=0))
    assert alone.text == "" and alone.steps == []
    for seed in range(4):
        capped = beam_decode(target, OraclePolicy([1, 2, 3], seed=seed), encoder, units,
                             DecodeConfig(beam=1, patience=0, max_words=5, lm_weight=0, length_weight=0))
        assert 1 <= len(tokenize(capped.text)) <= 5
    with pytest.raises(ValueError, match=r"bad decoding settings: beam=0 \(at least 1\), expand=0 \(at least 1\)"):
        DecodeConfig(beam=0, expand=0)


def test_candidates_do_not_depend_on_the_batch_and_twins_never_take_two_places(toy_run):
    """A hypothesis fetches as many units alone as beside a longer buffer (the fetch used to follow the
    batch's longest buffer, and merged case twins left holes that only a bigger fetch refilled), and the
    frequent units join as their stand-ins too ("A" and "a" were both offered)."""
    from invemb.inversion.decode import Hypothesis
    from invemb.inversion.units import encode_units
    from invemb.text.vocab import Vocab
    from toy import CANONICAL, UNITS

    run, encoder, _ = toy_run
    base = Controller.load(run, em=encoder)
    units = UNITS + [w.capitalize() for w in CANONICAL]  # one vector per twin pair: BagEncoder is uncased
    vocab = Vocab(units, ["word"] * len(units), [10] * len(UNITS) + [5] * len(CANONICAL))
    ctrl = Controller(encoder, vocab, encode_units(encoder, vocab, progress=False), base.model,
                      base.decode_cfg.replace(frequent_units=len(units), expand=1000))
    cfg = ctrl.decode_cfg
    long_text = "the big red cat sat on the mat"
    long_hyp = Hypothesis([vocab.id(w) for w in long_text.split()], long_text, encoder.encode([long_text])[0])
    long_target = encoder.encode(["the big red cat sat on the mat today"])[0]
    for sentence in toy_sentences(8, seed=3):
        target = encoder.encode([sentence])[0]
        alone = ctrl.policy.propose(target[None], [Hypothesis([])], cfg)[0]
        beside = ctrl.policy.propose(torch.stack([target, long_target]), [Hypothesis([]), long_hyp], cfg)[0]
        assert [(a.unit, a.slot) for a in alone.actions] == [(a.unit, a.slot) for a in beside.actions]
        assert [a.logp for a in alone.actions] == pytest.approx([a.logp for a in beside.actions], abs=1e-5)
        offered = {a.unit for a in alone.actions}
        assert all(int(ctrl.policy.stand_in[u]) == u for u in offered)  # never a twin beside its stand-in
        assert len(offered) >= cfg.units_k


def test_decoding_settings_that_would_fail_mid_search_are_refused_first(toy_run):
    run, encoder, _ = toy_run
    with pytest.raises(ValueError, match=r"min_gain=nan \(at least 0\).*stop_threshold=nan \(a number\)"):
        DecodeConfig(min_gain=float("nan"), stop_threshold=float("nan"))
    ctrl = Controller.load(run, em=encoder)
    limit = ctrl.model.placer.cfg.max_len
    with pytest.raises(ValueError, match=f"let a buffer reach {limit + 1} units; this controller's Placer reads at most {limit}"):
        ctrl.invert_texts(["Big fox near."], decode=ctrl.decode_cfg.replace(max_words=limit + 1, max_steps=limit + 1))
    with pytest.raises(ValueError, match="Placer reads at most"):
        Controller.load(run, em=encoder, max_words=limit + 5, max_steps=limit + 5)


def test_black_box_search_caps_words_not_units():
    from invemb.index import IndexConfig, UnitIndex
    from invemb.inversion.units import encode_units
    from invemb.text.vocab import Vocab, tokenize
    from toy import UNITS

    encoder = BagEncoder()
    units = UNITS + ["big red cat", "sat on the mat", "the big red cat sat"]  # phrases: a unit is not a word
    vocab = Vocab(units, ["word"] * len(units), [1] * len(units))
    vectors = encode_units(encoder, vocab, progress=False)
    index = UnitIndex.build(vectors, units, IndexConfig(kind="flat"))
    target = encoder.encode(["The big red cat sat on the mat today."])[0]
    for cap in (2, 3, 5):
        bb = black_box_search(target, CountingEncoder(encoder), index, vectors,
                              BlackBoxConfig(pool=20, beam=2, insert_units=6, max_steps=8, max_words=cap))
        assert 1 <= len(tokenize(bb.text)) <= cap, bb.text


def test_controller_outputs_are_keyed_by_its_weights_and_an_encoder_within_float_noise_is_accepted(toy_run):
    run, encoder, _ = toy_run
    ctrl = Controller.load(run, em=encoder)
    other = Controller(ctrl.encoder.encoder, ctrl.vocab, ctrl.unit_vectors, Controller.load(run, em=encoder).model,
                       ctrl.decode_cfg, ctrl.info)
    assert other.identity == ctrl.identity  # same config, same weights
    with torch.no_grad():
        other.model.placer.positions.weight[0, 0] += 1.0
    del other.__dict__["identity"]
    assert other.identity["info"] == ctrl.identity["info"] and other.identity["weights"] != ctrl.identity["weights"]

    class Noisy(BagEncoder):  # the same encoder on another runtime: values move by float noise
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def encode(self, texts, batch_size=64):
            v = super().encode(texts, batch_size)
            return v + self.scale * torch.randn(v.shape, generator=torch.Generator().manual_seed(len(texts)))

    assert Controller.load(run, em=Noisy(2e-5)).vocab.fingerprint() == ctrl.vocab.fingerprint()
    assert Controller.load(run, em=Noisy(2e-3)).run == run  # bfloat16 arithmetic moves entries by up to 2e-3
    with pytest.raises(ValueError, match="trained on encoder"):
        Controller.load(run, em=Noisy(0.05))


def test_pinned_settings_name_what_a_run_keeps_that_todays_defaults_changed():
    from invemb.inversion.controller import pinned_note, pinned_settings

    today = DecodeConfig()
    stored = today.replace(beam=today.beam + 2, view_polish_rounds=today.view_polish_rounds - 6)
    assert pinned_settings(stored, set()) == {"beam": (today.beam + 2, today.beam),
                                              "view_polish_rounds": (today.view_polish_rounds - 6, today.view_polish_rounds)}
    assert pinned_settings(stored, {"beam"}) == {"view_polish_rounds": (today.view_polish_rounds - 6, today.view_polish_rounds)}
    # a preset's own values are not pinned defaults: a run is compared with the preset it matches best
    assert pinned_settings(DecodeConfig.preset("tiny"), set()) == {} and pinned_settings(today, set()) == {}
    # a run that records its preset is compared with that preset alone
    assert set(pinned_settings(DecodeConfig.preset("tiny"), set(), "default")) == set(DecodeConfig.presets["tiny"])
    line = pinned_note("runs/ctl", pinned_settings(stored, set()))
    assert line.startswith("note: runs/ctl decodes with the settings it was trained with") and f"beam={today.beam + 2} (default {today.beam})" in line
    assert pinned_note("runs/ctl", {}) == ""
