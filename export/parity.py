"""Parity of an artifact's logits with the Keras head: what is measured and when it passes.

Float artifacts (float32 formats, TFLite float16) are judged by the largest
logit difference, measured in units of the logits' own scale::

    max|Δlogit| ≤ tol · max(1, max|logit_keras|)

For logits within ±1 this is the plain absolute bound (1e-4 for float32, 1e-2
for float16). Scaling keeps the check about float rounding rather than about
how large a model's logits happen to be: a weakly trained model with logits of
±500 already differs from itself by ~1e-4 between two TensorFlow batch sizes.

Quantized artifacts change the logits by design. Dynamic-range quantization (int8
weights, activations quantized on the fly) is judged by top-1 agreement with Keras on
real images (≥ 97 % by default; a tie at the top counts as a disagreement). The
full-integer int8 file is judged by the int8 gate (:mod:`export.gate`): its top-1
accuracy on labelled held-out images may drop at most ``int8-drop`` points below the
float head's, and it must agree with Keras on ≥ 97 % of the images where the float head
is confident.

A TFLite file whose only output is ``probabilities`` (the phone-facing default) is
compared on probabilities against the softmax of the Keras logits, with the same
measure (probabilities lie in [0, 1], so the bound is absolute).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from export import gate
from export.gate import softmax, unique_top1_agreement
from sila_keras.utils.errors import ConfigError

DEFAULT_TOLERANCES: dict[str, float] = {
    "float32": 1e-4,   # max |Δlogit| / max(1, max|logit|)
    "float16": 1e-2,   # same measure
    "dynamic": 0.97,   # minimum top-1 agreement
    "int8": 0.97,      # minimum top-1 agreement where the float head is confident
    "int8-drop": 1.0,  # maximum top-1 accuracy drop of the int8 file, in points
}
AGREEMENT_CHECKS = ("dynamic", "int8")
__all__ = ["softmax", "unique_top1_agreement"]  # re-exported: parity figures use them
POINTS_CHECKS = ("int8-drop",)


def resolve_tolerances(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Defaults updated with ``overrides``, validated.

    Raises:
        ValueError: unknown key, a value that is not a number, negative, an agreement outside
            [0, 1] or an accuracy drop above 100 points.
    """
    tol = dict(DEFAULT_TOLERANCES)
    for key, value in (overrides or {}).items():
        if key not in tol:
            raise ConfigError(f"Unknown tolerance '{key}'. Available: {', '.join(tol)}. "
                             f"Received: {key}={value}")
        bound = ("in [0, 1] (a fraction of images)" if key in AGREEMENT_CHECKS
                 else "in [0, 100] (points of top-1 accuracy)" if key in POINTS_CHECKS else ">= 0")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"Tolerance '{key}' must be a number {bound}. "
                              f"Received: {key}={value}") from None
        if not value >= 0 or (key in AGREEMENT_CHECKS and value > 1) or (
                key in POINTS_CHECKS and value > 100):
            raise ConfigError(f"Tolerance '{key}' must be {bound}. Received: {key}={value:g}")
        tol[key] = value
    return tol


def parse_tolerances(text: str) -> dict[str, float]:
    """``"float16=0.05,int8=0.9"`` → ``{"float16": 0.05, "int8": 0.9}`` (validated).

    Raises:
        ValueError: malformed text or a bad entry.
    """
    out = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"Tolerances are KIND=VALUE pairs, e.g. float16=0.05,int8-drop=1.0. "
                              f"Received: {item!r}")
        out[key.strip()] = value.strip()
    resolved = resolve_tolerances(out)
    return {k: resolved[k] for k in out}


def compare(reference: np.ndarray, logits: np.ndarray, check: str, tolerances: Mapping[str, float],
            output: str = "logits", labels: np.ndarray | None = None) -> dict:
    """Parity figures of ``logits`` against the Keras ``reference`` and whether they pass.

    Args:
        labels: held-out labels; the ``int8`` check judges the accuracy drop with them
            (:func:`export.gate.judge`).

    Returns:
        ``max_abs_diff``, ``mean_abs_diff``, ``max_abs_logit``, ``scaled_diff``,
        ``top1_agreement``, ``criterion`` (in words), ``passed``, ``output`` (what was
        compared: ``logits`` or ``probabilities``); for ``int8`` also ``gate``.
    """
    reference = np.asarray(reference, np.float64)
    logits = np.asarray(logits, np.float64)
    if reference.shape != logits.shape:
        return {"passed": False, "criterion": "output shape",
                "error": f"shape {list(logits.shape)} != Keras {list(reference.shape)}"}
    diff = np.abs(reference - logits)
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    agreement = unique_top1_agreement(reference, logits)
    finite = bool(np.isfinite(logits).all())
    out = {"max_abs_diff": float(diff.max(initial=0.0)), "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
           "max_abs_logit": scale, "scaled_diff": float(diff.max(initial=0.0)) / scale,
           "top1_agreement": agreement, "output": output}
    what = "Δprobability" if output == "probabilities" else "Δlogit"
    tol = float(tolerances[check])
    if check == "int8":
        out["gate"] = gate.judge(reference, logits, labels, tolerances, output)
        out["criterion"] = out["gate"]["criterion"]
        out["passed"] = finite and out["gate"]["passed"]
    elif check in AGREEMENT_CHECKS:
        out["criterion"] = f"top-1 agreement >= {tol:.0%}"
        out["passed"] = finite and agreement >= tol
    else:
        out["criterion"] = (f"max|{what}| <= {tol:g} × max(1, max|{output[:-1] if output.endswith('s') else output}|)"
                            f" = {tol * scale:.3g}")
        out["passed"] = finite and out["scaled_diff"] <= tol
    if not finite:
        out["error"] = "non-finite logits"
    return out


def failure_reason(parity: dict) -> str:
    """One line saying why ``parity`` failed."""
    what = "Δprobability" if parity.get("output") == "probabilities" else "Δlogit"
    if "error" in parity:
        return f"parity check failed: {parity['error']}"
    if parity.get("gate", {}).get("reasons"):
        return "int8 gate failed: " + "; ".join(parity["gate"]["reasons"])
    if "top-1" in parity.get("criterion", ""):
        return (f"parity check failed: top-1 agreement {parity['top1_agreement']:.1%} with Keras, "
                f"needs {parity['criterion'].split('>= ')[-1]} (max |{what}| {parity['max_abs_diff']:.3g})")
    return (f"parity check failed: max |{what}| {parity['max_abs_diff']:.3g} "
            f"(criterion {parity['criterion']})")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` against integer ``labels``."""
    labels = np.asarray(labels)
    return float(np.mean(np.asarray(logits).argmax(-1) == labels)) if len(labels) else float("nan")
