import pytest
import torch

from invemb.scratch.moe import MoEConfig
from invemb.scratch.pooling import POOLINGS, Pooling
from invemb.scratch.transformer import SelfAttention, SentenceEncoderModel, TransformerConfig, count_params


def _cfg(**kw):
    return TransformerConfig(**{"vocab_size": 50, "dim": 16, "depth": 2, "heads": 2, "ffn_hidden": 32, "max_len": 12,
                                "dropout": 0.0, **kw})


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (3, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    return ids.masked_fill(~mask, 0), mask


def test_attention_shape_and_padding_mask():
    torch.manual_seed(0)
    attn = SelfAttention(_cfg()).eval()
    x = torch.randn(3, 7, 16)
    _, mask = _batch()
    y = attn(x, mask)
    assert y.shape == (3, 7, 16)
    # Changing what sits in padded positions must not change any real token's output.
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 16) * 10
    torch.testing.assert_close(attn(x2, mask)[mask], y[mask])


@pytest.mark.parametrize("positions", ["rotary", "learned"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("use_moe", [False, True])
def test_model_output_shapes_and_padding_invariance(positions, activation, use_moe):
    torch.manual_seed(0)
    model = SentenceEncoderModel(_cfg(positions=positions, activation=activation, use_moe=use_moe)).eval()
    ids, mask = _batch()
    out = model(ids, mask)
    assert out.embedding.shape == (3, 16)
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(3))
    # Extra padding columns change nothing.
    wider_ids = torch.cat([ids, torch.zeros(3, 3, dtype=torch.long)], 1)
    wider_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(model(wider_ids, wider_mask).embedding, out.embedding, rtol=1e-4, atol=1e-5)
    if use_moe:
        assert [i for i, _ in out.aux.layers] == [1]  # every=2: the second block
        assert out.aux.balance_loss > 0 and out.aux.z_loss > 0
    else:
        assert out.aux.layers == [] and out.aux.balance_loss == 0


def test_rotary_positions_make_order_matter():
    torch.manual_seed(0)
    model = SentenceEncoderModel(_cfg(pooling="mean")).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    a = model(ids, mask).embedding
    b = model(ids.flip(1), mask).embedding
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("mode", POOLINGS)
def test_every_pooling_shape_mask_and_norm(mode):
    torch.manual_seed(0)
    pool = Pooling(16, mode)
    if pool.query is not None:
        torch.nn.init.normal_(pool.query)
    hidden = torch.randn(3, 7, 16)
    _, mask = _batch()
    out = pool(hidden, mask)
    assert out.shape == (3, 32 if mode == "mean_max" else 16) and pool.out_dim == out.shape[1]
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    spoiled = hidden.clone()
    spoiled[~mask] = 1e4  # padding values must never leak in
    torch.testing.assert_close(pool(spoiled, mask), out)


def test_pooling_values_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    raw = lambda mode: Pooling(2, mode, normalize=False)(hidden, mask)
    torch.testing.assert_close(raw("mean"), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(raw("max"), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(raw("cls"), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(raw("mean_max"), torch.tensor([[2.0, 2.0, 3.0, 4.0]]))
    torch.testing.assert_close(raw("attention"), torch.tensor([[2.0, 2.0]]))  # zero query: uniform weights


def test_active_params_match_between_dense_and_moe():
    dense = SentenceEncoderModel(_cfg())
    moe = SentenceEncoderModel(_cfg(use_moe=True, moe=MoEConfig(num_experts=4, expert_hidden=32)))
    d, m = count_params(dense), count_params(moe)
    assert d["total"] == d["active"]
    assert m["active"] - d["active"] == 16 * 4  # only the router
    assert m["total"] - m["active"] == 3 * (16 * 32 * 2)  # three idle experts


def test_bad_config_and_too_long_input():
    with pytest.raises(ValueError, match="divisible"):
        _cfg(dim=15)
    with pytest.raises(ValueError, match="unknown pooling"):
        Pooling(8, "sum")
    model = SentenceEncoderModel(_cfg())
    with pytest.raises(ValueError, match="exceeds max_len"):
        model(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 13, dtype=torch.bool))
