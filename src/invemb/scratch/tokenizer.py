"""Word-level and byte-level BPE tokenizers, both Hugging Face ``tokenizers`` saved as tokenizer.json.

Both put ``[CLS]`` first (for CLS pooling), pad with ``[PAD]`` (id 0) and truncate to
``max_length`` tokens. Truncations and unknown tokens are counted (``stats``) so training logs
and ``encode`` warnings can report them; byte-level BPE never produces ``[UNK]``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

from invemb.config import Config
from invemb.io import atomic_write_text

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIALS = [PAD, UNK, CLS]  # ids 0, 1, 2


@dataclasses.dataclass
class TokenizerConfig(Config):
    kind: str = "bpe"  # "bpe" (byte-level BPE) or "word"
    vocab_size: int = 8000
    min_frequency: int = 2
    max_length: int = 48  # tokens including [CLS]

    presets = {"tiny": {"vocab_size": 600, "max_length": 32}}

    def __post_init__(self) -> None:
        if self.kind not in ("bpe", "word"):
            raise ValueError(f"tokenizer kind must be bpe or word, got {self.kind!r}")


class ScratchTokenizer:
    """A ``tokenizers.Tokenizer`` plus padding, truncation and counters."""

    def __init__(self, tokenizer, max_length: int):
        self.tok = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        self.cls_id = tokenizer.token_to_id(CLS)
        if None in (self.pad_id, self.unk_id, self.cls_id):
            raise ValueError(f"tokenizer lacks the special tokens {SPECIALS}")
        self.stats: Counter = Counter()

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def kind(self) -> str:
        return "word" if type(self.tok.model).__name__ == "WordLevel" else "bpe"

    @classmethod
    def train(cls, texts: Iterable[str], cfg: TokenizerConfig) -> "ScratchTokenizer":
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

        if cfg.kind == "word":
            tok = Tokenizer(models.WordLevel(unk_token=UNK))
            tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
            tok.pre_tokenizer = pre_tokenizers.Whitespace()
            trainer = trainers.WordLevelTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                                special_tokens=SPECIALS, show_progress=False)
        else:
            tok = Tokenizer(models.BPE(unk_token=UNK))
            tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                          special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, tok.token_to_id(CLS))])
        return cls(tok, cfg.max_length)

    # -- encode / decode ---------------------------------------------------------------------
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) long and mask (B, T) bool, T = longest sequence (<= max_length)."""
        if not texts:
            raise ValueError("empty batch: no texts to tokenize")
        rows = [e.ids for e in self.tok.encode_batch(list(texts))]
        self.stats["texts"] += len(rows)
        self.stats["tokens"] += sum(len(r) for r in rows)
        self.stats["unknown"] += sum(r.count(self.unk_id) for r in rows)
        self.stats["truncated"] += sum(len(r) > self.max_length for r in rows)
        rows = [r[: self.max_length] for r in rows]
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.pad_id, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, ids != self.pad_id

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        text = self.tok.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True)
        return text.strip()

    def take_stats(self) -> dict[str, int]:
        """Counters since the last call (texts, tokens, unknown, truncated), then reset."""
        out, self.stats = dict(self.stats), Counter()
        return out

    # -- files -------------------------------------------------------------------------------
    def to_json(self) -> str:
        data = json.loads(self.tok.to_str())
        data["invemb"] = {"max_length": self.max_length}
        return json.dumps(data, ensure_ascii=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "ScratchTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json")
        data = json.loads(path.read_text(encoding="utf-8"))
        extra = data.pop("invemb", {})
        return cls(Tokenizer.from_str(json.dumps(data)), int(extra.get("max_length", 48)))
