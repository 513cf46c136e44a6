"""Early-exit cascade of a SiLa model's heads: calibrate, measure, write the trade-off.

The M heads share one trunk. At inference an image is classified by the cheapest head first;
it stops there when that head is confident enough and goes on to the next deeper head
otherwise; the deepest head (``head_1`` in a SilaNet) takes every image left. This is paper
B's dynamic evaluation (:mod:`sila_keras.modes.anytime`) applied to any SiLa model.

* **Order**: heads sorted by the multiply-accumulates of their own path (cheapest first).
  For a SilaNet that is ``head_M … head_1``; for ``--mode dynamic`` ``head_1 … head_C``.
* **Cost**: an image leaving at step k costs the MACs of the union of the paths of steps
  1..k (the shared trunk counted once, :func:`cascade_costs`), counted per segment with the
  one MACs counter :func:`sila_keras.modes.anytime.count_macs`.
* **Confidence** (:data:`CONFIDENCES`): ``max`` softmax probability, ``margin`` (top-1 minus
  top-2 probability) or ``entropy`` (its negative, so higher is more confident).
* **Calibration** (:func:`calibrate`) picks one threshold per step but the last, on held-out
  *training* images (never the test split): the sweep of MSDNet's geometric exit schemes
  (:func:`~sila_keras.modes.anytime.fit_thresholds`) from "all leave at the first step" to
  "all reach the last", and of these the cheapest that is at most ``target_drop`` points below
  head 1's accuracy on the same images, or the one whose mean cost meets ``budget_macs``.

``python -m sila_keras.cascade RUN`` writes ``cascade.json``, ``cascade.csv`` and
``cascade.png`` into the run directory (:class:`~sila_keras.utils.rundir.RunDir`); the latency
columns are filled by ``python -m export RUN --cascade`` (LiteRT timing of each segment).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sila_keras.utils.cli import Command, HelpFormatter, run_command
from sila_keras.utils.errors import ConfigError, DataError, ModelError
from sila_keras.utils.rundir import RunDir

CONFIDENCES = ("max", "margin", "entropy")
DEFAULT_TARGET_DROP = 0.5  # points of Top-1 below head 1 (when neither target is given)
DEFAULT_CALIBRATION_SIZE = 5000
SWEEP_POINTS = 41


# --------------------------------------------------------------------------- confidence + routing


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(B, N)``."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def confidence_of(probs: np.ndarray, kind: str = "max") -> np.ndarray:
    """Confidence ``(B,)`` of probabilities ``(B, N)``; higher means more confident.

    Raises:
        ConfigError: ``kind`` not in :data:`CONFIDENCES`.

    Example:
        >>> p = np.array([[0.7, 0.2, 0.1]])
        >>> confidence_of(p, "max"), confidence_of(p, "margin").round(2)
        (array([0.7]), array([0.5]))
    """
    p = np.asarray(probs, np.float64)
    if kind == "max":
        return p.max(axis=-1)
    if kind == "margin":
        top2 = np.sort(p, axis=-1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    if kind == "entropy":
        return (p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)  # −H(p)
    raise ConfigError(f"Unknown `--confidence` '{kind}'. Available: {', '.join(CONFIDENCES)}. "
                      f"Received: confidence={kind!r}")


def confidences(probs: Sequence[np.ndarray], kind: str = "max") -> np.ndarray:
    """``(B, K)``: the confidence of each step's probabilities (steps in cascade order)."""
    return np.stack([confidence_of(p, kind) for p in probs], axis=1)


def route(probs: Sequence[np.ndarray], thresholds: Sequence[float],
          kind: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """``(predicted class, step)`` of every image: it leaves at the first step whose confidence
    reaches that step's threshold (the last step takes the rest).

    Args:
        probs: K arrays ``(B, N)`` of probabilities, cheapest step first.
        thresholds: K thresholds (the last is ignored).
        kind: a :data:`CONFIDENCES` entry.
    """
    from sila_keras.modes import anytime

    steps = anytime.route(confidences(probs, kind), np.asarray(thresholds, np.float64))
    stacked = np.stack([np.asarray(p).argmax(-1) for p in probs], axis=1)
    return stacked[np.arange(len(steps)), steps], steps


def mean_cost(steps: np.ndarray, costs: Sequence[float]) -> float:
    """Mean cumulative cost of images leaving at ``steps`` (0-based)."""
    return float(np.mean(np.asarray(costs, np.float64)[steps])) if len(steps) else 0.0


def reach_fractions(steps: np.ndarray, num_steps: int) -> list[float]:
    """Share of images that run segment k (k = 0..K−1): those leaving at step ≥ k."""
    steps = np.asarray(steps)
    return [float(np.mean(steps >= k)) if len(steps) else 0.0 for k in range(num_steps)]


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """Thresholds chosen on held-out images, and the sweep they were chosen from.

    Attributes:
        thresholds: one per step (cascade order); the last is ``-inf``.
        accuracy: Top-1 of the cascade on the calibration images.
        mean_macs: its mean cost there.
        head1_accuracy: head 1 alone on the calibration images.
        sweep: ``[{"thresholds", "accuracy", "mean_macs"}]`` on the calibration images.
    """

    thresholds: list[float]
    accuracy: float
    mean_macs: float
    head1_accuracy: float
    sweep: list[dict] = field(default_factory=list)


def threshold_sweep(conf: np.ndarray, costs: Sequence[float],
                    num_points: int = SWEEP_POINTS) -> list[np.ndarray]:
    """Threshold sets for ``num_points`` mean-cost budgets evenly spaced over [first, last] step
    cost (MSDNet's geometric exit shares, fitted to ``conf`` by
    :func:`~sila_keras.modes.anytime.fit_thresholds`)."""
    from sila_keras.modes import anytime

    budgets = np.linspace(float(costs[0]), float(costs[-1]), num_points)
    return [anytime.fit_thresholds(conf, anytime.proportions_for_budget(b, costs))
            for b in budgets]


def calibrate(probs: Sequence[np.ndarray], y: np.ndarray, costs: Sequence[float], *,
              target_drop: float | None = None, budget_macs: float | None = None,
              kind: str = "max", num_points: int = SWEEP_POINTS) -> Calibration:
    """Per-step thresholds meeting ``target_drop`` (points below head 1, the last step) or a
    mean-cost ``budget_macs``, chosen on ``(probs, y)`` (held-out training images).

    Args:
        probs: K arrays ``(B, N)`` of probabilities, cheapest step first (head 1 last).
        y: labels ``(B,)``.
        costs: cumulative MACs per step (:func:`cascade_costs`).
        target_drop: at most this many Top-1 points below head 1: the cheapest such point.
        budget_macs: mean MACs per image: the most accurate point within it.
        kind: a :data:`CONFIDENCES` entry.
        num_points: points of the sweep.

    Raises:
        ConfigError: both targets, or a target no threshold setting meets (with what is
            reachable).

    Example:
        >>> y = np.array([0, 1, 0, 1])
        >>> cheap = np.array([[.9, .1], [.9, .1], [.6, .4], [.6, .4]])  # sure and right/wrong
        >>> deep = np.eye(2)[y]
        >>> cal = calibrate([cheap, deep], y, [1.0, 3.0], target_drop=0.0)
        >>> cal.accuracy, cal.mean_macs
        (1.0, 3.0)
    """
    if target_drop is not None and budget_macs is not None:
        raise ConfigError("Give one target: --target-drop or --budget-macs, not both. "
                          f"Received: target_drop={target_drop}, budget_macs={budget_macs}")
    if target_drop is None and budget_macs is None:
        target_drop = DEFAULT_TARGET_DROP
    y = np.asarray(y).reshape(-1)
    conf = confidences(probs, kind)
    head1 = float(np.mean(np.asarray(probs[-1]).argmax(-1) == y))
    sweep = []
    for t in threshold_sweep(conf, costs, num_points):
        pred, steps = route(probs, t, kind)
        sweep.append({"thresholds": [float(v) for v in t], "accuracy": float(np.mean(pred == y)),
                      "mean_macs": mean_cost(steps, costs)})
    if budget_macs is not None:
        fits = [p for p in sweep if p["mean_macs"] <= budget_macs * (1 + 1e-9)]
        if not fits:
            raise ConfigError(
                f"--budget-macs is below what the cascade can cost: every image runs at least "
                f"the cheapest head ({costs[0]:.4g} MACs); reachable mean MACs per image: "
                f"{costs[0]:.4g} … {costs[-1]:.4g}. Received: budget_macs={budget_macs:g}")
        best = max(fits, key=lambda p: (p["accuracy"], -p["mean_macs"]))
    else:
        goal = head1 - float(target_drop) / 100.0
        fits = [p for p in sweep if p["accuracy"] >= goal - 1e-12]
        if not fits:
            top = max(sweep, key=lambda p: p["accuracy"])
            raise ConfigError(
                f"--target-drop cannot be met on the calibration images: head 1 scores "
                f"{100 * head1:.2f}%, the best cascade {100 * top['accuracy']:.2f}% "
                f"(a drop of {100 * (head1 - top['accuracy']):.2f} points, at "
                f"{top['mean_macs']:.4g} MACs); reachable: --target-drop >= "
                f"{max(0.0, 100 * (head1 - top['accuracy'])):.2f}. "
                f"Received: target_drop={target_drop:g}")
        best = min(fits, key=lambda p: (p["mean_macs"], -p["accuracy"]))
    return Calibration(best["thresholds"], best["accuracy"], best["mean_macs"], head1, sweep)


# --------------------------------------------------------------------------- the model's cascade


def cascade_order(model) -> list[int]:
    """Head numbers (1-based) cheapest first: sorted by the MACs of each head's own path.

    Raises:
        ModelError: a model with one head (nothing to cascade).
    """
    from sila_keras.core.heads import extract_head, num_heads_of
    from sila_keras.modes.anytime import count_macs

    m = num_heads_of(model)
    if m < 2:
        raise ModelError("A cascade needs a model with at least 2 heads (it stops early at a "
                         f"cheaper head). Received: heads={m} in model '{model.name}'")
    own = {k: count_macs(extract_head(model, k)) for k in range(1, m + 1)}
    order = sorted(own, key=lambda k: (own[k], -k))
    if order[-1] != 1 and own[1] >= own[order[-1]]:
        order.remove(1)
        order.append(1)  # head 1 (the base) last when it costs as much as the deepest
    return order


def cascade_costs(model, order: Sequence[int]) -> list[int]:
    """Cumulative MACs per step: an image leaving at step k runs the paths of steps 1..k
    (shared layers once)."""
    import keras

    from sila_keras.core.heads import head_names_of
    from sila_keras.modes.anytime import count_macs

    names = head_names_of(model)
    outs = [model.get_layer(names[k - 1]).output for k in order]
    return [count_macs(keras.Model(model.input, outs[:i])) for i in range(1, len(outs) + 1)]


def head_probs(model, x: np.ndarray, order: Sequence[int], batch_size: int = 256) -> list:
    """Probabilities ``(B, N)`` of each head in ``order`` on images ``x`` (one forward pass)."""
    from sila_keras.core.heads import num_heads_of
    from sila_keras.data.pipeline import eval_dataset

    logits = model.predict(eval_dataset(x, np.zeros(len(x), np.int64), batch_size), verbose=0)
    n = logits.shape[-1] // num_heads_of(model)
    return [softmax(logits[:, (k - 1) * n:k * n]) for k in order]


# --------------------------------------------------------------------------- calibration images


def unused_training_positions(config: dict, train_y: np.ndarray) -> tuple[np.ndarray, str]:
    """Positions in the *full* training split that the run did not train on, and what they are.

    A run with ``--limit-train`` trained on a class-balanced subset (the rest is unused); a
    ``--mode dynamic`` run also set a hold-out of that subset aside.
    """
    from sila_keras.data import balanced_subset, holdout_indices
    from sila_keras.modes.dynamic import HOLDOUT_FRACTION, needs_holdout

    seed = int(config.get("seed", 0))
    trained = balanced_subset(train_y, config.get("limit_train"), seed)
    mask = np.ones(len(train_y), bool)
    mask[trained] = False
    parts = []
    if mask.any():
        parts.append(f"{int(mask.sum())} training images outside --limit-train")
    if config.get("mode") == "dynamic" and needs_holdout(config) and len(trained) >= 4:
        _, val = holdout_indices(train_y[trained], HOLDOUT_FRACTION, seed)
        mask[trained[val]] = True
        parts.append(f"the {len(val)}-image --mode dynamic hold-out")
    return np.flatnonzero(mask), " + ".join(parts)


def calibration_images(config: dict, image_size, calibration: str | None = None,
                       calibration_split: str | None = None, size: int = DEFAULT_CALIBRATION_SIZE,
                       seed: int = 0, data_dir: str | None = None):
    """``(x, y, source)``: class-balanced calibration images that are never the test split.

    With ``calibration``: that dataset's training split (``calibration_split`` picks a tfds
    split). Without: the run's training images it did not train on
    (:func:`unused_training_positions`).

    Raises:
        DataError: the run trained on every training image and no ``calibration`` is given.
    """
    from sila_keras.data import balanced_subset, load_dataset, run_dataset_kwargs

    kw = run_dataset_kwargs(config)
    common = dict(image_size=tuple(int(v) for v in image_size), resize=kw.get("resize", "squash"),
                  limit_test=1, download="never", cache="none", seed=seed)
    if calibration:
        data = load_dataset(calibration, data_dir=data_dir, train_split=calibration_split,
                            **common)
        pick = balanced_subset(data.train_y, size, seed)
        where = f"{calibration} ({data.split_info.get('train_split', 'train')} split)"
        return data.train.take(pick).to_array(), data.train_y[pick], where
    kw.update(common)
    kw.pop("seed", None)
    full = load_dataset(config["dataset"], seed=int(config.get("seed", 0)),
                        **{k: v for k, v in kw.items() if k != "seed"})
    unused, what = unused_training_positions(config, full.train_y)
    if not len(unused):
        raise DataError(
            f"This run trained on all {len(full.train_y)} training images of "
            f"{config['dataset']}, so none are held out and calibrating on them would be "
            "biased (the test split is never used). Pass --calibration DATASET: a folder:PATH "
            "or tfds name whose training split holds images not trained on (tfds: add "
            "--calibration-split, e.g. 'train[90%:]' for a run trained on 'train[:90%]'). "
            f"Received: dataset={config['dataset']}, limit_train={config.get('limit_train')}")
    pick = unused[balanced_subset(full.train_y[unused], size, seed)]
    return (full.train.take(pick).to_array(), full.train_y[pick],
            f"{config['dataset']}: {what} (not trained on)")


# --------------------------------------------------------------------------- evaluation


def evaluate_cascade(model, calib: tuple, test: tuple, *, target_drop: float | None = None,
                     budget_macs: float | None = None, kind: str = "max",
                     batch_size: int = 256, num_points: int = SWEEP_POINTS) -> dict:
    """Calibrate on ``calib = (x, y)``, measure on ``test = (x, y)``: the ``cascade.json`` dict.

    Returns:
        ``{"order", "heads", "costs", "confidence", "calibration", "cascade", "sweep",
        "single"}``: ``cascade`` and each ``sweep`` point carry test ``accuracy``, ``mean_macs``,
        ``thresholds`` and ``reach`` (share of test images running each segment; mean latency
        is ``Σ reach_k · latency_k``); ``single`` is each head alone (cascade order).
    """
    from sila_keras.core.heads import head_names_of

    order = cascade_order(model)
    costs = cascade_costs(model, order)
    names = head_names_of(model)
    cal = calibrate(head_probs(model, calib[0], order, batch_size), calib[1], costs,
                    target_drop=target_drop, budget_macs=budget_macs, kind=kind,
                    num_points=num_points)
    probs = head_probs(model, test[0], order, batch_size)
    y = np.asarray(test[1]).reshape(-1)

    def point(thresholds):
        pred, steps = route(probs, thresholds, kind)
        return {"thresholds": [float(t) for t in thresholds],
                "accuracy": float(np.mean(pred == y)), "mean_macs": mean_cost(steps, costs),
                "reach": reach_fractions(steps, len(order))}

    from sila_keras.core.heads import extract_head
    from sila_keras.modes.anytime import count_macs

    single = [{"head": k, "name": names[k - 1],
               "accuracy": float(np.mean(p.argmax(-1) == y)),
               "macs": int(count_macs(extract_head(model, k)))} for k, p in zip(order, probs)]
    return {"order": list(order), "heads": [names[k - 1] for k in order],
            "costs": [int(c) for c in costs], "confidence": kind,
            "target": ({"budget_macs": budget_macs} if budget_macs is not None
                       else {"target_drop": DEFAULT_TARGET_DROP if target_drop is None
                             else target_drop}),
            "calibration": {"examples": int(len(calib[1])), "accuracy": cal.accuracy,
                            "mean_macs": cal.mean_macs, "head1_accuracy": cal.head1_accuracy},
            "test_examples": int(len(y)),
            "cascade": point(cal.thresholds),
            "sweep": [point(p["thresholds"]) for p in cal.sweep],
            "single": single}


def with_latency(result: dict, segment_ms: Sequence[float], runtime: str = "LiteRT",
                 head_ms: dict | None = None) -> dict:
    """``result`` with ``mean_latency_ms`` on the cascade and sweep points, from per-segment
    latencies (segment k runs for the share ``reach_k`` of the images), and on each single
    head: ``latency_ms``, its own file's (``head_ms = {head: ms}``: only the layers it needs),
    and ``latency_ms_via_segments``, the segments up to its own."""
    import copy

    ms = [float(v) for v in segment_ms]
    out = dict(copy.deepcopy(result), segment_latency_ms=ms, latency_runtime=runtime)
    for p in [out["cascade"], *out["sweep"]]:
        p["mean_latency_ms"] = float(np.dot(p["reach"], ms))
    cumulative = np.cumsum(ms)
    own = {int(k): float(v) for k, v in (head_ms or {}).items()}
    for i, s in enumerate(out["single"]):
        s["latency_ms_via_segments"] = float(cumulative[i])
        if int(s["head"]) in own:
            s["latency_ms"] = own[int(s["head"])]
    return out


def single_latency(s: dict) -> float | None:
    """A head alone's latency: its own file's when measured, else via the segments."""
    return s.get("latency_ms", s.get("latency_ms_via_segments"))


CSV_FIELDS = ["kind", "head", "accuracy", "mean_macs", "mean_latency_ms", "thresholds"]


def csv_rows(result: dict) -> list[dict]:
    """``cascade.csv``: the calibrated cascade, the sweep points and each head alone."""
    def row(kind, p, head=""):
        return {"kind": kind, "head": head, "accuracy": p["accuracy"],
                "mean_macs": p.get("mean_macs", p.get("macs")),
                "mean_latency_ms": p.get("mean_latency_ms", single_latency(p) or ""),
                "thresholds": " ".join(f"{t:.6g}" for t in p.get("thresholds", []))}
    rows = [row("cascade", result["cascade"])]
    rows += [row("sweep", p) for p in result["sweep"]]
    rows += [row("head", s, s["name"]) for s in result["single"]]
    return rows


def write_results(run_dir, result: dict, title: str = "") -> list[Path]:
    """Write ``cascade.json``, ``cascade.csv`` and ``cascade.png`` into ``run_dir``."""
    from sila_keras.utils import files
    from sila_keras.utils.plots import plot_cascade

    run = RunDir(run_dir)
    paths = [run / RunDir.CASCADE_JSON, run / RunDir.CASCADE_CSV, run / RunDir.CASCADE_PLOT]
    files.write_json(paths[0], result)
    files.write_csv(paths[1], csv_rows(result), CSV_FIELDS)
    plot_cascade(result, paths[2], title)
    return paths


def report_lines(run_dir) -> list[str]:
    """Markdown lines on a run's ``cascade.json`` for ``sila-report`` (none if absent)."""
    from sila_keras.utils import files

    path = RunDir(run_dir) / RunDir.CASCADE_JSON
    if not path.is_file():
        return []
    r = files.read_json_object(path)
    c, head1 = r["cascade"], r["single"][-1]
    lat = c.get("mean_latency_ms")
    return [f"- {Path(run_dir).name}: cascade {' → '.join(r['heads'])} ({r['confidence']} "
            f"confidence): Top-1 {100 * c['accuracy']:.2f}% at {c['mean_macs'] / 1e6:.3g} M MACs"
            + (f", {lat:.3g} ms" if lat is not None else "")
            + f" vs {head1['name']} alone {100 * head1['accuracy']:.2f}% at "
            f"{head1['macs'] / 1e6:.3g} M MACs"]


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sila-cascade", formatter_class=HelpFormatter,
        description="Early-exit cascade of a run's heads: choose per-head confidence thresholds "
                    "on held-out training images, then measure Top-1 vs mean MACs on the test "
                    f"split; writes {RunDir.CASCADE_JSON}, {RunDir.CASCADE_CSV} and "
                    f"{RunDir.CASCADE_PLOT} into the run directory. LiteRT latency: "
                    "python -m export RUN --cascade.")
    p.add_argument("run", metavar="RUN", help="a run directory written by sila-train")
    target = p.add_argument_group("target (one of)")
    target.add_argument("--target-drop", type=float, default=None,
                        help="at most this many Top-1 points below head 1 on the calibration "
                             f"images: the cheapest such cascade (default {DEFAULT_TARGET_DROP})")
    target.add_argument("--budget-macs", type=float, default=None,
                        help="mean multiply-accumulates per image: the most accurate cascade "
                             "within it")
    p.add_argument("--confidence", choices=CONFIDENCES, default="max",
                   help="max softmax probability, top-1 minus top-2 margin, or negative entropy")
    p.add_argument("--calibration", default=None, metavar="DATASET",
                   help="calibrate on this dataset's training split (folder:PATH or a tfds "
                        "name); needed when the run trained on every training image")
    p.add_argument("--calibration-split", default=None, metavar="SPLIT",
                   help="tfds split of --calibration (e.g. 'train[90%%:]')")
    p.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE,
                   help="class-balanced calibration images")
    p.add_argument("--limit-test", type=int, default=None,
                   help="measure on N test images (class-balanced; default all)")
    p.add_argument("--data-dir", default=None, help="tfds data directory")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Argument rules checked before anything is loaded (one line, exit 2, nothing written)."""
    if args.target_drop is not None and args.budget_macs is not None:
        raise ConfigError("Give one target: --target-drop or --budget-macs, not both. "
                          f"Received: target_drop={args.target_drop}, "
                          f"budget_macs={args.budget_macs}")
    if args.budget_macs is not None and args.budget_macs <= 0:
        raise ConfigError(f"--budget-macs must be > 0. Received: budget_macs={args.budget_macs}")
    if args.calibration_size < 1:
        raise ConfigError("--calibration-size must be >= 1. "
                          f"Received: calibration_size={args.calibration_size}")
    if args.calibration_split and not args.calibration:
        raise ConfigError("--calibration-split needs --calibration DATASET. "
                          f"Received: calibration_split={args.calibration_split!r}")
    from sila_keras.reports.analyze import check_run_dir

    check_run_dir(args.run)  # reads no model: a wrong folder is answered before TensorFlow starts


def run_cascade(run_dir, *, target_drop=None, budget_macs=None, confidence="max",
                calibration=None, calibration_split=None,
                calibration_size=DEFAULT_CALIBRATION_SIZE, limit_test=None, data_dir=None,
                batch_size=256, seed=0) -> dict:
    """Load a run, calibrate, measure and write its cascade files; returns ``cascade.json``."""
    from sila_keras.core.heads import num_heads_of
    from sila_keras.data import load_dataset, run_dataset_kwargs
    from sila_keras.reports.analyze import load_run

    if confidence not in CONFIDENCES:
        confidence_of(np.zeros((1, 2)), confidence)  # raises the one message
    model, config = load_run(run_dir)
    if num_heads_of(model) < 2:
        cascade_order(model)  # raises the one-head message
    size = tuple(model.input_shape[1:3])
    x_cal, y_cal, source = calibration_images(config, size, calibration, calibration_split,
                                              calibration_size, seed, data_dir)
    kw = run_dataset_kwargs(config)
    if data_dir:
        kw["data_dir"] = data_dir
    data = load_dataset(config["dataset"], limit_train=1, limit_test=limit_test,
                        download="never", cache="none", **kw)
    if len(y_cal) == 0:
        raise DataError(f"No calibration images found. Received: calibration={calibration}")
    result = evaluate_cascade(model, (x_cal, y_cal), (data.test.to_array(), data.test_y),
                              target_drop=target_drop, budget_macs=budget_macs,
                              kind=confidence, batch_size=batch_size)
    result["calibration"]["source"] = source
    result["test_split"] = data.split_info.get("eval_split", "test")
    write_results(run_dir, result, config.get("model", ""))
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0 on success, 2 on bad input (see :mod:`sila_keras.utils.cli`)."""
    return run_command(Command("sila-cascade", build_parser, _main, needs_tensorflow=False),
                       argv)


def _main(args: argparse.Namespace) -> None:
    from sila_keras.utils.cli import prepare_tensorflow

    check_args(args)  # before TensorFlow: a bad combination costs no start-up
    prepare_tensorflow("sila-cascade", loud=args.debug)
    result = run_cascade(args.run, target_drop=args.target_drop, budget_macs=args.budget_macs,
                         confidence=args.confidence, calibration=args.calibration,
                         calibration_split=args.calibration_split,
                         calibration_size=args.calibration_size, limit_test=args.limit_test,
                         data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed)
    c = result["cascade"]
    print(f"Calibrated on {result['calibration']['examples']} images "
          f"({result['calibration']['source']}); thresholds "
          + ", ".join(f"{h}={t:.4g}" for h, t in zip(result["heads"], c["thresholds"][:-1])))
    print(f"Test: cascade Top-1 {100 * c['accuracy']:.2f}% at {c['mean_macs'] / 1e6:.4g} M MACs "
          f"per image; " + ", ".join(f"{s['name']} {100 * s['accuracy']:.2f}% at "
                                     f"{s['macs'] / 1e6:.4g} M" for s in result["single"]))
    run = RunDir(args.run)
    print(f"Wrote {run / RunDir.CASCADE_JSON}, {run / RunDir.CASCADE_CSV}, "
          f"{run / RunDir.CASCADE_PLOT}")


# --------------------------------------------------------------------------- over seeds


def savings(result: dict) -> dict:
    """The calibrated cascade of one ``cascade.json`` against head 1 alone: Top-1 points lost,
    % of mean MACs and % of LiteRT latency saved (None where not timed)."""
    head1 = next(s for s in result["single"] if int(s["head"]) == 1)
    c = result["cascade"]
    lat, lat1 = c.get("mean_latency_ms"), single_latency(head1)
    chain = head1.get("latency_ms_via_segments")
    return {"drop_points": 100.0 * (head1["accuracy"] - c["accuracy"]),
            "macs_saved_pct": 100.0 * (1.0 - c["mean_macs"] / head1["macs"]),
            "latency_saved_pct": (100.0 * (1.0 - lat / lat1) if lat is not None and lat1
                                  else None),
            # against every segment run (head 1 reached through the chain): the same files,
            # so it isolates what the early exits save from how one file compiles vs several
            "latency_saved_vs_chain_pct": (100.0 * (1.0 - lat / chain) if lat is not None
                                           and chain else None)}


def seeds_table(run_dirs: Sequence) -> dict:
    """Mean ± std over runs (seeds) of each head alone and the calibrated cascade: Top-1 (%),
    mean MACs (M) and mean LiteRT latency (ms), from each run's ``cascade.json``.

    Returns:
        ``{"runs", "rows": [{"what", "top1", "macs_m", "latency_ms"}], "markdown"}``.
    """
    from sila_keras.utils import files

    results = [files.read_json_object(RunDir(p) / RunDir.CASCADE_JSON) for p in run_dirs]

    def stat(values):
        v = np.asarray([x for x in values if x is not None], np.float64)
        if not len(v):
            return "–"
        return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"

    rows = []
    for i, name in enumerate(results[0]["heads"] if results else []):
        singles = [r["single"][i] for r in results]
        rows.append({"what": f"{name} alone",
                     "top1": stat([100 * s["accuracy"] for s in singles]),
                     "macs_m": stat([s["macs"] / 1e6 for s in singles]),
                     "latency_ms": stat([single_latency(s) for s in singles])})
    if results:
        cs = [r["cascade"] for r in results]
        rows.append({"what": f"cascade ({results[0]['confidence']}, "
                             f"{results[0].get('target')})",
                     "top1": stat([100 * c["accuracy"] for c in cs]),
                     "macs_m": stat([c["mean_macs"] / 1e6 for c in cs]),
                     "latency_ms": stat([c.get("mean_latency_ms") for c in cs])})
        saved = [savings(r) for r in results]
        rows.append({"what": "cascade vs head_1 alone: points lost; % saved",
                     "top1": stat([v["drop_points"] for v in saved]),
                     "macs_m": stat([v["macs_saved_pct"] for v in saved]),
                     "latency_ms": stat([v["latency_saved_pct"] for v in saved])})
        rows.append({"what": "… % saved vs all segments run (head 1 through the chain)",
                     "top1": "", "macs_m": "",
                     "latency_ms": stat([v["latency_saved_vs_chain_pct"] for v in saved])})
    md = ["| | Top-1 (%) | mean MACs (M) | mean LiteRT latency (ms) |", "|---|---|---|---|"]
    md += [f"| {r['what']} | {r['top1']} | {r['macs_m']} | {r['latency_ms']} |" for r in rows]
    md += ["", f"{len(results)} run(s): " + ", ".join(str(p) for p in run_dirs) + ". Mean ± "
           "std over runs. A head alone's latency is that of its own file (only the layers it "
           "needs) where `export --cascade` timed it, else of the segments up to it. The last "
           "row: head 1's Top-1 minus the cascade's (points), and the share of head 1's MACs "
           "and latency the cascade saves (%)."]
    return {"runs": [str(p) for p in run_dirs], "rows": rows, "markdown": "\n".join(md) + "\n"}
