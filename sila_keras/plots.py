"""Matplotlib figures of a run (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sila_keras import io  # noqa: E402


def plot_curves(rows: list[dict], num_heads: int, path, title: str = "") -> None:
    """Test accuracy of every head vs epoch (SilaNet Fig. 3), saved atomically as PNG."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    epochs = [int(r["epoch"]) for r in rows]
    for k in range(1, num_heads + 1):
        acc = [100 * float(r[f"head_{k}_acc"]) for r in rows]
        label = f"ACC{k} (head_{k}{', base classifier' if k == 1 else ''})"
        ax.plot(epochs, acc, marker="o" if len(epochs) < 30 else None, ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy per head")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with io.atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
