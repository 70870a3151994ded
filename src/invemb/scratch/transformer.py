"""The from-scratch transformer sentence encoder (pre-norm, SDPA attention, dense or MoE FFN).

Shape legend
    B batch, T tokens, D model width (``dim``), NH attention heads, HD head width (D / NH),
    F dense feed-forward hidden width, V vocabulary, P pooled sentence width.
    ``mask`` is (B, T) bool, True for real tokens, False for padding.

``forward`` returns the auxiliary MoE losses and routing statistics explicitly
(:class:`EncoderOutput`), never stashed on modules.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config
from invemb.scratch.moe import MoEConfig, MoEFeedForward, RoutingStats
from invemb.scratch.pooling import Pooling


@dataclasses.dataclass
class TransformerConfig(Config):
    vocab_size: int = 8000  # set from the tokenizer
    pad_id: int = 0
    dim: int = 128
    depth: int = 4
    heads: int = 4
    ffn_hidden: int = 512
    activation: str = "gelu"  # "gelu" or "swiglu"
    positions: str = "rotary"  # "rotary" or "learned"
    max_len: int = 64
    dropout: float = 0.1
    pooling: str = "mean"
    use_moe: bool = False
    moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.activation not in ("gelu", "swiglu"):
            raise ValueError(f"activation must be gelu or swiglu, got {self.activation!r}")
        if self.positions not in ("rotary", "learned"):
            raise ValueError(f"positions must be rotary or learned, got {self.positions!r}")

    def is_moe_block(self, i: int) -> bool:
        return self.use_moe and (i + 1) % self.moe.every == 0


class MoEAux(NamedTuple):
    """Auxiliary MoE terms summed over MoE blocks (zeros for a dense model) and per-layer stats."""

    balance_loss: torch.Tensor  # () unweighted Switch loss, summed over MoE blocks
    z_loss: torch.Tensor  # () unweighted router z-loss, summed over MoE blocks
    layers: list[tuple[int, RoutingStats]]  # (block index, stats) for each MoE block


class EncoderOutput(NamedTuple):
    hidden: torch.Tensor  # (B, T, D)
    aux: MoEAux


class SentenceOutput(NamedTuple):
    embedding: torch.Tensor  # (B, P) L2-normalised
    aux: MoEAux


def rotary_tables(t: int, head_dim: int, device: torch.device, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)  # (HD/2,)
    angles = torch.outer(torch.arange(t, device=device).float(), inv_freq)  # (T, HD/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x1, x2) of x (B, NH, T, HD) by position-dependent angles."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, NH, T, HD/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads, self.rotary, self.dropout = cfg.heads, cfg.positions == "rotary", cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, NH, T, HD) each
        if self.rotary:
            cos, sin = rotary_tables(t, d // self.heads, x.device)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys_visible = mask[:, None, None, :]  # (B, 1, 1, T): every query sees every real key
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys_visible, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class FeedForward(nn.Module):
    """Dense GELU or SwiGLU feed-forward (no biases, so one expert can hold the same weights)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.activation = activation
        self.w_in = nn.Linear(dim, hidden * (2 if activation == "swiglu" else 1), bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D)
        h = self.w_in(x)
        if self.activation == "swiglu":
            a, b = h.chunk(2, dim=-1)
            h = F.silu(a) * b
        else:
            h = F.gelu(h)
        return self.w_out(self.dropout(h))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, moe: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        self.ffn = MoEFeedForward(cfg.dim, cfg.moe, cfg.activation) if moe else FeedForward(cfg.dim, cfg.ffn_hidden, cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        x = x + self.drop(self.attn(self.norm1(x), mask))
        if isinstance(self.ffn, MoEFeedForward):
            moe = self.ffn(self.norm2(x), mask)
            return x + self.drop(moe.out), moe
        return x + self.drop(self.ffn(self.norm2(x))), None


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, cfg.is_moe_block(i)) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:  # (B, T), (B, T)
        if ids.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds max_len {self.cfg.max_len}")
        x = self.embed(ids)  # (B, T, D)
        if self.pos is not None:
            x = x + self.pos(torch.arange(ids.shape[1], device=ids.device))  # (T, D) broadcast
        x = self.drop(x)
        zero = x.new_zeros((), dtype=torch.float32)
        balance, z, layers = zero, zero, []
        for i, block in enumerate(self.blocks):
            x, moe = block(x, mask)
            if moe is not None:
                balance, z = balance + moe.balance_loss, z + moe.z_loss
                layers.append((i, moe.stats))
        return EncoderOutput(self.norm(x), MoEAux(balance, z, layers))


class SentenceEncoderModel(nn.Module):
    """Transformer + pooling: token ids -> L2-normalised sentence vectors."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = TransformerEncoder(cfg)
        self.pooling = Pooling(cfg.dim, cfg.pooling)
        self.dim = self.pooling.out_dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> SentenceOutput:
        out = self.encoder(ids, mask)
        return SentenceOutput(self.pooling(out.hidden, mask), out.aux)  # (B, P)


def count_params(model: SentenceEncoderModel) -> dict[str, int]:
    """Total parameters, and active parameters per token (one expert's share per MoE block x top_k)."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for block in model.encoder.blocks:
        if isinstance(block.ffn, MoEFeedForward):
            cfg = block.ffn.cfg
            expert_params = sum(p.numel() for p in block.ffn.experts.parameters())
            inactive += expert_params * (cfg.num_experts - cfg.top_k) // cfg.num_experts
    return {"total": total, "active": total - inactive}
