"""Routing and calibration of an early-exit cascade: pure NumPy over per-step probabilities.

A cascade classifies an image with its cheapest step first and stops at the first step whose
confidence reaches that step's threshold; the last step takes every image left (paper B's
dynamic evaluation, :mod:`sila_keras.modes.anytime`). The model side (which heads, in which
order, at what cost) is :mod:`sila_keras.reports.cascade_eval`.

* **Confidence** (:data:`CONFIDENCES`): ``max`` softmax probability, ``margin`` (top-1 minus
  top-2 probability) or ``entropy`` (its negative, so higher is more confident).
* **Calibration** (:func:`calibrate`) picks one threshold per step but the last, on held-out
  *training* images (never the test split): the sweep of MSDNet's geometric exit schemes
  (:func:`~sila_keras.modes.anytime.fit_thresholds`) from "all leave at the first step" to
  "all reach the last", and of these the cheapest that is at most ``target_drop`` points below
  head 1's accuracy on the same images, or the one whose mean cost meets ``budget_macs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sila_keras.utils.errors import ConfigError

CONFIDENCES = ("max", "margin", "entropy")
DEFAULT_TARGET_DROP = 0.5  # points of Top-1 below head 1 (when neither target is given)
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
        costs: cumulative MACs per step
            (:func:`~sila_keras.reports.cascade_eval.cascade_costs`).
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
