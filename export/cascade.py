"""The early-exit cascade on the phone: one TFLite model per segment, chained by a runner.

``python -m sila_keras.cascade RUN`` chose the cascade (heads cheapest first, per-head
thresholds, :mod:`sila_keras.reports.cascade`); ``python -m export RUN --cascade`` ships it:

* **segments**: segment k maps the image (k = 1) or the previous segment's features to
  head k's ``probabilities`` plus ``features_<i>``, the tensors later segments need (the
  taps between them; for a plain trunk one tensor). Cut where the heads attach, found from
  the model's graph (:func:`segment_boundaries`), re-using the trained layers.
* each segment is a builtin-ops TFLite file (``segment_<k>.tflite``, checked: no Flex ops);
  the first carries the phone metadata of the single-head export (RGB input, normalization,
  labels) with its extra ``features_*`` outputs described;
* ``cascade_manifest.json``: the order, thresholds, confidence, and each segment's inputs and
  outputs (the wiring); :class:`CascadeRunner` runs it in LiteRT, image by image, as an app
  would, and its predictions are checked against the Keras cascade on real images;
* each segment is timed in LiteRT and the run's ``cascade.json/csv/png`` gain mean latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export import metadata as md
from sila_keras.utils.errors import ConfigError, RunFailed

MANIFEST = "cascade_manifest.json"
OUT_FOLDER = "cascade"  # under the run's export folder
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


def _write_segment(segment, folder: Path, k: int, allow_flex: bool) -> dict:
    """SavedModel → ``segment_<k>.tflite`` with named signature inputs/outputs."""
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
    art.write_tflite(saved, path, "none", allow_flex=allow_flex,
                     layer_names=[layer.name for layer in segment._flatten_layers()])
    import shutil

    shutil.rmtree(saved, ignore_errors=True)
    return {"file": path.name, "inputs": in_names, "outputs": out_names,
            "input_shapes": [[int(d) if d is not None else -1 for d in t.shape]
                             for t in segment.inputs],
            "feature_shapes": [[int(d) if d is not None else -1 for d in t.shape]
                               for t in segment.outputs[1:]]}


def export_cascade(model, cascade: dict, out_dir, *, class_names: Sequence[str] = (),
                   metadata: bool = True, source: str = "", model_info: dict | None = None,
                   allow_flex: bool = False) -> dict:
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
    """
    from export.phone import phone_context
    from sila_keras.core.heads import extract_head
    from sila_keras.utils import files

    order = [int(k) for k in cascade["order"]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segments = build_segments(model, order)
    entries = []
    for k, (head, seg) in enumerate(zip(order, segments), start=1):
        entry = _write_segment(seg, out, k, allow_flex)
        entry.update(step=k, head=head, macs_cumulative=int(cascade["costs"][k - 1]))
        entries.append(entry)
    if metadata:
        sub = extract_head(model, order[0])
        ctx = phone_context(model, sub, order[0], names=list(class_names), source=source,
                            model_info=model_info, outputs=(PROBABILITIES,))
        md.write(out / segment_file(1), ctx["metadata"])
    manifest = {"kind": "early-exit cascade", "order": order, "heads": cascade["heads"],
                "confidence": cascade["confidence"],
                "thresholds": [finite(t) for t in cascade["cascade"]["thresholds"]],
                "rule": "run segment k on the image (k = 1) or on segment k-1's features_* (by "
                        "name); stop when the confidence of its probabilities >= thresholds[k-1]"
                        " (the last segment always stops); the prediction is that argmax",
                "segments": entries, "labels": list(class_names), "metadata": bool(metadata)}
    files.write_json(out / MANIFEST, manifest)
    return manifest


def finite(t: float) -> float:
    """A threshold as a JSON number any app parses: ±inf (never / always stop) → ±float32 max."""
    top = float(np.finfo(np.float32).max)
    return float(np.clip(float(t), -top, top))


# --------------------------------------------------------------------------- running


class CascadeRunner:
    """Runs an exported cascade in LiteRT, one image at a time, as an app does.

    Example:
        >>> runner = CascadeRunner("runs/e2e/export/cascade")  # doctest: +SKIP
        >>> pred, step = runner.predict(images)                # doctest: +SKIP
    """

    def __init__(self, folder, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        from sila_keras.utils import files

        self.folder = Path(folder)
        self.manifest = files.read_json_object(self.folder / MANIFEST)
        self.thresholds = np.asarray(self.manifest["thresholds"], np.float64)
        self.confidence = self.manifest["confidence"]
        self.runners = []
        for seg in self.manifest["segments"]:
            it = Interpreter(model_path=str(self.folder / seg["file"]), num_threads=threads)
            self.runners.append(it.get_signature_runner(SIGNATURE))

    def classify(self, image: np.ndarray) -> tuple[int, int, np.ndarray]:
        """``(class, step (0-based), probabilities)`` of one raw-pixel image ``(H, W, C)``."""
        from sila_keras.reports.cascade import confidence_of

        feeds = {IMAGE: np.asarray(image, np.float32)[None]}
        last = len(self.runners) - 1
        for k, run in enumerate(self.runners):
            out = run(**feeds)
            probs = np.asarray(out[PROBABILITIES])
            conf = confidence_of(probs, self.confidence)[0]
            if k == last or conf >= self.thresholds[k]:
                return int(probs[0].argmax()), k, probs[0]
            feeds = {n: out[n] for n in out if n.startswith(FEATURES)}
        raise AssertionError("unreachable")

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(classes, steps)`` of a batch of raw-pixel images."""
        got = [self.classify(x)[:2] for x in images]
        return np.array([g[0] for g in got]), np.array([g[1] for g in got])

    def segment_feeds(self, image: np.ndarray) -> list[dict]:
        """The inputs each segment gets when ``image`` runs the whole chain (no early stop)."""
        feeds = [{IMAGE: np.asarray(image, np.float32)[None]}]
        for run in self.runners[:-1]:
            out = run(**feeds[-1])
            feeds.append({n: out[n] for n in out if n.startswith(FEATURES)})
        return feeds

    def segment_latency_ms(self, image: np.ndarray, runs: int = 30,
                           heads: dict[int, Path] | None = None) -> dict:
        """Median time of one LiteRT call of each segment, and of each single-head file in
        ``heads`` (``{head: .tflite}``, image → probabilities), fed real inputs.

        Batch 1, default delegates, :data:`export.latency.THREADS` threads; the signature
        runner's call, so setting the inputs and reading the outputs are included, as in an
        app. All files are timed in interleaved rounds, so a busy machine slows them alike.

        Returns:
            ``{"segments": [ms, …], "heads": {head: ms}}``.
        """
        from export.latency import THREADS, interpreter

        calls = {}
        for i, (seg, feed) in enumerate(zip(self.manifest["segments"], self.segment_feeds(image))):
            sig = interpreter(self.folder / seg["file"], threads=THREADS).get_signature_runner(
                SIGNATURE)
            calls[("segment", i)] = (sig, feed)
        for k, path in (heads or {}).items():
            sig = interpreter(path, threads=THREADS).get_signature_runner(SIGNATURE)
            calls[("head", int(k))] = (sig, {IMAGE: np.asarray(image, np.float32)[None]})
        ms = interleaved_median_ms(calls, runs)
        return {"segments": [ms[("segment", i)] for i in range(len(self.runners))],
                "heads": {k: ms[("head", k)] for (kind, k) in ms if kind == "head"}}


def interleaved_median_ms(calls: dict, runs: int, rounds: int = 5, warmup: int = 3) -> dict:
    """``{key: median ms}`` of ``fn(**feeds)`` for ``calls = {key: (fn, feeds)}``, timed in
    ``rounds`` interleaved rounds of ``ceil(runs / rounds)`` calls each."""
    import math
    import statistics
    import time

    per_round = max(1, math.ceil(runs / rounds))
    times = {key: [] for key in calls}
    for fn, feeds in calls.values():
        for _ in range(warmup):
            fn(**feeds)
    for _ in range(rounds):
        for key, (fn, feeds) in calls.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn(**feeds)
                times[key].append(1000.0 * (time.perf_counter() - t0))
    return {key: round(statistics.median(v), 4) for key, v in times.items()}


def export_single_heads(model, order: Sequence[int], folder: Path, allow_flex: bool = False
                        ) -> dict[int, Path]:
    """Each head alone as a one-segment TFLite file (image → its probabilities; only the
    layers it needs), for timing a head without the other heads' branches."""
    import keras

    from sila_keras.core.heads import extract_head

    out = {}
    for k in order:
        sub = extract_head(model, int(k))
        single = keras.Model(sub.inputs, keras.layers.Softmax(name="probabilities")(sub.output))
        where = folder / f"head_{int(k)}"
        where.mkdir(parents=True, exist_ok=True)
        out[int(k)] = where / _write_segment(single, where, 1, allow_flex)["file"]
    return out


TIE = 1e-5  # float32 round-off between Keras and LiteRT kernels: a near-tie may go either way


def check_against_keras(runner: CascadeRunner, model, images: np.ndarray,
                        tie: float = TIE) -> dict:
    """Predictions and exit steps of the LiteRT cascade vs the Keras cascade on ``images``.

    An image counts as a *near tie* when, on its Keras path, a confidence lies within ``tie``
    of its threshold or the two top probabilities at its exit are within ``tie``: float32
    round-off may then decide either way (untrained, near-uniform heads). Every other image
    must get the same class at the same exit.

    Raises:
        RunFailed: a prediction differs on an image that is not a near tie.
    """
    from sila_keras.reports.cascade import confidences, head_probs, route

    probs = head_probs(model, images, runner.manifest["order"])
    k_pred, k_step = route(probs, runner.thresholds, runner.confidence)
    l_pred, l_step = runner.predict(images)
    conf = confidences(probs, runner.confidence)
    steps = np.arange(conf.shape[1])[None, :]
    close = (np.abs(conf - runner.thresholds[None, :]) < tie) & (steps <= k_step[:, None])
    top2 = np.sort(np.stack(probs, 1)[np.arange(len(images)), k_step], axis=-1)[:, -2:]
    ties = close.any(axis=1) | (top2[:, 1] - top2[:, 0] < tie)
    differ = (k_pred != l_pred) | (k_step != l_step)
    if np.any(differ & ~ties):
        raise RunFailed(f"The LiteRT cascade's predictions differ from the Keras cascade's on "
                        f"{int(np.sum(differ & ~ties))} of {len(images)} images that are not "
                        f"near ties (class or exit segment).")
    return {"images": int(len(images)), "agreement": float(np.mean(k_pred == l_pred)),
            "same_exit": float(np.mean(k_step == l_step)), "near_ties": int(ties.sum())}


def run_export(src, args) -> dict:
    """``python -m export RUN --cascade``: export, check on real test images, time, update
    the run's cascade files. Needs the run's ``cascade.json`` (``python -m sila_keras.cascade``).

    Raises:
        ConfigError: no run directory or no ``cascade.json``.
    """
    from sila_keras.data import load_dataset, run_dataset_kwargs
    from sila_keras.reports.cascade import with_latency, write_results
    from sila_keras.utils import files
    from sila_keras.utils.rundir import RunDir

    if src.run_dir is None or not (RunDir(src.run_dir) / RunDir.CASCADE_JSON).is_file():
        raise ConfigError(
            f"--cascade exports the cascade chosen by `python -m sila_keras.cascade RUN`; run "
            f"it first (it writes {RunDir.CASCADE_JSON} into the run directory). "
            f"Received: source={src.run_dir or src.model_path}")
    run = RunDir(src.run_dir)
    cascade = files.read_json_object(run / RunDir.CASCADE_JSON)
    out = Path(args.out) if args.out else run / RunDir.EXPORT / OUT_FOLDER
    manifest = export_cascade(src.model, cascade, out, class_names=src.class_names,
                              metadata=not args.no_metadata, source=str(src.run_dir),
                              model_info={"author": args.author, "version": args.model_version},
                              allow_flex=args.allow_flex)
    config = src.config
    data = load_dataset(config["dataset"], limit_train=1, limit_test=args.parity_samples,
                        download="never", cache="none", **run_dataset_kwargs(config))
    images = data.test.to_array()
    runner = CascadeRunner(out)
    manifest["parity"] = check_against_keras(runner, src.model, images)
    import shutil
    import tempfile

    singles = Path(tempfile.mkdtemp(prefix=".heads_", dir=out))
    try:  # each head alone, timed beside the segments (its file is `export RUN --head k`'s)
        heads = export_single_heads(src.model, manifest["order"], singles, args.allow_flex)
        ms = runner.segment_latency_ms(images[0], args.latency_runs, heads)
    finally:
        shutil.rmtree(singles, ignore_errors=True)
    manifest["segment_latency_ms"] = ms["segments"]
    manifest["head_latency_ms"] = {str(k): v for k, v in ms["heads"].items()}
    files.write_json(out / MANIFEST, manifest)
    write_results(run.path, with_latency(cascade, ms["segments"], head_ms=ms["heads"]),
                  config.get("model", ""))
    return manifest
