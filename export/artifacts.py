"""What the exporter writes, and how each artifact is converted.

Every artifact is built from one *export model*: the single-head submodel from
:func:`sila_keras.extract_head` with two named outputs, ``logits`` (head k's
logits) and ``probabilities`` (their softmax). Its input is ``image``: float32
NHWC raw pixels in 0–255 with a dynamic batch; the model normalizes inside.

Recipes (verified on TF 2.21 / Keras 3.15, see ``shared/reference/ecosystem-notes.md``):

* SavedModel: ``keras.export.ExportArchive`` with a ``serving_default`` endpoint
  (``model.export`` alone would name the output ``output_0``).
* TFLite: ``TFLiteConverter.from_saved_model(..., signature_keys=["serving_default"])``;
  float16 stores weights as fp16; dynamic-range stores weights as int8 and
  quantizes activations on the fly; int8 is full-integer (int8 input and
  outputs) calibrated on a representative set of real images. No Flex (TF) ops
  are allowed, so every artifact runs in plain LiteRT.
* ONNX: ``tf2onnx.convert.from_keras`` on the functional export model
  (Sequential models fail, tf2onnx#2448), opset ≤ 18.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sila_keras.errors import ConfigError

FORMATS = ("keras", "savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
MIN_OPSET, MAX_OPSET = 9, 18  # tf2onnx 1.17 supports up to opset 18
SIGNATURE = "serving_default"
INPUT_NAME = "image"


@dataclass(frozen=True)
class ArtifactSpec:
    """One artifact of an export.

    Attributes:
        name: key in the manifest (``"tflite_int8"``).
        file: file or folder name inside the output folder.
        family: ``keras`` / ``savedmodel`` / ``tflite`` / ``onnx`` (an entry of ``--formats``).
        quantization: ``none`` / ``float16`` / ``dynamic`` / ``int8`` (``--quantize``).
        runtime: where the artifact is run for the parity check.
        check: which tolerance applies (``float32``, ``float16``, ``dynamic``, ``int8``).
    """

    name: str
    file: str
    family: str
    quantization: str
    runtime: str
    check: str


ARTIFACTS: dict[str, ArtifactSpec] = {a.name: a for a in (
    ArtifactSpec("keras", "model.keras", "keras", "none", "Keras (TensorFlow)", "float32"),
    ArtifactSpec("savedmodel", "saved_model", "savedmodel", "none", "TensorFlow", "float32"),
    ArtifactSpec("tflite", "model.tflite", "tflite", "none", "LiteRT", "float32"),
    ArtifactSpec("tflite_float16", "model_float16.tflite", "tflite", "float16", "LiteRT", "float16"),
    ArtifactSpec("tflite_dynamic", "model_dynamic.tflite", "tflite", "dynamic", "LiteRT", "dynamic"),
    ArtifactSpec("tflite_int8", "model_int8.tflite", "tflite", "int8", "LiteRT", "int8"),
    ArtifactSpec("onnx", "model.onnx", "onnx", "none", "onnxruntime", "float32"),
)}


def plan(formats: Sequence[str], quantize: Sequence[str]) -> list[ArtifactSpec]:
    """The artifacts for ``formats`` × ``quantize`` (quantization applies to TFLite only)."""
    out = []
    for spec in ARTIFACTS.values():
        if spec.family not in formats:
            continue
        if spec.family == "tflite" and spec.quantization not in quantize:
            continue
        out.append(spec)
    return out


def parse_choices(value, choices: Sequence[str], flag: str) -> tuple[str, ...]:
    """``"a,b"`` or a sequence → a validated tuple in the order of ``choices``.

    Raises:
        ValueError: empty, or a name outside ``choices``.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip().lower() for v in items if str(v).strip()]
    if not items:
        raise ConfigError(f"`{flag}` needs at least one of {', '.join(choices)}. Received: {flag}={value!r}")
    unknown = [v for v in items if v not in choices]
    if unknown:
        raise ConfigError(
            f"Unknown {flag} value(s) {', '.join(map(repr, unknown))}. Available: {', '.join(choices)}. "
            f"Received: {flag}={value!r}"
        )
    return tuple(c for c in choices if c in items)


# --------------------------------------------------------------------------- the export model


def build_export_model(head_model):
    """Wrap a head submodel into ``image → {"logits", "probabilities"}`` (shares its layers)."""
    import keras

    logits = keras.layers.Identity(name="logits")(head_model.output)
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(head_model.input, {"logits": logits, "probabilities": probabilities},
                       name=f"{head_model.name}_export")


def input_spec(input_shape: Sequence[int]):
    """The serving input: ``image`` float32 ``(None, H, W, C)``."""
    import tensorflow as tf

    return tf.TensorSpec([None, *(int(d) for d in input_shape)], tf.float32, name=INPUT_NAME)


# --------------------------------------------------------------------------- writers


def write_keras(head_model, path: Path) -> None:
    """Save the head submodel (output: its logits) as a ``.keras`` file."""
    head_model.save(path)


def write_savedmodel(export_model, path: Path, input_shape: Sequence[int]) -> None:
    """A SavedModel with signature ``serving_default``: ``image`` → ``logits``, ``probabilities``."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(export_model)

    def serve(image):
        return export_model(image, training=False)

    archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=[input_spec(input_shape)])
    archive.write_out(str(path), verbose=False)


def write_tflite(saved_model: Path, path: Path, quantization: str,
                 calibration: np.ndarray | None = None) -> None:
    """Convert the SavedModel's ``serving_default`` signature to a TFLite flatbuffer.

    Args:
        saved_model: folder written by :func:`write_savedmodel`.
        path: the ``.tflite`` file to write.
        quantization: ``none``, ``float16``, ``dynamic`` or ``int8``.
        calibration: real images ``(n, H, W, C)`` (0–255), required for ``int8``.

    Raises:
        ValueError: ``int8`` without calibration images.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConfigError("int8 quantization needs calibration images. Received: calibration=None")
        images = np.asarray(calibration, dtype=np.float32)

        def representative():
            for i in range(len(images)):
                yield {INPUT_NAME: images[i:i + 1]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # int8 calibration runs the deprecated tf.lite.Interpreter
        warnings.simplefilter("ignore", UserWarning)
        flatbuffer = converter.convert()
    path.write_bytes(flatbuffer)


def write_onnx(export_model, path: Path, input_shape: Sequence[int], opset: int) -> None:
    """Convert the export model with tf2onnx (input ``image``, outputs ``logits``, ``probabilities``)."""
    import tf2onnx

    tf2onnx.logging.set_level(logging.ERROR)
    model_proto, _ = tf2onnx.convert.from_keras(export_model, input_signature=[input_spec(input_shape)],
                                                opset=int(opset))
    path.write_bytes(model_proto.SerializeToString())


def size_bytes(path: Path) -> int:
    """Size of a file, or the total of a folder's files."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
