"""PNG plots of a run's metrics.jsonl: one figure per metric family, step and epoch rows."""
from __future__ import annotations

from pathlib import Path

from invemb.training.metrics_log import read_metrics

_SKIP = {"kind", "step", "epoch", "seconds"}


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1 or len(values) < window:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/train_curves.png`` (one panel per logged step metric) and ``plots/epoch_metrics.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invemb.io import save_figure

    run_dir = Path(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    steps = read_metrics(run_dir / "metrics.jsonl", "step")
    epochs = read_metrics(run_dir / "metrics.jsonl", "epoch")
    keys = sorted({k for r in steps for k, v in r.items() if k not in _SKIP and isinstance(v, (int, float))})
    if steps and keys:
        loss_keys = [k for k in keys if k.startswith("loss") or k in ("total",)]
        other = [k for k in keys if k not in loss_keys]
        panels = [("losses", loss_keys)] + [(k, [k]) for k in other]
        cols = 3
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        window = max(1, len(steps) // 50)
        for ax, (title, ks) in zip(axes.flat, panels):
            for k in ks:
                pts = [(r["step"], r[k]) for r in steps if isinstance(r.get(k), (int, float))]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, _smooth(list(ys), window), label=k, lw=1.2)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if len(ks) > 1:
                ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        path = out_dir / "train_curves.png"
        written.append(save_figure(fig, path))
    ekeys = sorted({k for r in epochs for k, v in r.items() if k not in _SKIP and not k.startswith("train_") and isinstance(v, (int, float))})
    if epochs and ekeys:
        cols = 3
        rows = (len(ekeys) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, k in zip(axes.flat, ekeys):
            pts = [(r["epoch"] + 1, r[k]) for r in epochs if isinstance(r.get(k), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(ekeys):]:
            ax.axis("off")
        fig.tight_layout()
        path = out_dir / "epoch_metrics.png"
        written.append(save_figure(fig, path))
    return written
