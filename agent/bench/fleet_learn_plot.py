"""The PNG of ``mobizo-bench fleet-learn``: shared held-out loss per round, bytes per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_fleet(doc: dict[str, Any], path: Path) -> Path:
    """Left: shared-task held-out loss after each round (local mean, federated global,
    centralized). Right: bytes per device per round, federated against dense FedAvg (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = doc["rounds"]
    x = [0] + [r["round"] for r in rounds]
    start = doc["shared_heldout_loss"]["start"]
    fig, (loss_ax, bytes_ax) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    for key, label in (("shared_loss_local_mean", "local-only (mean)"),
                       ("shared_loss_federated_global", "federated (global)"),
                       ("shared_loss_fedkseed_pro_global", "FedKSeed-Pro (global)"),
                       ("shared_loss_centralized", "centralized"),
                       ("shared_loss_dense_fedavg", "dense FedAvg")):
        if key in rounds[0]:  # FedKSeed-Pro only with --fedkseed-pro
            loss_ax.plot(x, [start] + [r[key] for r in rounds], marker="o", label=label)
    loss_ax.set(xlabel="round", ylabel="held-out loss, shared task", title="shared task")
    loss_ax.legend()
    per_round = [(r["bytes_up"] + r["bytes_down"]) / max(1, r["sent"]) for r in rounds]
    pro = doc.get("fedkseed_pro")
    width = 0.4 if pro else 0.8
    bytes_ax.bar([r["round"] - (width / 2 if pro else 0) for r in rounds], per_round, width,
                 label="federated (seeds + scalars)")
    if pro:
        bytes_ax.bar([r["round"] + width / 2 for r in pro["rounds"]],
                     [(r["bytes_up"] + r["bytes_down"]) / max(1, r["sent"])
                      for r in pro["rounds"]], width, label="FedKSeed-Pro (+ 1 byte per seed)")
    bytes_ax.axhline(doc["dense_fedavg_bytes_per_device_per_round"], color="#d62728",
                     label="dense FedAvg")
    bytes_ax.set(xlabel="round", ylabel="bytes per device (up + down)", yscale="log",
                 title="bytes per device per round")
    bytes_ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
