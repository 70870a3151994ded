"""Objective ablations: one short EM per dropped objective beside the full one, same data, seed
and steps, every metric side by side.

``ablate_em("default", ["recon", "order"], epochs=1, out="runs/ablate")`` trains ``full``,
``no-recon`` and ``no-order`` into ``out`` (sharing the data folder and the feature cache, so
only the first run pays for features), runs the evaluation suite over all of them in one pass, and
writes ``ablation.md`` / ``ablation.json``: every dev metric and every suite metric of each
ablated run next to the full run, with the difference. A killed ablation is continued by running
the same command again: finished runs are kept, a started one is resumed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# Short name on the command line -> the config fields that switch that objective off.
TERMS: dict[str, dict[str, Any]] = {
    "contrastive": {"loss.contrastive": 0.0},
    "ant": {"loss.antonym": 0.0},
    "syn": {"loss.synonym": 0.0},
    "recon": {"loss.recon": 0.0},
    "sem": {"loss.anchor": 0.0},
    "queue": {"loss.queue": 0},
    "order": {"loss.order": 0.0},
    "unit": {"loss.unit": 0.0},
}
DEV_METRICS = ("dev_recon_cos", "dev_unit_recall@10", "dev_order_discrimination", "dev_synonym_minus_antonym",
               "dev_synonym_margin", "dev_cos_swap_mean", "dev_cos_substituted_mean", "dev_cos_synonym_mean", "train_s")


def parse_drop(spec: str | list[str]) -> list[str]:
    """``"recon,sem"`` or ``["recon", "sem"]`` -> checked term names, in order, without repeats."""
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    names = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not names:
        raise ValueError(f"--drop names no objective; choose from {', '.join(TERMS)}")
    unknown = [n for n in names if n not in TERMS]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r} in --drop; choose from {', '.join(TERMS)}")
    return names


def ablation_configs(preset: str, drop: list[str], epochs: int, overrides: dict[str, Any] | None = None) -> dict:
    """Run name -> EMConfig: ``full`` and one ``no-TERM`` per dropped term."""
    from invemb.em.config import EMConfig

    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    base = EMConfig.preset(preset).replace(**{"train.epochs": epochs, **(overrides or {})})
    configs = {"full": base}
    for term in drop:
        configs[f"no-{term}"] = base.replace(**TERMS[term])
    return configs


def _settings_differ(run: Path, wanted) -> list[str]:
    """The settings (dotted keys) in which the run in ``run`` differs from ``wanted``; what training
    derives from the backbone and where it ran are not settings of the ablation."""
    import json

    from invemb.config import flatten
    from invemb.em.config import EMConfig

    saved = EMConfig.from_dict(json.loads((run / "config.json").read_text())["em"])
    derived = ("head.hidden", "head.vocab_size", "backbone.path", "backbone.device", "train.device", "train.progress")
    a, b = flatten(saved.to_dict()), flatten(wanted.to_dict())
    return sorted(k for k in set(a) | set(b) if k not in derived and a.get(k) != b.get(k))


def _train(cfg, run: Path, progress: bool) -> None:
    from invemb.em.train import train_em

    if (run / "config.json").exists():
        differ = _settings_differ(run, cfg)
        if differ:  # kept as it is, it would sit in a table labelled with the new settings
            raise ValueError(f"{run} was trained with other settings ({', '.join(differ[:4])}"
                             f"{' ...' if len(differ) > 4 else ''}): use another --out, or remove it")
    if (run / "final_metrics.json").exists():
        return  # finished by an earlier call
    # config.json is written once the features are cached: from there on a killed run continues (as make demo's)
    train_em(cfg, run, resume=(run / "config.json").exists(), progress=progress)


def ablate_em(preset: str, drop: list[str], epochs: int, out: str | Path, suite: str = "word,order",
              eval_preset: str = "default", overrides: dict[str, Any] | None = None, progress: bool = True) -> dict:
    """Train the runs (or finish them), evaluate them together, write the ablation table."""
    from invemb.em.train import load_run
    from invemb.eval.suite import EvalConfig, evaluate, suite_names
    from invemb.io import atomic_write_json, atomic_write_text

    out = Path(out)
    suite_names(suite)  # an unknown suite fails before hours of training
    configs = ablation_configs(preset, drop, epochs, overrides)
    ecfg = EvalConfig.preset(eval_preset)  # a bad preset is refused now, not after every run has trained
    out.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        if progress:
            print(f"== ablation run {name} ({out / name})", flush=True)
        _train(cfg, out / name, progress)
    dev = {name: json.loads((out / name / "final_metrics.json").read_text()) for name in configs}
    vocab = out / "full" / "vocab.json"
    ecfg = ecfg.replace(vocab=str(vocab))
    results = evaluate({name: load_run(out / name) for name in configs}, suite, ecfg, str(out / "eval"), progress)
    table = ablation_table(dev, results)
    atomic_write_json(out / "ablation.json", {"preset": preset, "epochs": epochs, "drop": drop, "suite": suite,
                                              "table": table, "runs": {n: str(out / n) for n in configs}})
    atomic_write_text(out / "ablation.md", ablation_markdown(table, preset, epochs, suite))
    return {"table": table, "files": {"markdown": str(out / "ablation.md"), "json": str(out / "ablation.json"),
                                      "eval_report": str(out / "eval" / "report.md")}}


def ablation_table(dev: dict[str, dict], results: dict) -> dict[str, dict[str, float]]:
    """metric -> {run: value}: the dev metrics of each run, then every suite metric
    (``evaluator/metric``)."""
    table: dict[str, dict[str, float]] = {}
    for metric in DEV_METRICS:
        row = {run: float(m[metric]) for run, m in dev.items() if isinstance(m.get(metric), (int, float))}
        if row:
            table[metric] = row
    for ev, per in results["results"].items():
        for metric in dict.fromkeys(k for run, m in per.items() if run in dev for k in m):
            row = {run: float(m[metric]) for run, m in per.items() if run in dev and metric in m}
            table[f"{ev}/{metric}"] = row
    return table


def ablation_markdown(table: dict[str, dict[str, float]], preset: str, epochs: int, suite: str) -> str:
    from invemb.eval.report import direction

    runs = list(dict.fromkeys(r for row in table.values() for r in row))
    others = [r for r in runs if r != "full"]
    lines = [f"# EM ablation ({preset} preset, {epochs} epoch{'s' * (epochs != 1)}, suite `{suite}`)", "",
             "Each `no-TERM` run is the full run with one objective switched off: same data, seed and steps. "
             "Cells: the value, then its difference from `full` in brackets; a bracket in **bold** is a change "
             "for the worse (by the metric's direction; none marked for descriptive metrics).", "",
             "| metric | full | " + " | ".join(others) + " |", "|---|---:|" + "---:|" * len(others)]
    for metric, row in table.items():
        name = metric.split("/")[-1]
        sign = -1 if metric == "train_s" else direction(name)
        full = row.get("full")
        cells = ["–" if full is None else f"{full:.4f}"]
        for r in others:
            if r not in row:
                cells.append("–")
                continue
            value = row[r]
            if full is None or not math.isfinite(value) or not math.isfinite(full):
                cells.append(f"{value:.4f}")
                continue
            delta = value - full
            text = f"({delta:+.4f})"
            worse = sign != 0 and delta * sign < -1e-9
            cells.append(f"{value:.4f} {'**' + text + '**' if worse else text}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
