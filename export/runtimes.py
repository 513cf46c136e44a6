"""Run a written artifact, loaded fresh from disk, in its own runtime.

Each runner maps float32 raw-pixel images ``(n, H, W, C)`` to head logits
``(n, N)``: Keras for ``.keras``, TensorFlow for the SavedModel, LiteRT
(``ai_edge_litert``) for ``.tflite``, onnxruntime for ``.onnx``. A TFLite file
whose only output is ``probabilities`` (the phone-facing default) gives those
instead (``Runner.output`` says which). Full-integer TFLite models take uint8 or
int8 input: the runner quantizes the pixels with the model's own input scale/zero
point and dequantizes the outputs. :func:`mediapipe_check` classifies images with
MediaPipe Tasks' ``ImageClassifier``, the client phone apps use.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from export.artifacts import INPUT_NAME, SIGNATURE, ArtifactSpec


class Runner:
    """Base class: ``predict`` in batches; ``latency_ms`` of batch-1 calls."""

    batch_size = 32
    description = ""
    output = "logits"

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x`` (float32 raw pixels), run ``batch_size`` images at a time."""
        x = np.asarray(x, dtype=np.float32)
        parts = [self.run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(parts, axis=0).astype(np.float32)

    def latency_ms(self, image: np.ndarray, runs: int = 30, warmup: int = 3) -> dict:
        """Median / min wall time of ``runs`` batch-1 calls after ``warmup`` calls."""
        x = np.asarray(image, dtype=np.float32)[:1]
        for _ in range(max(0, warmup)):
            self.run(x)
        times = []
        for _ in range(max(1, runs)):
            t = time.perf_counter()
            self.run(x)
            times.append(1000.0 * (time.perf_counter() - t))
        return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
                "runs": len(times), "batch": 1, "runtime": self.description}


class KerasRunner(Runner):
    def __init__(self, path: Path):
        import keras
        import tensorflow as tf

        import sila_keras  # noqa: F401  (registers the custom layers for loading)

        model = keras.models.load_model(path, compile=False)
        self._fn = tf.function(lambda x: model(x, training=False))
        self.description = f"Keras {keras.__version__} / TensorFlow {tf.__version__}"

    def run(self, x):
        return self._fn(x).numpy()


class SavedModelRunner(Runner):
    def __init__(self, path: Path):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(path))
        self._fn = self._loaded.signatures[SIGNATURE]
        self.description = f"TensorFlow {tf.__version__}"

    def run(self, x):
        return self._fn(**{INPUT_NAME: x})["logits"].numpy()


class LiteRTRunner(Runner):
    # One image per call, as on a phone: dynamic-range quantization picks activation ranges
    # per call, so its outputs depend on what else is in a batch.
    batch_size = 1

    def __init__(self, path: Path):
        from ai_edge_litert import interpreter as litert

        self._interpreter = litert.Interpreter(model_path=str(path))
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        self._in = self._runner.get_input_details()[INPUT_NAME]
        outputs = self._runner.get_output_details()
        self.outputs = sorted(outputs)
        self.output = "logits" if "logits" in outputs else self.outputs[0]
        self._out = outputs[self.output]
        self.description = "LiteRT (ai_edge_litert)"

    @property
    def input_details(self) -> dict:
        return tensor_type(self._in)

    @property
    def output_details(self) -> dict:
        return tensor_type(self._out)

    def run(self, x):
        y = self._runner(**{INPUT_NAME: to_input(x, self._in)})[self.output]
        return from_output(y, self._out)


def to_input(x: np.ndarray, details: dict) -> np.ndarray:
    """Float values as the tensor described by ``details`` (LiteRT's input details) takes
    them: quantized with its scale and zero point (rounded, clipped) when it is integer."""
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return np.asarray(x, np.float32)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x, np.float32) / scale + zero_point),
                   info.min, info.max).astype(dtype)


def from_output(y: np.ndarray, details: dict) -> np.ndarray:
    """An output tensor as float32 values: dequantized with its scale and zero point when
    it is integer."""
    y = np.asarray(y)
    if y.dtype == np.float32:
        return y
    scale, zero_point = details["quantization"]
    return (y.astype(np.float32) - zero_point) * scale


def tensor_type(details) -> dict:
    """``{"dtype", "scale", "zero_point"}`` of a LiteRT tensor (scale 0: not quantized)."""
    scale, zero_point = details["quantization"]
    return {"dtype": np.dtype(details["dtype"]).name, "scale": float(scale),
            "zero_point": int(zero_point)}


class OnnxRunner(Runner):
    def __init__(self, path: Path):
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.description = f"onnxruntime {ort.__version__} (CPU)"

    def run(self, x):
        return self._session.run(["logits"], {INPUT_NAME: x})[0]


RUNNERS = {"keras": KerasRunner, "savedmodel": SavedModelRunner, "tflite": LiteRTRunner,
           "onnx": OnnxRunner}


def open_artifact(spec: ArtifactSpec, path: Path) -> Runner:
    """Load ``path`` fresh in the runtime of ``spec``."""
    return RUNNERS[spec.family](Path(path))


def mediapipe_check(path: Path, images: np.ndarray, keras_top1: np.ndarray,
                    class_names, limit: int = 500) -> dict:
    """Classify ``images`` with MediaPipe Tasks' ``vision.ImageClassifier`` loading ``path``
    as a phone app would (metadata decides the preprocessing and the category names).

    Args:
        path: the ``.tflite`` file, metadata included.
        images: float32 raw pixels ``(n, H, W, 3)``; sent as uint8 SRGB frames.
        keras_top1: the Keras head's top-1 class per image.
        class_names: the labels the categories must carry.
        limit: at most this many images.

    Returns:
        ``{"runs": True, "images", "top1_agreement", "category_names_ok", "scores_in_0_1",
        "runtime"}``.

    Raises:
        RuntimeError: MediaPipe refuses the file or returns no category.
    """
    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    x = np.clip(np.round(np.asarray(images[:limit], np.float32)), 0, 255).astype(np.uint8)
    options = vision.ImageClassifierOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=str(path)), max_results=len(class_names))
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except Exception as e:  # noqa: BLE001 - MediaPipe raises RuntimeError/ValueError
        raise RuntimeError(f"MediaPipe ImageClassifier refused it: {str(e).strip()[:300]}") from None
    agree, names_ok, scores_ok = 0, True, True
    with classifier:
        for i in range(len(x)):
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(x[i])))
            if len(result.classifications) != 1 or not result.classifications[0].categories:
                raise RuntimeError(f"MediaPipe ImageClassifier returned {len(result.classifications)} "
                                   "classification heads / no category (expected one head)")
            cats = result.classifications[0].categories
            untied = len(cats) == 1 or cats[0].score > cats[1].score  # a tie at the top disagrees
            agree += int(untied and cats[0].index == int(keras_top1[i]))
            names_ok &= all(c.category_name == class_names[c.index] for c in cats)
            scores_ok &= all(0.0 <= c.score <= 1.0 for c in cats)
    return {"runs": True, "images": int(len(x)), "top1_agreement": agree / max(1, len(x)),
            "category_names_ok": bool(names_ok), "scores_in_0_1": bool(scores_ok),
            "runtime": f"mediapipe {mp.__version__} vision.ImageClassifier"}
