"""Mixture-of-Experts feed-forward: top-k gating, capacity, Switch balance loss, router z-loss.

Shape legend
    B batch, T tokens per sequence, N = routed (non-padding) tokens, D model width,
    E experts, H expert hidden width, K experts per token (top-k, 1 or 2), C expert capacity.

Design (after lucidrains' mixture-of-experts / st-moe): the experts are one batched weight
``(E, D, H)`` applied with ``einsum`` to an ``(E, C, D)`` buffer, and the gate returns the
dispatch, the combine weights and the aux losses. No Python loop over experts or tokens.

The one departure: lucidrains builds a dense one-hot ``dispatch (N, E, C)`` tensor and moves
tokens with an einsum, which costs O(N^2) since C grows with N. Here ``dispatch`` is the same
information as indices (the buffer slot ``e * C + c`` of each (token, choice), -1 when dropped),
so tokens move into the buffer and back with two gathers: O(N * K * D).

Dropped tokens (over capacity) get a zero MoE output, so in the pre-norm residual block
``x + moe(norm(x))`` they pass through unchanged on the residual path.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config


@dataclasses.dataclass
class MoEConfig(Config):
    num_experts: int = 4
    top_k: int = 1  # 1 (Switch) or 2 (GShard / ST-MoE)
    expert_hidden: int = 512  # H of each expert; equal active params: dense ffn_hidden // top_k
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    min_capacity: int = 4
    balance_weight: float = 0.01  # Switch load-balancing loss coefficient
    z_loss_weight: float = 1e-3  # router z-loss coefficient (ST-MoE)
    jitter: float = 0.01  # multiplicative router-input noise in training (Switch)
    expert_dropout: float = 0.1  # dropout on expert hidden activations
    every: int = 2  # MoE replaces the dense FFN in every Nth block (blocks every-1, 2*every-1, ...)

    def __post_init__(self) -> None:
        if self.top_k not in (1, 2):
            raise ValueError(f"moe.top_k must be 1 or 2, got {self.top_k}")
        if self.num_experts < self.top_k:
            raise ValueError(f"moe.num_experts ({self.num_experts}) must be >= top_k ({self.top_k})")
        if self.every < 1:
            raise ValueError(f"moe.every must be >= 1, got {self.every}")


class RoutingStats(NamedTuple):
    """Per-layer routing statistics (detached; for metrics.jsonl and plots)."""

    load: torch.Tensor  # (E,) fraction of the router's top-k assignments per expert, before capacity
    kept: torch.Tensor  # (E,) tokens each expert actually processed
    drop_rate: torch.Tensor  # () fraction of assignments dropped for capacity
    entropy: torch.Tensor  # () mean router entropy (nats)


class Routing(NamedTuple):
    dispatch: torch.Tensor  # (N, K) long: buffer slot e * C + c, or -1 when dropped
    combine: torch.Tensor  # (N, K) combine weights (0 for dropped)
    capacity: int  # buffer slots per expert: min(capacity limit, busiest expert's demand)
    balance_loss: torch.Tensor  # ()
    z_loss: torch.Tensor  # ()
    stats: RoutingStats


class MoEOutput(NamedTuple):
    out: torch.Tensor  # (B, T, D)
    balance_loss: torch.Tensor  # () unweighted
    z_loss: torch.Tensor  # () unweighted
    stats: RoutingStats


def switch_balance_loss(probs: torch.Tensor, first_choice: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``E * sum_i f_i * P_i``.

    probs (N, E) router probabilities; first_choice (N,) each token's top-1 expert. ``f_i`` is the
    fraction of tokens whose first choice is expert i, ``P_i`` the mean router probability of i.
    Equals 1 when routing is uniform.
    """
    f = F.one_hot(first_choice, num_experts).to(probs.dtype).mean(0)  # (E,)
    p = probs.mean(0)  # (E,)
    return num_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2; keeps logits small."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, factor: float, minimum: int) -> int:
    return min(max(minimum, math.ceil(factor * top_k * num_tokens / num_experts)), num_tokens * top_k)


class TopKGate(nn.Module):
    """Router: logits -> top-k experts -> capacity-limited buffer slots + combine weights."""

    def __init__(self, dim: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(dim, cfg.num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> Routing:  # x (N, D)
        cfg, n, e = self.cfg, x.shape[0], self.cfg.num_experts
        if self.training and cfg.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - cfg.jitter, 1.0 + cfg.jitter)
        # The router runs in float32 even under autocast: softmax of bf16 logits routes badly.
        logits = F.linear(x.float(), self.proj.weight.float())  # (N, E)
        probs = logits.softmax(-1)
        top_p, top_e = probs.topk(cfg.top_k, dim=-1)  # (N, K)
        combine = top_p / top_p.sum(-1, keepdim=True) if cfg.top_k > 1 else top_p
        factor = cfg.capacity_factor_train if self.training else cfg.capacity_factor_eval
        # Position of each assignment in its expert's queue; all first choices queue before any
        # second choice (GShard), tokens in order within a choice.
        onehot = F.one_hot(top_e.t().reshape(-1), e)  # (K*N, E)
        # The buffer is no larger than the busiest expert needs: with balanced routing and the
        # eval capacity factor (2.0) a full-capacity buffer would be mostly empty slots.
        cap = min(expert_capacity(n, e, cfg.top_k, factor, cfg.min_capacity), int(onehot.sum(0).max()) if n else 0)
        position = ((onehot.cumsum(0) - 1) * onehot).sum(-1).view(cfg.top_k, n).t()  # (N, K)
        keep = position < cap
        dispatch = torch.where(keep, top_e * cap + position, torch.full_like(position, -1))
        combine = combine * keep
        kept = (onehot.view(cfg.top_k, n, e) * keep.t().unsqueeze(-1)).sum((0, 1))  # (E,)
        with torch.no_grad():
            stats = RoutingStats(
                load=onehot.sum(0).float() / max(1, n * cfg.top_k),
                kept=kept.float(),
                drop_rate=1.0 - keep.float().mean() if n else torch.zeros(()),
                entropy=-(probs * probs.clamp_min(1e-9).log()).sum(-1).mean() if n else torch.zeros(()),
            )
        return Routing(dispatch, combine.to(x.dtype), cap, switch_balance_loss(probs, top_e[:, 0], e),
                       router_z_loss(logits), stats)


class Experts(nn.Module):
    """E feed-forward experts stored as one batched weight; GELU or SwiGLU."""

    def __init__(self, num_experts: int, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.activation = activation
        gate_mult = 2 if activation == "swiglu" else 1
        self.w_in = nn.Parameter(torch.empty(num_experts, dim, hidden * gate_mult))  # (E, D, H or 2H)
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, dim))  # (E, H, D)
        nn.init.normal_(self.w_in, std=dim ** -0.5)
        nn.init.normal_(self.w_out, std=hidden ** -0.5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (E, C, D)
        # torch.bmm is einsum("ecd,edh->ech"); called directly it skips einsum's planning and
        # copies, which cost ~30% of the layer at these sizes on CPU.
        h = torch.bmm(x, self.w_in)  # (E, C, H or 2H)
        if self.activation == "swiglu":
            a, b = h.chunk(2, dim=-1)  # (E, C, H) each
            h = F.silu(a) * b
        else:
            h = F.gelu(h)
        return torch.bmm(self.dropout(h), self.w_out)  # (E, C, D) = einsum("ech,ehd->ecd")


class MoEFeedForward(nn.Module):
    """Drop-in replacement for the dense feed-forward of a transformer block."""

    def __init__(self, dim: int, cfg: MoEConfig, activation: str = "gelu"):
        super().__init__()
        self.cfg = cfg
        self.gate = TopKGate(dim, cfg)
        self.experts = Experts(cfg.num_experts, dim, cfg.expert_hidden, activation, cfg.expert_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MoEOutput:
        """x (B, T, D); mask (B, T) bool, True for real tokens (padding is not routed)."""
        b, t, d = x.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        tokens = x[mask]  # (N, D)
        n, e, k = tokens.shape[0], self.cfg.num_experts, self.cfg.top_k
        routing = self.gate(tokens)
        slots = e * routing.capacity
        # Both moves are gathers (scatters are slow on CPU): each buffer slot names its token,
        # and each (token, choice) names its slot; the extra last row is zeros for empty or
        # dropped entries.
        flat_dispatch = routing.dispatch.reshape(-1)  # (N*K,)
        token_of_assignment = torch.arange(n, device=x.device).repeat_interleave(k)  # (N*K,)
        token_of_slot = torch.full((slots + 1,), n, dtype=torch.long, device=x.device)  # (E*C + 1,)
        token_of_slot[flat_dispatch.where(flat_dispatch >= 0, slots)] = token_of_assignment
        padded_tokens = torch.cat([tokens, tokens.new_zeros(1, d)])  # (N + 1, D)
        buffer = padded_tokens[token_of_slot[:slots]].view(e, routing.capacity, d)  # (E, C, D)
        expert_out = self.experts(buffer).reshape(slots, d)  # (E*C, D)
        expert_out = torch.cat([expert_out, expert_out.new_zeros(1, d)])  # (E*C + 1, D)
        picked = expert_out[routing.dispatch.where(routing.dispatch >= 0, slots)]  # (N, K, D)
        routed = torch.einsum("nkd,nk->nd", picked, routing.combine.to(picked.dtype))  # (N, D)
        out = x.new_zeros(b, t, d)
        out[mask] = routed.to(out.dtype)
        return MoEOutput(out, routing.balance_loss, routing.z_loss, routing.stats)
