"""Analyses of trained runs: ``python -m sila_keras.analyze noise RUN_DIR [RUN_DIR …]``.

``noise`` — why SiLa works (paper B §4.3, Fig. 7b): add Gaussian noise of standard
deviation σ to every trainable weight of a trained classifier and measure how much
its training-set NLL grows. Flatter minima (SiLa, DML) change less than
independent training (IND). For each run and σ the weights are perturbed
``--trials`` times (fresh noise each time, then restored); the CSV and the plot
give the mean ± std of ΔNLL = NLL(noisy) − NLL(trained) over the trials, with
several runs overlaid in one figure.

What is measured: the NLL of one classifier (``--head``, default 1: the base
classifier of a SilaNet, Net 1 of a mutual pair, the first exit of a dynamic run)
under its own N-way softmax, on the run's training images without augmentation,
in inference mode (BN uses its moving statistics). Noise goes to the trainable
weights of that classifier's own path (conv/dense kernels and biases, BN γ/β);
the other heads' weights do not affect it.

Outputs (``--out``, default: the run directory for one run, else
``<parent of the first run>/noise_analysis``): ``noise.csv`` and ``noise.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sila_keras.utils.cli import Command, HelpFormatter, run_command
from sila_keras.utils.errors import ConfigError
from sila_keras.utils.rundir import RunDir

DEFAULT_SIGMAS = (0.0, 0.005, 0.01, 0.02)
CSV_COLUMNS = ("run", "label", "head", "sigma", "trials", "base_nll", "delta_nll_mean",
               "delta_nll_std", "examples")


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sila-analyze",
        description="Analyses of trained sila_keras runs (paper B §4.3).",
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    n = sub.add_parser(
        "noise", formatter_class=HelpFormatter,
        help="training NLL change under Gaussian weight noise (paper B Fig. 7b)",
        description="Paper B Fig. 7b: add Gaussian noise of std σ to all trainable weights of "
                    "each run's classifier and report the change in training-set NLL (mean ± std "
                    "over trials); several runs (e.g. IND vs SiLa vs DML) are overlaid in one plot.")
    n.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by sila-train")
    n.add_argument("--sigmas", type=_floats, default=DEFAULT_SIGMAS,
                   help="comma-separated noise standard deviations")
    n.add_argument("--trials", type=int, default=5, help="noise draws per σ")
    n.add_argument("--limit", type=int, default=None,
                   help="use N training images (class-balanced; default: all the run trained on)")
    n.add_argument("--head", type=int, default=1,
                   help="which classifier to perturb and measure (1 = base / Net 1 / first exit)")
    n.add_argument("--labels", type=_strings, default=None,
                   help="comma-separated legend labels, one per run (default: name + method)")
    n.add_argument("--batch-size", type=int, default=256)
    n.add_argument("--seed", type=int, default=0, help="seed of the noise and of --limit")
    n.add_argument("--out", default=None, help=f"output folder for {RunDir.NOISE} and {RunDir.NOISE_PLOT}")
    n.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _strings(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(","))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0 on success, 2 on bad input (see :mod:`sila_keras.utils.cli`)."""
    return run_command(Command("sila-analyze", build_parser, _main), argv)


def _main(args: argparse.Namespace) -> None:
    if args.command == "noise":
        rows = noise_analysis(args.runs, sigmas=args.sigmas, trials=args.trials,
                              limit=args.limit, head=args.head, labels=args.labels,
                              batch_size=args.batch_size, seed=args.seed, out=args.out)
        out = Path(rows[0]["out"]) if rows else Path(".")
        print(f"Wrote {out / RunDir.NOISE} and {out / RunDir.NOISE_PLOT}")


# --------------------------------------------------------------------------- runs


def check_run_dir(run_dir) -> Path:
    """A run directory with ``model.keras`` and ``config.json`` (a partial run is fine).

    Raises:
        RunDirError: the folder or one of the two files is missing.
    """
    RunDir(run_dir).load(finished=False, need_model=True,
                         hint="Pass folders written by sila-train (they hold model.keras and "
                              "config.json).")
    return Path(run_dir)


def run_label(config: dict) -> str:
    """The method of a run, as in paper B's tables: IND, SiLa, DML, SiLa+DML, …"""
    from sila_keras.modes import method_label

    return method_label(config)


def load_run(run_dir):
    """(model, config dict) of a run directory (model loaded without its optimizer)."""
    run = RunDir(check_run_dir(run_dir))
    return run.load_model(compile=False), run.read_config()


def training_images(config: dict, limit: int | None = None, seed: int = 0):
    """The run's training images (as it loaded them) and labels, optionally a balanced subset."""
    from sila_keras.data import balanced_subset, load_dataset, run_dataset_kwargs

    data = load_dataset(config["dataset"], limit_train=config.get("limit_train"), limit_test=1,
                        download="never", **run_dataset_kwargs(config))
    idx = balanced_subset(data.train_y, limit, seed)
    return data.train_x[idx], data.train_y[idx]


# --------------------------------------------------------------------------- noise


def mean_nll(model, x, y, batch_size: int = 256) -> float:
    """Mean NLL of ``model``'s logits (its own softmax) on ``(x, y)``, inference mode."""
    import numpy as np

    from sila_keras.data.pipeline import eval_dataset

    z = np.asarray(model.predict(eval_dataset(x, y, batch_size), verbose=0), np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), np.asarray(y).reshape(-1)]))


def noise_curve(model, x, y, sigmas: Sequence[float], trials: int = 5, head: int = 1,
                seed: int = 0, batch_size: int = 256, progress=None) -> list[dict]:
    """ΔNLL (mean, std over ``trials``) of head ``head`` for each σ; weights are restored after.

    Args:
        model: a SiLa-style model (``sila_logits`` with ``head_k`` layers).
        x: training images (uint8 NHWC).
        y: labels.
        sigmas: noise standard deviations (absolute, in weight units).
        trials: noise draws per σ > 0 (σ = 0 gives ΔNLL = 0 without drawing).
        head: the classifier to perturb and measure.
        seed: noise seed; draw t of σ_i uses ``(seed, i, t)``.
        batch_size: prediction batch size.
        progress: called with no arguments after every evaluation (a progress bar).

    Returns:
        One row per σ: sigma, trials, base_nll, delta_nll_mean, delta_nll_std, examples.
    """
    import numpy as np

    from sila_keras.core.heads import extract_head

    sub = extract_head(model, head)
    variables = list(sub.trainable_variables)
    saved = [v.numpy() for v in variables]
    base = mean_nll(sub, x, y, batch_size)
    rows = []
    try:
        for i, sigma in enumerate(sigmas):
            deltas = [0.0] * trials
            if sigma > 0:
                for t in range(trials):
                    rng = np.random.default_rng([seed, i, t])
                    for v, w in zip(variables, saved):
                        v.assign((w + rng.normal(0.0, sigma, w.shape)).astype(w.dtype))
                    deltas[t] = mean_nll(sub, x, y, batch_size) - base
                    if progress:
                        progress()
            rows.append({"sigma": float(sigma), "trials": trials, "base_nll": base,
                         "delta_nll_mean": float(np.mean(deltas)),
                         "delta_nll_std": float(np.std(deltas)), "examples": int(len(y))})
    finally:
        for v, w in zip(variables, saved):
            v.assign(w)
    return rows


def check_noise_args(runs, sigmas, trials, limit, labels, batch_size) -> None:
    """Validate the noise-analysis arguments before any model is loaded."""
    if not runs:
        raise ConfigError("Pass at least one run directory. Received: runs=[]")
    if not sigmas or any(s < 0 for s in sigmas):
        raise ConfigError(f"`--sigmas` must be non-negative numbers. Received: sigmas={list(sigmas)}")
    if trials < 1:
        raise ConfigError(f"`--trials` must be >= 1. Received: trials={trials}")
    if limit is not None and limit < 1:
        raise ConfigError(f"`--limit` must be >= 1. Received: limit={limit}")
    if batch_size < 1:
        raise ConfigError(f"`--batch-size` must be >= 1. Received: batch_size={batch_size}")
    if labels is not None and len(labels) != len(runs):
        raise ConfigError(f"`--labels` needs one label per run ({len(runs)}). "
                         f"Received: labels={list(labels)}")
    for r in runs:
        check_run_dir(r)


def noise_analysis(runs: Sequence, sigmas: Sequence[float] = DEFAULT_SIGMAS, trials: int = 5,
                   limit: int | None = None, head: int = 1, labels: Sequence[str] | None = None,
                   batch_size: int = 256, seed: int = 0, out=None) -> list[dict]:
    """Run the weight-noise analysis on several runs; write ``noise.csv`` and ``noise.png``.

    Returns:
        The CSV rows (each with ``run``, ``label``, ``sigma``, ``delta_nll_mean``, …, ``out``).

    Raises:
        FileNotFoundError: a run directory without ``model.keras``/``config.json``.
        ValueError: bad σ, trials, limit, labels, or a head the model does not have.
    """
    from tqdm import tqdm

    from sila_keras.utils import files

    runs = [Path(r) for r in runs]
    check_noise_args(runs, sigmas, trials, limit, labels, batch_size)
    out = Path(out) if out else (runs[0] if len(runs) == 1 else runs[0].parent / "noise_analysis")
    rows = []
    evaluations = len(runs) * trials * sum(1 for s in sigmas if s > 0)
    with tqdm(total=evaluations, desc="noise trials", disable=None) as bar:
        for k, run_dir in enumerate(runs):
            model, config = load_run(run_dir)
            label = labels[k] if labels else f"{run_dir.name} ({run_label(config)})"
            x, y = training_images(config, limit, seed)
            for row in noise_curve(model, x, y, sigmas, trials, head, seed, batch_size, bar.update):
                rows.append({"run": str(run_dir), "label": label, "head": head, **row})
    files.write_csv(out / RunDir.NOISE, rows, CSV_COLUMNS)
    plot_noise(rows, out / RunDir.NOISE_PLOT, head)
    return [{**r, "out": str(out)} for r in rows]


def plot_noise(rows: list[dict], path, head: int = 1) -> None:
    """ΔNLL vs σ with ±std error bars, one line per run (paper B Fig. 7b)."""
    from sila_keras.utils.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        ax.errorbar([r["sigma"] for r in mine], [r["delta_nll_mean"] for r in mine],
                    yerr=[r["delta_nll_std"] for r in mine], marker="o", ms=4, capsize=3, label=label)
    ax.set_xlabel("σ of the Gaussian weight noise")
    ax.set_ylabel("Δ training NLL (mean ± std over trials)")
    ax.set_title(f"Training NLL change under weight noise (head {head})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    from sila_keras.utils.plots import save_png

    save_png(fig, path)
