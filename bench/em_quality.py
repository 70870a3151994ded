"""EM against the raw backbone, side by side, on held-out data.

    .venv/bin/python bench/em_quality.py [--run runs/em-default]
SimLex-999 and WordSim-353 Spearman, relation margins on held-out WordNet pairs, order
discrimination on held-out (test-split) Wikipedia sentences, plus the run's own dev metrics
(unit recall@10, reconstruction cosine) against the backbone measured on the same dev data.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _common import write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/em-default")
    ap.add_argument("--sentences", type=int, default=500)
    args = ap.parse_args()
    import invemb
    from invemb.eval.data import wiki_sentences
    from invemb.eval.order import OrderEvaluator
    from invemb.eval.relations import RelationEvaluator
    from invemb.eval.wordsim import WordSimEvaluator

    run = Path(args.run)
    encoders = {"backbone": invemb.load("backbone"), "em": invemb.load(run)}
    evaluators = {
        "simlex999": WordSimEvaluator("simlex999"), "wordsim353": WordSimEvaluator("wordsim353"),
        "relations": RelationEvaluator(None), "order": OrderEvaluator(wiki_sentences(args.sentences, split="test")),
    }
    table: dict[str, dict[str, float]] = {name: {} for name in encoders}
    for ename, enc in encoders.items():
        for vname, ev in evaluators.items():
            with torch.no_grad():
                res = ev(enc)
            table[ename][f"{vname}/{ev.primary_metric}"] = res[ev.primary_metric]
            for extra in ("synonym_minus_antonym", "cos_swap_mean", "cos_substituted_mean", "cos_synonym_mean"):
                if extra in res:
                    table[ename][f"{vname}/{extra}"] = res[extra]
    final = json.loads((run / "final_metrics.json").read_text())
    backbone_dev = json.loads((run / "backbone_metrics.json").read_text())
    for key in ("dev_unit_recall@10", "dev_order_discrimination", "dev_synonym_minus_antonym"):
        table["backbone"][key] = backbone_dev.get(key)
        table["em"][key] = final.get(key)
    table["em"]["dev_recon_cos"] = final.get("dev_recon_cos")
    for k in ("data_s", "features_s", "train_s", "total_s"):
        table["em"][k] = final.get(k)
    write("em_quality", {"run": str(run), "table": table})
    rows = sorted(set(table["backbone"]) | set(table["em"]))
    print(f"{'metric':45s} {'backbone':>10s} {'EM':>10s}")
    for r in rows:
        b, e = table["backbone"].get(r), table["em"].get(r)
        f = lambda v: f"{v:10.3f}" if isinstance(v, (int, float)) else f"{'':10s}"
        print(f"{r:45s} {f(b)} {f(e)}")


if __name__ == "__main__":
    main()
