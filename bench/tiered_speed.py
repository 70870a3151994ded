"""Inference cost of the tiered model against a BPE transformer encoder of equal parameter count.

Same texts, same batch size, same threads, one run: characters/s and sentences/s of
``encode``, and the ratio tiered time / BPE time (target: at most 1.5). The BPE peer is the
scratch family's encoder (its trained BPE tokenizer from ``--bpe``) with width and depth chosen
so its parameter count matches the tiered model's; speed does not depend on its weights, so it is
built untrained. The trained ``--bpe`` run is timed too, and the tiered model a second time
with its E1 cache warm.

    python bench/tiered_speed.py --tiered RUN --bpe RUN2 [--n 1000]
"""
from __future__ import annotations

import argparse

import torch
from _common import timed, write

import invemb
from invemb.eval.data import wiki_sentences
from invemb.scratch.train import ScratchEncoder
from invemb.scratch.transformer import SentenceEncoderModel


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matched_bpe(bpe_run: ScratchEncoder, target: int) -> ScratchEncoder:
    """The scratch encoder config (depth 2..4, width a multiple of 32) whose size is closest to ``target``."""
    best = None
    for depth in (2, 3, 4):
        for dim in range(32, 513, 32):
            cfg = bpe_run.cfg.replace(**{"model.dim": dim, "model.depth": depth, "model.heads": 4, "model.ffn_hidden": 2 * dim})
            size = n_params(SentenceEncoderModel(cfg.model))
            if best is None or abs(size - target) < abs(best[0] - target):
                best = (size, cfg)
    torch.manual_seed(0)
    model = SentenceEncoderModel(best[1].model).eval()
    return ScratchEncoder(model, bpe_run.tokenizer, best[1])


def speed(encoder, texts: list[str], batch_size: int, repeat: int) -> dict[str, float]:
    seconds, _ = timed(encoder.encode, texts, batch_size=batch_size, repeat=repeat)
    chars = sum(len(t) for t in texts)
    return {"seconds": round(seconds, 3), "sentences_per_s": round(len(texts) / seconds, 1),
            "chars_per_s": round(chars / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiered", required=True)
    ap.add_argument("--bpe", required=True, help="scratch run trained with --tokenizer bpe (its tokenizer is reused)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    texts = wiki_sentences(n=args.n, split="test")
    tiered = invemb.load(args.tiered)
    bpe_run = invemb.load(args.bpe)
    encoders = {"tiered": tiered, "bpe_equal_params": matched_bpe(bpe_run, n_params(tiered.model)), "bpe_trained_run": bpe_run}
    rows = {}
    for name, enc in encoders.items():
        rows[name] = {"params": n_params(enc.model), **speed(enc, texts, args.batch_size, args.repeat)}
        print(name, rows[name], flush=True)
    cached = invemb.load(args.tiered, cache_e1=True)
    cached.encode(texts, batch_size=args.batch_size)  # fill the E1 cache
    rows["tiered_e1_cache_warm"] = {"params": n_params(cached.model), **speed(cached, texts, args.batch_size, args.repeat)}
    ratio = rows["tiered"]["seconds"] / rows["bpe_equal_params"]["seconds"]
    write("tiered_speed", {"texts": len(texts), "chars": sum(len(t) for t in texts), "batch_size": args.batch_size,
                           "threads": args.threads, "ratio_time_tiered_over_bpe_equal_params": round(ratio, 3),
                           "target_ratio_at_most": 1.5, "models": rows})


if __name__ == "__main__":
    main()
