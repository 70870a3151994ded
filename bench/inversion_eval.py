"""Inversion benchmark: the controller against both baselines (and the gold-unit oracle, the
ceiling set by segmentation), side by side on held-out Wikipedia sentences (5-32 words) and
WordNet example sentences, all in one run with the same encoder and targets. Killed part-way, the
same command again keeps each finished (set, method) from bench/out/inversion_partial/ and runs the rest.

Prints ratios against the peers measured in the same run (token F1 and BLEU over bag of units,
encoder calls over black-box search) and the peak memory; writes bench/out/inversion_eval.json,
the rows, and F1-vs-length plots.

    .venv/bin/python bench/inversion_eval.py --controller runs/controller-default --em backbone --n 12
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--controller", default="runs/controller-default")
    ap.add_argument("--em", default="backbone")
    ap.add_argument("--corpus", default="data/built/corpus", help="built corpus (default, else the EM run's own)")
    ap.add_argument("--n", type=int, default=12, help="sentences per set for the controller, bag and oracle")
    ap.add_argument("--n-blackbox", type=int, default=6, help="sentences per set for the (slow) black-box search (0: skip it)")
    ap.add_argument("--blackbox", default="default", help="black-box preset: tiny | default | full")
    ap.add_argument("--set", dest="sets", action="append", default=None, help="wiki | wordnet (repeat)")
    ap.add_argument("--decode", action="append", default=[], help="the controller's decoding override KEY=VALUE (repeat)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16, help="controller: sentences decoded in lockstep (1: one by one)")
    ap.add_argument("--runtime", default="torch", help="the EM backbone's runtime: torch | onnx")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from invemb.config import parse_overrides
    from invemb.inversion import load_run, metrics
    from invemb.inversion.baselines import BagConfig, BlackBoxConfig, bag_of_units, black_box_search
    from invemb.inversion.decode import DecodeConfig, OraclePolicy, beam_decode
    from invemb.inversion.harness import Batched, eval_sentences, resolve_corpus, run_methods
    from invemb.inversion.segment import Segmenter
    from invemb.io import PartialFolder, atomic_write_json, content_key, read_jsonl, write_jsonl

    out = Path(args.out)
    t_load = time.perf_counter()
    ctrl = load_run(args.controller, em=args.em, runtime=args.runtime, **parse_overrides(args.decode))
    t_load = time.perf_counter() - t_load
    segmenter = Segmenter(ctrl.vocab)
    # Finished (set, method) rows wait here under a key of everything that shapes them (timings too).
    partial = PartialFolder(out / "inversion_partial", content_key(ctrl.info, ctrl.decode_cfg.to_dict(),
                                                                   {k: v for k, v in vars(args).items() if k != "out"}))
    report = {"controller": args.controller, "em": args.em, "runtime": args.runtime, "batch": args.batch, "decode": ctrl.decode_cfg.to_dict(),
              "blackbox": BlackBoxConfig.preset(args.blackbox).to_dict(), "load_seconds": t_load, "sets": {}}
    for which in args.sets or ["wiki", "wordnet"]:
        sentences = eval_sentences(resolve_corpus(args.corpus, args.em), which, args.n)
        gold = iter([segmenter.segment(s).unit_ids for s in sentences])
        methods = {
            "controller": Batched(lambda t, progress: ctrl.invert_vectors(t, progress=progress, batch=args.batch)),
            "greedy": Batched(lambda t, progress: ctrl.invert_vectors(t, ctrl.decode_cfg.replace(beam=1), progress, args.batch)),
            "bag": lambda t: bag_of_units(t, ctrl.index, BagConfig()),
            "oracle": lambda t: beam_decode(t, OraclePolicy(next(gold)), ctrl.encoder, ctrl.vocab.units,
                                            DecodeConfig(beam=1, patience=0, max_steps=64, lm_weight=0, length_weight=0)),
        }
        finished = {m: read_jsonl(partial.path(f"{which}_{m}.jsonl")) for m in (*methods, "blackbox")
                    if partial.has(f"{which}_{m}.jsonl")}
        if finished:
            print(f"continuing an interrupted run, {which}: {', '.join(finished)} kept")

        def record(method: str, rows: list[dict], which: str = which) -> None:
            write_jsonl(partial.slot(f"{which}_{method}.jsonl"), rows)

        res = run_methods(methods, sentences, ctrl.encoder.encoder, finished=finished, on_rows=record)
        if args.n_blackbox > 0:  # 0: skip the slow baseline (and the ratios against it)
            res.update(run_methods({"blackbox": lambda t: black_box_search(t, ctrl.encoder, ctrl.index, ctrl.unit_vectors,
                                                                            BlackBoxConfig.preset(args.blackbox))},
                                   sentences[: args.n_blackbox], ctrl.encoder.encoder, finished=finished, on_rows=record))
        # The controller on exactly the black-box sentences, for a like-for-like calls ratio.
        same = metrics.summarise(res["controller"]["rows"][: args.n_blackbox])
        s = {m: r["summary"] for m, r in res.items()}
        ratios = {
            "token_f1_controller_over_bag": s["controller"]["token_f1"] / max(1e-9, s["bag"]["token_f1"]),
            "bleu_controller_over_bag": s["controller"]["bleu"] / max(1e-9, s["bag"]["bleu"]),
            "token_f1_controller_over_oracle": s["controller"]["token_f1"] / max(1e-9, s["oracle"]["token_f1"]),
        }
        if "blackbox" in s:
            ratios["encoder_calls_controller_over_blackbox"] = same["encoder_calls"] / max(1e-9, s["blackbox"]["encoder_calls"])
            ratios["seconds_controller_over_blackbox"] = same["seconds"] / max(1e-9, s["blackbox"]["seconds"])
        report["sets"][which] = {"n": len(sentences), "summary": s, "controller_on_blackbox_sentences": same,
                                 "by_length": {m: r["by_length"] for m, r in res.items()},
                                 "by_step": {m: r["by_step"] for m, r in res.items()}, "ratios": ratios}
        for m, r in res.items():
            write_jsonl(out / f"inversion_rows_{which}_{m}.jsonl", r["rows"])
        metrics.plot_f1_vs_length({m: r["rows"] for m, r in res.items() if m != "oracle"},
                                  out / f"inversion_f1_vs_length_{which}.png", f"token F1 against length ({which})")
        metrics.plot_precision_by_step({m: r["by_step"] for m, r in res.items()}, out / f"inversion_precision_by_step_{which}.png",
                                       f"precision of the unit chosen at each step ({which})")
        print(f"\n== {which}: {len(sentences)} sentences (black box on the first {min(args.n_blackbox, len(sentences))})")
        cols = ("token_f1", "token_precision", "token_recall", "length_ratio", "bleu", "rouge_l", "exact_match", "cosine",
                "encoder_calls", "seconds")
        print(f"{'method':<11}" + "".join(f"{c:>16}" for c in cols))
        for m, row in s.items():
            print(f"{m:<11}" + "".join(f"{row[c]:>16.3f}" if row[c] is not None else f"{'-':>16}" for c in cols))
        for m, r in res.items():
            if r["by_step"]:
                print(f"{m} precision by step: " + "  ".join(f"{p['step']}:{p['precision']:.0f}" for p in r["by_step"][:12]))
        for k, v in ratios.items():
            print(f"RATIO {k} = {v:.3f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["peak_rss_mb"] = peak_mb
    print(f"\npeak memory (max RSS): {peak_mb:.0f} MB")
    atomic_write_json(out / "inversion_eval.json", report)
    partial.discard()
    print(f"wrote {out / 'inversion_eval.json'}")


if __name__ == "__main__":
    main()
