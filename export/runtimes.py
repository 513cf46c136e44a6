"""Run a written artifact, loaded fresh from disk, in its own runtime.

Each runner maps float32 raw-pixel images ``(n, H, W, C)`` to head logits
``(n, N)``: Keras for ``.keras``, TensorFlow for the SavedModel, LiteRT
(``ai_edge_litert``) for ``.tflite``, onnxruntime for ``.onnx``. Full-integer
TFLite models take int8 input and give int8 outputs: the runner quantizes the
pixels with the model's own input scale/zero point and dequantizes the logits.
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
    def __init__(self, path: Path):
        from ai_edge_litert import interpreter as litert

        self._interpreter = litert.Interpreter(model_path=str(path))
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        self._in = self._runner.get_input_details()[INPUT_NAME]
        self._out = self._runner.get_output_details()["logits"]
        self.description = "LiteRT (ai_edge_litert)"

    @property
    def input_details(self) -> dict:
        scale, zero_point = self._in["quantization"]
        return {"dtype": np.dtype(self._in["dtype"]).name, "scale": float(scale),
                "zero_point": int(zero_point)}

    def run(self, x):
        dtype = np.dtype(self._in["dtype"])
        if dtype != np.float32:
            scale, zero_point = self._in["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
        y = self._runner(**{INPUT_NAME: x})["logits"]
        if y.dtype != np.float32:
            scale, zero_point = self._out["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return y


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
