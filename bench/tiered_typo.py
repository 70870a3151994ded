"""Typo robustness of the tiered model against a from-scratch BPE model and the bundled MiniLM.

One run, the same held-out queries for every encoder: the eval suite's TypoEvaluator (mean
cos(clean, noisy) and MRR of noisy queries against the clean sentences at 0/5/10/20% character
noise and with real codespell misspellings). Two held-out semantic retrieval tasks of the eval
suite (title -> summary, first sentence -> rest) sit beside them, so robustness is not read
without the meaning the vectors carry. Prints the ratio of MRR drops at 10% noise,
tiered / BPE (target: at most 0.5), and peak memory.

    python bench/tiered_typo.py --tiered RUN --bpe RUN2 [--n 500] [--no-minilm]
"""
from __future__ import annotations

import argparse
import time

import torch
from _common import write

import invemb
from invemb.eval.data import first_sentence_rest_task, title_summary_task, wiki_sentences
from invemb.eval.retrieval import RetrievalEvaluator, RetrievalTask
from invemb.eval.typo import TypoEvaluator


def param_count(encoder) -> int:
    model = getattr(encoder, "model", None)
    return sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiered", required=True, help="tiered run folder")
    ap.add_argument("--bpe", required=True, help="scratch run folder trained with --tokenizer bpe")
    ap.add_argument("--n", type=int, default=500, help="held-out Wikipedia sentences (test split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sentences = wiki_sentences(n=args.n, split="test")
    evaluator = TypoEvaluator(sentences, rates=(0.05, 0.1, 0.2), real_rate=0.5)
    # the clean baseline: each clean sentence against the same corpus (the evaluator takes noise rates above 0)
    clean = RetrievalEvaluator(RetrievalTask("clean", sentences, sentences, [{i} for i in range(len(sentences))]))
    semantic_tasks = {"title_summary": RetrievalEvaluator(title_summary_task(n=300)),
                      "first_sentence_rest": RetrievalEvaluator(first_sentence_rest_task(n=300))}
    encoders = {"tiered": invemb.load(args.tiered), "bpe": invemb.load(args.bpe)}
    if not args.no_minilm:
        encoders["minilm"] = invemb.load("backbone")
    rows = {}
    for name, enc in encoders.items():
        t0 = time.perf_counter()
        metrics = evaluator(enc)
        metrics["mrr_noise0"] = clean(enc)["mrr"]
        metrics["mrr_drop_noise10"] = metrics["mrr_noise0"] - metrics["mrr_noise10"]
        for task_name, semantic in semantic_tasks.items():
            metrics[f"semantic_{task_name}_mrr"] = semantic(enc)["mrr"]
        metrics["params"] = param_count(enc)
        metrics["seconds"] = round(time.perf_counter() - t0, 1)
        rows[name] = metrics
        print(name, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
    ratio = rows["tiered"]["mrr_drop_noise10"] / max(rows["bpe"]["mrr_drop_noise10"], 1e-9)
    size = rows["tiered"]["params"] / max(rows["bpe"]["params"], 1)
    print(f"RATIO mrr_drop@10% tiered/bpe = {ratio:.3f} (target <= 0.5); params tiered/bpe = {size:.2f}")
    write("tiered_typo", {"sentences": len(sentences), "threads": args.threads,
                          "ratio_mrr_drop10_tiered_over_bpe": round(ratio, 4), "target_ratio_at_most": 0.5,
                          "ratio_params_tiered_over_bpe": round(size, 3),
                          "models": rows, "tiered_run": args.tiered, "bpe_run": args.bpe})


if __name__ == "__main__":
    main()
