"""Extra units: words a controller's vocabulary lacks, added after training so a decoder can place them.

A vocabulary built from the training corpus misses most rare names of held-out text (the default one
covers 97.1% of held-out Wikipedia tokens but 65% of the sentences whole; docs/inversion.md "Segmenter"),
and a unit that is not in the index cannot come back. The Selector and the pair reader work in the EM's
space, so a word they never saw in training is still found when its EM vector is in the index.
``invemb index words`` encodes a word list (by default wordfreq's English list, 320k words from
Wikipedia, subtitles, news and web text, plus the integers up to 2100) and keeps the words the trained
vocabulary lacks in ``RUN/extra_units/``: ``units.json`` + ``index.faiss`` + ``index.json``, a
:class:`invemb.index.UnitIndex` (HNSW by default: the extra units outnumber the trained ones 3 to 1, and
an exact scan over all of them would cost each search four times as much), whose flat storage holds the
vectors themselves (read back on load, not saved twice).
:meth:`invemb.inversion.controller.Controller.load` appends them to the trained vocabulary, ids after it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from invemb.config import Config
from invemb.index import IndexConfig, UnitIndex
from invemb.text.vocab import Vocab, category, tokenize

FOLDER = "extra_units"


@dataclasses.dataclass
class ExtraUnitsConfig(Config):
    source: str = "wordfreq"  # "wordfreq" (its English "large" list) or a text file of one word per line
    top: int = 320_000  # the most frequent words of the source taken (wordfreq's English list holds 320k)
    numbers: int = 2100  # the integers 0..numbers are added too (years, counts; wordfreq folds digits); -1: none
    index: IndexConfig = dataclasses.field(default_factory=lambda: IndexConfig(
        kind="hnsw", hnsw_ef_construction=80, hnsw_ef_search=128))

    presets = {"tiny": {"top": 500, "numbers": 100}, "default": {}, "full": {}}

    def __post_init__(self) -> None:
        if self.index.kind not in ("flat", "hnsw"):
            raise ValueError(f"index kind {self.index.kind!r}: the extra units' index keeps their exact vectors, flat or hnsw")
        if self.top < 1:
            raise ValueError(f"top must be at least 1 word, got {self.top}")
        if self.numbers < -1:
            raise ValueError(f"numbers must be -1 (none) or more, got {self.numbers}")


def source_words(cfg: ExtraUnitsConfig) -> list[str]:
    """The source's words, most frequent first (a file: in its order), at most ``cfg.top``."""
    if cfg.source == "wordfreq":
        import wordfreq

        words = wordfreq.top_n_list("en", cfg.top, wordlist="large")
    else:
        path = Path(cfg.source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no word list (give 'wordfreq' or a text file of one word per line)")
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()][: cfg.top]
    return words + [str(i) for i in range(cfg.numbers + 1)]


def new_words(vocab: Vocab, words: list[str]) -> list[str]:
    """The ``words`` the vocabulary lacks, in order: one token each (as the segmenter splits text), with a
    letter or digit, and not equal to a unit or an earlier word up to case and accents (an uncased backbone
    gives those one vector, :func:`invemb.inversion.controller.stand_ins`)."""
    from invemb.inversion.controller import fold_case

    have = {fold_case(u) for u in vocab.units}
    out = []
    for w in words:
        folded = fold_case(w)
        if folded in have or tokenize(w) != [w] or not any(c.isalnum() for c in w):
            continue
        have.add(folded)
        out.append(w)
    return out


def add_extra_units(run: str | Path, cfg: ExtraUnitsConfig | None = None, encoder=None, progress: bool = True) -> dict:
    """Encode the words of ``cfg.source`` that controller ``run``'s vocabulary lacks and save them with their
    index in ``run/extra_units/`` (replacing any there). The default list on 2 cores: 247k words, about 5
    minutes to encode and 1 to index (5.8 measured). Killed, the same call again keeps the chunks it had encoded."""
    import invemb
    from invemb.io import PartialFolder, content_key
    from invemb.inversion.controller import controller_info
    from invemb.inversion.train import encode_chunked
    from invemb.inversion.units import encoder_fingerprint

    cfg = cfg or ExtraUnitsConfig()
    run = Path(run)
    info = controller_info(run)
    vocab = Vocab.load(run / "vocab.json")
    words = new_words(vocab, source_words(cfg))
    if not words:
        raise ValueError(f"{cfg.source}: every word is in the vocabulary of {run} already")
    cfg.index.kind_for(len(words), info["dim"])  # bad index settings refused before encoding
    encoder = encoder or invemb.load(info["em"])
    fp = encoder_fingerprint(encoder)
    if fp != info["encoder_fingerprint"]:
        raise ValueError(f"encoder {info['em']} is not the one controller {run} was trained on")
    spill = PartialFolder(run / "extra_units_encoded", content_key("extra units", fp))
    vectors = encode_chunked(encoder, words, "extra units", progress, spill=spill)  # (E, D)
    meta = {"source": cfg.source, "words": cfg.to_dict(), "encoder_fingerprint": fp,
            "vocab_fingerprint": vocab.fingerprint()}
    folder = run / FOLDER
    if progress:
        import sys

        print(f"indexing {len(words)} extra units ({cfg.index.kind})", file=sys.stderr)
    UnitIndex.build(vectors, words, cfg.index, meta=meta).save(folder)
    spill.discard()
    return {"run": str(run), "extra_units": len(words), "vocabulary": len(vocab), "source": cfg.source,
            "kind": cfg.index.kind, "folder": str(folder)}


def load_extra_units(run: str | Path, vocab: Vocab, encoder_fp: str) -> tuple[list[str], torch.Tensor, UnitIndex] | None:
    """The extra units of controller ``run`` (units, vectors (E, D), their index), or None when it has none;
    refused when they were added for another vocabulary or encoder (``encoder_fp``: the run's)."""
    folder = Path(run) / FOLDER
    if not (folder / "index.json").exists():
        return None
    meta = json.loads((folder / "index.json").read_text())
    if meta.get("vocab_fingerprint") != vocab.fingerprint() or meta.get("encoder_fingerprint") != encoder_fp:
        raise ValueError(f"{folder} was added to another vocabulary or encoder than controller {run}'s: "
                         f"run `invemb index words --controller {run}` again")
    index = UnitIndex.load(folder)
    if index.index.ntotal != len(index.units):
        raise ValueError(f"{folder}: {index.index.ntotal} vectors for {len(index.units)} units")
    vectors = torch.from_numpy(index.index.reconstruct_n(0, index.index.ntotal))  # (E, D) the flat storage's copy
    return index.units, vectors, index


def extended_vocab(vocab: Vocab, extra: list[str]) -> Vocab:
    """The trained vocabulary with ``extra`` appended (count 0: never among the frequent units offered to
    every hypothesis)."""
    return Vocab(vocab.units + extra, vocab.categories + [category(w) for w in extra], vocab.counts + [0] * len(extra),
                 vocab.config)
