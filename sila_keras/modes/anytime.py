"""Anytime prediction and budgeted batch classification of a multi-exit model.

The two test protocols of the MSDNet paper (Huang et al. 2018), used by
``--mode dynamic`` (paper B §3.3, Figs. 4–5); :func:`evaluate_dynamic` writes (either or
both, as ``--dynamic-eval`` asks):

* ``anytime.csv`` / ``anytime.png`` — anytime prediction: for every exit, the
  FLOPs of its own path and its test Top-1;
* ``budgeted.csv`` / ``budgeted.png`` — budgeted batch classification: for a
  range of average-FLOPs budgets, confidence thresholds on the max-softmax of
  each exit are chosen on a held-out slice of the training data, and test Top-1
  is plotted against the average FLOPs per test image. Only this protocol needs the
  hold-out (MSDNet trains its anytime networks on every training image).

FLOPs are counted as multiply-accumulates of the convolution and dense layers
(the MSDNet paper's convention; BN, activations and pooling are not counted),
from the layer shapes of the exit's sub-graph (:func:`sila_keras.core.sizes.count_macs`). Exits are the model's heads in
head order (``head_1`` = the shallowest exit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from sila_keras.core.sizes import count_macs
from sila_keras.utils.errors import ConfigError
from sila_keras.utils.rundir import RunDir

# --------------------------------------------------------------------------- FLOPs


def exit_flops(model: keras.Model) -> list[dict]:
    """Per exit c: ``flops`` of its own path and ``cumulative_flops`` of exits 1..c together.

    The cumulative count is what an image costs when it leaves at exit c after
    exits 1..c−1 were evaluated (MSDNet's budgeted batch cost).
    """
    from sila_keras.core.heads import head_names_of

    outs = [model.get_layer(name).output for name in head_names_of(model)]
    rows = []
    for c in range(1, len(outs) + 1):
        path = keras.Model(model.input, outs[c - 1])
        upto = keras.Model(model.input, outs[:c])
        rows.append({"exit": c, "flops": count_macs(path), "cumulative_flops": count_macs(upto)})
    return rows


# --------------------------------------------------------------------------- evaluation


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def exit_proportions(q: float, num_exits: int) -> np.ndarray:
    """Geometric exit distribution π_c ∝ q^(c−1) (MSDNet's budgeted batch scheme)."""
    logits = np.arange(num_exits, dtype=np.float64) * math.log(q)
    p = np.exp(logits - logits.max())
    return p / p.sum()


def proportions_for_budget(budget: float, costs: Sequence[float]) -> np.ndarray:
    """Exit proportions whose expected cost Σ π_c·cost_c equals ``budget`` (bisection on log q)."""
    costs = np.asarray(costs, np.float64)
    c = len(costs)
    if budget <= costs[0]:
        return np.eye(c)[0]
    if budget >= costs[-1]:
        return np.eye(c)[-1]
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if exit_proportions(math.exp(mid), c) @ costs < budget:
            lo = mid
        else:
            hi = mid
    return exit_proportions(math.exp((lo + hi) / 2), c)


def fit_thresholds(confidence: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """Per-exit max-softmax thresholds that make ``proportions`` of the held-out set exit there.

    Exits are visited in order; at exit c the most confident of the remaining
    images leave. The last exit takes everything left (threshold −inf).
    """
    n, c = confidence.shape
    targets = np.round(np.cumsum(proportions) * n).astype(int)
    remaining = np.ones(n, bool)
    thresholds = np.full(c, -np.inf)
    taken = 0
    for k in range(c - 1):
        want = int(targets[k] - taken)
        conf = confidence[remaining, k]
        if want <= 0 or conf.size == 0:
            thresholds[k] = np.inf
            continue
        thresholds[k] = np.sort(conf)[::-1][min(want, conf.size) - 1]
        leave = remaining & (confidence[:, k] >= thresholds[k])
        taken += int(leave.sum())
        remaining &= ~leave
    return thresholds


def route(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The exit (0-based) each image leaves at: the first whose confidence reaches its threshold."""
    hit = confidence >= thresholds[None, :]
    hit[:, -1] = True
    return hit.argmax(axis=1)


def check_budgets(budgets: Sequence[float], costs: Sequence[float]) -> list[float]:
    """Validate explicit budgets against the model's FLOPs range [first exit, all exits].

    Raises:
        ValueError: a budget outside the range (naming the range and the fix).
    """
    lo, hi = float(costs[0]), float(costs[-1])
    bad = [b for b in budgets if not lo * (1 - 1e-9) <= float(b) <= hi * (1 + 1e-9)]
    if bad:
        raise ConfigError(
            f"Budgets must lie within the model's average FLOPs range per image "
            f"[{lo:.4g}, {hi:.4g}] (all images leave at exit 1 … all reach the last exit). "
            f"Received: budgets={[float(b) for b in bad]}"
        )
    return [float(b) for b in budgets]


def budgeted_batch(holdout_logits: list[np.ndarray], test_logits: list[np.ndarray],
                   test_y: np.ndarray, costs: Sequence[float], budgets: Sequence[float]) -> list[dict]:
    """Budgeted batch classification: thresholds from the held-out set, evaluated on test.

    Args:
        holdout_logits: per exit, logits ``(n_val, N)`` of the held-out images.
        test_logits: per exit, logits ``(n_test, N)`` of the test images.
        test_y: test labels.
        costs: cumulative FLOPs of leaving at each exit.
        budgets: target average FLOPs per image.

    Returns:
        One row per budget: budget, test avg FLOPs, test Top-1, held-out avg FLOPs,
        thresholds and exit fractions.
    """
    costs = np.asarray(costs, np.float64)
    val_conf = np.stack([softmax(z).max(axis=1) for z in holdout_logits], axis=1)
    test_conf = np.stack([softmax(z).max(axis=1) for z in test_logits], axis=1)
    test_pred = np.stack([z.argmax(axis=1) for z in test_logits], axis=1)
    rows = []
    for budget in check_budgets(budgets, costs):
        thresholds = fit_thresholds(val_conf, proportions_for_budget(budget, costs))
        val_exit, test_exit = route(val_conf, thresholds), route(test_conf, thresholds)
        pred = test_pred[np.arange(len(test_exit)), test_exit]
        frac = np.bincount(test_exit, minlength=len(costs)) / max(1, len(test_exit))
        rows.append({
            "budget_flops": budget,
            "test_avg_flops": float(costs[test_exit].mean()) if len(test_exit) else float("nan"),
            "test_top1": float(np.mean(pred == np.asarray(test_y))) if len(test_exit) else float("nan"),
            "holdout_avg_flops": float(costs[val_exit].mean()) if len(val_exit) else float("nan"),
            "thresholds": " ".join(f"{t:.4f}" for t in thresholds),
            "exit_fractions": " ".join(f"{f:.3f}" for f in frac),
        })
    return rows


def default_budgets(costs: Sequence[float], num: int = 12) -> list[float]:
    """``num`` budgets evenly spaced over [cost of exit 1, cost of all exits]."""
    return [float(b) for b in np.linspace(costs[0], costs[-1], num)]


def evaluate_dynamic(model: keras.Model, data, run_dir, *, holdout=None, budgets=None,
                     num_budgets: int = 12, batch_size: int = 256, title: str = "",
                     threshold_source: str | None = "holdout", anytime: bool = True,
                     budgeted: bool = True) -> dict:
    """Anytime prediction and/or budgeted batch classification of a multi-exit model.

    Writes ``anytime.csv``/``.png`` (with ``anytime``) and ``budgeted.csv``/``.png`` (with
    ``budgeted``) into ``run_dir``.

    Args:
        model: a multi-exit SiLa model (``head_1`` = first exit), e.g. from
            :func:`sila_keras.modes.dynamic.build_dynamic_model`.
        data: an ``ImageData`` (its test split is evaluated).
        run_dir: output folder.
        holdout: ``(x, y)`` images for choosing the thresholds (uint8 NHWC, labels);
            needed with ``budgeted``.
        budgets: average FLOPs per image to evaluate (default: ``num_budgets`` evenly
            spaced over the model's range).
        num_budgets: number of default budgets.
        batch_size: prediction batch size.
        title: plot title prefix.
        threshold_source: recorded in the output: where ``holdout`` came from.
        anytime: write the anytime prediction files.
        budgeted: run budgeted batch classification (thresholds on ``holdout``) and write
            its files.

    Returns:
        ``{"exits": [...], "holdout_examples"}`` and, with ``budgeted``, ``"budgeted": [...]``
        and ``"threshold_source"``. ``exits`` (per-exit FLOPs and test Top-1) is returned
        in every case; only the files differ.

    Raises:
        ValueError: no held-out images for budgeted evaluation, or a budget outside the
            model's FLOPs range.
    """
    from sila_keras.core.heads import num_heads_of
    from sila_keras.data.pipeline import eval_dataset
    from sila_keras.utils import files
    from sila_keras.utils.plots import plot_anytime, plot_budgeted

    run_dir = Path(run_dir)
    flops = exit_flops(model)
    costs = [r["cumulative_flops"] for r in flops]
    if budgeted:
        budgets = (check_budgets(budgets, costs) if budgets is not None
                   else default_budgets(costs, num_budgets))
        if holdout is None or len(holdout[1]) == 0:
            raise ConfigError("Budgeted batch classification needs held-out images to choose "
                              "thresholds. Received: holdout=None (pass holdout=(x, y) from the "
                              "training data, or budgeted=False).")
    n, c = data.num_classes, num_heads_of(model)

    def per_exit(x, y):
        logits = model.predict(eval_dataset(x, y, batch_size), verbose=0)
        return [logits[:, k * n:(k + 1) * n] for k in range(c)]

    test_logits = per_exit(data.test_x, data.test_y)
    test_y = np.asarray(data.test_y).reshape(-1)
    exits = [{**r, "test_top1": float(np.mean(test_logits[r["exit"] - 1].argmax(1) == test_y))}
             for r in flops]
    result = {"exits": exits, "holdout_examples": int(len(holdout[1])) if budgeted else 0}
    if anytime:
        files.write_csv(RunDir(run_dir) / RunDir.ANYTIME, exits,
                     ["exit", "flops", "cumulative_flops", "test_top1"])
        plot_anytime(exits, RunDir(run_dir) / RunDir.ANYTIME_PLOT, title)
    if budgeted:
        rows = budgeted_batch(per_exit(*holdout), test_logits, test_y, costs, budgets)
        for row in rows:
            row["threshold_source"] = threshold_source
        files.write_csv(RunDir(run_dir) / RunDir.BUDGETED, rows)
        plot_budgeted(rows, exits, RunDir(run_dir) / RunDir.BUDGETED_PLOT, title)
        result.update(budgeted=rows, threshold_source=threshold_source)
    return result
