"""The loss curve saved beside a checkpoint as ``loss.png`` (and sent to the admin who asked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_losses(
    path: Path,
    train: Sequence[tuple[int, float]],
    val: Sequence[tuple[int, float]],
    *,
    title: str = "",
) -> Path:
    """Train and validation loss (nats/token) against optimizer steps, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; set before pyplot is imported
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train", linewidth=1.0, alpha=0.8)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path
