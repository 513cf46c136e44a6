"""The images an export is checked on, and the Keras reference logits.

Parity images are, in order of preference: the eval data's test split, images
the caller passes (e.g. the test split of the calibration set or of the run's
own data), the calibration images, or random images (noted in the manifest:
quantized formats are then not judged on real images).
"""

from __future__ import annotations

import numpy as np

from export.source import check_images
from sila_keras.utils.errors import DataError

SLICE_TOLERANCE = 1e-6  # scaled, like the float32 parity check


def check_class_names(class_names, model) -> list[str] | None:
    """``class_names`` as strings, one per class of ``model`` (None stays None).

    Raises:
        ValueError: the count differs from the model's N.
    """
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    n = int(model.get_layer("head_1").output.shape[-1])
    if len(names) != n:
        raise DataError(f"`class_names` needs one name per class ({n}). "
                         f"Received: {len(names)} names")
    return names


def calibration_images(calibration, input_shape) -> np.ndarray | None:
    """Calibration images as float32 ``(n, H, W, C)`` (an ``ImageData`` gives its train split)."""
    if calibration is None:
        return None
    x = getattr(calibration, "train_x", calibration)
    x = check_images(x, input_shape, "Calibration")
    return x if len(x) else None


def eval_arrays(eval_data, input_shape):
    """``(images float32, labels)`` from ``(x, y)`` or an ``ImageData`` (its test split).

    Raises:
        ValueError: wrong image shape, label count, or no images.
    """
    if eval_data is None:
        return None, None
    if hasattr(eval_data, "test_x"):
        x, y = eval_data.test_x, eval_data.test_y
    else:
        x, y = eval_data
    x = check_images(x, input_shape, "Eval")
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x) or len(x) == 0:
        raise DataError(f"Eval data needs one label per image and at least one image. "
                         f"Received: {len(x)} images, {len(y)} labels")
    return x, y


def parity_images(eval_x, eval_y, sample_images, sample_note, cal, limit, input_shape):
    """``(images, labels or None, description)`` to check the artifacts on (see module doc)."""
    if eval_x is not None:
        return eval_x, eval_y, "eval data (test split)"
    if sample_images is not None and len(sample_images):
        x = check_images(sample_images, input_shape, "Sample")[:limit]
        return x, None, sample_note or "sample images"
    if cal is not None:
        return cal[:limit], None, "calibration images"
    n = max(1, min(limit, 64))
    x = np.random.default_rng(0).uniform(0, 255, (n, *input_shape)).astype(np.float32)
    return x, None, "random uniform 0–255 images (no data given: quantized formats not judged on real images)"


def keras_logits(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run a Keras model in inference mode: eagerly for a few images (no tracing), else ``predict``."""
    if len(images) <= 2 * batch_size:
        parts = [np.asarray(model(images[i:i + batch_size], training=False))
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts, axis=0)
    return model.predict(images, batch_size=batch_size, verbose=0)


def verify_slice(model, reference: np.ndarray, images: np.ndarray, head: int) -> dict:
    """Check the extracted head's logits equal slice ``head`` of ``sila_logits``.

    Raises:
        RuntimeError: they differ (the extracted graph is not the head of the model).
    """
    n = reference.shape[-1]
    full = keras_logits(model, images)
    part = full[:, (head - 1) * n: head * n]
    diff = float(np.abs(part - reference).max(initial=0.0))
    scale = max(1.0, float(np.abs(part).max(initial=0.0)))
    if not diff <= SLICE_TOLERANCE * scale:
        raise RuntimeError(
            f"The extracted head_{head} model does not reproduce slice {head} of sila_logits "
            f"(max |Δ| {diff:.3g}); nothing was written. This is a bug: please report it."
        )
    return {"max_abs_diff": diff, "images": int(len(images)), "passed": True}
