"""Sharded feature extraction: `invemb features build --shards 2` (two spawned processes in a gloo
group) writes the very cache one process writes. The torchrun path (ensure(shard=True) in every
rank) is tested in tests/training/test_ddp.py."""
import json
import random

import pytest
import torch
from typer.testing import CliRunner

from invemb.backbone.cache import FeatureCache, build_features
from invemb.backbone.hf import BackboneConfig, HFBackbone
from invemb.cli import app


def _texts(n: int = 120) -> list[str]:
    rng = random.Random(1)
    words = "the cat dog sat on mat river bank money loan good bad new york city".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 20))) for _ in range(n)]


def test_features_build_with_two_shards_equals_one_process(tmp_path, tiny_bert_dir):
    texts = _texts()
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    res = CliRunner().invoke(app, ["features", "build", "--texts", str(tmp_path / "texts.jsonl"), "--cache",
                                   str(tmp_path / "two"), "--backbone", tiny_bert_dir, "--max-length", "32",
                                   "--shards", "2", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["shards"] == 2 and out["added"] == out["rows"] == len(set(texts))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the spawned processes ran one thread each
    try:
        one = build_features(texts, tmp_path / "one", BackboneConfig(path=tiny_bert_dir, max_length=32), batch_size=8,
                             progress=False)
    finally:
        torch.set_num_threads(threads)
    for name in ("pooled.f32", "tokens.f16", "offsets.i64", "texts.jsonl", "meta.json"):
        assert (tmp_path / "two" / out["cache"].split("/")[-1] / name).read_bytes() == \
            (tmp_path / "one" / one["cache"].split("/")[-1] / name).read_bytes(), name
    # Appending to a sharded cache later only computes what is missing.
    cache = FeatureCache(tmp_path / "two", HFBackbone(BackboneConfig(path=tiny_bert_dir, max_length=32)))
    rows = cache.ensure(texts[:5] + ["a brand new text"], progress=False)
    assert len(cache) == len(set(texts)) + 1 and rows[-1] == len(set(texts))


def test_shard_count_is_checked(tmp_path, tiny_bert_dir):
    with pytest.raises(ValueError, match="at least 1"):
        build_features(["x"], tmp_path, BackboneConfig(path=tiny_bert_dir), shards=0)


def test_two_processes_sharing_a_cache_never_duplicate_or_misalign_rows(tmp_path, tiny_bert_dir):
    """Two handles on one folder (as two runs on one backbone would hold), each with a stale view:
    an append first catches up with the other's rows, so rows stay aligned with their texts."""
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir, max_length=32))
    a, b = FeatureCache(tmp_path, backbone), FeatureCache(tmp_path, backbone)
    ra = a.ensure(["the cat", "a dog", "the river bank"], progress=False)
    rb = b.ensure(["a dog", "new york city", "the cat sat"], progress=False)  # b has not seen a's rows
    assert list(ra) == [0, 1, 2] and list(rb) == [1, 3, 4]
    again = FeatureCache(tmp_path, backbone)
    assert again.texts == ["the cat", "a dog", "the river bank", "new york city", "the cat sat"]
    expect = backbone.features(again.texts)
    torch.testing.assert_close(again.pooled(range(5)), expect, rtol=1e-5, atol=1e-6)
    states, mask = again.tokens([3, 4])
    assert int(mask[0].sum()) == len(backbone.tokenize(["new york city"])["input_ids"][0])
