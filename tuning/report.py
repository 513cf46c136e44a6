"""Search results: ``trials.csv``, ``best_hparams.json`` and ``search.png`` (chief only).

Everything is read from the keras-tuner oracle, which in a distributed search
lives in the chief, so the chief sees every worker's trials.
"""

from __future__ import annotations

from pathlib import Path

from sila_keras.utils import files
from sila_keras.utils.rundir import SearchDir
from tuning.hypermodel import EPOCHS_RUN

COMPLETED = "COMPLETED"


def trial_rows(oracle, objective: str, tune_heads: bool) -> list[dict]:
    """One row per trial, in trial-id order.

    Columns: ``trial, trial_id, beta, lam, [heads], <objective>, epochs_run, status,
    message`` (``trial``: the number keras-tuner prints, ``#1`` for ``trial_id`` 0; ``trial_id``:
    its folder ``tuner/trial_<id>``) (the last line of the error for a failed trial). Hyperband rows also
    name the trial whose weights they continue (``continues``, else empty).
    """
    rows = []
    for trial_id in sorted(oracle.trials, key=_trial_order):
        t = oracle.trials[trial_id]
        values = t.hyperparameters.values
        row = {"trial": trial_number(trial_id), "trial_id": trial_id, "beta": values.get("beta"), "lam": values.get("lam")}
        if tune_heads:
            row["heads"] = values.get("heads")
        done = t.status == COMPLETED
        row[objective] = _metric(t, objective, best=True) if done else None
        row["epochs_run"] = _int(_metric(t, EPOCHS_RUN)) if done else None
        row["status"] = t.status
        row["message"] = (t.message or "").strip().splitlines()[-1][:200] if t.message else ""
        if "tuner/epochs" in values:
            row["continues"] = values.get("tuner/trial_id") or ""
        rows.append(row)
    return rows


def trial_number(trial_id) -> int | str:
    """The number keras-tuner prints for a trial (``Running Trial #1`` is ``trial_id`` 0)."""
    return int(trial_id) + 1 if str(trial_id).isdigit() else str(trial_id)


def _trial_order(trial_id: str):
    # ids are zero-padded to len(str(max_trials)), which may grow on --resume
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


def _metric(trial, name: str, best: bool = False):
    if not trial.metrics.exists(name):
        return None
    value = trial.metrics.get_best_value(name) if best else trial.metrics.get_last_value(name)
    return None if value is None else float(value)


def _int(v):
    return None if v is None else int(round(v))


def trial_columns(objective: str, tune_heads: bool, hyperband: bool = False) -> list[str]:
    return ["trial", "trial_id", "beta", "lam", *(["heads"] if tune_heads else []), objective, "epochs_run",
            "status", *(["continues"] if hyperband else []), "message"]


def best_row(rows: list[dict], objective: str) -> dict | None:
    """The completed row with the highest objective (first one on ties), or None."""
    done = [r for r in rows if r["status"] == COMPLETED and r[objective] is not None]
    return max(done, key=lambda r: r[objective]) if done else None


def best_hparams(best: dict, config, rows: list[dict], data_info: dict) -> dict:
    """The content of ``best_hparams.json``."""
    heads = best.get("heads") or config.train.sila.heads
    args = ["--beta", repr(best["beta"]), "--lam", repr(best["lam"]), "--heads", str(heads)]
    return {
        "beta": best["beta"], "lam": best["lam"], "heads": int(heads),
        "tuned": ["beta", *(["lam"] if config.searches_lam else []),
                  *(["heads"] if config.tune_heads else [])],
        "objective": config.objective, "objective_value": best[config.objective],
        "objective_direction": "max", "objective_split": "validation (held out from the training split)",
        "trial": trial_number(best["trial_id"]), "trial_id": best["trial_id"], "tuner": config.tuner,
        "trials": {"total": len(rows), "completed": sum(r["status"] == COMPLETED for r in rows)},
        "epochs_per_trial": config.train.optim.epochs,
        "dataset": config.train.data.dataset, "model": config.train.net.model, "data": data_info,
        "train_args": args,
    }


def plot_search(rows: list[dict], objective: str, path, title: str = "", beta_range=None,
                lam_range=None) -> None:
    """Objective over β (log axis) × λ: colour = objective, ★ = best, × = failed trial.

    The axes span the searched ranges when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    done = [r for r in rows if r["status"] == COMPLETED and r[objective] is not None]
    failed = [r for r in rows if r not in done and r["beta"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    if done:
        sc = ax.scatter([r["beta"] for r in done], [r["lam"] for r in done],
                        c=[100 * r[objective] for r in done], cmap="viridis", s=60,
                        edgecolors="k", linewidths=0.5)
        fig.colorbar(sc, ax=ax, label=f"{objective} (%)")
        for r in done:
            if "heads" in r and r["heads"] is not None:
                ax.annotate(f"M={r['heads']}", (r["beta"], r["lam"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        b = best_row(rows, objective)
        ax.scatter([b["beta"]], [b["lam"]], marker="*", s=320, facecolors="none",
                   edgecolors="red", linewidths=1.5,
                   label=f"best: β={b['beta']:.3g}, λ={b['lam']:.3g}, {100 * b[objective]:.2f}%")
    if failed:
        ax.scatter([r["beta"] for r in failed], [r["lam"] for r in failed], marker="x",
                   c="grey", label="failed / unfinished")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if beta_range:
        ax.set_xlim(beta_range[0] / 1.2, beta_range[1] * 1.2)
    if lam_range:
        pad = 0.05 * (lam_range[1] - lam_range[0])
        ax.set_ylim(lam_range[0] - pad, lam_range[1] + pad)
    ax.set_xlabel("β (weight of the first Siamese label set)")
    ax.set_ylabel("λ (decay per further set)")
    ax.set_title(title or f"{objective} over β × λ")
    ax.grid(alpha=0.3, which="both")
    if done or failed:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    from sila_keras.utils.plots import save_png

    save_png(fig, path)


def write_results(out: Path, rows: list[dict], best: dict | None, config, data_info: dict) -> dict | None:
    """Write ``trials.csv``, ``search.png`` and (if a trial completed) ``best_hparams.json``."""
    files.write_csv(out / SearchDir.TRIALS, rows,
                 trial_columns(config.objective, config.tune_heads, config.tuner == "hyperband"))
    plot_search(rows, config.objective, out / SearchDir.PLOT,
                title=f"{config.train.net.model}: {config.objective} over β × λ ({len(rows)} trials)",
                beta_range=config.beta_range, lam_range=config.lam_range if config.searches_lam else None)
    if best is None:
        return None
    result = best_hparams(best, config, rows, data_info)
    files.write_json(out / SearchDir.BEST, result)
    return result
