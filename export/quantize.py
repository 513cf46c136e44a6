"""Full-integer TFLite files that pass the int8 gate and run fast on a phone's CPU.

The model is calibrated **once** (the converter's calibration pass over the class-balanced
calibration images, ``_experimental_calibrate_only``); every candidate is then quantized
from that calibrated model with TensorFlow's own MLIR quantizer
(``tensorflow.lite.python.convert.mlir_quantize``, what ``TFLiteConverter.convert()`` runs for
full-integer models and what ``tf.lite.experimental.QuantizationDebugger`` runs with its
``denylisted_ops`` / ``denylisted_nodes``), so a candidate costs seconds, not a conversion.
Candidates, in order, each judged by the int8 gate (:mod:`export.gate`) on labelled
held-out images:

1. **int8**: every op integer, uint8 input/output (raw pixels, scale 1, zero point 0).
2. **XNNPACK**: when LiteRT's default CPU delegate splits the int8 graph into several
   pieces (the ops between them run on slow reference kernels), the op types that split it
   are found by denylisting one op type at a time and counting ``DELEGATE`` nodes
   (:func:`export.latency.delegate_pieces`); keeping those ops in float (XNNPACK runs float
   ops too) joins the graph again. For ``keras:MobileNetV3Small`` it is ``HARD_SWISH``.
3. **selective**: when the gate still fails, each layer's quantization error is measured
   with ``tf.lite.experimental.QuantizationDebugger`` on calibration images (noise-to-signal
   ratio of the layer's int8 output against its float output, both from the same int8
   input), and the layers with the largest error are kept in float: the fewest of that
   ranking that pass the gate (doubling, then bisection), at most
   :data:`MAX_FLOAT_MAC_SHARE` of the model's multiply-accumulates.
4. **int16x8** (16-bit activations, 8-bit weights, float32 input/output): the last
   resort, only for graphs whose ops it supports; LiteRT runs it on reference kernels.

Every attempt is recorded (gate figures, float layers and their share of the MACs,
XNNPACK pieces, size), and which layers of the shipped file compute in float.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from export import artifacts as art
from export import gate, latency

MAX_FLOAT_MAC_SHARE = 0.5  # beyond half the compute in float, an "int8" file is not one
DEBUG_IMAGES = 32          # calibration images the layer-error measurement runs
QUANTIZE_OPS = ("QUANTIZE", "DEQUANTIZE")  # inserted between integer and float ops
SCHEMES = ("int8", "int8-selective", "int16x8")


class GraphNeedsFlex(RuntimeError):
    """The calibration conversion needs Flex ops (handled by the plain converter path)."""


# --------------------------------------------------------------------------- conversions


@contextlib.contextmanager
def _quiet_native():
    """Silence what the converter's native code prints on file descriptors 1 and 2."""
    saved = []
    try:
        for fd in (1, 2):
            try:
                stream = sys.stdout if fd == 1 else sys.stderr
                stream.flush()
                saved.append((fd, os.dup(fd)))
            except (OSError, ValueError, AttributeError):
                continue
        with open(os.devnull, "w") as null:
            for fd, _ in saved:
                os.dup2(null.fileno(), fd)
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def calibrate(saved_model: Path, calibration) -> bytes:
    """The float TFLite model with activation ranges from ``calibration`` (one pass): raw-pixel
    images, or ``{input name: array}`` for a model whose inputs are not images
    (:func:`export.artifacts.representative_dataset`).

    Raises:
        GraphNeedsFlex: the graph needs Flex (TF) ops.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                         signature_keys=[art.SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = art.representative_dataset(calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # what QuantizationDebugger sets
    try:
        with warnings.catch_warnings(), _quiet_native():
            warnings.simplefilter("ignore", UserWarning)
            return converter.convert()
    except Exception as e:  # noqa: BLE001 - ConverterError
        if "TF Select ops" in str(e):
            raise GraphNeedsFlex(str(e)) from None
        raise


def quantize(calibrated: bytes, int8_io: str = "uint8", ops: Sequence[str] = (),
             nodes: Sequence[str] = (), *, debug: bool = False,
             output_io: str | None = None) -> bytes:
    """Quantize the calibrated model, keeping op types ``ops`` and the ops writing the tensors
    ``nodes`` in float (``debug``: with NumericVerify ops, for the layer errors).

    ``int8_io`` is the type of the inputs, ``output_io`` of the outputs (default: ``int8_io``).

    Raises:
        RuntimeError: the full-integer input does not map raw pixels exactly.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert

    types = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}
    in_type, out_type = types[int8_io], types[output_io or int8_io]
    if debug:
        in_type = out_type = tf.float32
    with _quiet_native():
        model = convert.mlir_quantize(calibrated, input_data_type=in_type, output_data_type=out_type,
                                      enable_numeric_verify=debug, denylisted_ops=list(ops) or None,
                                      denylisted_nodes=list(nodes) or None)
    if not debug and int8_io in art.EXACT_PIXEL_QUANTIZATION:
        art.check_pixel_quantization(model, int8_io)
    return model


# --------------------------------------------------------------------------- the graph


def graph_ops(model: bytes) -> list[dict]:
    """The ops of a TFLite model: ``op``, ``output`` (tensor name), ``macs``, ``float``.

    MACs: CONV_2D ``H·W·Cout·kh·kw·Cin``; DEPTHWISE_CONV_2D ``H·W·C·kh·kw``; FULLY_CONNECTED
    ``rows·out·in``; TRANSPOSE_CONV ``h·w·Cin·kh·kw·Cout``; any other op one per output
    element (pooling and MEAN one per input element). ``float``: the op computes in float32
    (a float32 output that is not a DEQUANTIZE).
    """
    it = latency.interpreter(model, delegates=False, threads=1)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        name = op["op_name"]
        outs = [tensors[i] for i in op["outputs"] if i >= 0]
        ins = [tensors[i] for i in op["inputs"] if i >= 0]
        if not outs:
            continue
        shape = [int(d) for d in outs[0]["shape"]]
        size = int(np.prod(shape)) if shape else 1
        w = [int(d) for d in ins[1]["shape"]] if len(ins) > 1 else []
        if name == "CONV_2D" and len(w) == 4 and len(shape) == 4:
            macs = size * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D" and len(w) == 4:
            macs = size * w[1] * w[2]
        elif name == "FULLY_CONNECTED" and len(w) == 2:
            macs = size * w[1]
        elif name == "TRANSPOSE_CONV" and len(ins) > 2:
            x = [int(d) for d in ins[2]["shape"]]
            macs = int(np.prod(x)) * w[1] * w[2] * w[0] if len(w) == 4 else size
        elif name in ("MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D", "SUM") and ins:
            macs = int(np.prod([int(d) for d in ins[0]["shape"]]))
        else:
            macs = size
        is_float = np.dtype(outs[0]["dtype"]) == np.float32 and name != "DEQUANTIZE"
        out.append({"op": name, "output": outs[0]["name"], "macs": int(macs), "float": bool(is_float)})
    return out


def float_summary(model: bytes, layer_names: Sequence[str] = ()) -> dict:
    """Which ops of ``model`` compute in float: ``float_layers`` and their ``float_mac_share``."""
    ops = [o for o in graph_ops(model) if o["op"] not in QUANTIZE_OPS]
    total = sum(o["macs"] for o in ops) or 1
    floats = [o for o in ops if o["float"]]
    return {"float_layers": [{"layer": art.layer_of(o["output"], layer_names), "op": o["op"],
                              "macs": o["macs"]} for o in floats],
            "float_mac_share": round(sum(o["macs"] for o in floats) / total, 4),
            "macs": int(total)}


def splitting_ops(calibrated: bytes, int8_io: str, base: bytes, target: int = 1,
                  say=None, output_io: str | None = None) -> tuple[list[str], list[dict]]:
    """The op types that make XNNPACK split the integer graph, found by denylisting.

    Greedy: each round keeps in float the one op type whose float copy leaves the fewest
    ``DELEGATE`` pieces (ties: the one with the fewest MACs), until ``target`` pieces (the
    float graph's) are left or no op type helps. Returns the op types and the trials.
    """
    pieces = latency.delegate_pieces(base)
    chosen: list[str] = []
    trials = []
    while pieces > target:
        kinds = {}
        for o in graph_ops(base):
            if o["op"] not in QUANTIZE_OPS and not o["float"]:
                kinds[o["op"]] = kinds.get(o["op"], 0) + o["macs"]
        best = None
        for kind in sorted(kinds, key=kinds.get):
            n = latency.delegate_pieces(quantize(calibrated, int8_io, [*chosen, kind],
                                                 output_io=output_io))
            trials.append({"float_ops": [*chosen, kind], "delegate_pieces": n})
            if best is None or n < best[1]:
                best = (kind, n)
            if n <= target:
                break
        if best is None or best[1] >= pieces:
            break
        chosen.append(best[0])
        pieces = best[1]
        base = quantize(calibrated, int8_io, chosen, output_io=output_io)
        if say:
            say(f"    XNNPACK: {best[0]} in float → {pieces} delegate piece(s)")
    return chosen, trials


def layer_errors(calibrated: bytes, images, ops: Sequence[str] = ()) -> list[dict]:
    """Each quantized layer's error, measured with ``tf.lite.experimental.QuantizationDebugger``.

    For every op output the debugger compares the int8 result with the float result of the
    same op from the same (int8) input. ``nsr`` is the noise-to-signal ratio
    ``rmse(int8 − float) / std(float)``, averaged over ``images`` (raw-pixel images, or
    ``{input name: array}``); ``rmse_scale`` is ``rmse / scale`` (about 0.29 for pure
    rounding). Sorted worst first.
    """
    import tensorflow as tf

    def nsr(float_values, quant_values, scale, zero_point):
        f = np.asarray(float_values, np.float64)
        q = (np.asarray(quant_values, np.float64) - zero_point) * scale
        return float(np.sqrt(np.mean((q - f) ** 2)) / (np.std(f) + 1e-12))

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"nsr": nsr})
    debug_model = quantize(calibrated, "float32", ops, debug=True)
    inputs = _inputs_in_order(debug_model, images)  # the debugger feeds a list, in that order

    def dataset():
        for i in range(len(inputs[0])):
            yield [x[i:i + 1] for x in inputs]
    with warnings.catch_warnings(), _quiet_native():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=dataset, debug_options=options)
        debugger.run()
        buf = io.StringIO()
        debugger.layer_statistics_dump(buf)
    import csv

    rows = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"] or 0) or 1e-12
        rows.append({"tensor": row["tensor_name"], "op": row["op_name"], "nsr": float(row["nsr"]),
                     "rmse_scale": float(np.sqrt(float(row["mean_squared_error"]))) / scale})
    rows.sort(key=lambda r: -r["nsr"] if np.isfinite(r["nsr"]) else 0.0)
    return rows


def _inputs_in_order(model: bytes, images) -> list[np.ndarray]:
    """The inputs as a list in the order of the model's input tensors: ``[images]``, or the
    arrays of ``{signature input name: array}`` in that order."""
    if not isinstance(images, Mapping):
        return [np.asarray(images, np.float32)]
    it = latency.interpreter(model, delegates=False, threads=1)
    index = {d["index"]: name for name, d in
             it.get_signature_runner(art.SIGNATURE).get_input_details().items()}
    return [np.asarray(images[index[d["index"]]], np.float32) for d in it.get_input_details()]


def take(calibration, n: int):
    """The first ``n`` samples of raw-pixel images or of ``{input name: array}``."""
    if isinstance(calibration, Mapping):
        return {k: v[:n] for k, v in calibration.items()}
    return calibration[:n]


def count(calibration) -> int:
    """How many samples raw-pixel images or ``{input name: array}`` hold."""
    if isinstance(calibration, Mapping):
        return min(len(v) for v in calibration.values())
    return len(calibration)


# --------------------------------------------------------------------------- the search


class Search:
    """Try candidates, judge each with the gate, remember every attempt."""

    def __init__(self, calibrated, int8_io, evaluate: Callable[[bytes], dict], layer_names, say,
                 output_io: str | None = None):
        self.calibrated, self.int8_io, self.evaluate = calibrated, int8_io, evaluate
        self.output_io = output_io
        self.layer_names, self.say = layer_names, say
        self.attempts: list[dict] = []

    def run(self, name: str, scheme: str, ops=(), nodes=(), model: bytes | None = None) -> dict:
        t0 = time.perf_counter()
        model = model if model is not None else quantize(self.calibrated, self.int8_io, ops, nodes,
                                                         output_io=self.output_io)
        summary = float_summary(model, self.layer_names)
        figures = self.evaluate(model)
        attempt = {"name": name, "scheme": scheme, "float_ops": list(ops), "float_nodes": len(nodes),
                   "float_layers": [f["layer"] for f in summary["float_layers"]],
                   "float_mac_share": summary["float_mac_share"],
                   "delegate_pieces": latency.delegate_pieces(model), "size_bytes": len(model),
                   "gate": figures, "passed": bool(figures["passed"]),
                   "seconds": round(time.perf_counter() - t0, 2)}
        self.attempts.append(attempt)
        if self.say:
            drop = figures.get("accuracy_drop")
            self.say(f"    {name}: " + ("passes" if attempt["passed"] else "fails") + " the gate"
                     + (f" (accuracy drop {drop:.1f} points" if drop is not None else " (")
                     + f", {attempt['delegate_pieces']} XNNPACK piece(s), "
                       f"{100 * summary['float_mac_share']:.1f}% of MACs in float)")
        return {"model": model, "attempt": attempt, "summary": summary}


def selective(search: Search, base_ops: Sequence[str], ranking: Sequence[dict],
              max_share: float = MAX_FLOAT_MAC_SHARE) -> dict | None:
    """The fewest top-ranked layers in float that pass the gate (doubling, then bisection)."""
    tensors = [r["tensor"] for r in ranking]
    if not tensors:
        return None
    tried: dict[int, dict] = {}

    def attempt(k):
        if k not in tried:
            tried[k] = search.run(f"selective: {k} layer(s) in float", "int8-selective",
                                  base_ops, tensors[:k])
        return tried[k]

    k, passing = 1, None
    while True:
        result = attempt(k)
        if result["summary"]["float_mac_share"] > max_share:
            result["attempt"]["note"] = f"over {max_share:.0%} of MACs in float: stopped"
            break
        if result["attempt"]["passed"]:
            passing = k
            break
        if k >= len(tensors):
            break
        k = min(2 * k, len(tensors))
    if passing is None:
        return None
    lo, hi = passing // 2, passing  # lo fails (or is 0), hi passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid)["attempt"]["passed"]:
            hi = mid
        else:
            lo = mid
    return tried[hi]


# --------------------------------------------------------------------------- the whole path


def evaluator(images: np.ndarray, labels: np.ndarray | None, reference: np.ndarray,
              tolerances, workdir: Path) -> Callable[[bytes], dict]:
    """``model bytes → gate figures`` on the held-out images, run in LiteRT as shipped."""
    from export.runtimes import LiteRTRunner

    path = Path(workdir) / "_int8_candidate.tflite"

    def evaluate(model: bytes) -> dict:
        path.write_bytes(model)
        runner = LiteRTRunner(path)
        outputs = runner.predict(images)
        ref = reference if runner.output == "logits" else gate.softmax(reference)
        return gate.judge(ref, outputs, labels, tolerances, runner.output)

    return evaluate


def full_integer(saved_model: Path, calibration, held_out: dict | None, *, tolerances,
                 int8_io: str, layer_names: Sequence[str] = (), workdir: Path,
                 say: Callable[[str], None] | None = None, output_io: str | None = None,
                 evaluate: Callable[[bytes], dict] | None = None) -> dict | None:
    """Find the int8 file to ship: plain int8, the XNNPACK fix, selective, then int16x8.

    Args:
        saved_model: the SavedModel the TFLite files are converted from.
        calibration: class-balanced training images ``(n, H, W, C)``, 0–255, or
            ``{input name: array}`` for a model whose inputs are not images.
        held_out: ``{"images", "labels", "reference"}``: labelled held-out images and the
            float head's logits on them (the gate's data); None with ``evaluate``.
        tolerances: the gate's ``int8`` and ``int8-drop``.
        int8_io: ``uint8``, ``int8`` or ``float32`` input (and output, unless ``output_io``).
        layer_names: the head's layer names (to name the float layers).
        workdir: a scratch folder.
        say: progress printer.
        output_io: the outputs' type when it differs from the input's.
        evaluate: ``model bytes → gate figures`` (:func:`export.gate.judge`) instead of the
            image → logits evaluation of ``held_out`` (a model with other inputs or outputs).

    Returns:
        None when the graph needs Flex ops (the plain converter handles it); else
        ``{"model": bytes or None, "scheme", "record", "error": None or why none passed}``.
    """
    try:
        calibrated = calibrate(saved_model, calibration)
    except GraphNeedsFlex:
        return None
    if evaluate is None:
        evaluate = evaluator(held_out["images"], held_out["labels"], held_out["reference"],
                             tolerances, workdir)
    search = Search(calibrated, int8_io, evaluate, layer_names, say, output_io)
    best = search.run("int8", "int8")
    plain_pieces = best["attempt"]["delegate_pieces"]
    float_pieces = latency.delegate_pieces(calibrated)  # the float graph, as XNNPACK takes it
    record: dict = {"calibration_images": count(calibration),
                    "xnnpack": {"int8_pieces": plain_pieces, "float32_pieces": float_pieces}}
    if held_out is not None:
        record["held_out_images"] = int(len(held_out["images"]))
    base_ops: list[str] = []
    if plain_pieces > float_pieces:
        base_ops, trials = splitting_ops(calibrated, int8_io, best["model"], float_pieces, say,
                                         output_io)
        record["xnnpack"].update(split_by=base_ops, trials=trials)
        if base_ops:
            fixed = search.run(f"int8, {', '.join(base_ops)} in float (XNNPACK)", "int8-selective",
                               base_ops)
            # the faster graph wins when it passes, or when the plain one failed too
            if fixed["attempt"]["passed"] or not best["attempt"]["passed"]:
                best = fixed
    if not best["attempt"]["passed"]:
        already = {o["output"] for o in graph_ops(best["model"]) if o["float"]}
        ranking = [r for r in layer_errors(calibrated, take(calibration, DEBUG_IMAGES), base_ops)
                   if r["tensor"] not in already]
        record["layer_errors"] = [{**r, "layer": art.layer_of(r["tensor"], layer_names)}
                                  for r in ranking[:10]]
        found = selective(search, base_ops, ranking)
        if found is not None:
            best = found
    if not best["attempt"]["passed"]:
        int16 = _int16x8(saved_model, calibration, workdir)
        if isinstance(int16, bytes):
            result = search.run("int16x8", "int16x8", model=int16)
            if result["attempt"]["passed"]:
                best = result
        else:
            search.attempts.append({"name": "int16x8", "scheme": "int16x8", "passed": False,
                                    "skipped": int16})
            if say:
                say(f"    int16x8: not built ({int16})")
    record["attempts"] = search.attempts
    shipped = best["attempt"]
    record["shipped"] = shipped["name"] if shipped["passed"] else None
    if not shipped["passed"]:
        return {"model": None, "scheme": None, "record": record, "error": _no_scheme(search.attempts)}
    scheme = shipped["scheme"]
    if scheme != "int16x8":
        scheme = "int8-selective" if best["summary"]["float_layers"] else "int8"
    return {"model": best["model"], "scheme": scheme, "summary": best["summary"], "record": record,
            "error": None}


def _int16x8(saved_model: Path, calibration, workdir: Path) -> bytes | str:
    """The int16x8 file, or why the converter cannot build it for this graph."""
    path = Path(tempfile.mkdtemp(dir=workdir)) / "int16x8.tflite"
    try:
        with _quiet_native():
            art.write_tflite(saved_model, path, "int8", calibration, scheme="int16x8")
    except Exception as e:  # noqa: BLE001 - e.g. "16x8-bit not yet supported for op: 'HARD_SWISH'"
        text = " ".join(str(e).split())
        hit = text.find("not yet supported for op")
        return (text[max(0, hit - 30):hit + 60].strip() if hit >= 0 else text[:200]) or type(e).__name__
    return path.read_bytes()


def _no_scheme(attempts: list[dict]) -> str:
    """One line: why no candidate passed."""
    parts = []
    for a in attempts:
        if a.get("skipped"):
            parts.append(f"{a['name']}: not built ({a['skipped']})")
        elif a["name"] in ("int8", "int16x8") or a is attempts[-1] or "XNNPACK" in a["name"]:
            why = "; ".join(a["gate"]["reasons"]) or "failed"
            parts.append(f"{a['name']} ({100 * a['float_mac_share']:.0f}% of MACs in float): {why}")
    selective_tries = [a for a in attempts if a["scheme"] == "int8-selective" and "XNNPACK" not in a["name"]]
    if selective_tries:
        parts.append(f"{len(selective_tries)} selective attempt(s), up to "
                     f"{100 * max(a['float_mac_share'] for a in selective_tries):.0f}% of MACs in float "
                     f"(limit {MAX_FLOAT_MAC_SHARE:.0%})")
    return "no int8 scheme passed the gate: " + " | ".join(parts)
