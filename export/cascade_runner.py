"""Run an exported early-exit cascade in LiteRT, as an app does, and check it against Keras.

:class:`CascadeRunner` chains the segment files of a ``cascade_manifest.json``
(:mod:`export.cascade`) image by image; :class:`SegmentFile` runs one file with float values
in and out (quantizing an integer input, dequantizing an integer output, per tensor), so
float32 and int8 segments run alike. :func:`check_against_keras` is the float32 cascade's
exact-parity check; int8 segments are judged by the int8 gate instead
(:func:`export.cascade_int8.chain_gate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.cascade import FEATURES, IMAGE, MANIFEST, PROBABILITIES, SIGNATURE
from sila_keras.utils.errors import RunFailed


class SegmentFile:
    """One segment (or head) file in LiteRT, float values in and out: an integer input is
    quantized with its own scale and zero point, an integer output dequantized.

    Args:
        model: a ``.tflite`` path or its bytes.
        threads: LiteRT threads.
    """

    def __init__(self, model, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, (bytes, bytearray)):
            it = Interpreter(model_content=bytes(model), num_threads=threads)
        else:
            it = Interpreter(model_path=str(model), num_threads=threads)
        self.run = it.get_signature_runner(SIGNATURE)
        self.inputs = self.run.get_input_details()
        self.outputs = self.run.get_output_details()

    def feeds(self, values: dict) -> dict:
        """Float inputs ``{name: array}`` as the file's input tensors take them."""
        from export.runtimes import to_input

        return {n: to_input(v, self.inputs[n]) for n, v in values.items()}

    def __call__(self, values: dict) -> dict:
        """``{output name: float array}`` for float inputs ``{name: array}`` (batched)."""
        from export.runtimes import from_output

        out = self.run(**self.feeds(values))
        return {n: from_output(v, self.outputs[n]) for n, v in out.items()}

    def io(self) -> dict:
        """``{"inputs": {name: type}, "outputs": {name: type}}``: each tensor's ``dtype``, and
        ``scale`` / ``zero_point`` (real = scale · (q − zero_point)) when it is integer."""
        from export.runtimes import tensor_type

        def describe(details):
            t = tensor_type(details)
            return t if t["dtype"] != "float32" else {"dtype": t["dtype"]}

        return {"inputs": {n: describe(d) for n, d in self.inputs.items()},
                "outputs": {n: describe(d) for n, d in self.outputs.items()}}


class CascadeRunner:
    """Runs an exported cascade in LiteRT, one image at a time, as an app does; float32 or
    int8 segments (integer inputs quantized and outputs dequantized per tensor).

    Example:
        >>> runner = CascadeRunner("runs/e2e/export/cascade")  # doctest: +SKIP
        >>> pred, step = runner.predict(images)                # doctest: +SKIP
    """

    def __init__(self, folder, threads: int = 2):
        from sila_keras.utils import files

        self.folder = Path(folder)
        self.manifest = files.read_json_object(self.folder / MANIFEST)
        self.thresholds = np.asarray(self.manifest["thresholds"], np.float64)
        self.confidence = self.manifest["confidence"]
        self.runners = [SegmentFile(self.folder / seg["file"], threads)
                        for seg in self.manifest["segments"]]

    def classify(self, image: np.ndarray) -> tuple[int, int, np.ndarray]:
        """``(class, step (0-based), probabilities)`` of one raw-pixel image ``(H, W, C)``."""
        from sila_keras.reports.cascade_routing import confidence_of

        feeds = {IMAGE: np.asarray(image, np.float32)[None]}
        last = len(self.runners) - 1
        for k, run in enumerate(self.runners):
            out = run(feeds)
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
        """The inputs each segment gets when ``image`` runs the whole chain (no early stop),
        as its input tensors take them (quantized where integer)."""
        feeds = [{IMAGE: np.asarray(image, np.float32)[None]}]
        for run in self.runners[:-1]:
            out = run(feeds[-1])
            feeds.append({n: out[n] for n in out if n.startswith(FEATURES)})
        return [run.feeds(f) for run, f in zip(self.runners, feeds)]

    def segment_latency_ms(self, image: np.ndarray, runs: int = 30,
                           heads: dict[int, Path] | None = None) -> dict:
        """Median time of one LiteRT call of each segment, and of each single-head file in
        ``heads`` (``{head: .tflite}``, image → probabilities), fed real inputs (already in
        each input tensor's dtype: quantizing a float input is not timed).

        Batch 1, default delegates, :data:`export.latency.THREADS` threads; the signature
        runner's call, so setting the inputs and reading the outputs are included, as in an
        app. All files are timed in interleaved rounds, so a busy machine slows them alike.

        Returns:
            ``{"segments": [ms, …], "heads": {head: ms}}``.
        """
        from functools import partial

        from export.latency import THREADS, interpreter, median_ms, time_interleaved
        from export.runtimes import to_input

        calls = {}
        for i, (seg, feed) in enumerate(zip(self.manifest["segments"], self.segment_feeds(image))):
            sig = interpreter(self.folder / seg["file"], threads=THREADS).get_signature_runner(
                SIGNATURE)
            calls[("segment", i)] = partial(sig, **feed)
        for k, path in (heads or {}).items():
            sig = interpreter(path, threads=THREADS).get_signature_runner(SIGNATURE)
            x = to_input(np.asarray(image, np.float32)[None], sig.get_input_details()[IMAGE])
            calls[("head", int(k))] = partial(sig, **{IMAGE: x})
        ms = {key: median_ms(v) for key, v in time_interleaved(calls, runs).items()}
        return {"segments": [ms[("segment", i)] for i in range(len(self.runners))],
                "heads": {k: ms[("head", k)] for (kind, k) in ms if kind == "head"}}


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
    from sila_keras.reports.cascade_eval import head_probs
    from sila_keras.reports.cascade_routing import confidences, route

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
