import json

import pytest

from invemb.text.corpus import Corpus, CorpusConfig, SentenceSplitter, build_corpus, normalize, split_of


def test_splitter_handles_abbreviations_and_decimals():
    sents = next(SentenceSplitter().split(["Dr. Smith paid $3.50 for the U.S. edition in 1999. It was cheap. Then he left."]))
    assert sents == ["Dr. Smith paid $3.50 for the U.S. edition in 1999.", "It was cheap.", "Then he left."]


def test_normalize_nfc_and_whitespace():
    assert normalize("Cafe\u0301  au\tlait \n") == "Caf\u00e9 au lait"


def test_split_is_deterministic_and_roughly_proportional():
    splits = [split_of(f"doc{i}", 0.1, 0.1) for i in range(2000)]
    assert splits == [split_of(f"doc{i}", 0.1, 0.1) for i in range(2000)]
    assert 0.07 < splits.count("test") / 2000 < 0.13 and 0.07 < splits.count("dev") / 2000 < 0.13


def test_build_from_user_files_dedups_and_keeps_docs_together(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("The cat sat on the mat. The cat sat on the mat. Dogs bark at night.\n\nA second paragraph is here.")
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "Some json line text here."}) + "\n")
    m = build_corpus(CorpusConfig(sources=[], files=[str(txt), str(jl)]), tmp_path / "c", progress=False)
    c = Corpus(tmp_path / "c")
    texts = c.sentences()
    assert texts.count("The cat sat on the mat.") == 1 and m["sources"]["files"]["duplicates"] == 1
    assert "Some json line text here." in texts and "Dogs bark at night." in texts
    by_doc = {}
    for r in c.rows:
        by_doc.setdefault(r["doc"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_doc.values())


def test_non_utf8_file_names_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text here\n\xff\xfe broken")
    with pytest.raises(ValueError, match=r"bad.txt: not UTF-8 at byte offset 15"):
        build_corpus(CorpusConfig(sources=[], files=[str(bad)]), tmp_path / "c", progress=False)


@pytest.mark.slow
def test_real_sources_load():
    from invemb.text.sources import brown_documents, nlp_corpus_documents, wiki_summaries

    wiki = wiki_summaries()
    assert len(wiki) == 10033 and {"title", "extract", "topic"} <= set(wiki[0])
    fid, sents = next(iter(brown_documents()))
    assert fid == "ca01" and sents[0].startswith("The Fulton County Grand Jury said Friday")
    assert len(next(iter(nlp_corpus_documents()))[1]) > 100
