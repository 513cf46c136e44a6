"""TFLite files for phones: the int8 accuracy gate, metadata, GPU verdict, MediaPipe check.

Phone apps run a ``.tflite`` through their runtime's own client — MediaPipe Tasks'
``ImageClassifier`` on Android/iOS — not a bare interpreter. For each TFLite variant
:func:`export_tflite` converts (builtin ops only, see :func:`export.artifacts.write_tflite`),
writes the metadata (:mod:`export.metadata`), verifies parity in LiteRT, and for the
full-integer file applies the **int8 gate**: below the agreement bound it converts again
with 16-bit activations × 8-bit weights and ships that only if it passes, recording both.
Then it records LiteRT's GPU-delegate verdict and classifies the parity images with
MediaPipe's ``ImageClassifier`` loading the file as exported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export import artifacts as art

if TYPE_CHECKING:
    from export.exporter import HeadExport


def export_tflite(entry: dict, spec, path: Path, job: HeadExport, saved_model: Path, *,
                  verify, one_line) -> dict:
    """Convert ``saved_model`` to ``path``, add metadata, verify in LiteRT; the int8 gate with
    its int16x8 fallback; then LiteRT's GPU verdict and a pass through MediaPipe's
    ImageClassifier.

    ``entry`` is the artifact's manifest entry so far; ``verify(entry, spec, path, job)`` is
    the exporter's parity step; ``one_line(exception)`` its error formatter. Returns the
    manifest entry: ``staged`` (the verified file) or ``error``.
    """
    options, phone = job.options, job.phone
    schemes = ["int8", "int16x8"] if spec.quantization == "int8" else [None]
    attempts = []
    for scheme in schemes:
        attempt = dict(entry)
        t0 = time.perf_counter()
        try:
            info = art.write_tflite(saved_model, path, spec.quantization, job.calibration,
                                    int8_io=options.int8_io, scheme=scheme or "int8",
                                    allow_flex=options.allow_flex, layer_names=phone["layers"])
            if options.metadata:
                from export import metadata as md

                md.write(path, phone["metadata"])
        except Exception as e:  # noqa: BLE001 - any converter failure is reported, not raised
            attempt["error"] = f"conversion failed: {one_line(e)}"
            return _with_attempts(attempt, attempts)
        attempt["convert_s"] = round(time.perf_counter() - t0, 2)
        attempt["scheme"] = info["scheme"]
        attempt["flex_ops"] = info["flex_ops"]
        attempt = verify(attempt, spec, path, job)
        agreement_failed = "error" in attempt and "top-1 agreement" in attempt.get("error", "")
        if not agreement_failed or scheme == schemes[-1]:
            break
        attempts.append({k: attempt[k] for k in ("scheme", "parity", "accuracy", "size_bytes", "input",
                                                 "output") if k in attempt})
    entry = _with_attempts(attempt, attempts)
    if "error" in entry:
        if attempts:
            entry["error"] = (f"int8 failed the accuracy gate ({attempts[0]['parity']['top1_agreement']:.1%}"
                              f" top-1 agreement) and so did the int16x8 fallback: {entry['error']}")
        return entry
    if attempts:
        entry["fallback"] = (f"int8 reached {attempts[0]['parity']['top1_agreement']:.1%} top-1 agreement "
                             f"(< {options.tolerances['int8']:.0%}): shipped int16x8 (16-bit activations, "
                             "8-bit weights, float32 input/output) instead")
    if options.metadata:
        from export import metadata as md

        entry["metadata"] = _metadata_summary(md.read(path))
    try:
        entry["gpu_delegate"] = art.gpu_compatibility(path)
    except Exception as e:  # noqa: BLE001 - the analyzer is informative only
        entry["gpu_delegate"] = {"compatible": None, "verdict": f"analyzer failed: {one_line(e)}"}
    entry["mediapipe"] = _mediapipe(path, entry, job, one_line)
    if entry["mediapipe"].get("error"):
        entry.pop("staged", None)
        entry["error"] = entry["mediapipe"]["error"]
    entry["targets"] = _targets(entry)
    return entry


def _with_attempts(entry, attempts):
    if attempts:
        entry["int8_attempt"] = attempts[0]
    return entry


def _mediapipe(path, entry, job: HeadExport, one_line) -> dict:
    """Run the file in MediaPipe's ImageClassifier when it is meant to run there."""
    from export.runtimes import mediapipe_check

    why_not = None
    if not job.options.metadata:
        why_not = "written without metadata (--no-metadata): ImageClassifier needs it"
    elif entry.get("flex_ops"):
        why_not = "needs Flex ops, which MediaPipe's runtime does not have"
    elif entry["input"]["dtype"] not in ("uint8", "float32"):
        why_not = (f"{entry['input']['dtype']} input: ImageClassifier takes uint8 or float32 "
                   "(use --int8-io uint8 for phones)")
    elif len(entry.get("outputs", [])) != 1:
        why_not = ("two outputs: ImageClassifier would report one classification head per "
                   "output (use --tflite-outputs probabilities for phones)")
    if why_not:
        return {"runs": None, "reason": why_not}
    try:
        return mediapipe_check(path, job.images, np.asarray(job.reference).argmax(-1),
                               job.phone["labels"])
    except Exception as e:  # noqa: BLE001
        return {"runs": False, "error": f"MediaPipe check failed: {one_line(e)}"}


def _targets(entry) -> list[str]:
    """Which phone back-ends the file suits (see docs/export.md, "On the phone")."""
    out = []
    if entry.get("flex_ops"):
        return ["LiteRT with the Flex delegate only"]
    out.append("CPU (LiteRT/XNNPACK, MediaPipe)")
    scheme = entry.get("scheme")
    if entry.get("gpu_delegate", {}).get("compatible") and scheme in ("float32", "float16"):
        out.append("GPU delegate")
    if scheme == "int8" and entry["input"]["dtype"] in ("uint8", "int8"):
        out.append("int8 accelerators (NNAPI-style NPUs/DSPs)")
    return out


def _metadata_summary(meta: dict | None) -> dict | None:
    if meta is None:
        return None
    return {"name": meta["name"], "version": meta["version"], "author": meta["author"],
            "description": meta["description"], "min_parser_version": meta["min_parser_version"],
            "input": meta["input"], "outputs": [o["name"] for o in meta["outputs"]],
            "labels_file": next((f["name"] for o in meta["outputs"] for f in o["associated_files"]), None),
            "labels": len(meta["labels"])}


def phone_context(model, sub, head: int, *, names, source, model_info,
                  outputs: Sequence[str]) -> dict:
    """Labels, layer names and the metadata an exported TFLite file carries (with the TFLite
    ``outputs``)."""
    from export import metadata as md
    from sila_keras import __version__

    n = int(sub.output.shape[-1])
    labels = list(names) if names else [f"class_{i}" for i in range(n)]
    info = dict(model_info or {})
    run = Path(str(source)).name if source else model.name
    meta = md.ClassifierMetadata(
        name=info.get("name") or f"{run} head {head}",
        description=info.get("description") or (
            f"Head {head} of the SiLa model '{model.name}' (SilaNet, Gan et al.), exported by "
            f"sila_keras {__version__}: an image classifier over {n} classes. Input: an RGB "
            f"image of {sub.input_shape[1]}x{sub.input_shape[2]} raw pixels (0-255). Output: "
            + ", ".join(outputs) + "."),
        version=info.get("version") or f"{run}/head_{head}",
        author=info.get("author") or f"sila_keras {__version__}",
        license=info.get("license") or "",
        labels=tuple(labels))
    return {"metadata": meta, "labels": labels,
            "layers": [layer.name for layer in sub._flatten_layers(include_self=False)]}
