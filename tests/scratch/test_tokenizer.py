import pytest
import torch

from invemb.scratch.tokenizer import ScratchTokenizer, TokenizerConfig

CORPUS = [
    "The cat sat on the mat.", "A dog runs in the park!", "The river bank was muddy after the rain.",
    "Paris is the capital of France.", "She paid 3.50 dollars for coffee.", "The cat and the dog are friends.",
] * 5


@pytest.fixture(scope="module", params=["bpe", "word"])
def tok(request):
    return ScratchTokenizer.train(CORPUS, TokenizerConfig(kind=request.param, vocab_size=300, min_frequency=1, max_length=16))


def test_specials_and_padding(tok):
    assert (tok.pad_id, tok.unk_id, tok.cls_id) == (0, 1, 2)
    ids, mask = tok.encode(["The cat sat.", "Paris is the capital of France."])
    assert ids.shape[0] == 2 and ids.dtype == torch.long and mask.dtype == torch.bool
    assert torch.all(ids[:, 0] == tok.cls_id)
    assert torch.equal(mask, ids != 0)
    assert mask[0].sum() < mask[1].sum() and not mask[0, -1]


def test_round_trip(tok):
    text = "The cat sat on the mat!"
    tok.take_stats()
    ids, _ = tok.encode([text])
    assert tok.take_stats()["truncated"] == 0
    back = tok.decode(ids[0])
    if tok.kind == "bpe":
        assert back == text  # byte-level BPE is lossless
    else:
        assert back == "the cat sat on the mat !"  # lower-cased words, punctuation split


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    again = ScratchTokenizer.load(tmp_path / "tokenizer.json")
    texts = ["A dog runs in the park!", "She paid 3.50 dollars."]
    assert torch.equal(again.encode(texts)[0], tok.encode(texts)[0])
    assert again.fingerprint() == tok.fingerprint() and again.max_length == 16 and again.kind == tok.kind


def test_truncation_and_unknown_counts(tok):
    tok.take_stats()
    long_text = " ".join(["the cat sat on the mat"] * 10)
    ids, _ = tok.encode([long_text, "zebra quokka"])
    assert ids.shape[1] == 16
    stats = tok.take_stats()
    assert stats["truncated"] == 1 and stats["texts"] == 2
    if tok.kind == "word":
        assert stats["unknown"] == 2  # zebra and quokka are not in the vocabulary
    else:
        assert stats["unknown"] == 0  # bytes cover everything
    assert tok.take_stats() == {}


def test_empty_batch_and_bad_kind(tok):
    with pytest.raises(ValueError, match="empty batch"):
        tok.encode([])
    with pytest.raises(ValueError, match="bpe or word"):
        TokenizerConfig(kind="chars")
