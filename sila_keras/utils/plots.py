"""Matplotlib figures of a run (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sila_keras.utils import files  # noqa: E402


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
    save_png(fig, path)


def plot_net_curves(rows: list[dict], net: int, path, title: str = "") -> None:
    """Test Top-1 (and NLL, when logged) of one net vs epoch (paper B Fig. 3), as PNG."""
    key_acc = f"head_{net}_acc"
    key_nll = "nll" if net == 1 else f"head_{net}_nll"
    epochs = [int(r["epoch"]) for r in rows]
    acc = [100 * float(r[key_acc]) for r in rows]
    nll = [float(r[key_nll]) for r in rows if r.get(key_nll) not in (None, "")]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    marker = "o" if len(epochs) < 30 else None
    ax.plot(epochs, acc, marker=marker, ms=3, color="C0", label=f"Net {net} test Top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test Top-1 (%)")
    ax.grid(alpha=0.3)
    if len(nll) == len(epochs) and nll:
        ax2 = ax.twinx()
        ax2.plot(epochs, nll, marker=marker, ms=3, color="C1", ls="--", label=f"Net {net} test NLL")
        ax2.set_ylabel("test NLL")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"Net {net}")
    fig.tight_layout()
    save_png(fig, path)


def plot_anytime(anytime: list[dict], path, title: str = "") -> None:
    """Test Top-1 of each exit vs the FLOPs of its path (paper B Fig. 5)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    x = [r["flops"] / 1e6 for r in anytime]
    y = [100 * r["test_top1"] for r in anytime]
    ax.plot(x, y, marker="o", ms=4)
    for r, xi, yi in zip(anytime, x, y):
        ax.annotate(f"exit {r['exit']}", (xi, yi), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.set_xlabel("FLOPs of the exit's path (×10⁶ multiply-adds)")
    ax.set_ylabel("test Top-1 (%)")
    ax.set_title(f"{title} anytime prediction".strip())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def plot_budgeted(budgeted: list[dict], anytime: list[dict], path, title: str = "") -> None:
    """Test Top-1 vs average FLOPs per test image (paper B Fig. 4)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    pts = sorted((r["test_avg_flops"] / 1e6, 100 * r["test_top1"]) for r in budgeted)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label="dynamic exits (thresholds)")
    ax.plot([r["cumulative_flops"] / 1e6 for r in anytime], [100 * r["test_top1"] for r in anytime],
            ls=":", marker="x", color="grey", label="single exit for all images")
    _save_top1_vs_cost(fig, ax, path, "average FLOPs per test image (×10⁶ multiply-adds)",
                       f"{title} budgeted batch classification")


def _save_top1_vs_cost(fig, ax, path, xlabel: str, title: str) -> None:
    """Label a test Top-1 vs cost-per-image figure the one way, and save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test Top-1 (%)")
    ax.set_title(title.strip())
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path) -> None:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    with files.atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_cascade(result: dict, path, title: str = "") -> None:
    """Test Top-1 vs mean MACs per image: the threshold sweep (curve), the calibrated cascade
    (star) and each head alone (points), from a ``cascade.json`` dict."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    pts = sorted((p["mean_macs"] / 1e6, 100 * p["accuracy"]) for p in result["sweep"])
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", ms=3,
            label=f"cascade, threshold sweep ({result.get('confidence', 'max')} confidence)")
    c = result["cascade"]
    ax.plot([c["mean_macs"] / 1e6], [100 * c["accuracy"]], marker="*", ms=12, ls="",
            color="C3", label="calibrated cascade")
    for s in result["single"]:
        ax.plot([s["macs"] / 1e6], [100 * s["accuracy"]], marker="o", ls="", color="grey")
        ax.annotate(s["name"], (s["macs"] / 1e6, 100 * s["accuracy"]), textcoords="offset points",
                    xytext=(3, 4), fontsize=7)
    _save_top1_vs_cost(fig, ax, path, "mean MACs per test image (×10⁶ multiply-adds)",
                       f"{title} early-exit cascade")
