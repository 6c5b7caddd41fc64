"""The PNG of ``mobizo-bench learn``: held-out loss vs forward passes and vs seconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.bench.learn_run import RunResult

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#7f7f7f", "#9467bd", "#ff7f0e", "#8c564b")


def plot_results(results: Sequence[RunResult], path: Path, title: str = "") -> Path:
    """One column per task; top row against forward passes, bottom row against seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    methods = list(dict.fromkeys(r.spec.name for r in results))
    color = {m: _COLORS[i % len(_COLORS)] for i, m in enumerate(methods)}
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.2), squeeze=False)
    for col, task in enumerate(tasks):
        for r in (r for r in results if r.task == task):
            style = dict(color=color[r.spec.name], marker="o", markersize=3, linewidth=1.6,
                         linestyle="--" if r.spec.kind == "fo" else "-", label=r.spec.name)
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
            ax.grid(True, alpha=0.3)
            ax.set_ylabel("held-out loss (response CE)")
            ax.set_xlabel("forward passes (sequences)" if row == 0 else "training seconds")
        axes[0][col].set_title(task)
    axes[0][0].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
