"""int8 segments of the early-exit cascade (``python -m export RUN --cascade --quantize int8``).

Each segment is found by the single-head int8 search (:func:`export.quantize.full_integer`:
plain int8, the XNNPACK fix, selective int8, int16x8 last), calibrated on **its own inputs**:
segment 1 on the calibration images the single-head int8 export takes, segment k > 1 on the
``features_*`` the float segments before it produce on those images. Each candidate is judged
by the int8 gate (:mod:`export.gate`) on its head's probabilities, fed the float segments'
features of the run's test images. Then the whole int8 chain, run in LiteRT with the float
cascade's thresholds, is judged by the same gate against the float Keras cascade on those test
images (:func:`chain_gate`): a chain that fails it is refused, nothing is written.

The tensors between segments stay simple (:func:`io_note`): segment 1's ``image`` input is
what the single head's ``model_int8.tflite`` takes (``--int8-io``, default uint8 raw pixels,
scale 1, zero point 0); every other input and every output (``features_*``,
``probabilities``) is float32. A segment quantizes its float inputs and dequantizes its
outputs inside (QUANTIZE / DEQUANTIZE ops, cheap next to its convolutions), so an app passes
one segment's features to the next unchanged and reads the probabilities as floats.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from export import gate, quantize
from export.cascade import IMAGE, PROBABILITIES, feature_name
from export.cascade_runner import SegmentFile
from sila_keras.utils.errors import ConfigError, RunFailed

SEGMENT_IO = "float32"  # every segment output, and the inputs of segments k > 1
BATCH = 32  # images per LiteRT call when a candidate segment is judged
HEADS_NOTE = ("each head alone as an int8 file for timing only: calibrated on the same images, "
              "plain int8 with the op types the segments keep in float (not searched, not gated)")


def io_note(int8_io: str) -> str:
    """The segment boundaries' types, in words (the manifest's ``io``)."""
    image = {"uint8": "uint8 raw pixels (scale 1, zero point 0)",
             "int8": "int8 raw pixels (scale 1, zero point -128)",
             "float32": "float32 raw pixels 0-255"}[int8_io]
    return (f"int8 segments: segment 1's image input is {image}, as model_int8.tflite of the "
            "single-head export; every other input and every output (features_*, probabilities) "
            "is float32, quantized and dequantized inside each segment")


@dataclasses.dataclass(frozen=True)
class Int8Data:
    """What int8 segments are calibrated and judged on.

    Attributes:
        calibration: raw-pixel calibration images ``(n, H, W, C)`` (those of the single-head
            int8 export: ``--calibration`` or the run's training data).
        images: labelled test images ``(m, H, W, C)``: each segment's gate and the chain's.
        labels: their labels ``(m,)``.
        tolerances: the gate's ``int8`` and ``int8-drop`` (:data:`export.parity.DEFAULT_TOLERANCES`
            updated with these).
        int8_io: segment 1's image input type: ``uint8``, ``int8`` or ``float32``.
    """

    calibration: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    tolerances: Mapping[str, float] | None = None
    int8_io: str = "uint8"

    def __post_init__(self):
        from export import parity

        object.__setattr__(self, "tolerances", parity.resolve_tolerances(self.tolerances))
        object.__setattr__(self, "labels", np.asarray(self.labels).reshape(-1))


def float_inputs(segments: Sequence, images: np.ndarray, batch_size: int = 64
                 ) -> tuple[list[dict], list[np.ndarray]]:
    """What each float Keras segment takes on ``images`` (``{input name: array}``, cascade
    order) and the probabilities it returns."""
    feeds, probs = [{IMAGE: np.asarray(images, np.float32)}], []
    for i, seg in enumerate(segments):
        out = seg.predict(list(feeds[-1].values()), batch_size=batch_size, verbose=0)
        out = out if isinstance(out, (list, tuple)) else [out]
        probs.append(np.asarray(out[0]))
        if i < len(segments) - 1:
            feeds.append({feature_name(j): np.asarray(o) for j, o in enumerate(out[1:])})
    return feeds, probs


def evaluator(feeds: dict, reference: np.ndarray, labels: np.ndarray, tolerances):
    """``model bytes → gate figures``: the candidate segment run in LiteRT on its float
    inputs ``feeds``, its probabilities judged against the float segment's ``reference``."""
    n = len(reference)

    def evaluate(model: bytes) -> dict:
        seg = SegmentFile(model)
        probs = np.concatenate([seg({k: v[i:i + BATCH] for k, v in feeds.items()})[PROBABILITIES]
                                for i in range(0, n, BATCH)])
        return gate.judge(reference, probs, labels, tolerances, "probabilities")

    return evaluate


def converters(segments: Sequence, order: Sequence[int], data: Int8Data, say=None) -> list:
    """One ``convert(saved_model, path, layer_names)`` per segment (for
    :func:`export.cascade._write_segment`): the int8 search on the segment's own inputs."""
    cal_feeds, _ = float_inputs(segments, data.calibration)
    test_feeds, test_probs = float_inputs(segments, data.images)
    out = []
    for k, head in enumerate(order, start=1):
        calibration = data.calibration if k == 1 else cal_feeds[k - 1]
        evaluate = evaluator(test_feeds[k - 1], test_probs[k - 1], data.labels, data.tolerances)
        out.append(_converter(k, int(head), calibration, evaluate, data, say))
    return out


def _converter(k: int, head: int, calibration, evaluate, data: Int8Data, say):
    def convert(saved_model: Path, path: Path, layer_names: Sequence[str]) -> dict:
        if say:
            say(f"Segment {k} (head_{head}): int8 search, calibrated on its own inputs")
        with tempfile.TemporaryDirectory(prefix="sila-int8-") as scratch:
            found = quantize.full_integer(
                saved_model, calibration, None, tolerances=data.tolerances,
                int8_io=data.int8_io if k == 1 else SEGMENT_IO, output_io=SEGMENT_IO,
                layer_names=layer_names, workdir=Path(scratch), say=say, evaluate=evaluate)
        if found is None:
            raise ConfigError(
                "int8 segments are built from builtin TFLite ops only, and this segment needs "
                "Flex (TF) ops. Export float32 segments (drop --quantize int8). "
                f"Received: segment {k} (head_{head})")
        if found["error"]:
            raise RunFailed(
                f"Every int8 segment must pass the int8 gate on its head's probabilities; "
                f"segment {k} (head_{head}) does not on {len(data.labels)} test images "
                f"({found['error']}). Export float32 segments (drop --quantize int8) or relax "
                f"--tolerance int8-drop=/int8=. Received: {_received(data)}")
        path.write_bytes(found["model"])
        record = found["record"]
        shipped = next(a for a in record["attempts"] if a["name"] == record["shipped"])
        return {"quantization": "int8", "scheme": found["scheme"],
                "float_ops": shipped["float_ops"],
                "float_layers": found["summary"]["float_layers"],
                "float_mac_share": found["summary"]["float_mac_share"],
                "gate": shipped["gate"], "search": record}

    return convert


def chain_gate(runner, model, data: Int8Data) -> dict:
    """The int8 chain in LiteRT (``runner``, the float cascade's thresholds) against the float
    Keras cascade on the labelled test images: the int8 gate (:func:`export.gate.judge`) on the
    probabilities each image exits with, plus ``agreement`` (same class) and ``same_exit``.

    ``float_accuracy`` / ``int8_accuracy`` are the Top-1 of the float Keras cascade and of the
    int8 chain (a tie at the top counts ``1/k``), ``accuracy_drop`` their difference in points.
    """
    from sila_keras.reports.cascade_eval import head_probs
    from sila_keras.reports.cascade_routing import route

    images = data.images
    probs = head_probs(model, images, runner.manifest["order"])
    k_pred, k_step = route(probs, runner.thresholds, runner.confidence)
    float_exit = np.stack(probs, 1)[np.arange(len(images)), k_step]
    got = [runner.classify(x) for x in images]
    l_pred = np.array([g[0] for g in got])
    l_step = np.array([g[1] for g in got])
    int8_exit = np.stack([g[2] for g in got])
    figures = gate.judge(float_exit, int8_exit, data.labels, data.tolerances, "probabilities")
    return {"images": int(len(images)), "agreement": float(np.mean(k_pred == l_pred)),
            "same_exit": float(np.mean(k_step == l_step)),
            "tolerances": {k: data.tolerances[k] for k in ("int8", "int8-drop")}, **figures}


def refuse_unless_passed(figures: dict, data: Int8Data) -> None:
    """Refuse an int8 chain that fails the gate (one line).

    Raises:
        RunFailed: the chain fails the gate (exit 3, as a single head's int8 file that fails
        it: an artifact failed, the input was fine).
    """
    if figures["passed"]:
        return
    raise RunFailed(
        f"int8 segments must keep the cascade within the int8 gate ({figures['criterion']}); "
        f"on {figures['images']} test images the int8 chain does not: "
        f"{'; '.join(figures['reasons'])} (agrees with the float cascade on "
        f"{figures['agreement']:.1%}). Export float32 segments (drop --quantize int8) or relax "
        f"--tolerance int8-drop=/int8=. Received: {_received(data)}")


def head_converter(manifest: dict, data: Int8Data):
    """``convert`` for each head alone (timing only, see :data:`HEADS_NOTE`)."""
    ops = sorted({op for seg in manifest["segments"] for op in seg.get("float_ops", [])})

    def convert(saved_model: Path, path: Path, layer_names: Sequence[str]) -> dict:
        calibrated = quantize.calibrate(saved_model, data.calibration)
        path.write_bytes(quantize.quantize(calibrated, data.int8_io, ops, output_io=SEGMENT_IO))
        return {"quantization": "int8", "float_ops": ops}

    return convert


def _received(data: Int8Data) -> str:
    return (f"--tolerance int8-drop={data.tolerances['int8-drop']:g},"
            f"int8={data.tolerances['int8']:g}")
