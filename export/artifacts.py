"""What the exporter writes, and how each artifact is converted.

Every artifact is built from one *export model*: the single-head submodel from
:func:`sila_keras.extract_head` with two named outputs, ``logits`` (head k's
logits) and ``probabilities`` (their softmax). Its input is ``image``: float32
NHWC raw pixels in 0–255 with a dynamic batch; the model normalizes inside.

Recipes (verified on TF 2.21 / Keras 3.15, see ``shared/reference/ecosystem-notes.md``):

* SavedModel: ``keras.export.ExportArchive`` with a ``serving_default`` endpoint
  (``model.export`` alone would name the output ``output_0``).
* TFLite: ``TFLiteConverter.from_saved_model(..., signature_keys=["serving_default"])``
  on a SavedModel whose signature returns only the TFLite outputs (default: just
  ``probabilities``, the one output phone classifiers expect); float16 stores
  weights as fp16; dynamic-range stores weights as int8 and quantizes activations
  on the fly; int8 is full-integer, calibrated on real images, with uint8 input
  (raw pixels: scale 1, zero point 0) by default (``int8_io``); its fallback
  ``int16x8`` has 16-bit activations and 8-bit weights (float32 input/output).
  Builtin ops only: a graph that needs Flex (TF) ops is refused with the op names
  and the layers that produced them, unless ``allow_flex``.
* ONNX: ``tf2onnx.convert.from_keras`` on the functional export model
  (Sequential models fail, tf2onnx#2448), opset ≤ 18.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sila_keras.utils.errors import ConfigError

FORMATS = ("keras", "savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
MIN_OPSET, MAX_OPSET = 9, 18  # tf2onnx 1.17 supports up to opset 18
SIGNATURE = "serving_default"
INPUT_NAME = "image"
OUTPUTS = ("logits", "probabilities")
DEFAULT_TFLITE_OUTPUTS = ("probabilities",)  # one output: what MediaPipe's ImageClassifier reads
INT8_IO = ("uint8", "int8", "float32")
INT8_SCHEMES = ("int8", "int16x8")
# Input quantization that maps raw 0–255 pixels exactly, per full-integer input type.
EXACT_PIXEL_QUANTIZATION = {"uint8": (1.0, 0), "int8": (1.0, -128)}


class FlexOpsError(RuntimeError):
    """The graph needs Flex (SELECT_TF_OPS) ops, which stock mobile LiteRT does not have."""

    def __init__(self, ops: dict[str, list[str]]):
        self.ops = ops
        where = "; ".join(f"{op} (from {', '.join(layers) or 'unknown layer'})"
                          for op, layers in ops.items())
        super().__init__(
            f"the model needs TensorFlow (Flex) ops that stock LiteRT, MediaPipe and the GPU/NNAPI "
            f"delegates do not have: {where}. Replace those layers with ones made of builtin ops, "
            "or pass --allow-flex to accept a file that runs only with the Flex delegate")


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


def build_export_model(head_model, outputs: Sequence[str] = OUTPUTS):
    """Wrap a head submodel into ``image → {"logits", "probabilities"}`` (shares its layers).

    Args:
        head_model: ``image → logits``.
        outputs: which of ``logits``, ``probabilities`` the export model returns.
    """
    import keras

    logits = keras.layers.Identity(name="logits")(head_model.output)
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    tensors = {"logits": logits, "probabilities": probabilities}
    return keras.Model(head_model.input, {k: tensors[k] for k in outputs},
                       name=f"{head_model.name}_export")


def parse_outputs(value) -> tuple[str, ...]:
    """``--tflite-outputs`` → a validated tuple in the order of :data:`OUTPUTS`."""
    return parse_choices(value, OUTPUTS, "--tflite-outputs")


def to_builtin_layers(head_model):
    """The head with every custom layer of ours rewritten into Keras built-in layers.

    Models saved before the CIFAR ResNets used :func:`sila_keras.models.layers.pad_shortcut`
    hold the custom ``PadShortcut`` layer; plain Keras (a phone pipeline, a process that
    never imports sila_keras) cannot load it. The rewrite shares every other layer (and so
    the trained weights) and computes exactly the same function.
    """
    import keras

    from sila_keras.models.layers import PadShortcut, pad_shortcut

    if not any(isinstance(layer, PadShortcut) for layer in head_model._flatten_layers()):
        return head_model

    def call(layer, *args, **kwargs):
        if isinstance(layer, PadShortcut):
            return pad_shortcut(args[0], layer.filters, layer.strides, name=layer.name)
        return layer(*args, **kwargs)

    return keras.models.clone_model(head_model, clone_function=lambda layer: layer,
                                    call_function=call)


def custom_classes(keras_file: Path) -> list[str]:
    """Classes in a ``.keras`` file that plain Keras cannot load (registered custom objects).

    Reads the file's ``config.json``: a built-in object has a ``keras.*`` module and no
    ``package>Name`` registered name.
    """
    import json
    import zipfile

    with zipfile.ZipFile(keras_file) as zf:
        config = json.loads(zf.read("config.json"))
    found = set()

    def walk(node):
        if isinstance(node, dict):
            module, registered = node.get("module"), node.get("registered_name")
            if "class_name" in node and module is not None and (
                    not str(module).startswith("keras") or ">" in str(registered or "")):
                found.add(str(registered or node["class_name"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return sorted(found)


def input_spec(input_shape: Sequence[int]):
    """The serving input: ``image`` float32 ``(None, H, W, C)``."""
    import tensorflow as tf

    return tf.TensorSpec([None, *(int(d) for d in input_shape)], tf.float32, name=INPUT_NAME)


# --------------------------------------------------------------------------- writers


def write_keras(head_model, path: Path) -> None:
    """Save the head submodel (output: its logits) as a ``.keras`` file.

    Raises:
        RuntimeError: it holds custom classes (it would not load with plain Keras).
    """
    head_model.save(path)
    custom = custom_classes(path)
    if custom:
        raise RuntimeError(f"the head holds custom classes ({', '.join(custom)}) that plain "
                           "keras.saving.load_model cannot load; deployed heads must contain "
                           "only Keras built-in layers")


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
                 calibration: np.ndarray | None = None, *, int8_io: str = "uint8",
                 scheme: str = "int8", allow_flex: bool = False,
                 layer_names: Sequence[str] = ()) -> dict:
    """Convert the SavedModel's ``serving_default`` signature to a TFLite flatbuffer.

    Args:
        saved_model: folder written by :func:`write_savedmodel` (its signature's outputs
            become the TFLite outputs).
        path: the ``.tflite`` file to write.
        quantization: ``none``, ``float16``, ``dynamic`` or ``int8``.
        calibration: real images ``(n, H, W, C)`` (0–255), or ``{input name: array}`` for
            a model whose inputs are not images (:func:`representative_dataset`); required
            for ``int8``.
        int8_io: input/output type of the full-integer ``int8`` scheme: ``uint8`` (phones:
            MediaPipe takes uint8 or float32), ``int8`` or ``float32``.
        scheme: for ``int8``: ``int8`` (8-bit activations and weights) or ``int16x8``
            (16-bit activations, 8-bit weights; float32 input/output).
        allow_flex: accept a graph that needs Flex (TF) ops (SELECT_TF_OPS).
        layer_names: the model's layer names, to say which layer produced a Flex op.

    Returns:
        ``{"scheme", "flex_ops"}``: the quantization scheme written and the Flex ops used
        (``{op: [layers]}``, empty unless ``allow_flex``).

    Raises:
        ValueError: ``int8`` without calibration images, an unknown ``int8_io``/``scheme``.
        FlexOpsError: the graph needs Flex ops and ``allow_flex`` is False.
        RuntimeError: the full-integer input does not map raw pixels exactly.
    """
    if int8_io not in INT8_IO or scheme not in INT8_SCHEMES:
        raise ConfigError(f"int8_io must be one of {INT8_IO} and scheme one of {INT8_SCHEMES}. "
                         f"Received: int8_io={int8_io!r}, scheme={scheme!r}")
    if quantization == "int8" and (calibration is None or len(calibration) == 0):
        raise ConfigError("int8 quantization needs calibration images. Received: calibration=None")
    scheme = scheme if quantization == "int8" else quantization if quantization != "none" else "float32"
    flex: dict[str, list[str]] = {}
    try:
        flatbuffer = _convert(saved_model, quantization, calibration, int8_io, scheme, flex=False)
    except Exception as e:  # noqa: BLE001 - ConverterError; only Flex needs are diagnosed
        if "TF Select ops" not in str(e):
            raise
        flatbuffer = _convert(saved_model, quantization, calibration, int8_io, scheme, flex=True)
        flex = flex_ops(flatbuffer, layer_names)
        if not flex:
            raise
        if not allow_flex:
            raise FlexOpsError(flex) from None
    if scheme == "int8" and int8_io in EXACT_PIXEL_QUANTIZATION:
        check_pixel_quantization(flatbuffer, int8_io)
    path.write_bytes(flatbuffer)
    return {"scheme": scheme, "flex_ops": flex}


def _convert(saved_model, quantization, calibration, int8_io, scheme, flex: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops unless asked
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration)
        if scheme == "int16x8":
            ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        else:
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[int8_io]
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    converter.target_spec.supported_ops = ops + ([tf.lite.OpsSet.SELECT_TF_OPS] if flex else [])
    with warnings.catch_warnings():  # int8 calibration runs the deprecated tf.lite.Interpreter
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()


def representative_dataset(calibration):
    """The converter's ``representative_dataset``: one sample per call, by input name.

    ``calibration`` is either raw-pixel images (fed as ``image``, with the full pixel range:
    :func:`calibration_with_pixel_range`) or ``{input name: array}`` with one row per sample
    and the same number of rows for every input (a model whose inputs are not images, such
    as a later segment of the early-exit cascade), fed as given in float32.
    """
    if isinstance(calibration, Mapping):
        feeds = {str(k): np.asarray(v, np.float32) for k, v in calibration.items()}
    else:
        feeds = {INPUT_NAME: calibration_with_pixel_range(calibration)}
    count = min(len(v) for v in feeds.values())

    def representative():
        for i in range(count):
            yield {k: v[i:i + 1] for k, v in feeds.items()}

    return representative


def calibration_with_pixel_range(calibration) -> np.ndarray:
    """The calibration images (float32) with one pixel set to 0 and one to 255.

    The converter sets the input quantization from the range seen in calibration; a set
    whose darkest pixel is 3 or brightest 250 would give a uint8 input with scale ≠ 1,
    which a phone client (that feeds raw camera pixels) would silently misread. With the
    full range present the input maps raw pixels exactly: scale 1, zero point 0 (uint8)
    or −128 (int8). Two pixels of one image barely change the other ranges.
    """
    images = np.array(calibration, dtype=np.float32, copy=True)
    images[0, 0, 0, :] = 0.0
    images[0, 0, -1, :] = 255.0
    return images


def check_pixel_quantization(flatbuffer: bytes, int8_io: str) -> None:
    """Check the full-integer input maps raw 0–255 pixels exactly (see :data:`EXACT_PIXEL_QUANTIZATION`).

    Raises:
        RuntimeError: another scale or zero point.
    """
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=flatbuffer).get_input_details()[0]
    scale, zero_point = details["quantization"]
    want = EXACT_PIXEL_QUANTIZATION[int8_io]
    if abs(scale - want[0]) > 1e-6 or zero_point != want[1]:
        raise RuntimeError(f"the {int8_io} input got scale {scale:g} / zero point {zero_point}, "
                           f"not {want[0]:g} / {want[1]}: raw pixels would not map exactly")


def flex_ops(flatbuffer: bytes, layer_names: Sequence[str] = ()) -> dict[str, list[str]]:
    """The Flex ops of a ``.tflite`` flatbuffer → the layers whose outputs they compute.

    A Flex op is a custom op named ``Flex<TFOp>``; the layer is read from the names of
    its output tensors (``functional/<layer>_1/Cumprod``).
    """
    from tensorflow.lite.python import schema_py_generated as fb

    model = fb.Model.GetRootAs(flatbuffer, 0)
    codes = {}
    for i in range(model.OperatorCodesLength()):
        custom = model.OperatorCodes(i).CustomCode()
        if custom and custom.decode().startswith("Flex"):
            codes[i] = custom.decode()
    known = set(layer_names)
    found: dict[str, list[str]] = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for j in range(graph.OperatorsLength()):
            op = graph.Operators(j)
            if op.OpcodeIndex() not in codes:
                continue
            layers = found.setdefault(codes[op.OpcodeIndex()], [])
            for k in range(op.OutputsLength()):
                layer = layer_of(graph.Tensors(op.Outputs(k)).Name().decode(), known)
                if layer not in layers:
                    layers.append(layer)
    return found


def layer_of(tensor_name: str, layer_names) -> str:
    """The Keras layer that produced a TFLite tensor, read from its name
    (``functional/<layer>_1/Cumprod``), or the tensor name when none matches."""
    import re

    known = set(layer_names)
    parts = [p for part in tensor_name.split(";") for p in part.split("/")]
    # the exported graph names a layer's scope '<layer>_1': strip that suffix first, so that
    # 'activation_1/mul' is layer 'activation', not a layer named 'activation_1'
    hits = [re.sub(r"_\d+$", "", p) for p in parts if re.sub(r"_\d+$", "", p) in known] or \
           [p for p in parts if p in known]
    return hits[0] if hits else tensor_name


def gpu_compatibility(path: Path) -> dict:
    """LiteRT's GPU-delegate verdict for a ``.tflite`` file.

    Runs ``tf.lite.experimental.Analyzer.analyze(model_path, gpu_compatibility=True)`` and
    keeps its verdict line and any ``GPU COMPATIBILITY WARNING`` lines.

    Returns:
        ``{"compatible": bool, "verdict": str, "warnings": [...], "tool": ...}``.
    """
    import contextlib
    import io

    import tensorflow as tf

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf.lite.experimental.Analyzer.analyze(model_path=str(path), gpu_compatibility=True)
    lines = [ln.strip() for ln in buf.getvalue().splitlines()]
    ok = [ln for ln in lines if "looks compatible with GPU delegate" in ln]
    warns = [ln for ln in lines if "GPU COMPATIBILITY WARNING" in ln or "not supported by GPU" in ln]
    verdict = ok[0] if ok else next((ln for ln in lines if "GPU" in ln and "compatib" in ln),
                                    "no GPU verdict printed")
    return {"compatible": bool(ok) and not warns, "verdict": verdict, "warnings": warns[:20],
            "tool": "tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)"}


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
