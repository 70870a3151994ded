"""Feature extraction: invemb's backbone pass (pooled + token states for the cache) against
``SentenceTransformer.encode`` on the same texts, same batch size, same threads, in one run.

    .venv/bin/python bench/em_features.py [--n 20000] [--batch-size 128] [--slices 5]
Prints texts/s of both and the ratio (ours / sentence-transformers; >= 1.0 is the target), timed
interleaved over slices of the texts, and the largest difference between the two's unit vectors.
"""
from __future__ import annotations

import argparse
import random

import torch

from _common import timed, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--slices", type=int, default=5, help="interleaved timing slices")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    from invemb.backbone.hf import HFBackbone, default_backbone_path
    from invemb.em.config import EMConfig
    from invemb.em.data import ensure_corpus, ensure_vocab

    cfg = EMConfig.preset("default")
    corpus = ensure_corpus(cfg)
    vocab = ensure_vocab(cfg, corpus)
    sents = corpus.sentences("train")
    rng = random.Random(0)
    # the EM's real mix: about half vocabulary units, half corpus sentences
    texts = rng.sample(vocab.units, args.n // 2) + rng.sample(sents, args.n - args.n // 2)
    ours = HFBackbone()
    st = SentenceTransformer(default_backbone_path(), device="cpu")
    st.max_seq_length = ours.cfg.max_length
    # Interleaved over slices (ST, ours, ours + token states on each slice in turn), so a drift in
    # the shared machine's speed hits all three alike; each slice is length-sorted by both.
    slices = [texts[i::args.slices] for i in range(args.slices)]
    t_st = t_pooled = t_tokens = 0.0
    refs, ours_vecs = [], []
    for part in slices:
        dt, ref = timed(lambda: st.encode(part, batch_size=args.batch_size, convert_to_tensor=True))
        t_st += dt
        dt, pooled = timed(lambda: ours.features(part, batch_size=args.batch_size))
        t_pooled += dt
        dt, _ = timed(lambda: ours.features(part, batch_size=args.batch_size, with_tokens=True))
        t_tokens += dt
        refs.append(ref.cpu())
        ours_vecs.append(pooled)
    # The bundled model's SentenceTransformer pipeline ends in Normalize: compare unit vectors.
    max_diff = float((torch.nn.functional.normalize(torch.cat(ours_vecs), dim=-1) - torch.cat(refs)).abs().max())
    write("em_features", {
        "texts": len(texts), "batch_size": args.batch_size, "threads": args.threads,
        "sentence_transformers_texts_per_s": len(texts) / t_st,
        "ours_pooled_texts_per_s": len(texts) / t_pooled,
        "ours_pooled_and_token_states_texts_per_s": len(texts) / t_tokens,
        "ratio_pooled_vs_st": t_st / t_pooled,
        "ratio_with_token_states_vs_st": t_st / t_tokens,
        "max_abs_diff_vs_st_unit_vectors": max_diff,
    })


if __name__ == "__main__":
    main()
