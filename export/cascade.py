"""The early-exit cascade on the phone: one TFLite model per segment, chained by a runner.

``python -m sila_keras.cascade RUN`` chose the cascade (heads cheapest first, per-head
thresholds, :mod:`sila_keras.reports.cascade_routing`); ``python -m export RUN --cascade`` ships it:

* **segments**: segment k maps the image (k = 1) or the previous segment's features to
  head k's ``probabilities`` plus ``features_<i>``, the tensors later segments need (the
  taps between them; for a plain trunk one tensor). Cut where the heads attach, found from
  the model's graph (:func:`segment_boundaries`), re-using the trained layers.
* each segment is a builtin-ops TFLite file (``segment_<k>.tflite``, checked: no Flex ops);
  the first carries the phone metadata of the single-head export (RGB input, normalization,
  labels) with its extra ``features_*`` outputs described;
* ``cascade_manifest.json``: the order, thresholds, confidence, and each segment's inputs and
  outputs (the wiring, with each tensor's dtype);
  :class:`export.cascade_runner.CascadeRunner` runs it in LiteRT, image by image, as an app
  would, and its predictions are checked against the Keras cascade on real images;
* each segment is timed in LiteRT and the run's ``cascade.json/csv/png`` gain mean latency.

``--quantize int8`` writes full-integer segments instead (:mod:`export.cascade_int8`): each
found by the single-head int8 search and gate, the chain judged end to end by the int8 gate.
Everything is written into a hidden folder beside the output folder and moved into place
only once checked, so a failed or refused export leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export import metadata as md
from sila_keras.utils.errors import ConfigError

MANIFEST = "cascade_manifest.json"
OUT_FOLDER = "cascade"  # under the run's export folder
OUT_FOLDER_INT8 = "cascade_int8"  # int8 segments: beside the float32 ones
QUANTIZATIONS = ("none", "int8")  # what --cascade takes as --quantize
IO_NOTE = "float32 segments: every input and output is float32 (image: raw pixels 0-255)"
FEATURES = md.FEATURES_PREFIX  # feature tensors are features_0, features_1, …
IMAGE = "image"
PROBABILITIES = "probabilities"
SIGNATURE = "serving_default"


def segment_file(k: int) -> str:
    """``segment_<k>.tflite`` (k = 1 … K, in cascade order)."""
    return f"segment_{k}.tflite"


def feature_name(i: int) -> str:
    return f"{FEATURES}{i}"


# --------------------------------------------------------------------------- the graph cut


def _layer_inputs(layer) -> list:
    tensors = []
    for node in layer._inbound_nodes:
        tensors += list(node.input_tensors)
    return tensors


def segment_boundaries(model, order: Sequence[int]) -> list[list]:
    """For each step k (cascade order), the tensors computed up to step k that later steps
    consume: what segment k hands on. The last step's list is empty.

    Raises:
        ConfigError: a layer is called more than once (the cut would be ambiguous).
    """
    import keras

    from sila_keras.core.heads import head_names_of

    names = head_names_of(model)
    outs = [model.get_layer(names[k - 1]).output for k in order]
    # Operations, not only layers: a functional graph may hold keras.ops calls (slices, adds).
    upto = [{id(op) for op in keras.Model(model.input, outs[:i]).operations}
            for i in range(1, len(outs) + 1)]
    layers = [op for op in model.operations if id(op) in upto[-1]]
    shared = [layer.name for layer in layers if len(layer._inbound_nodes) > 1]
    if shared:
        raise ConfigError("A cascade cuts the model between its heads, which needs every layer "
                          f"called once. Received: layers called several times: {shared[:5]}")
    producer = {}  # id(tensor) → the layer that computes it (absent: the model input)
    for layer in layers:
        if not isinstance(layer, keras.layers.InputLayer):
            for node in layer._inbound_nodes:
                for t in node.output_tensors:
                    producer[id(t)] = layer
    boundaries = []
    for i in range(len(outs)):
        later = [layer for layer in layers if id(layer) not in upto[i]]
        needed, seen = [], set()
        for layer in later:
            for t in _layer_inputs(layer):
                made_by = producer.get(id(t))
                done = made_by is None or id(made_by) in upto[i]  # None: the model input
                if done and id(t) not in seen:
                    seen.add(id(t))
                    needed.append(t)
        boundaries.append(needed)
    return boundaries


def build_segments(model, order: Sequence[int]) -> list:
    """Keras sub-models, one per step: ``inputs → [probabilities, *features]`` (shared layers).

    Segment 1 takes the model's image input; segment k > 1 takes segment k−1's features.
    """
    import keras

    from sila_keras.core.heads import head_names_of

    names = head_names_of(model)
    bounds = segment_boundaries(model, order)
    segments = []
    for i, k in enumerate(order):
        inputs = [model.input] if i == 0 else list(bounds[i - 1])
        probs = keras.layers.Softmax(name=f"cascade_{names[k - 1]}_probabilities")(
            model.get_layer(names[k - 1]).output)
        given = {id(t) for t in inputs}
        # A tensor handed on unchanged (made before this segment, needed after it) passes
        # through an Identity: a functional model's outputs cannot be its own inputs.
        outputs = [probs, *(keras.layers.Identity(name=f"cascade_{i + 1}_pass_{j}")(t)
                            if id(t) in given else t for j, t in enumerate(bounds[i]))]
        segments.append(keras.Model(inputs, outputs, name=f"segment_{i + 1}"))
    return segments


# --------------------------------------------------------------------------- writing


def _write_segment(segment, folder: Path, k: int, allow_flex: bool, convert=None) -> dict:
    """SavedModel → ``segment_<k>.tflite`` with named signature inputs/outputs.

    ``convert(saved_model, path, layer_names)`` writes the TFLite file and returns more
    manifest fields (the int8 segments'); default: a float32 conversion.
    """
    import shutil

    import keras
    import tensorflow as tf

    from export import artifacts as art

    in_names = [IMAGE] if k == 1 else [feature_name(i) for i in range(len(segment.inputs))]
    out_names = [PROBABILITIES] + [feature_name(i) for i in range(len(segment.outputs) - 1)]
    specs = [tf.TensorSpec([None, *(int(d) for d in t.shape[1:])], tf.float32, name=n)
             for t, n in zip(segment.inputs, in_names)]

    def serve(*args):
        y = segment(list(args), training=False)
        y = y if isinstance(y, (list, tuple)) else [y]
        return dict(zip(out_names, y))

    archive = keras.export.ExportArchive()
    archive.track(segment)
    archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=specs)
    saved = folder / f".segment_{k}_savedmodel"
    archive.write_out(str(saved), verbose=False)
    path = folder / segment_file(k)
    layer_names = [layer.name for layer in segment._flatten_layers()]
    try:
        if convert is None:
            art.write_tflite(saved, path, "none", allow_flex=allow_flex, layer_names=layer_names)
            extra = {"quantization": "none"}
        else:
            extra = convert(saved, path, layer_names)
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    return {"file": path.name, "inputs": in_names, "outputs": out_names,
            "input_shapes": [[int(d) if d is not None else -1 for d in t.shape]
                             for t in segment.inputs],
            "feature_shapes": [[int(d) if d is not None else -1 for d in t.shape]
                               for t in segment.outputs[1:]], **extra}


def export_cascade(model, cascade: dict, out_dir, *, class_names: Sequence[str] = (),
                   metadata: bool = True, source: str = "", model_info: dict | None = None,
                   allow_flex: bool = False, int8=None, say=None) -> dict:
    """Write the segments and ``cascade_manifest.json`` into ``out_dir``; returns the manifest.

    Args:
        model: the SiLa model.
        cascade: the run's ``cascade.json`` (order, heads, thresholds, confidence).
        out_dir: output folder (created).
        class_names: labels (for the first segment's metadata).
        metadata: write the phone metadata into the first segment.
        source: the run directory (named in the metadata).
        model_info: metadata overrides (``author``, ``version``).
        allow_flex: accept Flex ops (they do not run on stock LiteRT).
        int8: :class:`export.cascade_int8.Int8Data` to write int8 segments (each passing
            the int8 gate), or None for float32 segments.
        say: progress printer (the int8 search).

    Raises:
        ConfigError: an int8 segment that no int8 scheme brings through the gate.
    """
    from export.cascade_runner import SegmentFile
    from export.phone import phone_context
    from sila_keras.core.heads import extract_head
    from sila_keras.utils import files

    order = [int(k) for k in cascade["order"]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segments = build_segments(model, order)
    converters = [None] * len(segments)
    if int8 is not None:
        from export import cascade_int8

        converters = cascade_int8.converters(segments, order, int8, say)
    entries = []
    for k, (head, seg) in enumerate(zip(order, segments), start=1):
        entry = _write_segment(seg, out, k, allow_flex, converters[k - 1])
        entry.update(step=k, head=head, macs_cumulative=int(cascade["costs"][k - 1]),
                     io=SegmentFile(out / entry["file"]).io())
        entries.append(entry)
    if metadata:
        sub = extract_head(model, order[0])
        ctx = phone_context(model, sub, order[0], names=list(class_names), source=source,
                            model_info=model_info, outputs=(PROBABILITIES,))
        md.write(out / segment_file(1), ctx["metadata"])
    manifest = {"kind": "early-exit cascade", "quantization": "none" if int8 is None else "int8",
                "io": IO_NOTE if int8 is None else cascade_int8.io_note(int8.int8_io),
                "order": order, "heads": cascade["heads"], "confidence": cascade["confidence"],
                "thresholds": [finite(t) for t in cascade["cascade"]["thresholds"]],
                "rule": "run segment k on the image (k = 1) or on segment k-1's features_* (by "
                        "name; an integer input is quantized with its scale and zero point, an "
                        "integer output dequantized: see each segment's io); stop when the "
                        "confidence of its probabilities >= thresholds[k-1] (the last segment "
                        "always stops); the prediction is that argmax",
                "segments": entries, "labels": list(class_names), "metadata": bool(metadata)}
    files.write_json(out / MANIFEST, manifest)
    return manifest



def finite(t: float) -> float:
    """A threshold as a JSON number any app parses: ±inf (never / always stop) → ±float32 max."""
    top = float(np.finfo(np.float32).max)
    return float(np.clip(float(t), -top, top))


def export_single_heads(model, order: Sequence[int], folder: Path, allow_flex: bool = False,
                        convert=None) -> dict[int, Path]:
    """Each head alone as a one-segment TFLite file (image → its probabilities; only the
    layers it needs), for timing a head without the other heads' branches; ``convert``: as
    for :func:`_write_segment` (float32 when None)."""
    import keras

    from sila_keras.core.heads import extract_head

    out = {}
    for k in order:
        sub = extract_head(model, int(k))
        single = keras.Model(sub.inputs, keras.layers.Softmax(name="probabilities")(sub.output))
        where = folder / f"head_{int(k)}"
        where.mkdir(parents=True, exist_ok=True)
        out[int(k)] = where / _write_segment(single, where, 1, allow_flex, convert)["file"]
    return out


# --------------------------------------------------------------------------- the command


def run_export(src, args, *, tolerances=None, load_calibration=None, say=None) -> dict:
    """``python -m export RUN --cascade``: export, check on real test images, time, update
    the run's cascade files. Needs the run's ``cascade.json`` (``python -m sila_keras.cascade``).

    With ``load_calibration`` (``() → raw-pixel images``, called once the run and the output
    folder are checked; ``tolerances``: the gate's) the segments are int8 and the chain is
    judged by the int8 gate instead of the exact parity check; the run's cascade files keep
    the float32 segments' latencies.

    Everything is written into a hidden folder beside the output folder and moved into
    place only when checked: a failed or refused export leaves nothing behind.

    Raises:
        ConfigError: no run directory or no ``cascade.json``, an output folder that holds
            other files, int8 segments that do not pass the int8 gate.
        RunFailed: the float32 chain's predictions differ from the Keras cascade's.
    """
    import shutil
    import tempfile

    from export import outdir
    from export.cascade_runner import CascadeRunner, check_against_keras
    from sila_keras.data import load_dataset, run_dataset_kwargs
    from sila_keras.reports.cascade_eval import with_latency, write_results
    from sila_keras.utils import files
    from sila_keras.utils.rundir import RunDir

    if src.run_dir is None or not (RunDir(src.run_dir) / RunDir.CASCADE_JSON).is_file():
        raise ConfigError(
            f"--cascade exports the cascade chosen by `python -m sila_keras.cascade RUN`; run "
            f"it first (it writes {RunDir.CASCADE_JSON} into the run directory). "
            f"Received: source={src.run_dir or src.model_path}")
    int8 = load_calibration is not None
    run = RunDir(src.run_dir)
    cascade = files.read_json_object(run / RunDir.CASCADE_JSON)
    out = Path(args.out) if args.out else run / RunDir.EXPORT / (
        OUT_FOLDER_INT8 if int8 else OUT_FOLDER)
    _check_out(out)
    calibration = load_calibration() if int8 else None
    config = src.config
    data = load_dataset(config["dataset"], limit_train=1, limit_test=args.parity_samples,
                        download="never", cache="none", **run_dataset_kwargs(config))
    images = data.test.to_array()
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staged, done = work / out.name, False
    try:
        int8_data = None
        if int8:
            from export import cascade_int8

            int8_data = cascade_int8.Int8Data(
                calibration=calibration, images=images, labels=np.asarray(data.test_y),
                tolerances=tolerances, int8_io=args.int8_io)
        manifest = export_cascade(src.model, cascade, staged, class_names=src.class_names,
                                  metadata=not args.no_metadata, source=str(src.run_dir),
                                  model_info={"author": args.author,
                                              "version": args.model_version},
                                  allow_flex=args.allow_flex, int8=int8_data, say=say)
        runner = CascadeRunner(staged)
        convert = None
        if int8:
            manifest["gate"] = cascade_int8.chain_gate(runner, src.model, int8_data)
            cascade_int8.refuse_unless_passed(manifest["gate"], int8_data)
            convert = cascade_int8.head_converter(manifest, int8_data)
        else:
            manifest["parity"] = check_against_keras(runner, src.model, images)
        # each head alone (only the layers it needs), timed beside the segments
        heads = export_single_heads(src.model, manifest["order"], work / ".heads",
                                    args.allow_flex, convert)
        ms = runner.segment_latency_ms(images[0], args.latency_runs, heads)
        manifest["segment_latency_ms"] = ms["segments"]
        manifest["head_latency_ms"] = {str(k): v for k, v in ms["heads"].items()}
        if int8:
            manifest["head_latency_note"] = cascade_int8.HEADS_NOTE
        files.write_json(staged / MANIFEST, manifest)
        outdir.install(staged, out, work)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for folder in made if not done else []:  # folders this export created, now empty
            try:
                folder.rmdir()
            except OSError:
                break
    if not int8:
        write_results(run.path, with_latency(cascade, ms["segments"], head_ms=ms["heads"]),
                      config.get("model", ""))
    return manifest


def _check_out(out: Path) -> None:
    """The output folder is new, empty, or an earlier cascade export (it is replaced whole).

    Raises:
        RunDirError: it holds other files.
    """
    from sila_keras.utils.errors import RunDirError

    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / MANIFEST).is_file())):
        raise RunDirError(
            f"A cascade export replaces its output folder whole, and '{out}' holds files but no "
            f"{MANIFEST} from an earlier cascade export. Pass an empty or new --out DIR. "
            f"Received: out={str(out)!r}")
