"""Outputs of the digit-pair task: ``results.json``, markdown tables like the
paper's Tables 1/2, and accuracy curves with a mean ± std band over rounds (Fig. 4).

All files are written atomically (:mod:`sila_keras.utils.files`); figures use matplotlib's
headless Agg backend (:mod:`sila_keras.utils.plots`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sila_keras.utils import files
from sila_keras.utils.plots import plt  # Agg backend already selected there
from sila_keras.utils.rundir import PairsDir


def pct(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def mean_std(r: dict, key: str = "mean_accuracy") -> str:
    """``91.02% ± 1.62%``; the std is left out for a single round (it is undefined)."""
    std = r.get(key.replace("mean", "std"))
    return pct(r[key]) + (f" ± {pct(std)}" if r.get("rounds", 2) > 1 and std is not None else "")


def params_line(result: dict) -> str:
    """``params: 34,964 (paper: 34,964)``."""
    return f"params: {result['params']:,} (paper: {result['paper_params']:,})"


def result_line(result: dict) -> str:
    """One line: label, lr, batch, mean ± std test accuracy over rounds, params."""
    extra = ""
    if "mean_val_accuracy" in result:
        extra += f"  val {pct(result['mean_val_accuracy'])}"
    if "mean_digit_accuracy" in result:
        extra += f"  digits {pct(result['mean_digit_accuracy'])}"
    if "mean_digit_rule_accuracy" in result:
        extra += f"  digit rule {pct(result['mean_digit_rule_accuracy'])}"
    if "mean_head_2_accuracy" in result:
        extra += f"  SiLa head 2 {pct(result['mean_head_2_accuracy'])}"
    return (f"{result['label']}: lr {result['lr']:g}, batch {result['batch_size']}, "
            f"{result['rounds']} round(s) × {result['options']['epochs']} epochs, pairs drawn "
            f"{pair_draw(result)}: test accuracy "
            f"{pct(result['mean_accuracy'])} ± {pct(result['std_accuracy'])}{extra}; "
            f"{params_line(result)}")


def pair_draw(result: dict) -> str:
    """``once`` or ``per-round`` (results from before ``--pair-draw`` drew per round)."""
    return result["options"].get("pair_draw", "per-round")


def table1_markdown(results: list[dict]) -> str:
    """Table 1 layout (one column per configuration), with the paper's values beside ours."""
    cols = [r["label"] for r in results]
    rows = [
        ("number of params (ours)", [f"{r['params']:,}" for r in results]),
        ("number of params (paper)", [f"{r['paper_params']:,}" for r in results]),
        ("learning rate", [f"{r['lr']:g}" for r in results]),
        ("batch size", [str(r["batch_size"]) for r in results]),
        ("rounds", [str(r["rounds"]) for r in results]),
        ("pairs drawn (--pair-draw)", [pair_draw(r) for r in results]),
        ("accuracy (ours, mean ± std)",
         [mean_std(r) for r in results]),
        ("accuracy (paper, Table 1)", [pct(r["paper_table1"]["accuracy"]) for r in results]),
    ]
    if any("mean_val_accuracy" in r for r in results):
        rows.insert(len(rows) - 2, ("validation accuracy", [pct(r.get("mean_val_accuracy")) for r in results]))
    for key, name in (("mean_digit_accuracy", "digit accuracy (ours)"),
                      ("mean_digit_rule_accuracy", "comparison read off the digit heads (ours)"),
                      ("mean_head_2_accuracy", "SiLa head 2 accuracy (ours)")):
        if any(key in r for r in results):
            rows.append((name, [pct(r.get(key)) for r in results]))
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
    return "\n".join(lines) + "\n"


TECHNIQUES = {(True, True): "weight sharing, auxiliary loss", (True, False): "weight sharing",
              (False, True): "auxiliary loss", (False, False): "none"}


def table2_markdown(results: list[dict]) -> str:
    """Table 2 layout: technique, our accuracy and std, the paper's."""
    lines = ["| Technique | Accuracy | Std | Paper accuracy | Paper std | Params | Rounds |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        tech = TECHNIQUES[(r["options"]["share"], r["options"]["aux"])]
        paper = r.get("paper_table2", {})
        lines.append(f"| {tech} | {pct(r['mean_accuracy'])} | {pct(r['std_accuracy'])} | "
                     f"{pct(paper.get('accuracy'))} | {pct(paper.get('std'))} | {r['params']:,} | "
                     f"{r['rounds']} |")
    return "\n".join(lines) + "\n"


def grid_markdown(grid: list[dict], key: str) -> str:
    """lr × batch-size matrix of ``key`` (``mean_accuracy`` or ``mean_val_accuracy``) ± its std."""
    lrs = sorted({g["lr"] for g in grid})
    batches = sorted({g["batch_size"] for g in grid})
    cell = {(g["lr"], g["batch_size"]): g for g in grid}
    lines = ["| lr \\ batch | " + " | ".join(str(b) for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for lr in lrs:
        vals = []
        for b in batches:
            g = cell.get((lr, b))
            vals.append("" if g is None else mean_std(g, key))
        lines.append(f"| {lr:g} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot_bands(results: list[dict], path, title: str = "") -> None:
    """Test accuracy per epoch, mean ± std band over rounds, one curve per result (Fig. 4)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in results:
        curves = np.asarray(r["curves"]["test_accuracy"], np.float64) * 100
        mean = curves.mean(axis=0)
        std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        epochs = np.arange(1, len(mean) + 1)
        (line,) = ax.plot(epochs, mean, label=f"{r['label']}: {pct(r['mean_accuracy'], 1)}")
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    n = results[0]["rounds"] if results else 0
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"Digit-pair comparison: mean ± std over {n} round(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    from sila_keras.utils.plots import save_png

    save_png(fig, path)


def write_run(out: Path, result: dict, table: str) -> list[Path]:
    """``results.json``, ``table.md`` and ``curves.png`` of one configuration in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / PairsDir.RESULTS, out / PairsDir.TABLE, out / PairsDir.CURVES]
    files.write_json(paths[0], result)
    files.write_text(paths[1], table)
    plot_bands([result], paths[2], title=f"{result['label']}: mean ± std over "
                                         f"{result['rounds']} round(s)")
    return paths
