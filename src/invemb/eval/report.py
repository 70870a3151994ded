"""Reports of suite results: results.json, a side-by-side report.md, and plots.

- :func:`markdown_report`: one table of primary metrics (best per row in bold), then every metric
  per evaluator, then what did not run and why;
- :func:`combine_results` / :func:`tabulate_results`: several ``results.json`` (e.g. one per
  ablated EM) merged into one side-by-side table;
- plots: per-evaluator bar charts, typo noise-level curves (from the results alone), and, given
  the encoders, PCA / t-SNE of units coloured by category and a similarity heatmap of probe words.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from invemb.io import atomic_write_json, atomic_write_text, save_figure

PROBES = ["bank", "river", "money", "loan", "New York", "city", "prime minister", "president",
          "good", "bad", "not good", "excellent", "cat", "dog"]

# Metrics where lower is better; metrics matching NEUTRAL are descriptive (counts, spreads, norms).
LOWER = {"anisotropy", "antonym_intrusion", "share_unrelated", "share_antonym", "variance_top1", "variance_top10",
         "cos_swap_mean", "cos_shuffle_mean", "cos_random_mean", "cos_antonym_mean", "antonym_margin",
         "encoder_calls", "seconds"}
NEUTRAL = re.compile(r"^n$|^(n_|norm_|share_(same_lemma|synonym|hypernym|hyponym|other_related)$)|_(std|p10|p50|p90)$"
                     r"|^real_changed_share$")


def direction(metric: str) -> int:
    """+1 higher is better, -1 lower is better, 0 descriptive (never marked best)."""
    if metric in LOWER:
        return -1
    return 0 if NEUTRAL.search(metric) else 1


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 10 else f"{value:.4f}"


def _row(values: dict[str, float], columns: list[str], sign: int) -> list[str]:
    present = [values[c] for c in columns if c in values]
    best = (max(present) if sign > 0 else min(present)) if sign and len(present) > 1 else None
    cells = []
    for c in columns:
        if c not in values:
            cells.append("–")
        else:
            text = _fmt(values[c])
            cells.append(f"**{text}**" if best is not None and np.isclose(values[c], best) else text)
    return cells


def _columns(results: dict) -> list[str]:
    extra = sorted({c for per in results["results"].values() for c in per} - set(results["encoders"]))
    return list(results["encoders"]) + extra  # e.g. bm25 after the encoders


def markdown_report(results: dict) -> str:
    columns = _columns(results)
    head = lambda first: [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines = [f"# Evaluation: suite `{results['suite']}`", "",
             f"Encoders: {', '.join(results['encoders'])}. Best per row in **bold** "
             "(for counts and spreads no best is marked).", "", "## Primary metrics", ""]
    lines += head("evaluator (metric)")
    for ev, per in results["results"].items():
        metric = results["primary"][ev]
        values = {c: m[metric] for c, m in per.items() if metric in m}
        lines.append(f"| {ev} ({metric}{', higher is better' if direction(metric) > 0 else ''}) | "
                     + " | ".join(_row(values, columns, direction(metric))) + " |")
    for ev, per in results["results"].items():
        cols = [c for c in columns if c in per]
        lines += ["", f"## {ev}", "", "| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for metric in dict.fromkeys(k for m in per.values() for k in m):
            values = {c: m[metric] for c, m in per.items() if metric in m}
            lines.append(f"| {metric} | " + " | ".join(_row(values, cols, direction(metric))) + " |")
    if results.get("not_run"):
        lines += ["", "## Not run", ""] + [f"- **{ev}**: {why}" for ev, why in results["not_run"].items()]
    seconds = results.get("seconds") or {}
    if any(seconds.values()):
        encs = list(results["encoders"])
        lines += ["", "## Seconds per evaluator", "", "| evaluator | " + " | ".join(encs) + " |", "|---|" + "---:|" * len(encs)]
        for ev, per in seconds.items():
            if per:
                lines.append(f"| {ev} | " + " | ".join(f"{per[c]:.1f}" if c in per else "–" for c in encs) + " |")
    return "\n".join(lines) + "\n"


def combine_results(paths: list[str | Path], names: list[str] | None = None) -> dict:
    """Several results.json side by side: each file's encoders become columns named
    ``<name>`` (one encoder in the file) or ``<name>/<encoder>``; ``names`` default to folder names."""
    loaded = []
    for p in paths:
        p = Path(p)
        f = p / "results.json" if p.is_dir() else p
        if not f.exists():
            raise FileNotFoundError(f"{f}: no results.json (run `invemb eval ... --out DIR` first)")
        loaded.append(json.loads(f.read_text(encoding="utf-8")))
    names = names or [Path(p).name if Path(p).is_dir() else Path(p).parent.name for p in paths]
    if len(names) != len(loaded):
        raise ValueError(f"{len(names)} names for {len(loaded)} results")
    combined = {"suite": ",".join(dict.fromkeys(r["suite"] for r in loaded)), "encoders": [], "primary": {},
                "results": {}, "not_run": {}, "seconds": {}}
    for name, res in zip(names, loaded):
        rename = {e: (name if len(res["encoders"]) == 1 else f"{name}/{e}") for e in res["encoders"]}
        combined["encoders"] += list(rename.values())
        combined["primary"].update(res["primary"])
        for ev, per in res["results"].items():
            for col, metrics in per.items():
                key = rename.get(col, col)  # peers like bm25 keep their name (same data, same scores)
                combined["results"].setdefault(ev, {})[key] = metrics
        for ev, why in res.get("not_run", {}).items():
            combined["not_run"][f"{ev} ({name})"] = why
    return combined


def tabulate_results(paths: list[str | Path], names: list[str] | None = None) -> str:
    """Markdown side-by-side table of several results.json (what `invemb ablate em` prints)."""
    return markdown_report(combine_results(paths, names))


# -- plots -------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(results: dict, out_dir: str | Path) -> list[Path]:
    """One bar chart per evaluator: its ranked metrics (no counts or spreads), one bar per column."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns, written = _columns(results), []
    for ev, per in results["results"].items():
        metrics = [m for m in dict.fromkeys(k for v in per.values() for k in v) if direction(m)][:12]
        if not metrics:
            continue
        cols = [c for c in columns if c in per]
        width = 0.8 / len(cols)
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(metrics) * max(1, len(cols) / 2)), 3.6))
        x = np.arange(len(metrics))
        for i, c in enumerate(cols):
            ax.bar(x + i * width, [per[c].get(m, np.nan) for m in metrics], width, label=c)
        ax.set_xticks(x + width * (len(cols) - 1) / 2, [m + (" ↓" if direction(m) < 0 else "") for m in metrics],
                      rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{ev} (↓: lower is better)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"bars_{ev}.png"
        written.append(save_figure(fig, path))
    return written


def plot_typo_curves(results: dict, out_path: str | Path) -> Path | None:
    """cos(clean, noisy) and MRR against the share of characters hit, per encoder; real
    misspellings as a dotted horizontal line (they have no character rate of their own)."""
    per = results["results"].get("typo")
    if not per:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for enc, m in per.items():
        levels = sorted((float(k[len("cos_noise"):]), k[len("cos_"):]) for k in m if re.fullmatch(r"cos_noise[\d.]+", k))
        for ax, what in zip(axes, ("cos", "mrr")):
            line, = ax.plot([0] + [pct for pct, _ in levels], [1.0] + [m[f"{what}_{name}"] for _, name in levels],
                            marker="o", label=enc)
            if f"{what}_real" in m:
                ax.axhline(m[f"{what}_real"], color=line.get_color(), linestyle=":", linewidth=1)
    for ax, title in zip(axes, ("mean cos(clean, noisy)", "MRR of noisy queries")):
        ax.set_xlabel("% of characters edited (dotted: real misspellings)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_units(encoders: dict, units: list[str], categories: list[str], out_path: str | Path, seed: int = 0,
               top_categories: int = 8) -> Path:
    """PCA and t-SNE (scikit-learn) of unit vectors, one row per encoder, coloured by category
    (the ``top_categories`` most common; the rest grey)."""
    from collections import Counter

    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    from invemb.eval.base import encode_checked

    plt = _pyplot()
    keep = [c for c, _ in Counter(categories).most_common(top_categories)]
    colour = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(keep)}
    fig, axes = plt.subplots(len(encoders), 2, figsize=(10, 4.2 * len(encoders)), squeeze=False)
    for row, (name, enc) in enumerate(encoders.items()):
        x = encode_checked(enc, units, task="unit plot").numpy()
        pca = PCA(2, random_state=seed).fit_transform(x)
        # one OpenMP thread: on a few shared cores the Barnes-Hut threads spin-wait (30x slower)
        with threadpool_limits(1):
            tsne = TSNE(2, perplexity=min(30, max(2, len(units) // 4)), init="pca", random_state=seed).fit_transform(x)
        for ax, xy, title in ((axes[row][0], pca, "PCA"), (axes[row][1], tsne, "t-SNE")):
            for c in keep + ["other"]:
                idx = [i for i, cat in enumerate(categories) if (cat if cat in colour else "other") == c]
                if idx:
                    ax.scatter(xy[idx, 0], xy[idx, 1], s=8, color=colour.get(c, (0.7, 0.7, 0.7, 0.6)), label=c)
            ax.set_title(f"{name}: {title} of {len(units)} units")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][1].legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_similarity_heatmap(encoders: dict, out_path: str | Path, probes: list[str] = PROBES) -> Path:
    """Cosine similarity of probe words and phrases, one panel per encoder."""
    from invemb.eval.base import encode_checked

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(encoders), figsize=(5.6 * len(encoders), 5.2), squeeze=False, layout="constrained")
    for ax, (name, enc) in zip(axes[0], encoders.items()):
        v = encode_checked(enc, probes, task="similarity heatmap")
        sim = (v @ v.T).numpy()  # (P, P)
        image = ax.imshow(sim, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(probes)), probes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(probes)), probes, fontsize=8)
        for i in range(len(probes)):
            for j in range(len(probes)):
                ax.text(j, i, f"{sim[i, j]:.2f}".lstrip("0").replace("-0", "-"), ha="center", va="center", fontsize=5)
        ax.set_title(name)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    return save_figure(fig, out_path)


def write_report(results: dict, out_dir: str | Path, encoders: dict | None = None, units: tuple[list[str], list[str]] | None = None,
                 seed: int = 0) -> dict[str, list[str]]:
    """results.json, report.md and plots/ in ``out_dir``; unit and heatmap plots need ``encoders``
    (and ``units`` = (units, categories) for the PCA / t-SNE). Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", results)
    plots = plot_bars(results, out_dir / "plots")
    typo = plot_typo_curves(results, out_dir / "plots" / "typo_curves.png")
    plots += [typo] if typo else []
    if encoders:
        plots.append(plot_similarity_heatmap(encoders, out_dir / "plots" / "similarity_heatmap.png"))
        if units and len(units[0]) >= 10:
            plots.append(plot_units(encoders, units[0], units[1], out_dir / "plots" / "units_pca_tsne.png", seed))
    report = markdown_report(results)
    if plots:
        report += "\n## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    atomic_write_text(out_dir / "report.md", report)
    return {"results": [str(out_dir / "results.json")], "report": [str(out_dir / "report.md")],
            "plots": [str(p) for p in plots]}
