import numpy as np
import pytest
import torch
import torch.nn.functional as F

from invemb.inversion.decode import Action, CountingEncoder, DecodeConfig, Proposal, beam_decode
from invemb.inversion.lm import BigramLM
from invemb.inversion.segment import Segmenter
from toy import BagEncoder, toy_sentences, toy_vocab

CORPUS = ["a b", "a b", "a c", "b c"]  # tokens: <s> </s> a b c


def test_kneser_ney_probabilities_match_a_hand_computation():
    lm = BigramLM.build(CORPUS)
    # bigram types: <s>a (3), <s>b, ab (2), ac, bc, b</s> (2), c</s> (2): 7
    # continuation types N1+(. w): a 1, b 2, c 2, </s> 2; add-half over the 4 tokens that can follow and
    # the unseen slot: P_cont(w) = (N1+(. w) + 0.5) / (7 + 5 * 0.5)
    p_cont = {"a": 1.5 / 9.5, "b": 2.5 / 9.5, "</s>": 2.5 / 9.5, "unseen": 0.5 / 9.5}
    assert lm.p_cont[lm.ids["b"]] == pytest.approx(p_cont["b"]) and lm.p_cont[0] == 0.0
    got = np.exp(lm.token_logprobs("a b"))  # <s> -> a, a -> b, b -> </s>
    # <s> as a context: c = 4, N1+(<s> .) = 2; a -> b: c(a b) = 2, c(a) = 3, N1+(a .) = 2;
    # b -> </s>: c(b </s>) = 2, c(b) = 3 (b c once, b </s> twice), N1+(b .) = 2
    assert got[0] == pytest.approx((3 - 0.75) / 4 + 0.75 * 2 / 4 * p_cont["a"])
    assert got[1] == pytest.approx((2 - 0.75) / 3 + 0.75 * 2 / 3 * p_cont["b"])
    assert got[2] == pytest.approx((2 - 0.75) / 3 + 0.75 * 2 / 3 * p_cont["</s>"])
    # an unseen word after a known context: only the back-off share of the unseen slot
    assert np.exp(lm.token_logprobs("a zebra"))[1] == pytest.approx(0.75 * 2 / 3 * p_cont["unseen"])
    assert lm.sentences == 4 and len(lm) == 5
    assert lm.mean_logprob("a b") == pytest.approx(float(np.log(got).mean()))


def test_every_context_gives_a_distribution_and_unseen_words_stay_finite():
    lm = BigramLM.build(CORPUS + ["c a d"])
    for context in ("a", "b", "c", "d", "zebra"):
        # P(w | context) over every word that can follow, the end of sentence and one unseen word
        p = [np.exp(lm.token_logprobs(f"{context} {w}")[1]) for w in ("a", "b", "c", "d", "okapi")]
        p.append(np.exp(lm.token_logprobs(context)[1]))  # context -> </s>
        assert sum(p) == pytest.approx(1.0, abs=1e-9), context
    assert np.isfinite(lm.token_logprobs("zebra okapi")).all()


def test_association_prefers_the_corpus_order_and_saves_and_loads(tmp_path):
    lm = BigramLM.build(toy_sentences(200, seed=0))
    canonical, reversed_ = "The big cat sat on the mat.", "Mat the on sat cat big the."
    assert lm.mean_association(canonical) > 1.0 > 0.0 > lm.mean_association(reversed_)
    lm.save(tmp_path)
    assert BigramLM.exists(tmp_path)
    back = BigramLM.load(tmp_path)
    for text in (canonical, reversed_, "zebra"):
        assert np.array_equal(back.token_logprobs(text), lm.token_logprobs(text))
    with pytest.raises(ValueError, match="no sentences"):
        BigramLM.build([])


def test_association_from_the_pair_cache_equals_the_mean_of_the_relative_logprobs():
    lm = BigramLM.build(toy_sentences(200, seed=0))
    texts = ["The big cat sat on the mat.", "Mat the on sat cat big the.", "zebra", "the the the", "A red fox ran."]
    expected = [float(lm.token_logprobs(t, relative=True).mean()) for t in texts]
    for _ in range(2):  # the first pass fills the cache, the second reads it
        assert [lm.mean_association(t) for t in texts] == pytest.approx(expected, abs=1e-12)
    assert lm._association and len(lm._association) < sum(len(t.split()) + 2 for t in texts)  # shared pairs once


class OrderFreeEncoder(BagEncoder):
    """A text's vector is the normalised sum of its words' vectors: blind to order."""

    def encode(self, texts, batch_size: int = 64) -> torch.Tensor:
        from invemb.text.vocab import tokenize

        return F.normalize(torch.stack([sum(self._word(w) for w in tokenize(t)) for t in texts]), dim=-1)


class EverySlotPolicy:
    """Offers each gold unit the hypothesis lacks at every slot, all equally likely: the encoder
    and the prior alone choose."""

    def __init__(self, gold):
        self.gold = list(gold)

    def propose(self, targets, hyps, cfg):
        out = []
        for h in hyps:
            left = list(self.gold)
            for u in h.units:
                left.remove(u)
            out.append(Proposal([Action(u, s, 0.0) for u in dict.fromkeys(left) for s in range(len(h.units) + 1)],
                                stop_prob=0.0 if left else 1.0))
        return out


def test_the_prior_puts_an_order_blind_encoders_words_in_the_corpus_order():
    vocab, encoder = toy_vocab(), OrderFreeEncoder()
    lm = BigramLM.build(toy_sentences(300, seed=0))
    segmenter, counting = Segmenter(vocab), CountingEncoder(encoder)
    cfg = DecodeConfig(beam=4, expand=64, patience=0, length_weight=0)
    with pytest.raises(ValueError, match="needs a language prior"):
        beam_decode(encoder.encode(["the cat sat"])[0], EverySlotPolicy([0]), counting, vocab.units,
                    cfg.replace(lm_weight=0.1))
    right = {0.0: 0, 0.1: 0}
    sentences = toy_sentences(12, seed=7, min_words=4, max_words=6)
    for sentence in sentences:
        gold = segmenter.segment(sentence).unit_ids
        target = encoder.encode([sentence])[0]
        for weight in right:
            res = beam_decode(target, EverySlotPolicy(gold), counting, vocab.units, cfg.replace(lm_weight=weight),
                              prior=lm.mean_association)
            assert res.cosine == pytest.approx(1.0, abs=1e-5)  # every word back, whatever the order
            right[weight] += res.text == sentence
    assert right[0.1] >= len(sentences) - 1 and right[0.0] <= len(sentences) // 2


def test_a_trained_run_holds_its_prior_and_an_older_run_builds_it_on_first_use(toy_run, tmp_path, capsys):
    import shutil

    from invemb.inversion.controller import Controller
    from invemb.inversion.lm import LM_FILES

    run, encoder, _ = toy_run
    assert BigramLM.exists(run)
    trained = BigramLM.load(run)
    assert trained.sentences == 240 - 48  # the train file's lines less the dev ones
    older = tmp_path / "older"
    shutil.copytree(run, older, ignore=shutil.ignore_patterns(*LM_FILES, "checkpoints", "states_*"))
    ctrl = Controller.load(older, em=encoder, lm_weight=0.1)
    assert not BigramLM.exists(older)  # nothing built until a decode needs it
    sentence = toy_sentences(1, seed=3)[0]
    res = ctrl.invert_vector(encoder.encode([sentence])[0])
    assert "building the decoder's language prior" in capsys.readouterr().err
    assert BigramLM.exists(older)
    text = "The big cat sat on the mat."
    assert BigramLM.load(older).mean_association(text) == pytest.approx(trained.mean_association(text))
    plain = Controller.load(run, em=encoder).invert_vector(encoder.encode([sentence])[0])
    assert res.text and plain.text and res.score != plain.score  # the prior's term is in the score
