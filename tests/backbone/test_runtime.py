"""The onnxruntime backbone: same features as torch, refused where it cannot apply."""
import json

import pytest
import torch

import invemb
from invemb.backbone.hf import BackboneConfig, HFBackbone

TEXTS = ["the bank", "the cat sat on the mat", "a", "new york city is big and the river runs fast and slow", "not good"]


def test_onnx_features_match_torch(tiny_bert_dir):
    torch_bb = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    onnx_bb = HFBackbone(BackboneConfig(path=tiny_bert_dir)).use_runtime("onnx")
    assert onnx_bb.runtime == "onnx" and torch_bb.runtime == "torch"
    # Batches of other sizes and paddings than the export's example.
    for batch_size in (1, 2, 5):
        a = torch_bb.features(TEXTS, batch_size=batch_size)
        b = onnx_bb.features(TEXTS, batch_size=batch_size)
        assert b.shape == a.shape == (len(TEXTS), torch_bb.hidden)
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    _, states_a, _ = torch_bb(torch_bb.tokenize(TEXTS))
    _, states_b, _ = onnx_bb(onnx_bb.tokenize(TEXTS))
    mask = torch_bb.tokenize(TEXTS)["attention_mask"].bool()
    assert torch.allclose(states_a[mask], states_b[mask], atol=1e-4)


def test_bad_runtime_requests_are_refused(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; choose from torch, onnx, bf16"):
        HFBackbone(BackboneConfig(path=tiny_bert_dir)).use_runtime("tensorrt")
    with pytest.raises(ValueError, match="runtime 'onnx' is for inference"):
        HFBackbone(BackboneConfig(path=tiny_bert_dir, unfreeze_layers=1)).use_runtime("onnx")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "tiered"}))
    with pytest.raises(ValueError, match="runtime 'onnx' is not one of torch, bf16 for a tiered run"):
        invemb.load(tmp_path, runtime="onnx")


def test_serve_and_eval_take_the_onnx_runtime(tiny_bert_dir):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from invemb.cli import app
    from invemb.serve.app import create_app, load_service

    service = load_service(tiny_bert_dir, runtime="onnx")
    assert service.encoder.runtime == "onnx"
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/embeddings", json={"input": TEXTS[:2]})
    assert r.status_code == 200, r.text
    served = torch.tensor([d["embedding"] for d in r.json()["data"]])
    assert torch.allclose(served, invemb.load(tiny_bert_dir).encode(TEXTS[:2]), atol=1e-4)

    res = CliRunner().invoke(app, ["eval", "--encoder", tiny_bert_dir, "--suite", "stats", "--preset", "tiny",
                                   "--runtime", "onnx", "--plain"])
    assert res.exit_code == 0, res.output
    assert "stats" in res.output
    res = CliRunner().invoke(app, ["eval", "--encoder", tiny_bert_dir, "--suite", "stats", "--runtime", "tensorrt"])
    assert res.exit_code != 0 and "unknown runtime 'tensorrt'" in res.output


def test_bf16_runtime_keeps_the_features_and_is_refused_where_it_would_be_slow(tiny_bert_dir, monkeypatch):
    import invemb.backbone.hf as hf

    monkeypatch.setattr(hf, "bf16_is_fast", lambda device: True)  # the arithmetic runs anywhere, slowly without it
    torch_bb = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    bf16_bb = HFBackbone(BackboneConfig(path=tiny_bert_dir)).use_runtime("bf16")
    a, b = torch_bb.encode(TEXTS), bf16_bb.encode(TEXTS)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert not torch.equal(a, b)  # bfloat16 arithmetic, not the fp32 path under another name
    assert (a * b).sum(1).min() > 0.99
    with pytest.raises(ValueError, match="runtime 'bf16' is for inference"):
        HFBackbone(BackboneConfig(path=tiny_bert_dir, unfreeze_layers=1)).use_runtime("bf16")
    monkeypatch.setattr(hf, "bf16_is_fast", lambda device: False)
    with pytest.raises(ValueError, match="runtime 'bf16' would be slower than 'torch' here: cpu has no bfloat16"):
        HFBackbone(BackboneConfig(path=tiny_bert_dir)).use_runtime("bf16")
    with pytest.raises(ValueError, match="runtime 'bf16' would be slower than 'torch' on cpu"):
        bf16_bb.to_device("cpu")
