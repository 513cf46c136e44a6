"""The int8 accuracy gate: judge a full-integer file by what its users see.

Top-1 agreement with the float head over all images says little on a weakly trained
model: most of its images are near-ties, and quantization noise flips a near-tie without
making the model worse. The gate judges two things instead, on **labelled held-out
images** (never the calibration images):

1. **accuracy drop**: the int8 file's top-1 accuracy may fall at most ``int8-drop``
   points (default 1.0) below the float head's. A tie at the top counts as ``1/k`` of a
   hit when the label is among the ``k`` tied classes: uint8 probabilities (steps of
   1/256) tie, and a client such as MediaPipe orders tied scores its own way, so a tie
   is a coin flip for the user — neither a sure hit (``argmax`` picking the first index)
   nor a sure miss.
2. **agreement where the float head is confident**: on the images whose float top-1
   probability leads the second by at least :data:`CONFIDENT_MARGIN`, the int8 file's
   unique top class must be the float head's on at least ``int8`` (default 97 %) of them.
   Near-ties are left to the accuracy criterion.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CONFIDENT_MARGIN = 0.1  # float top-1 probability − top-2 probability


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def expected_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy where a tie of ``k`` classes at the top counts ``1/k`` if the label is among them."""
    scores, labels = np.asarray(scores), np.asarray(labels).reshape(-1)
    if not len(labels):
        return float("nan")
    top = scores == scores.max(-1, keepdims=True)
    return float(np.mean(top[np.arange(len(labels)), labels] / top.sum(-1)))


def confident(probabilities: np.ndarray, margin: float = CONFIDENT_MARGIN) -> np.ndarray:
    """Mask of the rows whose top probability leads the second by at least ``margin``."""
    p = np.sort(np.asarray(probabilities, np.float64), axis=-1)
    if p.shape[-1] < 2:
        return np.ones(len(p), bool)
    return (p[:, -1] - p[:, -2]) >= margin


def unique_top1_agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Share of rows whose reference top-1 class is the outputs' *unique* top score."""
    reference, outputs = np.asarray(reference), np.asarray(outputs)
    if not len(reference):
        return 1.0
    top = outputs.max(-1, keepdims=True)
    unique = (outputs == top).sum(-1) == 1
    return float(np.mean(unique & (outputs.argmax(-1) == reference.argmax(-1))))


def judge(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None,
          tolerances: Mapping[str, float], output: str = "logits") -> dict:
    """The gate's figures for ``outputs`` against the float ``reference`` and whether it passes.

    Args:
        reference: the float head's logits, or its probabilities when ``output`` is
            ``probabilities``.
        outputs: the int8 file's outputs (dequantized), same kind as ``reference``.
        labels: the held-out labels; None judges agreement only (``accuracy_drop`` None).
        tolerances: ``int8`` (minimum agreement on confident images) and ``int8-drop``
            (maximum accuracy drop in points).
        output: ``logits`` or ``probabilities``.

    Returns:
        ``float_accuracy``, ``int8_accuracy``, ``accuracy_drop`` (points), ``confident_images``,
        ``confident_agreement``, ``passed``, ``reasons`` (why not, empty when it passes),
        ``criterion`` (in words).
    """
    reference = np.asarray(reference, np.float64)
    outputs = np.asarray(outputs, np.float64)
    probs = reference if output == "probabilities" else softmax(reference)
    mask = confident(probs)
    agreement = unique_top1_agreement(reference[mask], outputs[mask]) if mask.any() else None
    min_agree, max_drop = float(tolerances["int8"]), float(tolerances["int8-drop"])
    out = {"confident_margin": CONFIDENT_MARGIN, "confident_images": int(mask.sum()),
           "confident_agreement": agreement, "float_accuracy": None, "int8_accuracy": None,
           "accuracy_drop": None}
    reasons = []
    if not np.isfinite(outputs).all():
        reasons.append("non-finite outputs")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        f_acc, q_acc = expected_accuracy(reference, labels), expected_accuracy(outputs, labels)
        drop = 100.0 * (f_acc - q_acc)
        out.update(float_accuracy=f_acc, int8_accuracy=q_acc, accuracy_drop=round(drop, 4))
        if drop > max_drop + 1e-9:
            reasons.append(f"top-1 accuracy {100 * q_acc:.1f}% vs float {100 * f_acc:.1f}%: "
                           f"drop {drop:.1f} points > {max_drop:g}")
    if agreement is not None and agreement < min_agree:
        reasons.append(f"top-1 agreement {agreement:.1%} on the {int(mask.sum())} images where "
                       f"the float head is confident, needs {min_agree:.0%}")
    out["criterion"] = (
        (f"top-1 accuracy drop <= {max_drop:g} points on labelled held-out images; " if labels is not None
         else "no labels: accuracy not judged; ")
        + f"top-1 agreement >= {min_agree:.0%} where the float head is confident "
          f"(top-2 probability margin >= {CONFIDENT_MARGIN:g})")
    out["passed"] = not reasons
    out["reasons"] = reasons
    return out
