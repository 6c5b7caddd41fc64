"""The PNG of ``mobizo-bench learn``: held-out loss vs forward passes and vs seconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.bench.learn_run import RunResult

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#7f7f7f", "#9467bd", "#ff7f0e", "#8c564b")


def plot_results(results: Sequence[RunResult], path: Path, title: str = "") -> Path:
    """One column per task; top row against forward passes, bottom row against seconds.

    The y range fits the ZO curves (the first-order baseline usually falls far below them and
    would flatten them); its final loss is in its legend label when it leaves the frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    methods = list(dict.fromkeys(r.spec.name for r in results))
    color = {m: _COLORS[i % len(_COLORS)] for i, m in enumerate(methods)}
    fig, axes = plt.subplots(2, len(tasks), figsize=(max(6.0, 4.8 * len(tasks)), 7.4),
                             squeeze=False)
    for col, task in enumerate(tasks):
        runs = [r for r in results if r.task == task]
        zo_losses = [p.loss for r in runs if r.spec.kind == "zo" for p in r.curve] or [
            p.loss for r in runs for p in r.curve]
        lo, hi = min(zo_losses), max(zo_losses)
        pad = 0.08 * max(hi - lo, 1e-3)
        for r in runs:
            label = r.spec.name
            if r.final.loss < lo - pad:
                label += f" (final {r.final.loss:.2f}, below)"
            style = dict(color=color[r.spec.name], marker="o", markersize=3, linewidth=1.6,
                         linestyle="--" if r.spec.kind == "fo" else "-", label=label)
            xs_f = [p.forwards for p in r.curve]
            xs_s = [p.seconds for p in r.curve]
            ys = [p.loss for p in r.curve]
            axes[0][col].plot(xs_f, ys, **style)
            axes[1][col].plot(xs_s, ys, **style)
        mezo = [r for r in results if r.task == task and r.spec.mode == "mezo"]
        for row in (0, 1):
            ax = axes[row][col]
            if mezo:
                ax.axhline(mezo[0].final.loss, color="#1f77b4", linewidth=0.8, linestyle=":",
                           label="MeZO final")
            ax.set_ylim(lo - pad, hi + pad)
            ax.grid(True, alpha=0.3)
            ax.set_ylabel("held-out loss (response CE)")
            ax.set_xlabel("forward passes (sequences)" if row == 0 else "training seconds")
        axes[0][col].set_title(task)
        axes[0][col].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
