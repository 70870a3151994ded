"""Decoding speed of the controller: one sentence at a time against lockstep batches, on the torch,
onnxruntime and bfloat16 backbone runtimes, in one run on the same sentences; on onnx in lockstep, the Placer
without its pruning (the same searches, every candidate pair placed) and ``--gaps`` (fewer children
encoded: ``DecodeConfig.expand_gap``); on the last runtime in lockstep, ``--expands`` (fewer children
encoded per hypothesis: ``DecodeConfig.expand``) and ``--view RUN`` (the vectors of an ``invemb order-bind``
view inverted instead of the EM's, its bound part in the beam's score). When the controller run has extra units
(``invemb index words``), the last runtime in lockstep and the view also decode without them.

Every repeat decodes the sentences once with each setting in turn (drift in the shared machine hits
all alike; each keeps its fastest repeat). Reports sentences/s, the ratio of each setting's time to
the baseline (torch, one by one), how many reconstructions match the baseline's, token F1 and the
encoder calls per sentence (the calls are the searches' own, the same in every setting).

    .venv/bin/python bench/inversion_speed.py --controller runs/controller-default --em runs/em-default --n 32
"""
from __future__ import annotations

import argparse

import torch
from _common import timed, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--controller", default="runs/controller-default")
    ap.add_argument("--em", default="runs/em-default")
    ap.add_argument("--corpus", default="data/built/corpus")
    ap.add_argument("--n", type=int, default=32, help="held-out Wikipedia sentences (5-32 words)")
    ap.add_argument("--batch", type=int, default=16, help="sentences decoded in lockstep")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", action="append", default=[], metavar="KEY=VALUE",
                    help="decoding override for every setting (repeat), as `invemb invert --decode`")
    ap.add_argument("--runtimes", nargs="+", default=["torch", "onnx", "bf16"],
                    help="backbone runtimes to time (torch always; bf16 left out where the hardware has no bfloat16)")
    ap.add_argument("--gaps", type=float, nargs="*", default=[], help="also decode with these expand_gap values (onnx, lockstep)")
    ap.add_argument("--view", default=None, help="also invert this order-bound view's vectors (lockstep, on the last runtime)")
    ap.add_argument("--expands", type=int, nargs="*", default=[],
                    help="also decode with these expand values (children encoded per hypothesis; lockstep, on the last runtime)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import invemb
    from invemb.inversion import load_run, metrics
    from invemb.inversion.harness import eval_sentences, resolve_corpus

    sentences = eval_sentences(resolve_corpus(args.corpus, args.em), "wiki", args.n)
    from invemb.encoder import bf16_is_fast

    runtimes = list(dict.fromkeys(["torch", *args.runtimes]))
    if "bf16" in runtimes and not bf16_is_fast(torch.device("cpu")):
        print("bf16 left out: this CPU has no bfloat16 arithmetic")
        runtimes.remove("bf16")
    from invemb.config import parse_overrides

    overrides = parse_overrides(args.decode)
    ctrls = {runtime: load_run(args.controller, em=invemb.load(args.em, runtime=runtime), **overrides) for runtime in runtimes}
    targets = ctrls["torch"].encoder.encoder.encode(sentences)
    # name -> (controller, lockstep batch, Placer pruning, decoding settings, vectors inverted)
    settings = {f"{runtime}_{'one_by_one' if batch == 1 else f'lockstep{batch}'}": (ctrl, batch, True, ctrl.decode_cfg, targets)
                for runtime, ctrl in ctrls.items() for batch in (1, args.batch)}
    if "onnx" in ctrls:
        onnx = ctrls["onnx"]
        settings[f"onnx_lockstep{args.batch}_placer_unpruned"] = (onnx, args.batch, False, onnx.decode_cfg, targets)
        for gap in args.gaps:
            settings[f"onnx_lockstep{args.batch}_gap{gap:g}"] = (onnx, args.batch, True, onnx.decode_cfg.replace(expand_gap=gap),
                                                                 targets)
    last = runtimes[-1]  # the fastest where the list runs torch, onnx, bf16
    extra = len(ctrls[last].vocab) > ctrls[last].trained_units  # the run has extra units (`invemb index words`)
    if extra:  # the same decoding without them
        bare = load_run(args.controller, em=invemb.load(args.em, runtime=last), extra_units=False, **overrides)
        settings[f"{last}_lockstep{args.batch}_no_extra_units"] = (bare, args.batch, True, bare.decode_cfg, targets)
    for expand in args.expands:
        ctrl = ctrls[last]
        settings[f"{last}_lockstep{args.batch}_expand{expand}"] = (ctrl, args.batch, True, ctrl.decode_cfg.replace(expand=expand),
                                                                   targets)
    if args.view:
        view = load_run(args.controller, em=invemb.load(args.view, runtime=last), **overrides)
        # its first repeat also encodes each word of the hypotheses once (kept): the fastest repeat is reported
        view_targets = view.target_encoder.encode(sentences)
        settings[f"{last}_lockstep{args.batch}_view"] = (view, args.batch, True, view.decode_cfg, view_targets)
        if extra:
            bare = load_run(args.controller, em=invemb.load(args.view, runtime=last), extra_units=False, **overrides)
            settings[f"{last}_lockstep{args.batch}_view_no_extra_units"] = (bare, args.batch, True, bare.decode_cfg,
                                                                           view_targets)
    best = dict.fromkeys(settings, float("inf"))
    results = {}
    for _ in range(args.repeat):
        for name, (ctrl, batch, prune, decode, vectors) in settings.items():
            ctrl.policy.prune_placer = prune
            seconds, results[name] = timed(ctrl.invert_vectors, vectors, decode, batch=batch)
            best[name] = min(best[name], seconds)
            print(name, f"{len(targets) / seconds:.3f} sent/s", flush=True)
    base = "torch_one_by_one"
    rows = {name: {"sentences_per_s": round(len(targets) / best[name], 3),
                   "ratio_time_over_torch_one_by_one": round(best[name] / best[base], 3),
                   "same_reconstruction_as_baseline": sum(a.text == b.text for a, b in zip(results[name], results[base])),
                   "token_f1": round(sum(metrics.token_f1(r.text, s) for r, s in zip(results[name], sentences)) / len(sentences), 2),
                   "encoder_calls_per_sentence": round(sum(r.encoder_calls for r in results[name]) / len(sentences), 1),
                   # float-level differences (batch padding, runtime) can flip a near-tie between two children
                   "differing_examples": [{"baseline": b.text, "this": a.text, "cosines": [b.cosine, a.cosine]}
                                          for a, b in zip(results[name], results[base]) if a.text != b.text][:3]}
            for name in settings}
    write("inversion_speed", {"controller": args.controller, "em": args.em, "view": args.view, "sentences": len(sentences),
                              "threads": args.threads, "batch": args.batch, "target_sentences_per_s": 2.0, "settings": rows})


if __name__ == "__main__":
    main()
