"""Core verbs that belong to no single model family: corpus, vocab, encode."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

corpus_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Build the training corpus.\n\nExample: invemb corpus build --out data/built/corpus --source wiki --file notes.txt")
vocab_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Build the unit vocabulary and lexicon.\n\nExample: invemb vocab build --corpus data/built/corpus --out data/built/vocab.json")
features_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The frozen-backbone feature cache.\n\nExample: invemb features build --texts corpus.jsonl --cache data/built/features")


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    from invemb.cli import emit, user_errors

    app.add_typer(corpus_app, name="corpus")
    app.add_typer(vocab_app, name="vocab")
    app.add_typer(features_app, name="features")

    @features_app.command("build")
    @user_errors
    def features_build(
        texts: Path = typer.Option(..., "--texts", help='JSONL file, one {"text": ...} a line'),
        cache: Path = typer.Option(Path("data/built/features"), help="cache root (a sub-folder per backbone setting)"),
        backbone: str = typer.Option("default", help="local HF encoder folder (default: bundled all-MiniLM-L6-v2)"),
        pooling: str = typer.Option("mean", help="mean | cls"),
        prompt: str = typer.Option("", help='prefix added to every text, e.g. "query: " for e5'),
        max_length: int = typer.Option(128, help="token limit per text"),
        shards: int = typer.Option(1, help="worker processes, each computing its share (merged into one cache)"),
        batch_size: int = typer.Option(128, help="texts per backbone batch"),
    ):
        """Compute backbone features (pooled + token states) for texts into the on-disk cache.

        With --shards N, N processes each compute their share of the batches and the result is the
        cache one process writes, byte for byte. Under torchrun, call the library's
        FeatureCache.ensure(texts, shard=True) in every rank instead (train em does).

        Example: invemb features build --texts corpus.jsonl --cache data/built/features --shards 2
        """
        from invemb.backbone.cache import build_features
        from invemb.backbone.hf import BackboneConfig
        from invemb.io import read_jsonl_texts

        items = read_jsonl_texts(texts)
        if not items:
            raise ValueError(f"{texts}: no texts")
        cfg = BackboneConfig(path=backbone, pooling=pooling, prompt=prompt, max_length=max_length)
        emit(build_features(items, cache, cfg, shards=shards, batch_size=batch_size))

    @corpus_app.command("build")
    @user_errors
    def corpus_build(
        out: Path = typer.Option(Path("data/built/corpus"), help="output folder"),
        preset: str = typer.Option("default", help="tiny | default | full"),
        source: List[str] = typer.Option([], "--source", help="wiki, wordnet, brown, nlp, files (repeat; default: the first four, plus files with --file; files alone: --source files)"),
        file: List[Path] = typer.Option([], "--file", help="your own .txt (a document per paragraph) or .jsonl (a document per line) file (repeat)"),
        wiki: Optional[str] = typer.Option(None, help="path to summaries_en-us.json"),
    ):
        """Split, normalise, deduplicate and split by document hash.

        Example: invemb corpus build --out data/built/corpus --source wiki --file notes.txt
        """
        from invemb.text.corpus import CorpusConfig, build_corpus

        cfg = CorpusConfig.preset(preset)
        if source:
            cfg = cfg.replace(sources=list(source))
        if file:
            cfg = cfg.replace(files=[str(f) for f in file])
        if wiki:
            cfg = cfg.replace(wiki_path=wiki)
        emit(build_corpus(cfg, out))

    @vocab_app.command("build")
    @user_errors
    def vocab_build(
        corpus: Path = typer.Option(Path("data/built/corpus"), help="a built corpus folder"),
        out: Path = typer.Option(Path("data/built/vocab.json"), help="vocabulary JSON (lexicon.json is written beside it)"),
        preset: str = typer.Option("default", help="tiny | default | full"),
        lexicon: bool = typer.Option(True, help="also build the WordNet synonym/antonym lexicon"),
    ):
        """Count units (words, acronyms, entities, n-grams, numbers) over the corpus's train split.

        Example: invemb vocab build --corpus data/built/corpus --out data/built/vocab.json
        """
        from invemb.io import check_output_file
        from invemb.text.corpus import Corpus
        from invemb.text.lexicon import LexiconConfig, build_lexicon
        from invemb.text.vocab import VocabConfig, build_vocab

        check_output_file(out, "vocabulary's .json file")
        vocab = build_vocab(Corpus(corpus).sentences("train"), VocabConfig.preset(preset), progress=True)
        vocab.save(out)
        result = {"units": len(vocab), "by_category": vocab.by_category(), "path": str(out)}
        if lexicon:
            lex = build_lexicon(vocab, LexiconConfig.preset(preset))
            lex_path = out.with_name("lexicon.json")
            lex.save(lex_path)
            result["lexicon"] = {**lex.stats(), "path": str(lex_path)}
        emit(result)

    @app.command("encode")
    @user_errors
    def encode_cmd(
        model: str = typer.Option(..., help="run folder, backbone folder, or 'backbone'"),
        input: Path = typer.Option(..., "--input", help='JSONL file, one {"text": ...} a line'),
        output: Path = typer.Option(..., "--output", help=".npy file for the (N, dim) float32 vectors"),
        batch_size: int = typer.Option(64, help="texts per batch"),
        runtime: str = typer.Option("torch", help="runtime: torch | onnx (onnxruntime, CPU; EM runs and HF folders) | bf16 (bfloat16 where the hardware has it: the backbone of an EM run or HF folder, the whole model of a scratch or tiered run)"),
    ):
        """Encode texts to an .npy matrix (rows in input order, L2-normalised), with a progress bar.
        Killed part-way, the same command again keeps the finished chunks (OUTPUT.partial/).

        Example: invemb encode --model runs/em-default --input texts.jsonl --output vecs.npy
        """
        import invemb
        from invemb.api import encode_to_npy
        from invemb.io import read_jsonl_texts

        texts = read_jsonl_texts(input, require_content=True)
        if not texts:
            raise ValueError(f"{input}: no texts")
        n, dim = encode_to_npy(invemb.load(model, runtime=runtime), texts, output, settings={"model": model, "runtime": runtime},
                               batch_size=batch_size, progress=True)
        emit({"texts": n, "dim": int(dim), "output": str(output)})
