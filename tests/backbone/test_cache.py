import numpy as np
import pytest
import torch

from invemb.backbone.cache import FeatureCache
from invemb.backbone.hf import BackboneConfig, HFBackbone


@pytest.fixture(scope="module")
def tiny_backbone(tiny_bert_dir):
    return HFBackbone(BackboneConfig(path=tiny_bert_dir))


def test_cached_features_equal_recomputed(tmp_path, tiny_backbone):
    texts = ["the bank", "a river bank in new york", "not good", "the cat sat on the mat and the dog sat too"]
    cache = FeatureCache(tmp_path, tiny_backbone)
    rows = cache.ensure(texts, progress=False)
    pooled, tokens = tiny_backbone.features(texts, with_tokens=True)
    torch.testing.assert_close(cache.pooled(rows), pooled)
    states, mask = cache.tokens(rows)
    for i, t in enumerate(tokens):
        n = t.shape[0]
        assert mask[i].sum() == n
        torch.testing.assert_close(states[i, :n], t.float())
        assert (states[i, n:] == 0).all()
    # reopening finds everything and computes nothing new
    again = FeatureCache(tmp_path, tiny_backbone)
    assert len(again) == 4
    assert list(again.ensure(texts[::-1], progress=False)) == list(rows[::-1])
    torch.testing.assert_close(again.pooled(rows), pooled)


def test_cached_token_ids_equal_the_tokenizers(tmp_path, tiny_backbone):
    texts = ["the banker", "a river bank in new york", "not good"]
    cache = FeatureCache(tmp_path, tiny_backbone)
    rows = cache.ensure(texts, progress=False)
    batch = tiny_backbone.tokenize(texts)
    assert torch.equal(cache.token_ids(rows), batch["input_ids"] * batch["attention_mask"])
    assert torch.equal(cache.token_ids(rows[::-1], max_tokens=3), batch["input_ids"].flip(0)[:, :3])
    # rows appended after the first read are tokenised too
    more = cache.ensure(["dog runs fast"], progress=False)
    assert torch.equal(cache.token_ids(more)[0], tiny_backbone.tokenize(["dog runs fast"])["input_ids"][0])


def test_cache_keyed_by_backbone_setting(tmp_path, tiny_bert_dir):
    a = FeatureCache(tmp_path, HFBackbone(BackboneConfig(path=tiny_bert_dir, pooling="mean")))
    b = FeatureCache(tmp_path, HFBackbone(BackboneConfig(path=tiny_bert_dir, pooling="cls")))
    c = FeatureCache(tmp_path, HFBackbone(BackboneConfig(path=tiny_bert_dir, prompt="query: ")))
    assert len({a.dir, b.dir, c.dir}) == 3


def test_killed_append_is_ignored(tmp_path, tiny_backbone):
    cache = FeatureCache(tmp_path, tiny_backbone)
    cache.ensure(["one text", "two texts"], progress=False)
    with open(cache.dir / "pooled.f32", "ab") as fh:  # a half-written row from a killed run
        fh.write(b"\x00" * 100)
    with open(cache.dir / "texts.jsonl", "a") as fh:
        fh.write('"ghost"\n')
    again = FeatureCache(tmp_path, tiny_backbone)
    assert len(again) == 2 and "ghost" not in again.rows
    assert (again.dir / "pooled.f32").stat().st_size == 2 * tiny_backbone.hidden * 4
    np.testing.assert_allclose(again.pooled([0]).numpy(), tiny_backbone.features(["one text"]).numpy(), rtol=1e-5, atol=1e-6)


def test_empty_text_refused(tiny_backbone):
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        tiny_backbone.encode(["fine", "   "])
    # Only control / format characters: the tokenizer would give just [CLS] [SEP], a vector of nothing.
    with pytest.raises(ValueError, match=r"only control characters\) at position\(s\) 0, 2"):
        tiny_backbone.encode(["\x00\x01", "fine", "\u200b\ufeff \u200d"])
    assert tiny_backbone.encode(["caf\u00e9 \u200b", "\U0001F44D"]).shape[0] == 2  # content beside them is kept
    with pytest.raises(TypeError, match="position 1 holds a NoneType"):
        tiny_backbone.encode(["fine", None])
    with pytest.raises(TypeError, match="not one string"):
        tiny_backbone.encode("fine")


def test_missing_backbone_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --backbone PATH"):
        HFBackbone(BackboneConfig(path=str(tmp_path / "nope")))


@pytest.mark.parametrize("setting", [{"max_length": 0}, {"max_length": 1}, {"unfreeze_layers": -1}])
def test_bad_backbone_settings_are_refused(setting):
    from invemb.backbone.hf import BackboneConfig

    with pytest.raises(ValueError, match="max_length must be at least 2 tokens"):
        BackboneConfig(**setting)
