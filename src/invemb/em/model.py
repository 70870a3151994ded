"""TokenEmbeddingModel (EM): a frozen backbone plus a trained token head.

Words, phrases and sentences go through the same path (backbone -> head), so they share one
space. The head has three parts:

- an aggregator over the backbone's output: ``mlp`` takes the pooled vector as is (order lost);
  ``attention`` pools the token states with learned, position-aware weights; ``transformer``
  runs one or two pre-norm transformer layers with learned positions over the token states and
  mean-pools them (order-aware: the research notes' remedy for pooled vectors losing word order);
  ``bind`` adds to the mean-pooled states the mean of position-bound token features,
  ``V(LN(s_t)) * P_t`` (each token's features multiplied elementwise by a learned vector of its
  position), so two words that trade places change the vector by ``V(s_a - s_b) * (P_j - P_i)``:
  order is carried by a product of word and position, which a sum of the two inside a
  transformer layer learns only slowly;
- a projection MLP (H -> proj_hidden -> embed_dim, GELU, LayerNorm, no bias on the last layer),
  L2-normalised; with ``skip`` (the presets' choice) a linear skip path H -> embed_dim,
  orthogonally initialised, is added to it and the MLP's last layer starts at zero, so the EM
  starts out as the backbone's own pooled vector (a rotation of it: every cosine, so WordSim
  and SimLex, equal the backbone's) and training moves it from there;
- a reconstruction MLP back to the backbone's pooled hidden vector.

All order-aware aggregators start out as plain mean pooling (zero-initialised deltas), so
training begins from the backbone's own geometry. Their learned positions count words
(``positions="words"``, every preset): the pieces of one word share its position, read off the
token ids with the tokenizer's word-start table (:func:`word_start_table`, kept in the head so a
sentence-transformers export computes the same), so replacing a word by one of another piece count
moves only that word, not every position after it.

Shapes: B items, T tokens, H backbone hidden, P proj hidden, D embed dim.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config

HEADS = ("mlp", "attention", "transformer", "bind")


@dataclasses.dataclass
class HeadConfig(Config):
    head: str = "bind"  # mlp | attention | transformer | bind (bind: best order discrimination and fastest, docs/em.md)
    hidden: int = 384  # backbone hidden size H (set from the backbone)
    proj_hidden: int = 768
    embed_dim: int = 384  # the backbone's width: 256 capped dev reconstruction cosine near 0.87
    agg_layers: int = 1
    agg_heads: int = 6
    agg_ff: int = 768
    max_tokens: int = 64
    dropout: float = 0.1
    pos_std: float = 0.02  # init std of the aggregators' learned position embeddings
    bind_width: int = 768  # width W of the bind aggregator's position-bound features
    # Orthogonal linear skip around the projection MLP, whose last layer then starts at zero: training
    # starts from the backbone's geometry. False here only so heads saved before it existed load as
    # they were trained; every preset turns it on.
    skip: bool = False
    # What the aggregators' learned positions count: "tokens" (word pieces), or "words" (every piece of a
    # word shares its word's position, read off the token ids with the tokenizer's word-start table, so a
    # synonym of another piece count does not shift every later position: such probes scored 0.28 on
    # order discrimination against 0.85 for the rest). "tokens" here only so older heads load as trained.
    positions: str = "tokens"
    vocab_size: int = 0  # the tokenizer's size (set from the backbone when positions == "words")
    # bind head only: width of an order sub-space appended to the embed_dim dimensions (0: none, the bound
    # features are added into the pooled vector instead). The sub-space holds the covariance of the
    # position-bound features with position over the text's non-special tokens, which is exactly zero for
    # a single word (all its pieces share one position): word vectors live in the first embed_dim
    # dimensions only, so what the sub-space does for order cannot disturb how a sentence ranks words.
    order_dims: int = 0
    # With order_dims: the share of a text vector's squared norm held by the order sub-space (0: free, the
    # two parts are concatenated as they come and their ratio is learned). A fixed share keeps the order
    # term from competing with the others through the normalisation: single words keep all of theirs in
    # the first embed_dim dimensions (their order part is zero), every longer text gives exactly this share.
    # Test split (bench/em_quality's 421 probes) / dev unit recall@10, default preset: no sub-space 0.846 / 0.207;
    # 64 dims free 0.729 / 0.202; share 0.2: 0.822 / 0.224; share 0.35: 0.891 / 0.219, and a controller on it
    # inverts at least as well (bench/inversion_eval, 50 sentences, token F1 wiki / WordNet 33.9 / 53.5 against
    # 33.2 / 49.5), so the default preset has 64 dims at 0.35; share 0.55: 0.929 / 0.195 (under the backbone's
    # 0.199). The sub-space alone (share -> 1, post hoc on the 0.35 head) reaches only 0.953: its misses are
    # swaps of near-synonyms in a list ("disturb, frighten, or scare"), which barely move it, and off-sense
    # substitutions ("speculative" -> "bad" fiction), which do; so no share reaches 0.95 and keeps sentence
    # meaning. 0 here so heads saved before it load as trained.
    order_share: float = 0.0

    @property
    def output_dim(self) -> int:
        """Width D of the EM vector: embed_dim, plus the order sub-space when there is one."""
        return self.embed_dim + self.order_dims

    presets = {
        "tiny": {"proj_hidden": 64, "embed_dim": 32, "agg_heads": 2, "agg_ff": 64, "max_tokens": 32, "skip": True,
                 "positions": "words"},
        "default": {"skip": True, "positions": "words", "order_dims": 64, "order_share": 0.35},
        "full": {"proj_hidden": 2048, "embed_dim": 768, "agg_layers": 2, "agg_heads": 16, "agg_ff": 2048, "max_tokens": 128,
                 "skip": True, "positions": "words"},
    }


class HeadOutput(NamedTuple):
    embedding: torch.Tensor  # (B, D), L2-normalised
    reconstruction: torch.Tensor  # (B, H)
    aggregated: torch.Tensor  # (B, H), the aggregator's output before projection


class AttentionPool(nn.Module):
    """Position-aware attention pooling; zero-initialised scorer = mean pooling at the start."""

    def __init__(self, hidden: int, max_tokens: int, pos_std: float = 0.02):
        super().__init__()
        self.pos = nn.Embedding(max_tokens, hidden)
        nn.init.normal_(self.pos.weight, std=pos_std)
        self.key = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.value_delta = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.value_delta.weight)
        nn.init.zeros_(self.value_delta.bias)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        pos = self.pos(positions)  # (B, T, H)
        logits = self.score(torch.tanh(self.key(states + pos))).squeeze(-1)  # (B, T)
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = logits.softmax(-1).unsqueeze(-1)  # (B, T, 1)
        values = states + self.value_delta(states + pos)  # (B, T, H)
        return (weights * values).sum(1)  # (B, H)


class TransformerAggregator(nn.Module):
    """Pre-norm transformer layers with learned positions over token states, then masked mean."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.pos = nn.Embedding(cfg.max_tokens, cfg.hidden)
        nn.init.normal_(self.pos.weight, std=cfg.pos_std)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.hidden, cfg.agg_heads, cfg.agg_ff, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.agg_layers))
        for layer in self.layers:  # start as the identity: the residual branches output zero
            nn.init.zeros_(layer.self_attn.out_proj.weight)
            nn.init.zeros_(layer.self_attn.out_proj.bias)
            nn.init.zeros_(layer.linear2.weight)
            nn.init.zeros_(layer.linear2.bias)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        pos = self.pos(positions)  # (B, T, H)
        h = states + pos  # (B, T, H)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)  # (B, T, H)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        mean_states = (states * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H): the backbone's pooling
        # Positions enter only through the layers' delta, so at init this is exactly mean pooling.
        delta = ((h - states - pos) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return mean_states + delta  # (B, H)


class BindAggregator(nn.Module):
    """Mean-pooled token states plus the mean of position-bound features ``V(LN(s_t)) * P_t``.

    With ``order_dims`` the bound features go to their own sub-space instead: the forward returns the
    plain mean-pooled states and, separately, ``out(mean_t V_t * (P_t - mean P))`` over the content
    (non-special) tokens, which is zero when every content token sits at one position."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.bind_width)
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.bind_width))  # (T, W): ~ random +-1 codes
        self.subspace = cfg.order_dims > 0
        # zero-initialised either way: the head starts as mean pooling
        self.out = nn.Linear(cfg.bind_width, cfg.order_dims if self.subspace else cfg.hidden, bias=not self.subspace)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                content: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``content`` (B, T) bool: the tokens the order sub-space reads (default: ``mask``).
        Returns the aggregated states (B, H) and the order sub-vector (B, O) or None."""
        m = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        n = m.sum(1).clamp_min(1.0)  # (B, 1)
        mean = (states * m).sum(1) / n  # (B, H)
        values = self.value(self.norm(states))  # (B, T, W)
        codes = self.pos[positions]  # (B, T, W)
        if not self.subspace:
            return mean + self.out((values * codes * m).sum(1) / n), None
        read = mask if content is None else content & mask  # (B, T)
        c = read.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        nc = c.sum(1, keepdim=True).clamp_min(1.0)  # (B, 1, 1)
        centred = codes - (codes * c).sum(1, keepdim=True) / nc  # (B, T, W): P_t - mean P
        # exactly zero, not rounding noise, when the content tokens sit at one position (a single word)
        spread = positions.masked_fill(~read, -1).amax(1) > positions.masked_fill(~read, positions.shape[1]).amin(1)  # (B,)
        order = self.out((values * centred * c).sum(1) / nc.squeeze(1)) * spread.unsqueeze(-1)  # (B, O)
        return mean, order  # (B, H), (B, O)


class TokenHead(nn.Module):
    """Aggregator + projection + reconstruction: backbone output -> EM vector."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"unknown head {cfg.head!r}; choose from {', '.join(HEADS)}")
        if cfg.positions not in ("tokens", "words"):
            raise ValueError(f"positions must be 'tokens' or 'words', got {cfg.positions!r}")
        if cfg.positions == "words" and cfg.head != "mlp" and cfg.vocab_size < 1:
            raise ValueError("positions='words' needs the tokenizer's vocab_size (set it from the backbone)")
        if cfg.order_dims < 0 or (cfg.order_dims and cfg.head != "bind"):
            raise ValueError(f"order_dims ({cfg.order_dims}) needs head='bind' and must be >= 0")
        if not 0.0 <= cfg.order_share < 1.0 or (cfg.order_share and not cfg.order_dims):
            raise ValueError(f"order_share ({cfg.order_share}) must be in [0, 1) and needs order_dims")
        if cfg.order_dims and cfg.vocab_size < 1:
            raise ValueError("order_dims needs the tokenizer's vocab_size (set it from the backbone)")
        self.cfg = cfg
        if cfg.positions == "words" and cfg.head != "mlp":
            # word_start[id]: token id starts a word (see word_start_table); all True = token positions
            self.register_buffer("word_start", torch.ones(cfg.vocab_size, dtype=torch.bool))
        else:
            self.word_start = None
        if cfg.order_dims:
            # special[id]: a special token ([CLS], [SEP], ...), which the order sub-space skips
            self.register_buffer("special", torch.zeros(cfg.vocab_size, dtype=torch.bool))
        else:
            self.special = None
        if cfg.head == "attention":
            self.aggregator: nn.Module | None = AttentionPool(cfg.hidden, cfg.max_tokens, cfg.pos_std)
        elif cfg.head == "transformer":
            self.aggregator = TransformerAggregator(cfg)
        elif cfg.head == "bind":
            self.aggregator = BindAggregator(cfg)
        else:
            self.aggregator = None
        self.proj = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.proj_hidden), nn.GELU(), nn.LayerNorm(cfg.proj_hidden), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.proj_hidden, cfg.embed_dim, bias=False))
        self.skip: nn.Linear | None = None
        if cfg.skip:
            # Square: a rotation (cosines kept exactly); H > D: a semi-orthogonal projection (kept nearly).
            self.skip = nn.Linear(cfg.hidden, cfg.embed_dim, bias=False)
            nn.init.orthogonal_(self.skip.weight)
            nn.init.zeros_(self.proj[-1].weight)
        self.recon = nn.Sequential(
            nn.Linear(cfg.output_dim, cfg.proj_hidden), nn.GELU(), nn.LayerNorm(cfg.proj_hidden),
            nn.Linear(cfg.proj_hidden, cfg.hidden))

    @property
    def uses_tokens(self) -> bool:
        return self.aggregator is not None

    def set_word_starts(self, table: torch.Tensor) -> None:
        """Install the tokenizer's word-start table (V,) bool (:func:`word_start_table`)."""
        if self.word_start is None:
            raise ValueError("this head counts token positions (positions='tokens'); it has no word-start table")
        if table.shape != self.word_start.shape:
            raise ValueError(f"word-start table has {table.shape[0]} entries, the head expects {self.word_start.shape[0]}")
        self.word_start.copy_(table.to(torch.bool))

    def set_special_tokens(self, ids: list[int]) -> None:
        """Mark the tokenizer's special token ids, which the order sub-space does not read."""
        if self.special is None:
            raise ValueError("this head has no order sub-space (order_dims=0)")
        self.special.zero_()
        self.special[torch.tensor([i for i in ids if 0 <= i < len(self.special)], dtype=torch.long)] = True

    def positions(self, mask: torch.Tensor, token_ids: torch.Tensor | None) -> torch.Tensor:
        """Position index of every token (B, T) long: its word's index when the head counts words and
        the token ids are given, else its own index."""
        T = mask.shape[1]
        if self.word_start is None or token_ids is None:
            return torch.arange(T, device=mask.device).expand(mask.shape[0], T)
        starts = self.word_start[token_ids.to(self.word_start.device).clamp(0, len(self.word_start) - 1)]  # (B, T)
        starts = (starts & mask.to(starts.device)).long()
        starts[:, 0] = 1  # the first token opens position 0 whatever it is
        return (starts.cumsum(1) - 1).clamp(0, T - 1).to(mask.device)  # (B, T)

    def aggregate(self, pooled: torch.Tensor | None, states: torch.Tensor | None, mask: torch.Tensor | None,
                  token_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The aggregated states (B, H) and the order sub-vector (B, O), None without a sub-space."""
        if self.aggregator is None:
            return pooled, None  # (B, H)
        T = self.cfg.max_tokens
        states, mask = states[:, :T], mask[:, :T]  # (B, T, H), (B, T)
        token_ids = None if token_ids is None else token_ids[:, :T]
        positions = self.positions(mask, token_ids)  # (B, T)
        if not isinstance(self.aggregator, BindAggregator):
            return self.aggregator(states, mask, positions), None
        content = None  # the order sub-space's tokens: all but the special ones, when the ids say which
        if self.special is not None and token_ids is not None:
            content = ~self.special[token_ids.to(self.special.device).clamp(0, len(self.special) - 1)].to(mask.device)
        return self.aggregator(states, mask, positions, content)

    def forward(self, pooled: torch.Tensor | None = None, states: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, token_ids: torch.Tensor | None = None) -> HeadOutput:
        """``token_ids`` (B, T): the backbone's input ids, from which a head counting word positions
        reads them (without them it counts token positions)."""
        agg, order = self.aggregate(pooled, states, mask, token_ids)  # (B, H), (B, O) | None
        y = self.proj(agg) if self.skip is None else self.proj(agg) + self.skip(agg)  # (B, embed_dim)
        if order is not None:
            share = self.cfg.order_share
            if share:  # a zero order part stays zero, so a single word's vector is its first part, normalised
                y, order = F.normalize(y, dim=-1) * (1.0 - share) ** 0.5, F.normalize(order, dim=-1) * share ** 0.5
            y = torch.cat([y, order], dim=-1)  # (B, D)
        z = F.normalize(y, dim=-1)  # (B, D)
        return HeadOutput(z, self.recon(z), agg)

    @property
    def last_projection(self) -> nn.Linear:
        return self.proj[-1]


class TokenEmbeddingModel(nn.Module):
    """Backbone + head as an :class:`invemb.Encoder`."""

    def __init__(self, backbone, head: TokenHead):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.dim = head.cfg.output_dim

    def _head_on_batch(self, batch) -> HeadOutput:
        pooled, states, mask = self.backbone(batch)
        return self.head(pooled.float(), states.float(), mask.bool(), batch["input_ids"])

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        from invemb.encoder import check_batch_size, check_texts

        check_texts(texts)
        check_batch_size(batch_size)
        self.eval()
        out = torch.empty(len(texts), self.dim)
        batches = list(self.backbone.length_sorted_batches(texts, batch_size))
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encode", unit="batch", dynamic_ncols=True)
        for idx in batches:
            out[idx] = self._head_on_batch(self.backbone.tokenize([texts[i] for i in idx])).embedding.float().cpu()
        return out  # (N, D)

    @torch.no_grad()
    def encode_in_context(self, sentence: str, span: str | tuple[int, int]) -> torch.Tensor:
        """The vector of one occurrence of ``span`` in ``sentence`` (D,): the backbone reads the whole
        sentence, the head aggregates only the span's tokens, so homographs ("bank" of a river vs a
        bank loan) get different vectors. ``span`` is a word or phrase (its first occurrence as whole
        words: "bank" is not found inside "banker") or (start, end) character offsets."""
        if isinstance(span, str):
            import re

            found = re.search(rf"(?<!\w){re.escape(span)}(?!\w)", sentence)
            if found is None:
                raise ValueError(f"span {span!r} not found as whole words in the sentence (give character offsets "
                                 "(start, end) for part of a word)")
            span = found.span()
        span_states, span_ids = self.backbone.span_states(sentence, *span, with_ids=True)
        span_states = span_states.float().unsqueeze(0)  # (1, t, H)
        if not span_states.shape[1]:
            raise ValueError(f"span {span} covers no token of the sentence")
        span_mask = torch.ones(1, span_states.shape[1], dtype=torch.bool)
        pooled = span_states.mean(1)  # (1, H)
        self.eval()
        return self.head(pooled, span_states, span_mask, span_ids.unsqueeze(0)).embedding[0]  # (D,)

    def save(self, path) -> None:
        save_head(self.head, Path(path))


def word_start_table(tokenizer) -> torch.Tensor:
    """(V,) bool: does token id v begin a word? WordPiece marks continuations with "##", SentencePiece
    and byte-level BPE mark word starts with "▁" / "Ġ"; special tokens always begin one. A
    vocabulary with none of these marks gets all True (token positions)."""
    vocab = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab)))
    pieces = ["" if p is None else p for p in pieces]
    if any(p.startswith("##") for p in pieces):
        starts = [not p.startswith("##") for p in pieces]
    elif any(p.startswith("▁") for p in pieces):
        starts = [p.startswith("▁") for p in pieces]
    elif any(p.startswith("Ġ") for p in pieces):
        starts = [p.startswith("Ġ") for p in pieces]
    else:
        starts = [True] * vocab
    for i in tokenizer.all_special_ids:
        if 0 <= i < vocab:
            starts[i] = True
    return torch.tensor(starts, dtype=torch.bool)


def build_head(cfg: HeadConfig, backbone) -> TokenHead:
    """A new head for ``backbone``: its hidden size, and its tokenizer's word-start table when the
    head counts word positions."""
    head = TokenHead(cfg.replace(hidden=backbone.hidden, vocab_size=len(backbone.tokenizer)))
    if head.word_start is not None:
        head.set_word_starts(word_start_table(backbone.tokenizer))
    if head.special is not None:
        head.set_special_tokens(list(backbone.tokenizer.all_special_ids))
    return head


def save_head(head: TokenHead, path: Path) -> None:
    from safetensors.torch import save_file

    from invemb.io import atomic_save_file

    path.mkdir(parents=True, exist_ok=True)
    atomic_save_file(path / "head.safetensors", lambda p: save_file({k: v.contiguous() for k, v in head.state_dict().items()}, p))
    head.cfg.save(path / "head_config.json")


def load_head(path: Path) -> TokenHead:
    from safetensors.torch import load_file

    head = TokenHead(HeadConfig.load(Path(path) / "head_config.json"))
    head.load_state_dict(load_file(str(Path(path) / "head.safetensors")))
    return head.eval()


def check_backbone_identity(saved: dict, current: dict) -> None:
    """Refuse a head trained on another backbone, naming both."""
    keys = ("name", "fingerprint", "hidden_size", "pooling", "prompt")
    if any(saved.get(k) != current.get(k) for k in keys):
        a = {k: saved.get(k) for k in keys}
        b = {k: current.get(k) for k in keys}
        raise ValueError(f"checkpoint was trained on backbone {json.dumps(a)} but the given backbone is {json.dumps(b)}")
