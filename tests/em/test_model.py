import pytest
import torch

from invemb.backbone.hf import BackboneConfig, HFBackbone
from invemb.em.model import HeadConfig, TokenEmbeddingModel, TokenHead, load_head, save_head


@pytest.mark.parametrize("kind", ["mlp", "attention", "transformer"])
def test_head_shapes_norm_and_mean_pool_init(kind):
    torch.manual_seed(0)
    cfg = HeadConfig.preset("tiny", head=kind, hidden=16)
    head = TokenHead(cfg).eval()
    states = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    out = head(pooled, states, mask)
    assert out.embedding.shape == (3, cfg.embed_dim) and out.reconstruction.shape == (3, 16)
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(3))
    # every aggregator starts out as mean pooling
    torch.testing.assert_close(out.aggregated, pooled, rtol=1e-5, atol=1e-5)
    assert head.last_projection.bias is None


def test_order_aware_heads_see_order_after_perturbation():
    torch.manual_seed(0)
    head = TokenHead(HeadConfig.preset("tiny", head="transformer", hidden=16, dropout=0.0))
    for p in head.parameters():
        p.data += torch.randn_like(p) * 0.1
    head.eval()
    states = torch.randn(1, 4, 16)
    mask = torch.ones(1, 4, dtype=torch.bool)
    swapped = states[:, [1, 0, 2, 3]]
    a, b = head(states.mean(1), states, mask).embedding, head(swapped.mean(1), swapped, mask).embedding
    assert (a - b).abs().max() > 1e-3
    mlp = TokenHead(HeadConfig.preset("tiny", head="mlp", hidden=16)).eval()
    torch.testing.assert_close(mlp(states.mean(1)).embedding, mlp(swapped.mean(1)).embedding)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="unknown head"):
        TokenHead(HeadConfig(head="lstm"))


def test_save_load_identical(tmp_path, tiny_bert_dir):
    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    head = TokenHead(HeadConfig.preset("tiny", hidden=backbone.hidden))
    model = TokenEmbeddingModel(backbone, head).eval()
    save_head(head, tmp_path)
    again = TokenEmbeddingModel(backbone, load_head(tmp_path)).eval()
    texts = ["bank", "new york", "the cat sat on the mat"]
    torch.testing.assert_close(model.encode(texts), again.encode(texts))


def test_encode_in_context_separates_occurrences(tiny_bert_dir):
    torch.manual_seed(0)
    backbone = HFBackbone(BackboneConfig(path=tiny_bert_dir))
    model = TokenEmbeddingModel(backbone, TokenHead(HeadConfig.preset("tiny", hidden=backbone.hidden))).eval()
    a = model.encode_in_context("we sat on the river bank", "bank")
    b = model.encode_in_context("the bank gave a loan", "bank")
    assert a.shape == (model.dim,) and float(a @ b) < 0.9999
    with pytest.raises(ValueError, match="not found"):
        model.encode_in_context("no such word", "bank")
