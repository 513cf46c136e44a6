"""TFLite files for phones: conversion, metadata, GPU verdict, MediaPipe check, latency.

Phone apps run a ``.tflite`` through their runtime's own client — MediaPipe Tasks'
``ImageClassifier`` on Android/iOS — not a bare interpreter. For each TFLite variant
:func:`export_tflite` converts (builtin ops only, see :func:`export.artifacts.write_tflite`;
the full-integer file through :func:`export.quantize.full_integer`: plain int8, the XNNPACK
fix, selective int8, int16x8, each judged by the int8 gate), writes the metadata
(:mod:`export.metadata`), verifies parity in LiteRT, records LiteRT's GPU-delegate verdict
and classifies the parity images with MediaPipe's ``ImageClassifier`` loading the file as
exported. :func:`time_tflite` then times every TFLite file next to float32.
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
                  verify, one_line, say=None) -> dict:
    """Convert ``saved_model`` to ``path`` (the int8 file: found by
    :func:`export.quantize.full_integer`), add metadata, verify in LiteRT; then LiteRT's GPU
    verdict and a pass through MediaPipe's ImageClassifier.

    ``entry`` is the artifact's manifest entry so far; ``verify(entry, spec, path, job)`` is
    the exporter's parity step; ``one_line(exception)`` its error formatter; ``say`` prints
    progress. Returns the manifest entry: ``staged`` (the verified file) or ``error``.
    """
    options, phone = job.options, job.phone
    t0 = time.perf_counter()
    try:
        found = None
        if spec.quantization == "int8":
            from export import quantize

            held_out = {"images": job.images, "labels": job.labels, "reference": job.reference}
            found = quantize.full_integer(saved_model, job.calibration, held_out,
                                          tolerances=options.tolerances, int8_io=options.int8_io,
                                          layer_names=phone["layers"], workdir=path.parent, say=say)
        if found is None:  # not int8, or a graph with Flex ops: one plain conversion
            info = art.write_tflite(saved_model, path, spec.quantization, job.calibration,
                                    int8_io=options.int8_io, allow_flex=options.allow_flex,
                                    layer_names=phone["layers"])
        else:
            entry["search"] = found["record"]
            if found["error"]:
                entry["error"] = found["error"]
                return entry
            path.write_bytes(found["model"])
            info = {"scheme": found["scheme"], "flex_ops": {}}
            entry.update({k: found["summary"][k] for k in ("float_layers", "float_mac_share")})
            if found["scheme"] != "int8":
                entry["fallback"] = _fallback_note(found)
        if options.metadata:
            from export import metadata as md

            md.write(path, phone["metadata"])
    except Exception as e:  # noqa: BLE001 - any converter failure is reported, not raised
        entry["error"] = f"conversion failed: {one_line(e)}"
        return entry
    entry["convert_s"] = round(time.perf_counter() - t0, 2)
    entry["scheme"] = info["scheme"]
    entry["flex_ops"] = info["flex_ops"]
    entry = verify(entry, spec, path, job)
    if "error" in entry:
        return entry
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


def _fallback_note(found) -> str:
    """Why the shipped int8 file is not a plain full-integer graph."""
    attempts = found["record"]["attempts"]
    plain = attempts[0]
    why = ("; ".join(plain["gate"]["reasons"]) if not plain["passed"]
           else f"XNNPACK split it into {plain['delegate_pieces']} pieces")
    layers = found["summary"]["float_layers"]
    if found["scheme"] == "int16x8":
        return (f"plain int8: {why}; selective int8 did not pass either: shipped int16x8 (16-bit "
                "activations, 8-bit weights, float32 input/output; LiteRT reference kernels)")
    return (f"plain int8: {why}; shipped {found['record']['shipped']}: {len(layers)} op(s) in float "
            f"({100 * found['summary']['float_mac_share']:.1f}% of the MACs), the rest int8")


def time_tflite(results: dict, staged: dict, saved_model, staging, images, runs: int) -> dict:
    """LiteRT latency of every verified TFLite file next to float32 (:func:`export.latency.measure`).

    Updates each TFLite entry's ``latency`` (with ``vs_float32``, the ratio of medians) and
    returns ``{"reference": ..., "warnings": [...]}``; a float32 file converted only for the
    comparison is noted as such.
    """
    from export import latency

    files = {name: staged[e["file"]] for name, e in results.items()
             if e.get("format") == "tflite" and not e.get("flex_ops") and e["file"] in staged}
    if not files or ("tflite" not in files and saved_model is None):
        return {"reference": None, "warnings": []}
    reference = {"file": "model.tflite", "written": "tflite" in files}
    try:
        if "tflite" not in files:
            path = Path(staging) / "_float32_reference.tflite"
            art.write_tflite(saved_model, path, "none")
            files = {"float32 reference": path, **files}
        timings = latency.measure(files, images[:1], runs)
    except Exception as e:  # noqa: BLE001 - timing is informative: report it, keep the files
        return {"reference": None, "warnings": [f"LiteRT latency not measured: {e}"[:300]]}
    ref = timings["tflite" if "tflite" in files else "float32 reference"]
    reference.update(ref)
    warnings = []
    for name, t in timings.items():
        if name in results:
            t["vs_float32"] = round(t["median_ms"] / max(ref["median_ms"], 1e-9), 3)
            results[name]["latency"] = t
    int8 = results.get("tflite_int8")
    if int8 and latency.slower_than(int8["latency"], ref):
        warnings.append(
            f"model_int8.tflite ({int8.get('scheme')}) is {int8['latency']['vs_float32']:.1f}x slower "
            f"than float32 in LiteRT ({int8['latency']['median_ms']:.3g} ms vs {ref['median_ms']:.3g} "
            f"ms, {int8['latency']['delegate_pieces']} XNNPACK piece(s)): on a phone CPU ship "
            "model.tflite or model_float16.tflite instead")
    return {"reference": reference, "warnings": warnings}


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
        out.append("int8 accelerators (NNAPI-style NPUs/DSPs)")  # full-integer graphs only
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
