import math

import pytest
import torch

from invemb.scratch.moe import (MoEConfig, MoEFeedForward, TopKGate, expert_capacity, multiplicative_jitter,
                                router_z_loss, switch_balance_loss)
from invemb.scratch.transformer import FeedForward


def _moe(dim=16, **kw):
    torch.manual_seed(0)
    cfg = MoEConfig(**{"num_experts": 4, "expert_hidden": 32, "expert_dropout": 0.0, "jitter": 0.0, **kw})
    return MoEFeedForward(dim, cfg)


@pytest.mark.parametrize("top_k", [1, 2])
def test_routing_respects_capacity(top_k):
    moe = _moe(top_k=top_k, capacity_factor_train=0.5, min_capacity=1).train()
    x = torch.randn(64, 16)
    # Skew the router so most tokens want expert 0 and capacity must bite.
    with torch.no_grad():
        moe.gate.proj.weight.zero_()
        moe.gate.proj.weight[0] = x.mean(0) * 5
    routing = moe.gate(x)
    limit = expert_capacity(64, 4, top_k, 0.5, 1)
    assert routing.capacity <= limit
    kept = routing.dispatch[routing.dispatch >= 0]
    assert kept.unique().numel() == kept.numel()  # no slot used twice
    per_expert = torch.bincount(kept // routing.capacity, minlength=4)
    assert per_expert.max() <= limit
    assert routing.stats.drop_rate > 0
    assert torch.equal(routing.stats.kept, per_expert.float())
    # Dropped assignments carry zero combine weight.
    assert torch.all(routing.combine[routing.dispatch < 0] == 0)


def test_dropped_tokens_get_zero_output_and_padding_is_not_routed():
    moe = _moe(capacity_factor_train=0.25, min_capacity=1).train()
    x = torch.randn(2, 8, 16)
    mask = torch.tensor([[True] * 8, [True] * 3 + [False] * 5])
    out = moe(x, mask)
    assert out.out.shape == (2, 8, 16)
    assert torch.all(out.out[~mask] == 0)
    dropped_rows = (out.out[mask].abs().sum(-1) == 0).sum()
    assert dropped_rows > 0  # capacity 0.25 * 11 / 4 -> 1 slot per expert: most tokens drop
    assert out.stats.load.sum() == pytest.approx(1.0)


def test_outside_training_a_sequence_routes_the_same_alone_and_in_a_batch():
    """No capacity limit at inference by default: with a router skewed to one expert, a sequence
    encoded alone keeps every token, as it does inside a larger batch."""
    moe = _moe(min_capacity=1).eval()
    x = torch.randn(8, 12, 16)
    with torch.no_grad():
        moe.gate.proj.weight.zero_()
        moe.gate.proj.weight[0] = x.reshape(-1, 16).mean(0) * 5
        batch = moe(x)
        alone = moe(x[:1])
    assert batch.stats.drop_rate == 0 and alone.stats.drop_rate == 0
    assert torch.allclose(alone.out[0], batch.out[0], atol=1e-6)
    limited = _moe(min_capacity=1, capacity_factor_eval=1.0).eval()
    limited.load_state_dict(moe.state_dict())
    with torch.no_grad():
        assert limited(x[:1]).stats.drop_rate > 0  # a limit makes the answer depend on the batch


def test_balance_loss_equals_hand_computed_value():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    first = probs.argmax(-1)  # experts 0, 0, 1, 2 -> f = (0.5, 0.25, 0.25)
    # P = (0.4, 0.375, 0.225); E * sum f_i P_i = 3 * (0.2 + 0.09375 + 0.05625) = 1.05
    assert switch_balance_loss(probs, first, 3).item() == pytest.approx(1.05, abs=1e-6)
    uniform = torch.full((4, 3), 1 / 3)
    assert switch_balance_loss(uniform, torch.tensor([0, 1, 2, 0]), 3).item() == pytest.approx(1.0, abs=1e-6)


def test_z_loss_and_gate_losses_on_a_fixed_router_output():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp: log 2 and log 4
    assert router_z_loss(logits).item() == pytest.approx((math.log(2) ** 2 + math.log(4) ** 2) / 2, abs=1e-6)
    gate = TopKGate(2, MoEConfig(num_experts=2, top_k=1, jitter=0.0)).eval()
    with torch.no_grad():
        gate.proj.weight.copy_(torch.eye(2))
    routing = gate(logits)  # identity router: these inputs are the logits
    probs = logits.softmax(-1)  # rows (0.5, 0.5) and (0.75, 0.25); first choices 0 and 0
    expected = 2 * (1.0 * probs[:, 0].mean() + 0.0 * probs[:, 1].mean())
    assert routing.balance_loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert routing.z_loss.item() == pytest.approx(router_z_loss(logits).item(), abs=1e-6)


def test_gradients_reach_every_expert_that_received_tokens():
    moe = _moe(num_experts=6).train()
    x = torch.randn(3, 10, 16, requires_grad=True)
    out = moe(x)
    (out.out.pow(2).sum() + out.balance_loss + out.z_loss).backward()
    got = out.stats.kept > 0
    assert got.sum() >= 2
    grad_in = moe.experts.w_in.grad.abs().sum((1, 2))
    grad_out = moe.experts.w_out.grad.abs().sum((1, 2))
    assert torch.all(grad_in[got] > 0) and torch.all(grad_out[got] > 0)
    assert torch.all(grad_in[~got] == 0)
    assert moe.gate.proj.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_top1_with_one_expert_equals_dense_layer(activation):
    torch.manual_seed(1)
    dense = FeedForward(16, 24, activation)
    moe = MoEFeedForward(16, MoEConfig(num_experts=1, top_k=1, expert_hidden=24, expert_dropout=0.0,
                                       capacity_factor_eval=1.0, min_capacity=1), activation).eval()
    with torch.no_grad():
        moe.experts.w_in[0].copy_(dense.w_in.weight.t())
        moe.experts.w_out[0].copy_(dense.w_out.weight.t())
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 4 + [False]])
    got = moe(x, mask).out
    torch.testing.assert_close(got[mask], dense(x[mask]), rtol=1e-5, atol=1e-6)


def test_top2_combine_weights_and_two_distinct_experts():
    moe = _moe(top_k=2, capacity_factor_eval=4.0).eval()
    routing = moe.gate(torch.randn(20, 16))
    assert routing.dispatch.shape == (20, 2)
    assert torch.all(routing.dispatch >= 0)
    torch.testing.assert_close(routing.combine.sum(-1), torch.ones(20))
    experts = routing.dispatch // routing.capacity
    assert torch.all(experts[:, 0] != experts[:, 1])


def test_bad_moe_config_is_refused():
    with pytest.raises(ValueError, match="top_k must be 1 or 2"):
        MoEConfig(top_k=3)
    with pytest.raises(ValueError, match="num_experts"):
        MoEConfig(num_experts=1, top_k=2)


def test_an_all_padding_batch_routes_nothing():
    moe = _moe().eval()
    out = moe(torch.randn(2, 3, 16), torch.zeros(2, 3, dtype=torch.bool))
    assert out.out.shape == (2, 3, 16) and torch.all(out.out == 0)
    assert out.stats.drop_rate.item() == 0.0 and torch.all(out.stats.load == 0)


def test_multiplicative_jitter_is_uniform_within_eps_and_seeded():
    x = torch.full((400, 50), 2.0)
    torch.manual_seed(3)
    y = multiplicative_jitter(x, 0.01)
    u = y / x  # the multiplier per element
    assert y.shape == x.shape and y.dtype == x.dtype
    assert u.min() >= 0.99 - 1e-6 and u.max() <= 1.01 + 1e-6
    assert abs(u.mean().item() - 1.0) < 2e-4  # uniform: mean 1, sd of the mean 0.01 / sqrt(3 * 20000)
    assert u.std().item() == pytest.approx(0.02 / math.sqrt(12), rel=0.05)
    assert 250 <= len(torch.unique(u)) <= 256  # 8-bit levels
    torch.manual_seed(3)
    assert torch.equal(multiplicative_jitter(x, 0.01), y)
    odd = torch.ones(3, 7)  # numel not a multiple of 4
    assert multiplicative_jitter(odd, 0.1).shape == (3, 7)


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_under_bf16_autocast_keeps_the_residual_dtype(top_k):
    moe = _moe(top_k=top_k).train()
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 7, 16, dtype=dtype, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = moe(x, torch.rand(3, 7) > 0.2)
        assert out.out.dtype == dtype and out.out.shape == (3, 7, 16)
        out.out.float().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
