import shutil

import pytest
import torch

from invemb.inversion.decode import Action, CountingEncoder, DecodeConfig, Proposal, beam_decode
from invemb.inversion.length import LENGTH_FILES, LengthPrior
from invemb.inversion.segment import Segmenter
from toy import BagEncoder, toy_sentences, toy_vocab


def test_the_length_prior_recovers_planted_lengths_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)

    def sample(n):
        vectors = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
        return vectors, (2.5 + 2.0 * vectors @ direction).exp().round().clamp_min(1)  # 3 to 90 words

    vectors, words = sample(3000)
    prior = LengthPrior.fit(vectors, words)
    assert prior.stats["sentences"] == 3000 and prior.stats["dev_sentences"] == 300
    assert prior.stats["dev_corr"] > 0.95
    assert prior.stats["dev_mae_words"] < prior.stats["dev_mae_median_guess"] / 3
    fresh, truth = sample(500)
    guess = prior.predict(fresh)
    assert guess.shape == (500,) and (guess >= 1).all()
    assert ((guess - truth).abs() / truth).median() < 0.1
    assert torch.allclose(prior.predict(fresh * 7.0), guess)  # the vector's scale says nothing
    prior.save(tmp_path)
    back = LengthPrior.load(tmp_path)
    assert torch.equal(back.predict(fresh), guess) and back.stats == prior.stats and back.ridge == prior.ridge
    with pytest.raises(ValueError, match="dimension 16"):
        prior.predict(torch.randn(2, 8))
    with pytest.raises(ValueError, match="at least one word"):
        LengthPrior.fit(vectors[:3], torch.tensor([3.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="N word counts"):
        LengthPrior.fit(vectors[:3], torch.tensor([3.0, 2.0]))


class AppendPolicy:
    """Offers the next unit of a fixed sequence at the end of the buffer: the encoder and the
    scores alone decide which prefix is kept."""

    def __init__(self, sequence):
        self.sequence = list(sequence)

    def propose(self, targets, hyps, cfg):
        return [Proposal([Action(self.sequence[len(h.units)], len(h.units), 0.0)] if len(h.units) < len(self.sequence)
                         else [], stop_prob=0.0) for h in hyps]


def test_the_length_bonus_lengthens_a_prefix_up_to_the_predicted_words_and_no_further():
    vocab, encoder = toy_vocab(), BagEncoder()
    sequence = Segmenter(vocab).segment("the cat sat on a mat today").unit_ids
    target = encoder.encode(["the cat"])[0]  # the cosine peaks at two words
    # the exact stop off: it would end the search at "The cat", the target itself, whatever the bonus says (below)
    cfg = DecodeConfig(beam=1, patience=0, lm_weight=0, length_weight=0, exact_cosine=2.0)
    counting = CountingEncoder(encoder)
    assert beam_decode(target, AppendPolicy(sequence), counting, vocab.units, cfg).text == "The cat"
    with pytest.raises(ValueError, match="needs a length prior"):
        beam_decode(target, AppendPolicy(sequence), counting, vocab.units, cfg.replace(length_weight=1.0))
    for predicted, expected in ((4.0, "The cat sat on"), (5.0, "The cat sat on a"), (1.0, "The cat")):
        res = beam_decode(target, AppendPolicy(sequence), counting, vocab.units, cfg.replace(length_weight=1.0),
                          length=lambda t, w=predicted: torch.full((t.shape[0],), w))
        assert res.text == expected
    exact = beam_decode(target, AppendPolicy(sequence), counting, vocab.units, cfg.replace(length_weight=1.0, exact_cosine=0.9999),
                        length=lambda t: torch.full((t.shape[0],), 4.0))
    assert exact.text == "The cat"


def test_a_trained_run_holds_its_length_prior_and_an_older_run_fits_it_on_first_use(toy_run, tmp_path):
    from invemb.inversion.controller import Controller

    run, encoder, summary = toy_run
    assert LengthPrior.exists(run)
    trained = LengthPrior.load(run)
    assert summary["length_prior_dev_mae_words"] == trained.stats["dev_mae_words"]
    assert trained.stats["dev_mae_words"] < trained.stats["dev_mae_median_guess"]
    older = tmp_path / "older"
    shutil.copytree(run, older, ignore=shutil.ignore_patterns(*LENGTH_FILES, "checkpoints"))
    ctrl = Controller.load(older, em=encoder, length_weight=0.05)
    assert not LengthPrior.exists(older)  # nothing fitted until a decode needs it
    sentences = toy_sentences(4, seed=5)
    rows = ctrl.invert_texts(sentences)
    assert LengthPrior.exists(older) and all(r["reconstruction"] for r in rows)
    targets = encoder.encode(sentences)
    assert torch.allclose(LengthPrior.load(older).predict(targets), trained.predict(targets))
    assert ctrl.lengths(ctrl.decode_cfg.replace(length_weight=0.0)) is None
