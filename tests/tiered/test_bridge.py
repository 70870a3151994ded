"""Chunk boundaries, chunk types and the bridge's pooling, checked against hand-computed values."""
from __future__ import annotations

import math
import random
import string

import pytest
import torch

from invemb.tiered.chunker import (_WORD_OR_SYMBOL, CHUNK_TYPES, ChunkerConfig, ChunkProjector, chunk_type,
                                   chunks_from_starts, masked_pool_weights, stride_starts, word_spans, word_starts)


def test_pooling_matches_hand_computed_example():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0], [5.0, 6.0], [7.0, 8.0]]])  # (1, 5, 2)
    unit_chunk = torch.tensor([[0, 0, -1, 1, 1]])  # "ab cd": the space belongs to no chunk
    bridge = ChunkProjector(d_char=2, d_sem=2)
    with torch.no_grad():
        bridge.score.weight.copy_(torch.tensor([[1.0, 0.0]]))  # score = first feature
        bridge.score.bias.zero_()
        bridge.proj.weight.copy_(torch.eye(2))
        bridge.proj.bias.zero_()
    out = bridge(states, unit_chunk, torch.tensor([[0, 2]]))
    w0 = math.exp(1) / (math.exp(1) + math.exp(3))
    w1 = math.exp(5) / (math.exp(5) + math.exp(7))
    expected_raw = torch.tensor([[[w0 * 1 + (1 - w0) * 3, w0 * 2 + (1 - w0) * 4],
                                  [w1 * 5 + (1 - w1) * 7, w1 * 6 + (1 - w1) * 8]]])
    torch.testing.assert_close(out.raw, expected_raw)
    # proj is the identity, the type embedding starts at zero: vectors = LayerNorm(raw)
    torch.testing.assert_close(out.vectors, torch.nn.functional.layer_norm(expected_raw, (2,)) * bridge.norm.weight + bridge.norm.bias)
    assert out.mask.tolist() == [[True, True]]


def test_pool_weights_are_zero_outside_the_chunk_and_for_padding_chunks():
    w = masked_pool_weights(torch.zeros(1, 4), torch.tensor([[0, 0, 0, -1]]), n_chunks=2)
    torch.testing.assert_close(w[0, 0], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))
    assert w[0, 1].abs().sum() == 0


def test_pooling_is_differentiable_into_e1_states():
    states = torch.randn(2, 6, 8, requires_grad=True)
    bridge = ChunkProjector(8, 16)
    out = bridge(states, torch.tensor([[0, 0, 1, 1, 1, -1], [0, -1, 1, 2, 2, 2]]), torch.tensor([[0, 0, -1], [0, 1, 3]]))
    picked = out.vectors[out.mask]
    (picked * torch.randn(picked.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert states.grad is not None and states.grad[0, :5].abs().sum() > 0
    assert states.grad[0, 5].abs().sum() == 0  # the unit in no chunk gets no gradient


@pytest.mark.parametrize("chunk,kind", [("cat", "word"), ("NASA", "caps"), ("1969", "numeric"), ("3rd", "numeric"),
                                        (",", "punct"), ("😀", "emoji"), ("👍🏽", "emoji"), ("東京", "word"), ("I", "word"),
                                        ("नमस्ते", "word"), ("\u094d", "word"), ("🇺🇸", "emoji")])
def test_chunk_types(chunk, kind):
    assert CHUNK_TYPES[chunk_type(chunk)] == kind


def test_word_chunks_keep_punctuation_and_emoji_apart_and_skip_spaces():
    text = "Hi, NASA 😀 won 3!"
    char_chunk, types = chunks_from_starts(text, word_starts(text))
    chunks = {}
    for ch, c in zip(text, char_chunk):
        if c >= 0:
            chunks[c] = chunks.get(c, "") + ch
    assert [chunks[i] for i in range(len(chunks))] == ["Hi", ",", "NASA", "😀", "won", "3", "!"]
    assert [CHUNK_TYPES[t] for t in types] == ["word", "punct", "caps", "emoji", "word", "numeric", "punct"]
    assert all(c == -1 for ch, c in zip(text, char_chunk) if ch == " ")


@pytest.mark.parametrize("text,expected", [
    ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),  # vowel signs and viramas are combining marks, not \w
    ("สวัสดีครับ", ["สวัสดีครับ"]),
    ("cafe\u0301 ok", ["cafe\u0301", "ok"]),  # a decomposed accent stays on its letter
    ("👍🏽 🇺🇸 👨\u200d👩\u200d👧!", ["👍🏽", "🇺🇸", "👨\u200d👩\u200d👧", "!"]),  # one chunk per emoji grapheme
])
def test_word_chunks_keep_combining_marks_and_emoji_sequences_whole(text, expected):
    char_chunk, types = chunks_from_starts(text, word_starts(text))
    chunks: dict[int, str] = {}
    for ch, c in zip(text, char_chunk):
        if c >= 0:
            chunks[c] = chunks.get(c, "") + ch
    assert [chunks[i] for i in range(len(chunks))] == expected
    assert [CHUNK_TYPES[t] for t in types] == [CHUNK_TYPES[chunk_type(c)] for c in expected]


def test_stride_chunks_restart_after_spaces():
    text = "abcdefgh ij"
    char_chunk, _ = chunks_from_starts(text, stride_starts(text, 3))
    assert char_chunk == [0, 0, 0, 1, 1, 1, 2, 2, -1, 3, 3]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="chunker mode"):
        ChunkerConfig(mode="sentencepiece")


def test_ascii_word_chunks_equal_the_unicode_rule():
    """word_spans takes a faster `re` pattern on ASCII text; it must cut exactly as the Unicode rule."""
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
        assert word_spans(text) == [m.span() for m in _WORD_OR_SYMBOL.finditer(text)], repr(text)
