import json

import pytest

from invemb.text.corpus import Corpus, CorpusConfig, SentenceSplitter, build_corpus, normalize, split_of


def test_splitter_handles_abbreviations_and_decimals():
    sents = next(SentenceSplitter().split(["Dr. Smith paid $3.50 for the U.S. edition in 1999. It was cheap. Then he left."]))
    assert sents == ["Dr. Smith paid $3.50 for the U.S. edition in 1999.", "It was cheap.", "Then he left."]


def test_normalize_nfc_and_whitespace():
    assert normalize("Cafe\u0301  au\tlait \n") == "Caf\u00e9 au lait"
    # invisible format and control characters would become vocabulary units
    assert normalize("defined as \u20601/12\u2060 of the\u00admass\x96 \ufeffok\u200b") == "defined as 1/12 of themass ok"


def test_a_missing_user_file_is_refused_before_any_source_is_read(tmp_path, monkeypatch):
    import invemb.text.corpus as corpus

    monkeypatch.setattr(corpus, "_wiki_docs", lambda cfg: pytest.fail("read the Wikipedia source first"))
    with pytest.raises(FileNotFoundError, match="nope.txt: no such corpus file"):
        build_corpus(CorpusConfig(sources=["wiki", "files"], files=[str(tmp_path / "nope.txt")]), tmp_path / "c")


def test_whitespace_controls_separate_words_and_are_not_deleted():
    assert normalize("first line\x0bsecond\x85line a\x1fb\x0cc") == "first line second line a b c"


def test_a_long_document_is_cut_at_line_breaks_before_splitting(tmp_path):
    from invemb.text.corpus import _pieces

    text = "\n".join(f"Sentence number {i} is here." for i in range(2000))  # ~56k characters, no blank line
    pieces = _pieces(text, limit=5000)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 5000 and len(pieces) > 10
    assert _pieces("x" * 12 + " " + "y" * 3, limit=5) == ["xxxxx", "xxxxx", "xx", " yyy"]
    f = tmp_path / "lines.txt"  # over spaCy's 1M-character limit for one text
    f.write_text("\n".join(f"Line {i} tells of the river and the old mill." for i in range(25000)))
    manifest = build_corpus(CorpusConfig(sources=["files"], files=[str(f)]), tmp_path / "c", progress=False)
    assert manifest["sentences"] == 25000


def test_cached_corpus_follows_an_edited_user_file(tmp_path, monkeypatch):
    import os

    from invemb.em.config import EMConfig
    from invemb.em.data import corpus_dir

    f = tmp_path / "notes.txt"
    f.write_text("The first version of my notes is here.")
    cfg = EMConfig().replace(**{"data_dir": str(tmp_path / "built"), "corpus.sources": ["files"], "corpus.files": [str(f)]})
    before = corpus_dir(cfg)
    f.write_text("The second version of my notes is longer than the first.")
    os.utime(f, ns=(1, 1))
    assert corpus_dir(cfg) != before


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


def test_duplicates_differing_in_case_or_outer_punctuation_are_one_sentence(tmp_path):
    """Kept once, so the two cannot land in different splits."""
    rows = [{"text": "He was grimly satisfied."}, {"text": "he was grimly satisfied"}, {"text": "\"What do we have here?\""},
            {"text": "What do we have here"}, {"text": "He was not satisfied."},
            {"text": "-5 degrees is cold"}, {"text": "5 degrees is cold."}]  # a sign before a digit is kept
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = build_corpus(CorpusConfig(sources=[], files=[str(jl)], min_words=3), tmp_path / "c", progress=False)
    assert Corpus(tmp_path / "c").sentences() == ["He was grimly satisfied.", '"What do we have here?"', "He was not satisfied.",
                                                  "-5 degrees is cold", "5 degrees is cold."]
    assert m["sources"]["files"]["duplicates"] == 2


def test_a_sentence_with_a_character_lost_in_decoding_is_dropped_and_counted(tmp_path):
    rows = [{"text": "It cost me \ufffd5 to put air in my tyres."}, {"text": "Oh, just this woman I\ufffdve been seeing."},
            {"text": "It cost me five pounds."}]
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = build_corpus(CorpusConfig(sources=[], files=[str(jl)], min_words=3), tmp_path / "c", progress=False)
    assert Corpus(tmp_path / "c").sentences() == ["It cost me five pounds."]
    assert m["sources"]["files"]["undecodable"] == 2 and m["sources"]["files"]["sentences"] == 1


def test_empty_sources_and_a_broken_corpus_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no sentences of 3-64 words in the sources \\(files\\)"):
        build_corpus(CorpusConfig(sources=[], files=[str(tmp_path / "empty.txt")], min_words=3, max_words=64),
                     tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/sentences.jsonl").write_text('{"text": "ok"}\n{bad\n')
    with pytest.raises(ValueError, match="sentences.jsonl:2"):
        Corpus(tmp_path / "broken")


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


def test_cli_refuses_a_folder_where_a_file_goes(tmp_path):
    from typer.testing import CliRunner

    from invemb.cli import app

    (tmp_path / "vocab.json").mkdir()
    result = CliRunner().invoke(app, ["vocab", "build", "--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "vocab.json")])
    assert result.exit_code == 2 and "vocab.json: is a folder; give the vocabulary's .json file" in result.output
    (tmp_path / "notes.txt").mkdir()
    result = CliRunner().invoke(app, ["corpus", "build", "--source", "files", "--file", str(tmp_path / "notes.txt"),
                                      "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "notes.txt" in result.output and "Traceback" not in result.output
