"""Everything the EM trains on, built once and cached under the data folder.

corpus -> vocabulary -> lexicon -> sentence sample with order probes -> segmentation into units ->
backbone features (the feature cache). Each built artefact lives in a folder keyed by the hash of
the config that made it, so changing a setting rebuilds only what depends on it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import numpy as np

from invemb.em.config import EMConfig
from invemb.io import atomic_write_json
from invemb.text.corpus import Corpus, build_corpus, source_stamp
from invemb.text import RULES_VERSION
from invemb.text.lexicon import Lexicon, build_lexicon
from invemb.text.sources import data_root
from invemb.text.vocab import Vocab, build_vocab


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def built_dir(cfg: EMConfig) -> Path:
    return Path(cfg.data_dir) if cfg.data_dir else data_root() / "built"


def _corpus_key(cfg: EMConfig) -> list:
    return [cfg.corpus.to_dict(), RULES_VERSION, source_stamp(cfg.corpus)]


def corpus_dir(cfg: EMConfig, legacy: bool = False) -> Path:
    """The built corpus folder of ``cfg``; ``legacy``: its folder under rules 1, whose key held the
    corpus config alone (runs from then recorded no corpus folder)."""
    return built_dir(cfg) / f"corpus-{_key(cfg.corpus.to_dict()) if legacy else _key(*_corpus_key(cfg))}"


def run_corpus_dir(info: dict) -> Path:
    """The corpus an EM run (its config.json ``info``) was trained from: the folder it recorded, or
    for a run from before the record, the folder of the rules of its time."""
    if not info.get("corpus_dir"):
        return corpus_dir(EMConfig.from_dict(info["em"]), legacy=True)
    recorded = Path(info["corpus_dir"])
    # recorded relative to another working folder: found again by its name in the built folder
    here = built_dir(EMConfig.from_dict(info["em"])) / recorded.name
    return here if not recorded.exists() and here.exists() else recorded


def vocab_path(cfg: EMConfig) -> Path:
    return built_dir(cfg) / f"vocab-{_key(*_corpus_key(cfg), cfg.vocab.to_dict())}.json"


def lexicon_path(cfg: EMConfig) -> Path:
    return vocab_path(cfg).with_name(vocab_path(cfg).stem.replace("vocab", "lexicon") + f"-{_key(cfg.lexicon.to_dict())}.json")


def ensure_corpus(cfg: EMConfig, progress: bool = True) -> Corpus:
    d = corpus_dir(cfg)
    if not (d / "manifest.json").exists():
        build_corpus(cfg.corpus, d, progress=progress)
    return Corpus(d)


def ensure_vocab(cfg: EMConfig, corpus: Corpus, progress: bool = True) -> Vocab:
    p = vocab_path(cfg)
    if not p.exists():
        build_vocab(corpus.sentences("train"), cfg.vocab, progress=progress).save(p)
    return Vocab.load(p)


def ensure_lexicon(cfg: EMConfig, vocab: Vocab) -> Lexicon:
    p = lexicon_path(cfg)
    if not p.exists():
        build_lexicon(vocab, cfg.lexicon).save(p)
    return Lexicon.load(p)


@dataclasses.dataclass
class SentenceItem:
    text: str
    synonym: str  # one content word replaced by a WordNet synonym (meaning kept)
    swapped: str  # two content words swapped (order changed)
    units: list[int]  # vocabulary ids of its segmentation
    more_swaps: list[str] = dataclasses.field(default_factory=list)  # other pairs swapped (``loss.order_swaps`` - 1 at most)


def _sample_sentences(corpus: Corpus, split: str, n: int, words: list[int], seed: int) -> list[str]:
    lo, hi = words
    pool = [s for s in corpus.sentences(split) if lo <= len(s.split()) <= hi]
    random.Random(seed).shuffle(pool)
    return pool[: n * 2]  # more than needed: some have no usable order probe


def sentence_items(cfg: EMConfig, corpus: Corpus, vocab: Vocab, split: str, n: int) -> list[SentenceItem]:
    """Sentences with their order probes and unit segmentation, cached as JSON."""
    from invemb.eval.order import PROBES_VERSION, make_order_probes
    from invemb.inversion.segment import Segmenter

    extra = max(0, cfg.loss.order_swaps - 1)
    # The vocabulary's fingerprint: the items hold its unit ids (items of another vocabulary, built under
    # other text rules, had pointed past its end).
    key = _key(cfg.corpus.to_dict(), cfg.vocab.to_dict(), n, cfg.sentence_words, cfg.train.seed, PROBES_VERSION,
               vocab.fingerprint(), *([extra] if extra else []))
    path = built_dir(cfg) / f"sentences-{split}-{key}.json"
    if path.exists():
        return [SentenceItem(**r) for r in json.loads(path.read_text(encoding="utf-8"))]
    pool = _sample_sentences(corpus, split, n, cfg.sentence_words, cfg.train.seed)
    probes = make_order_probes(pool, seed=cfg.train.seed, extra_swaps=extra)
    seg = Segmenter(vocab)
    items = []
    for p in probes:
        units = list(dict.fromkeys(seg.segment(p.sentence).unit_ids))
        items.append(SentenceItem(p.sentence, p.synonym, p.swapped, units, list(p.more_swaps)))
        if len(items) >= n:
            break
    atomic_write_json(path, [dataclasses.asdict(i) for i in items])
    return items


@dataclasses.dataclass
class EMData:
    vocab: Vocab
    lexicon: Lexicon
    train_units: np.ndarray  # vocabulary ids trained on
    dev_units: np.ndarray  # vocabulary ids held out (reconstruction metric)
    train_sentences: list[SentenceItem]
    dev_sentences: list[SentenceItem]
    synonyms: list[list[int]]  # per vocabulary id: train-split synonym ids
    antonyms: list[list[int]]
    evaluators: dict = dataclasses.field(default_factory=dict)  # built once by em.train.dev_evaluators


def prepare(cfg: EMConfig, progress: bool = True) -> EMData:
    corpus = ensure_corpus(cfg, progress)
    vocab = ensure_vocab(cfg, corpus, progress)
    lexicon = ensure_lexicon(cfg, vocab)
    rng = np.random.default_rng(cfg.train.seed)
    perm = rng.permutation(len(vocab))
    dev_units, train_units = np.sort(perm[: cfg.dev_units]), np.sort(perm[cfg.dev_units:])
    synonyms: list[list[int]] = [[] for _ in range(len(vocab))]
    antonyms: list[list[int]] = [[] for _ in range(len(vocab))]
    for rel, table in (("synonym", synonyms), ("antonym", antonyms)):
        for a, b in lexicon.pairs(rel, "train"):
            ia, ib = vocab.ids[a], vocab.ids[b]
            table[ia].append(ib)
            table[ib].append(ia)
    train = sentence_items(cfg, corpus, vocab, "train", cfg.max_train_sentences)
    dev = sentence_items(cfg, corpus, vocab, "dev", cfg.max_dev_sentences)
    return EMData(vocab, lexicon, train_units, dev_units, train, dev, synonyms, antonyms)
