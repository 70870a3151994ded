"""CLI verbs of the inversion family: train controller, invert, index build, eval-inversion."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

index_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="FAISS indexes over unit vectors, a controller's sentence memory and the words its vocabulary lacks.\n\nExamples: invemb index build --model runs/em-default --out runs/em-default/index; invemb index memory --controller runs/ctl-default --source wiki; invemb index words --controller runs/ctl-default")


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    from invemb.cli import emit, user_errors
    from invemb.config import parse_overrides

    app.add_typer(index_app, name="index")

    @train_app.command("controller")
    @user_errors
    def train_controller_cmd(
        em: str = typer.Option(..., help="the encoder: an EM run folder, an HF folder, or `backbone`"),
        out: Path = typer.Option(..., help="run folder to write"),
        preset: str = typer.Option("default", help="tiny | default | full"),
        resume: bool = typer.Option(False, "--resume", help="continue a killed run with its own config (--preset / --set ignored) from its last checkpoint (killed earlier: its saved states, loop from step 0)"),
        vocab: Optional[Path] = typer.Option(None, help="unit vocabulary (default: EM run's vocab.json, else data/built/vocab.json)"),
        unit_cache: Optional[Path] = typer.Option(None, help="a unit_vectors.safetensors to reuse (checked against encoder + vocab)"),
        set_: List[str] = typer.Option([], "--set", help="ControllerTrainConfig override key=value, e.g. train.epochs=2 (repeat)"),
        quiet: bool = typer.Option(False, help="no progress bars"),
    ):
        """Train the Selector + Placer controller for one encoder.

        Example: invemb train controller --em backbone --preset default --out runs/controller

        With the Selector's reranker (better units, slower training; docs/inversion.md "Reranker"):
        invemb train controller --em runs/em-default --out runs/controller-rerank --set selector.rerank=64

        Without the sentence memory the Selector reads by default (20% faster training, about 1-2 points
        less wiki token F1; docs/inversion.md "Sentence memory"):
        invemb train controller --em runs/em-default --out runs/controller-plain --set selector.memory=0
        """
        from invemb.config import parse_overrides
        from invemb.inversion.train import ControllerTrainConfig, train_controller

        cfg = ControllerTrainConfig.preset(preset).replace(**parse_overrides(set_))
        if quiet:
            cfg = cfg.replace(**{"train.progress": False})
        if vocab:
            cfg = cfg.replace(vocab=str(vocab))
        emit(train_controller(em, cfg, out, resume=resume, unit_cache=unit_cache, preset=preset))

    @app.command("invert")
    @user_errors
    def invert_cmd(
        text: Optional[str] = typer.Argument(None, help="a text to encode and invert"),
        em: str = typer.Option(..., help="the encoder the controller was trained on (run folder or `backbone`), or an "
                                         "`invemb order-bind` view of it: the view's vectors are then inverted"),
        controller: Path = typer.Option(..., help="controller run folder"),
        vectors: Optional[Path] = typer.Option(None, help=".npy (N, dim) vectors to invert"),
        input: Optional[Path] = typer.Option(None, "--input", help='JSONL, one {"text": ...} a line'),
        output: Optional[Path] = typer.Option(None, "--output", help="JSONL results for --input / --vectors"),
        beam: Optional[int] = typer.Option(None, help="beam width (default: the run's)"),
        decode_sets: List[str] = typer.Option([], "--decode", help="decoding override KEY=VALUE (DecodeConfig: "
                                              "beam, units_k, slots, expand, patience, lm_weight (the language prior; 0: off), "
                                              "length_weight (the length prior; 0: off), memory_weight (the sentence "
                                              "memory; 0: off), bag_weight (the bag of units; 0: off; 0.5 after "
                                              "`invemb index memory`), view_weight (an order-bound view's bound "
                                              "part in the beam's cosine), ...; repeat)"),
        runtime: str = typer.Option("torch", help="the EM backbone's runtime: torch | onnx (onnxruntime, CPU) | bf16 (bfloat16 where the hardware has it): faster decoding"),
        extra_units: bool = typer.Option(True, help="use the words `invemb index words` added to the controller run, when it has them"),
        workers: int = typer.Option(1, "--workers", min=1, help="with --input / --vectors: processes inverting chunks of "
                                    "64 side by side, each with its own controller and its share of the threads "
                                    "(2 on 2 cores: ~1.3x the sentences/s, a controller in memory per worker; a file needs 64 x N texts)"),
        plain: bool = typer.Option(False, "--plain", help="a table instead of JSON"),
    ):
        """Rebuild text from sentence vectors, printing each step (unit, slot, cosine) for one text.
        With --input / --vectors, killed part-way, the same command again continues where it stopped.
        --workers 2 inverts a file with two processes.

        Example: invemb invert "The cat sat on the mat." --em backbone --controller runs/controller --decode expand=6

        Inverting an order-bound view's vectors (README "Inverting an order-bound view"): the controller reads
        their EM part, the beam scores each hypothesis with their word-pair part too:
        invemb order-bind --em runs/em-default --out runs/em-pairs --set binding=pairs;
        invemb invert "The cat sat on the mat." --em runs/em-pairs --controller runs/ctl-default
        """
        import functools

        import numpy as np

        from invemb.inversion import load_run
        from invemb.inversion.controller import invert_to_jsonl, say_pinned
        from invemb.io import read_jsonl_texts

        given = [x for x in (text is not None, vectors is not None, input is not None) if x]
        if len(given) != 1:
            raise ValueError("give exactly one of TEXT, --vectors F.npy or --input F.jsonl")
        if (vectors is not None or input is not None) and output is None:
            raise ValueError("--vectors and --input need --output OUT.jsonl")
        overrides = parse_overrides(decode_sets)
        if beam is not None:
            overrides["beam"] = beam
        ctrl = load_run(controller, em=em, runtime=runtime, extra_units=extra_units, **overrides)  # the run's decoding settings, overridden
        say_pinned(controller, ctrl)
        if text is not None:
            row = ctrl.invert_texts([text])[0]
            if plain:
                emit(row["steps"], plain=True)
                emit({k: v for k, v in row.items() if k != "steps"}, plain=True)
            else:
                emit(row)
            return
        # A killed run leaves OUT.jsonl.partial/: the same command again continues after its rows.
        settings = {"em": em, "controller": str(controller.resolve()), "runtime": runtime}  # extra units: in the controller's identity
        loader = functools.partial(load_run, controller, em=em, runtime=runtime, extra_units=extra_units, **overrides)
        if vectors is not None:
            if not vectors.exists():
                raise FileNotFoundError(f"{vectors}: no such file")
            try:
                matrix = np.load(vectors, allow_pickle=False)
            except (ValueError, OSError):
                raise ValueError(f"{vectors}: not a .npy file of vectors (numpy.save writes one)") from None
            rows = invert_to_jsonl(ctrl, output, vectors=matrix, settings=settings, progress=True, workers=workers,
                                   loader=loader)
        else:
            rows = invert_to_jsonl(ctrl, output, texts=read_jsonl_texts(input), settings=settings, progress=True,
                                   workers=workers, loader=loader)
        scored = [r["cosine"] for r in rows if r["cosine"] is not None]
        emit({"inverted": len(rows), "output": str(output), "mean_cosine": sum(scored) / len(scored) if scored else None,
              "encoder_calls": sum(r["encoder_calls"] for r in rows) / max(1, len(rows))}, plain)

    @index_app.command("build")
    @user_errors
    def index_build(
        model: str = typer.Option(..., help="encoder: a run folder, an HF folder or `backbone`; a controller run reuses its unit vectors"),
        out: Path = typer.Option(..., help="folder for index.faiss, units.json, index.json"),
        vocab: Optional[Path] = typer.Option(None, help="unit vocabulary (default: the run's vocab.json, else data/built/vocab.json)"),
        kind: str = typer.Option("auto", help="flat | hnsw | ivfpq | auto (flat below 200k units, else hnsw)"),
        hnsw_m: int = typer.Option(32, "--hnsw-m", help="hnsw: graph neighbours per node (M)"),
        ef_construction: int = typer.Option(200, help="hnsw: candidate list while building (efConstruction)"),
        ef_search: int = typer.Option(128, help="hnsw: candidate list while searching (efSearch)"),
        nlist: int = typer.Option(0, help="ivfpq: inverted lists (0: 4 * sqrt(units))"),
        nprobe: int = typer.Option(16, help="ivfpq: lists scanned per query"),
        pq_m: int = typer.Option(0, "--pq-m", help="ivfpq: sub-quantisers, bytes per code at 8 bits (0: dim / 8; divides dim)"),
        pq_bits: int = typer.Option(8, "--pq-bits", help="ivfpq: bits per sub-quantiser code"),
        train_size: int = typer.Option(0, help="ivfpq: training sample (0: min(units, 64 * nlist))"),
        refine: int = typer.Option(0, help="ivfpq: re-rank k * REFINE PQ candidates with the exact vectors (0: off)"),
        threads: int = typer.Option(0, help="FAISS threads (0: all cores)"),
    ):
        """Build the FAISS unit index over every vocabulary unit's vector (encoded once; an EM run's own
        unit_vectors.safetensors is read instead when it matches the encoder and vocabulary).

        Examples:

        \b
          invemb index build --model runs/em-default --out runs/em-default/index
          invemb index build --model runs/em-default --out idx-hnsw --kind hnsw --hnsw-m 16 --ef-construction 80 --ef-search 64
          invemb index build --model runs/em-default --out idx-pq --kind ivfpq --nlist 1024 --nprobe 32 --pq-m 64
        """
        import json

        from invemb.api import run_kind
        from invemb.index import IndexConfig, UnitIndex
        from invemb.inversion.units import cached_unit_vectors, encoder_fingerprint
        from invemb.text.vocab import Vocab

        # Settings are checked before anything is encoded (all units of the default vocabulary: minutes).
        cfg = IndexConfig(kind=kind, hnsw_m=hnsw_m, hnsw_ef_construction=ef_construction, hnsw_ef_search=ef_search,
                          ivf_nlist=nlist, ivf_nprobe=nprobe, pq_m=pq_m, pq_bits=pq_bits, ivf_train_size=train_size,
                          refine_k_factor=refine, threads=threads)
        if run_kind(model) == "controller":
            from safetensors.torch import load_file

            if vocab is not None:
                raise ValueError("--vocab does not apply to a controller run: it indexes the units it was trained on")
            run = Path(model)
            vocab_obj = Vocab.load(run / "vocab.json")
            info = json.loads((run / "config.json").read_text())
            cfg.kind_for(len(vocab_obj), info["dim"])
            vecs = load_file(str(run / "unit_vectors.safetensors"))["units"]
            fp = info["encoder_fingerprint"]
        else:
            import invemb

            encoder = invemb.load(model)
            own = model not in ("backbone", "default") and (Path(model) / "vocab.json").exists()
            vocab_obj = Vocab.load(vocab or (Path(model) / "vocab.json" if own else Path("data/built/vocab.json")))
            cfg.kind_for(len(vocab_obj), encoder.dim)
            fp = encoder_fingerprint(encoder)
            # An EM run keeps its units' vectors (written when it finished): read there when they match.
            run_vectors = Path(model) / "unit_vectors.safetensors" if own else None
            vecs = cached_unit_vectors(encoder, vocab_obj, out / "unit_vectors.safetensors", fp, reuse=run_vectors)
        index = UnitIndex.build(vecs, vocab_obj.units, cfg,
                                meta={"model": str(model), "encoder_fingerprint": fp, "vocab_fingerprint": vocab_obj.fingerprint()})
        index.save(out)
        emit({"units": len(vocab_obj), "kind": index.cfg.kind, "dim": index.dim, "out": str(out),
              "config": index.cfg.to_dict()})

    @index_app.command("memory")
    @user_errors
    def index_memory(
        controller: Path = typer.Option(..., help="controller run folder (its sentence memory is extended in place)"),
        source: List[str] = typer.Option([], "--source", help="corpus source to add (wiki, wordnet, brown, nlp; repeat; default: all the controller trained on)"),
        max_sentences: int = typer.Option(0, help="add at most this many sentences, a seeded sample (0: every one)"),
        bag: bool = typer.Option(True, help="then train the run's bag of units (`--decode bag_weight`) again on the "
                                            "grown memory (2 minutes for 52k sentences, 19 for 245k)"),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ):
        """Add the controller's training text to its sentence memory: the units of the training sentences
        nearest to a target, which the Selector reads (trained with `selector.memory`, the default preset)
        and `--decode memory_weight` offers it (docs/inversion.md "Sentence memory"). A controller run starts with the
        sentences of its own training states; this encodes more of its corpus's train split (default
        corpus, 2 cores: all of it, 194k more sentences, 11-13 minutes; `--source wiki`, 21k, 2 minutes).
        On two samples, all of it lifted wiki / WordNet token F1 from 44.5 / 60.8 and 42.9 / 60.2 to
        45.5 / 63.1 and 45.1 / 63.6; the wiki text alone gave wiki 46.1 / 48.6. Killed, the same command
        again keeps what it had encoded. The decoder's bag of units (docs/inversion.md "Bag of units") is trained on
        this memory, so it is trained again on the grown one (`--no-bag`: keep the old).

        Examples:

        \b
          invemb index memory --controller runs/ctl-default
          invemb index memory --controller runs/ctl-default --source wiki
          invemb eval inversion --em runs/em-default --controller runs/ctl-default
          invemb eval inversion --em runs/em-default --controller runs/ctl-default --decode bag_weight=0.5
        """
        from invemb.inversion.train import extend_memory

        emit(extend_memory(controller, sources=list(source) or None, max_sentences=max_sentences, progress=not quiet,
                           bag=bag))

    @index_app.command("words")
    @user_errors
    def index_words(
        controller: Path = typer.Option(..., help="controller run folder (the words are added to it, in extra_units/)"),
        source: str = typer.Option("wordfreq", help="'wordfreq' (its English list) or a text file of one word per line"),
        top: int = typer.Option(320_000, help="take at most this many words of the source, most frequent first"),
        numbers: int = typer.Option(2100, help="add the integers 0..N too (-1: none)"),
        ef_construction: int = typer.Option(80, help="HNSW build effort of the extra units' index"),
        ef_search: int = typer.Option(128, help="HNSW search effort (recall against latency)"),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ):
        """Add the words a controller's vocabulary lacks, so that inversion can place them. A vocabulary built
        from the training corpus misses most rare names of new text (the default one covers 65% of held-out
        Wikipedia sentences whole); the Selector and the pair reader search the EM's space, so a word they
        never saw in training is found once its EM vector is in the index. The default list (wordfreq's
        English words and the integers to 2100) adds 247k words to the default vocabulary's 84k: about 5
        minutes to encode and 1 to index on 2 cores. `invemb invert` and `invemb eval inversion` then use them
        (`--no-extra-units`: not). Killed, the same command again keeps what it had encoded.

        Examples:

        \b
          invemb index words --controller runs/controller-default
          invemb index words --controller runs/controller-default --source my_words.txt --numbers -1
        """
        from invemb.inversion.extra import ExtraUnitsConfig, add_extra_units

        cfg = ExtraUnitsConfig().replace(**{"source": source, "top": top, "numbers": numbers,
                                            "index.hnsw_ef_construction": ef_construction, "index.hnsw_ef_search": ef_search})
        emit(add_extra_units(controller, cfg, progress=not quiet))

    from invemb.eval.commands import eval_app

    @eval_app.command("inversion")
    @user_errors
    def eval_inversion_cmd(
        em: str = typer.Option(..., help="the encoder the controller was trained on, or an `invemb order-bind` view "
                                         "of it (its vectors are inverted, every cosine is the view's)"),
        controller: Path = typer.Option(..., help="controller run folder"),
        set_: List[str] = typer.Option(["wiki", "wordnet"], "--set", help="wiki | wordnet (held-out, 5-32 words; repeat)"),
        n: int = typer.Option(50, help="sentences per set"),
        seed: int = typer.Option(0, help="which held-out sentences are drawn: another seed gives a fresh sample "
                                         "(to confirm a setting chosen on the default one)"),
        method: List[str] = typer.Option(["controller", "bag", "blackbox"], "--method",
                                         help="controller | greedy | bag | blackbox (repeat)"),
        corpus: Optional[Path] = typer.Option(None, help="built corpus folder (default: data/built/corpus, else the EM run's)"),
        preset: str = typer.Option("default", help="baseline sizes: tiny | default | full"),
        decode_sets: List[str] = typer.Option([], "--decode", help="the controller's decoding override KEY=VALUE (repeat)"),
        out: Optional[Path] = typer.Option(None, help="folder for results.json, rows_*.jsonl, f1_vs_length_*.png, precision_by_step_*.png"),
        runtime: str = typer.Option("torch", help="the EM backbone's runtime: torch | onnx (onnxruntime, CPU) | bf16 (bfloat16 where the hardware has it): faster decoding"),
        extra_units: bool = typer.Option(True, help="use the words `invemb index words` added to the controller run, when it has them"),
        workers: int = typer.Option(1, "--workers", min=1, help="processes for the controller's decodings, 16 sentences "
                                    "at a time, each with its own controller and its share of the threads (2 on 2 cores: "
                                    "less wall time, a controller in memory per worker; seconds per sentence are then "
                                    "the wall time's share)"),
        plain: bool = typer.Option(False, "--plain", help="a table instead of JSON"),
    ):
        """Inversion metrics (BLEU, ROUGE-L, token F1, exact match, cosine, encoder calls, seconds)
        of the controller and the baselines side by side, with a per-length breakdown and the precision of the unit chosen at each step. With --out, killed
        part-way, the same command again keeps the finished (set, method) rows and runs the rest.

        Example: invemb eval inversion --em backbone --controller runs/controller --n 50 --out reports/inversion

        Example: invemb eval inversion --em runs/em-default --controller runs/controller-default --n 150 --method controller --workers 2
        """
        import functools

        from invemb.inversion import load_run
        from invemb.inversion.controller import say_pinned
        from invemb.inversion.harness import compare_methods, eval_sentences, resolve_corpus
        from invemb.inversion.baselines import BagConfig, BlackBoxConfig
        from invemb.io import check_output_folder

        if n < 1:  # these, before the controller loads and the corpus is read
            raise ValueError(f"--n must be at least 1 sentence, got {n}")
        BagConfig.preset(preset), BlackBoxConfig.preset(preset)
        if out is not None:
            check_output_folder(out, "the results")
        corpus = resolve_corpus(corpus, em)
        overrides = parse_overrides(decode_sets)
        ctrl = load_run(controller, em=em, runtime=runtime, extra_units=extra_units, **overrides)
        say_pinned(controller, ctrl)
        sets = {s: eval_sentences(corpus, s, n, seed=seed) for s in set_}
        loader = functools.partial(load_run, controller, em=em, runtime=runtime, extra_units=extra_units, **overrides)
        results = compare_methods(ctrl, sets, method, out, preset, settings={"em": em, "runtime": runtime},
                                  workers=workers, loader=loader)
        if plain:
            emit([{"set": s, "method": m, **r["summary"]} for s, per in results.items() for m, r in per.items()], plain=True)
        else:
            emit(results)
