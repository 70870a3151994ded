"""EM run configuration: one dataclass per component, composed; presets tiny/default/full."""
from __future__ import annotations

import dataclasses
from typing import Any

from invemb.backbone.hf import BackboneConfig
from invemb.config import PRESETS, Config, ConfigError
from invemb.em.model import HeadConfig
from invemb.index.faiss_index import IndexConfig
from invemb.text.corpus import CorpusConfig
from invemb.text.lexicon import LexiconConfig
from invemb.text.vocab import VocabConfig
from invemb.training.loop import TrainConfig

OBJECTIVES = ("contrastive", "antonym", "synonym", "recon", "anchor", "ortho", "queue", "order", "unit")


@dataclasses.dataclass
class LossConfig(Config):
    """Weights of every objective (0 switches one off) and their schedules."""

    contrastive: float = 1.0  # (i) in-batch InfoNCE, jittered self-positive, top-k hardest negatives
    hard_k: int = 32
    jitter: float = 0.1  # std of the Gaussian jitter relative to the features' RMS
    antonym: float = 1.0  # (ii) >0: antonyms (fallback next-hardest) join the contrastive negatives, a real
    # antonym counting as this many negatives (its logit + log w)
    synonym: float = 0.5  # (iii) synonym attraction with a margin
    synonym_margin: float = 0.75
    recon: float = 5.0  # (iv) reconstruction MSE (its raw value is small: 5 keeps dev reconstruction cosine >= 0.9)
    # (v) semantic anchor: MSE of the batch cosine matrices, EM vs backbone. Its raw value is ~1e-3, so at
    # weight 1 it did nothing; 50 keeps WordSim at the backbone's level (0.676 -> 0.717 on the default run).
    anchor: float = 50.0
    ortho: float = 0.0  # (vi) orthogonality of the last projection (off by default)
    queue: int = 4096  # (vii) MoCo-style queue of negatives; 0 = off
    # (viii) word order: swapped copies as hard negatives. With word positions, test-split order discrimination /
    # unit recall@10: 4: 0.846 / 0.208, 6: 0.867 / 0.195, 8: 0.869 / 0.184; but a controller trained on the
    # weight-6 EM reaches wiki token F1 28.3 against 32.2 on the weight-4 one.
    order: float = 4.0
    # Additive margin on the order term's positive: it keeps pushing until the synonym leads the swap by
    # the margin (order 4, margin 0.1: test order 0.846 -> 0.895 but unit recall 0.208 -> 0.155; order 6, 0.05: 0.881 / 0.169).
    order_margin: float = 0.0
    # Swapped copies per training sentence, each of another content-word pair: the order term's hard
    # negatives (one sentence's swaps share its positive). Each extra copy adds one backbone pass per sentence.
    # Test order / recall@10: 3 swaps at weight 4: 0.898 / 0.173 (beats the margins above at equal order);
    # 3 swaps at weight 2: 0.846 / 0.194 (below 1 swap at weight 4); a controller on the 3-swap weight-4 EM
    # reaches wiki / WordNet token F1 30.5 / 41.9 against 33.2 / 49.5: one stays the default.
    order_swaps: int = 1
    unit: float = 1.0  # (ix) unit recall: sentences rank their units above others
    temperature_start: float = 0.07
    temperature_end: float = 0.03
    # Per-objective schedule: constant | warmup (linear ramp over ramp_steps) | cosine (decay to 0)
    schedules: dict[str, str] = dataclasses.field(default_factory=lambda: {"recon": "warmup", "anchor": "constant"})
    ramp_steps: int = 200

    presets = {"tiny": {"hard_k": 8, "queue": 64, "ramp_steps": 5}, "default": {}, "full": {"hard_k": 64, "queue": 16384}}

    def __post_init__(self) -> None:
        weights = ("contrastive", "jitter", "antonym", "synonym", "recon", "anchor", "ortho", "order", "order_margin", "unit")
        bad = [f"loss.{k}={getattr(self, k)} (at least 0)" for k in (*weights, "hard_k", "queue", "ramp_steps")
               if getattr(self, k) < 0]
        bad += [f"loss.{k}={getattr(self, k)} (above 0)" for k in ("temperature_start", "temperature_end")
                if getattr(self, k) <= 0]
        if self.order_swaps < 1:
            bad.append(f"loss.order_swaps={self.order_swaps} (at least 1)")
        if bad:
            raise ValueError(f"bad loss settings: {', '.join(bad)}")

    def weight(self, name: str, step: int, total: int) -> float:
        from invemb.training.schedules import weight_at

        base = float(getattr(self, name))
        if not base:
            return 0.0
        return base * weight_at(self.schedules.get(name, "constant"), step, total, self.ramp_steps)


@dataclasses.dataclass
class EMConfig(Config):
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)
    vocab: VocabConfig = dataclasses.field(default_factory=VocabConfig)
    lexicon: LexiconConfig = dataclasses.field(default_factory=LexiconConfig)
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    preset_name: str = "default"
    data_dir: str = ""  # built corpus/vocab/lexicon/feature cache; "" = $INVEMB_DATA/built
    max_train_sentences: int = 12000
    max_dev_sentences: int = 400
    sentence_words: list[int] = dataclasses.field(default_factory=lambda: [5, 40])
    dev_units: int = 2000  # units held out of training for the reconstruction metric
    batch_units: int = 256
    batch_sentences: int = 48
    units_per_sentence: int = 6
    backbone_lr_scale: float = 0.1  # lr of unfrozen backbone layers relative to the head's
    feature_batch_size: int = 128

    presets = {
        "tiny": {"max_train_sentences": 200, "max_dev_sentences": 40, "dev_units": 50, "batch_units": 32,
                 "batch_sentences": 8, "units_per_sentence": 4, "train": {"epochs": 2, "warmup_steps": 2, "lr": 2e-3}},
        "default": {"train": {"epochs": 3, "warmup_steps": 50, "lr": 1e-3}},
        "full": {"max_train_sentences": 200000, "max_dev_sentences": 2000, "dev_units": 5000, "batch_units": 1024,
                 "batch_sentences": 256, "backbone": {"max_length": 256, "prompt": "query: "},
                 "train": {"epochs": 6, "warmup_steps": 500, "lr": 5e-4, "amp": "auto"}},
    }

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> "EMConfig":
        """Compose each component's own preset, then the EM-level preset, then ``overrides``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        parts = {f.name: f.type for f in dataclasses.fields(cls)}
        hints = cls._hints()
        values: dict[str, Any] = {}
        for key in parts:
            tp = hints[key]
            if isinstance(tp, type) and issubclass(tp, Config):
                values[key] = tp.preset(name).to_dict()
        values["preset_name"] = name
        for key, val in cls.presets.get(name, {}).items():
            if isinstance(val, dict) and isinstance(values.get(key), dict):
                values[key].update(val)
            else:
                values[key] = val
        cfg = cls.from_dict(values)
        return cfg.replace(**overrides) if overrides else cfg
