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
so tokens move into the buffer with one gather and back with one ``index_add``: O(N * K * D).

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
    # 0: no limit outside training, so a text's vector does not depend on what else is in its batch
    # (with a limit, a text encoded alone could lose tokens that a larger batch keeps)
    capacity_factor_eval: float = 0.0
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
    return balance_loss_from_counts(probs.mean(0), torch.bincount(first_choice, minlength=num_experts), probs.shape[0])


def balance_loss_from_counts(mean_probs: torch.Tensor, first_choice_counts: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The Switch loss from ``P`` (E,) and the (E,) counts of first choices, which the gate's
    queue already holds."""
    f = first_choice_counts.to(mean_probs.dtype) / max(1, num_tokens)  # (E,)
    return mean_probs.shape[0] * (f * mean_probs).sum()


def multiplicative_jitter(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x * u with u ~ U(1 - eps, 1 + eps) per element, u drawn at 8-bit resolution (256 levels).

    The generator's cost is per 32-bit draw (uniform_ on a (N, D) router input took as long as
    the dense layer's GELU), so each draw is split into four bytes; 256 evenly spaced levels
    across +-eps are as good a jitter as a float's 2^24.
    """
    draws = torch.randint(-2**31, 2**31 - 1, (math.ceil(x.numel() / 4),), dtype=torch.int32, device=x.device)
    levels = draws.view(torch.uint8)[: x.numel()].view(x.shape)  # (..., D) uniform on 0..255
    return torch.addcmul(x * (1.0 - eps), x, levels, value=2.0 * eps / 255)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2; keeps logits small."""
    return z_loss_from_logsumexp(torch.logsumexp(logits, dim=-1))


def z_loss_from_logsumexp(lse: torch.Tensor) -> torch.Tensor:
    """The z-loss from each token's logsumexp (N,), which the gate has already computed."""
    return lse.pow(2).mean()


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, factor: float, minimum: int) -> int:
    """Buffer slots per expert; ``factor`` 0 means no limit (every assignment fits)."""
    if factor <= 0:
        return num_tokens * top_k
    return min(max(minimum, math.ceil(factor * top_k * num_tokens / num_experts)), num_tokens * top_k)


class TopKGate(nn.Module):
    """Router: logits -> top-k experts -> capacity-limited buffer slots + combine weights."""

    def __init__(self, dim: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(dim, cfg.num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> Routing:  # x (N, D)
        # Every line here is a kernel launch on a few thousand numbers, so on CPU the gate's cost
        # is the number of ops, not their size: each quantity is derived once and reused. The
        # router works expert-major, (E, N): reductions over the E experts then run across E
        # contiguous rows instead of along rows of 4 numbers (logsumexp 2x, cumsum 1.4x faster),
        # and the top-k choices come out choice-major, the order the queue needs.
        cfg, n, e, k = self.cfg, x.shape[0], self.cfg.num_experts, self.cfg.top_k
        if self.training and cfg.jitter > 0:
            x = multiplicative_jitter(x, cfg.jitter)
        # The router runs in float32 even under autocast: softmax of bf16 logits routes badly.
        logits = F.linear(self.proj.weight.float(), x.float())  # (E, N)
        lse = logits.logsumexp(0)  # (N,)
        log_probs = logits - lse  # (E, N)
        probs = log_probs.exp()
        top_p, top_e = probs.topk(k, dim=0) if k > 1 else probs.max(0, keepdim=True)  # (K, N); max is 4x cheaper
        combine = top_p / top_p.sum(0) if k > 1 else top_p
        factor = cfg.capacity_factor_train if self.training else cfg.capacity_factor_eval
        # Position of each assignment in its expert's queue; all first choices queue before any
        # second choice (GShard), tokens in order within a choice.
        choice_major = top_e.reshape(1, -1)  # (1, K*N)
        queue = (torch.arange(e, device=x.device).unsqueeze(1) == choice_major).cumsum(1)  # (E, K*N)
        demand = queue[:, -1] if n else queue.new_zeros(e)  # (E,) assignments per expert
        first_choice_counts = queue[:, n - 1] if n else demand  # (E,) the first choices queue first
        # The buffer is no larger than the busiest expert needs: without a limit (eval) or with a
        # generous one, a full-capacity buffer would be mostly empty slots.
        cap = min(expert_capacity(n, e, k, factor, cfg.min_capacity), int(demand.max()) if n else 0)
        position = (queue.gather(0, choice_major) - 1).view(k, n)  # (K, N)
        keep = position < cap
        dispatch = torch.where(keep, top_e * cap + position, -1)  # (K, N)
        with torch.no_grad():
            kept = demand.clamp(max=cap).float()  # an expert keeps its first `cap` assignments
            stats = RoutingStats(
                load=demand.float() / max(1, n * k),
                kept=kept,
                drop_rate=1.0 - kept.sum() / (n * k) if n else torch.zeros(()),
                entropy=(probs * log_probs).sum() / -n if n else torch.zeros(()),
            )
        # Routing holds (N, K) views of the (K, N) tensors; .t() of them is contiguous again.
        return Routing(dispatch.t(), (combine * keep).to(x.dtype).t(), cap,
                       balance_loss_from_counts(probs.mean(1), first_choice_counts, n), z_loss_from_logsumexp(lse), stats)


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
        flat_x = x.reshape(b * t, d)
        # index_select with explicit positions: boolean-mask indexing x[mask] costs ~5x more on CPU.
        positions = (torch.arange(b * t, device=x.device) if mask is None
                     else mask.reshape(-1).nonzero().squeeze(1))  # (N,) flat positions of real tokens
        tokens = flat_x.index_select(0, positions)  # (N, D)
        e, k = self.cfg.num_experts, self.cfg.top_k
        routing = self.gate(tokens)
        slots = e * routing.capacity
        # Each buffer slot names the row of x it reads and its combine weight, so the expert
        # outputs, once weighted, are added straight back into the rows they came from: one
        # gather in, one index_add out, no (N, K, D) intermediate. Empty slots (and assignments
        # dropped for capacity, which all land on one spare slot) have weight 0 and write to a
        # spare output row that is cut off, which spares concatenating zero rows.
        slot_of = routing.dispatch.t().reshape(-1)  # (K*N,) choice-major assignment -> slot, -1 when dropped
        slot_of = slot_of.where(slot_of >= 0, slots)
        row_of_slot = torch.full((slots + 1,), b * t, dtype=torch.long, device=x.device)  # (E*C + 1,)
        row_of_slot[slot_of] = positions.repeat(k)  # choice-major, like slot_of
        weight_of_slot = routing.combine.new_zeros(slots + 1)
        weight_of_slot[slot_of] = routing.combine.t().reshape(-1)
        rows = row_of_slot[:slots]  # (E*C,) b*t for an empty slot
        buffer = flat_x.index_select(0, rows.clamp_max(b * t - 1)).view(e, routing.capacity, d)  # (E, C, D)
        expert_out = (self.experts(buffer).view(slots, d) * weight_of_slot[:slots, None]).to(x.dtype)  # (E*C, D); bf16 under autocast
        # (B*T + 1, D), the last row taking the empty slots; a top-2 token's two slots add up.
        # index_add_ serves top-1 too: on CPU it is faster than index_copy_ (80 vs 105 us).
        out = x.new_zeros(b * t + 1, d).index_add_(0, rows, expert_out)
        return MoEOutput(out[: b * t].view(b, t, d), routing.balance_loss, routing.z_loss, routing.stats)
