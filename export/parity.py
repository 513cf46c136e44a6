"""Parity of an artifact's logits with the Keras head: what is measured and when it passes.

Float artifacts (float32 formats, TFLite float16) are judged by the largest
logit difference, measured in units of the logits' own scale::

    max|Δlogit| ≤ tol · max(1, max|logit_keras|)

For logits within ±1 this is the plain absolute bound (1e-4 for float32, 1e-2
for float16). Scaling keeps the check about float rounding rather than about
how large a model's logits happen to be: a weakly trained model with logits of
±500 already differs from itself by ~1e-4 between two TensorFlow batch sizes.

Quantized artifacts (TFLite dynamic-range and full-integer int8) change the
logits by design; they are judged by top-1 agreement with Keras on real images
(≥ 97 % by default; a tie at the top counts as a disagreement). Dynamic-range quantization stores weights as int8 and
quantizes activations on the fly, so its error is of int8 order and it gets the
same criterion.

A TFLite file whose only output is ``probabilities`` (the phone-facing default) is
compared on probabilities against the softmax of the Keras logits, with the same
measure (probabilities lie in [0, 1], so the bound is absolute).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sila_keras.utils.errors import ConfigError

DEFAULT_TOLERANCES: dict[str, float] = {
    "float32": 1e-4,   # max |Δlogit| / max(1, max|logit|)
    "float16": 1e-2,   # same measure
    "dynamic": 0.97,   # minimum top-1 agreement
    "int8": 0.97,      # minimum top-1 agreement
}
AGREEMENT_CHECKS = ("dynamic", "int8")


def resolve_tolerances(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Defaults updated with ``overrides``, validated.

    Raises:
        ValueError: unknown key, negative value, or an agreement outside [0, 1].
    """
    tol = dict(DEFAULT_TOLERANCES)
    for key, value in (overrides or {}).items():
        if key not in tol:
            raise ConfigError(f"Unknown tolerance '{key}'. Available: {', '.join(tol)}. "
                             f"Received: {key}={value}")
        value = float(value)
        if value < 0 or (key in AGREEMENT_CHECKS and value > 1):
            bound = "in [0, 1] (a fraction of images)" if key in AGREEMENT_CHECKS else ">= 0"
            raise ConfigError(f"Tolerance '{key}' must be {bound}. Received: {key}={value}")
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
        try:
            if not sep:
                raise ConfigError(item)
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"Tolerances are KIND=VALUE pairs, e.g. float16=0.05,int8=0.9. "
                             f"Received: {item!r}") from None
    resolve_tolerances(out)
    return out


def compare(reference: np.ndarray, logits: np.ndarray, check: str, tolerances: Mapping[str, float],
            output: str = "logits") -> dict:
    """Parity figures of ``logits`` against the Keras ``reference`` and whether they pass.

    Returns:
        ``max_abs_diff``, ``mean_abs_diff``, ``max_abs_logit``, ``scaled_diff``,
        ``top1_agreement``, ``criterion`` (in words), ``passed``, ``output`` (what was
        compared: ``logits`` or ``probabilities``).
    """
    reference = np.asarray(reference, np.float64)
    logits = np.asarray(logits, np.float64)
    if reference.shape != logits.shape:
        return {"passed": False, "criterion": "output shape",
                "error": f"shape {list(logits.shape)} != Keras {list(reference.shape)}"}
    diff = np.abs(reference - logits)
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    agreement = top1_agreement(reference, logits)
    finite = bool(np.isfinite(logits).all())
    out = {"max_abs_diff": float(diff.max(initial=0.0)), "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
           "max_abs_logit": scale, "scaled_diff": float(diff.max(initial=0.0)) / scale,
           "top1_agreement": agreement, "output": output}
    what = "Δprobability" if output == "probabilities" else "Δlogit"
    tol = float(tolerances[check])
    if check in AGREEMENT_CHECKS:
        out["criterion"] = f"top-1 agreement >= {tol:.0%}"
        out["passed"] = finite and agreement >= tol
    else:
        out["criterion"] = (f"max|{what}| <= {tol:g} × max(1, max|{output[:-1] if output.endswith('s') else output}|)"
                            f" = {tol * scale:.3g}")
        out["passed"] = finite and out["scaled_diff"] <= tol
    if not finite:
        out["error"] = "non-finite logits"
    return out


def top1_agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Share of images whose Keras top-1 class is the artifact's *unique* top score.

    A tie at the top counts as a disagreement: a full-integer model's uint8 probabilities
    (steps of 1/256) can tie several classes, and a client such as MediaPipe's
    ImageClassifier orders tied scores its own way, so ``argmax`` picking the first index
    would overstate what a phone shows.
    """
    reference, outputs = np.asarray(reference), np.asarray(outputs)
    if not len(reference):
        return 1.0
    want = reference.argmax(-1)
    top = outputs.max(-1, keepdims=True)
    unique = (outputs == top).sum(-1) == 1
    return float(np.mean(unique & (outputs.argmax(-1) == want)))


def failure_reason(parity: dict) -> str:
    """One line saying why ``parity`` failed."""
    what = "Δprobability" if parity.get("output") == "probabilities" else "Δlogit"
    if "error" in parity:
        return f"parity check failed: {parity['error']}"
    if "top-1" in parity.get("criterion", ""):
        return (f"parity check failed: top-1 agreement {parity['top1_agreement']:.1%} with Keras, "
                f"needs {parity['criterion'].split('>= ')[-1]} (max |{what}| {parity['max_abs_diff']:.3g})")
    return (f"parity check failed: max |{what}| {parity['max_abs_diff']:.3g} "
            f"(criterion {parity['criterion']})")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the reference for a ``probabilities`` output)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` against integer ``labels``."""
    labels = np.asarray(labels)
    return float(np.mean(np.asarray(logits).argmax(-1) == labels)) if len(labels) else float("nan")
