"""The EM backbone on onnxruntime and in bfloat16 against the same EM on torch, in one run.

The EM's ``encode`` of held-out Wikipedia sentences and of their prefixes (the short, growing texts
inversion re-scores), batches of ``--batch-size``, interleaved (every repeat times both runtimes in
turn, so drift in the shared machine hits both alike; each keeps its fastest repeat): texts/s, the
ratio, and the largest difference between the two runtimes' vectors. Decoding speed with each
runtime: ``bench/inversion_speed.py``.

    .venv/bin/python bench/backbone_runtime.py --em runs/em-default --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch
from _common import timed, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--em", default="runs/em-default")
    ap.add_argument("--corpus", default="data/built/corpus")
    ap.add_argument("--n-encode", type=int, default=400, help="sentences for the encode timing (and as many prefixes)")
    ap.add_argument("--batch-size", type=int, default=21, help="encode batch (21: a default beam step's children)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import invemb
    from invemb.inversion.harness import eval_sentences, resolve_corpus

    sentences = eval_sentences(resolve_corpus(args.corpus, args.em), "wiki", args.n_encode)
    prefixes = [" ".join(s.split()[: max(1, len(s.split()) // 2)]) for s in sentences]
    texts = sentences + prefixes
    t0 = time.perf_counter()
    from invemb.encoder import bf16_is_fast

    encoders = {"torch": invemb.load(args.em), "onnx": invemb.load(args.em, runtime="onnx")}
    if bf16_is_fast(torch.device("cpu")):
        encoders["bf16"] = invemb.load(args.em, runtime="bf16")
    else:
        print("bf16 left out: this CPU has no bfloat16 arithmetic")
    load_s = time.perf_counter() - t0
    best = dict.fromkeys(encoders, float("inf"))
    for _ in range(args.repeat):
        for name, enc in encoders.items():
            best[name] = min(best[name], timed(enc.encode, texts, batch_size=args.batch_size)[0])
    vecs = {name: enc.encode(texts, batch_size=args.batch_size) for name, enc in encoders.items()}
    encode = {"texts": len(texts), "batch_size": args.batch_size,
              "texts_per_s": {k: round(len(texts) / v, 1) for k, v in best.items()},
              **{f"ratio_time_{k}_over_torch": round(best[k] / best["torch"], 3) for k in encoders if k != "torch"},
              **{f"max_abs_diff_{k}": float((vecs[k] - vecs["torch"]).abs().max()) for k in encoders if k != "torch"},
              **{f"min_cosine_{k}": float((vecs[k] * vecs["torch"]).sum(1).min()) for k in encoders if k != "torch"}}
    print("encode", encode, flush=True)
    report = {"em": args.em, "threads": args.threads, "load_seconds_both": round(load_s, 1), "encode": encode}

    write("backbone_runtime", report)


if __name__ == "__main__":
    main()
