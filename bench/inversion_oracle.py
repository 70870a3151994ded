"""Where inversion loses its words and its order: the trained controller against two oracles on
the same held-out sentences.

    .venv/bin/python bench/inversion_oracle.py --em runs/em-default --controller runs/controller-default [--n 50]

- ``controller``: the trained Selector -> index -> Placer with its own decoding (as `invemb invert`);
- ``gold_units``: an oracle Selector that offers each hypothesis exactly the gold units it still
  lacks (the sentence's segmentation, equally likely), with the trained Placer choosing the slots
  and the same beam and cosine re-scoring: what the Placer and the search make of perfect selection;
- ``gold``: gold units at gold slots: the ceiling the vocabulary's coverage leaves (the decoder
  keeps the best-scoring prefix of the path, as it always does).

Token F1 / BLEU of ``controller`` against ``gold_units`` is the part selection costs; ``gold_units``
against ``gold``, the part placement (and the search's stopping) costs. The oracles decode with
patience off, so they place every gold unit unless the word cap stops them.
"""
from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import torch

from _common import write


class GoldUnitsPolicy:
    """An oracle Selector (the gold units a hypothesis still lacks, uniform) and the trained Placer."""

    def __init__(self, controller, gold: list[int]):
        self.controller, self.gold = controller, Counter(gold)

    def propose(self, targets, hyps, cfg):
        from invemb.inversion.decode import Action, Proposal

        policy = self.controller.policy
        lacking = [sorted((self.gold - Counter(h.units)).elements()) for h in hyps]
        pairs = [(i, u, -math.log(len(left))) for i, left in enumerate(lacking) for u in dict.fromkeys(left)]
        proposals = [Proposal([], stop_prob=0.0 if left else 1.0) for left in lacking]
        if not pairs:
            return proposals
        _, best = policy.best_slots(policy.summary(targets, hyps), [i for i, _, _ in pairs], [u for _, u, _ in pairs],
                                    [len(hyps[i].units) for i, _, _ in pairs], cfg.slots)
        for (i, u, unit_logp), (values, slots) in zip(pairs, best):
            proposals[i].actions += [Action(u, slot, unit_logp + v) for v, slot in zip(values, slots)]
        return proposals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--em", default="runs/em-default")
    ap.add_argument("--controller", default="runs/controller-default")
    ap.add_argument("--corpus", default=None, help="built corpus folder (default: the EM run's)")
    ap.add_argument("--n", type=int, default=50, help="sentences per set")
    ap.add_argument("--sets", default="wiki,wordnet")
    ap.add_argument("--methods", default="controller,gold_units,gold")
    ap.add_argument("--decode", action="append", default=[], metavar="KEY=VALUE",
                    help="decoding override for every method (repeat), as `invemb invert --decode`")
    args = ap.parse_args()
    from tqdm.auto import tqdm

    from invemb.config import parse_overrides
    from invemb.inversion.controller import Controller
    from invemb.inversion.decode import OraclePolicy, beam_decode
    from invemb.inversion.harness import eval_sentences, resolve_corpus
    from invemb.inversion.metrics import summarise
    from invemb.inversion.segment import Segmenter

    torch.set_num_threads(2)
    ctrl = Controller.load(args.controller, em=args.em, **parse_overrides(args.decode))
    segmenter, units = Segmenter(ctrl.vocab), ctrl.vocab.units
    oracle_cfg = ctrl.decode_cfg.replace(patience=0)
    prior, length = ctrl.prior(oracle_cfg), ctrl.lengths(oracle_cfg)
    corpus = resolve_corpus(args.corpus, args.em)
    results = {}
    for which in args.sets.split(","):
        sentences = eval_sentences(corpus, which, args.n)
        targets = ctrl.encoder.encoder.encode(sentences)  # (N, D)
        golds = [segmenter.segment(text).unit_ids for text in sentences]
        methods = {
            "controller": lambda t, gold: ctrl.invert_vector(t),
            "gold_units": lambda t, gold: beam_decode(t, GoldUnitsPolicy(ctrl, gold), ctrl.encoder, units, oracle_cfg,
                                                             prior=prior, length=length),
            "gold": lambda t, gold: beam_decode(t, OraclePolicy(gold), ctrl.encoder, units, oracle_cfg, prior=prior,
                                         length=length),
        }
        results[which] = {}
        for name in args.methods.split(","):
            method = methods[name]
            rows = []
            for text, target, gold in tqdm(list(zip(sentences, targets, golds)), desc=f"{which} / {name}", unit="sent"):
                t0 = time.perf_counter()
                res = method(target, gold)
                rows.append({"text": text, "reconstruction": res.text, "cosine": res.cosine,
                             "encoder_calls": res.encoder_calls, "seconds": time.perf_counter() - t0})
            results[which][name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summarise(rows).items()}
            print(which, name, {k: results[which][name][k] for k in ("token_f1", "bleu", "cosine", "length_ratio")}, flush=True)
    write("inversion_oracle", {"em": args.em, "controller": args.controller, "n": args.n, "decode": args.decode,
                               "results": results})


if __name__ == "__main__":
    main()
