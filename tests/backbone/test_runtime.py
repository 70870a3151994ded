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
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; choose from torch, onnx"):
        HFBackbone(BackboneConfig(path=tiny_bert_dir)).use_runtime("tensorrt")
    with pytest.raises(ValueError, match="runtime 'onnx' is for inference"):
        HFBackbone(BackboneConfig(path=tiny_bert_dir, unfreeze_layers=1)).use_runtime("onnx")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "tiered"}))
    with pytest.raises(ValueError, match="runtime 'onnx' is for EM runs and Hugging Face backbones, not a tiered run"):
        invemb.load(tmp_path, runtime="onnx")
