"""Export one head of a SiLa model: write, verify in its runtime, then install each artifact.

The flow for head k (SilaNet's compression use: ship the small head-k model):

1. check every argument (formats, head index, data shapes, optional packages,
   the output folder) before any graph is built;
2. ``extract_head(model, k)`` and verify its logits equal slice k of
   ``sila_logits`` on the sample images;
3. for each artifact: write it into a staging folder inside ``out_dir``, load
   it fresh in its own runtime, compare with Keras (:mod:`export.parity`),
   time batch-1 calls (TFLite files also get metadata, the int8 gate, LiteRT's GPU
   verdict and a MediaPipe ImageClassifier pass: :mod:`export.phone`); only an
   artifact that passes is moved into ``out_dir`` (an atomic rename), so no failing
   or half-written artifact is left there;
4. write ``labels.txt`` and ``manifest.json`` (atomically).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from export import artifacts as art
from export import deps, inputs, outdir, parity, report
from export.outdir import prepare_out_dir
from export.phone import export_tflite, phone_context, time_tflite
from sila_keras.utils.errors import ConfigError, RunFailed

DEFAULT_QUANTIZE = ("none",)


class ExportFailed(RunFailed):
    """Raised by :func:`export_head` with ``strict=True`` when an artifact failed (exit 3)."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def export_head(model, head: int, out_dir, formats: str | Sequence[str] = art.FORMATS,
                quantize: str | Sequence[str] = DEFAULT_QUANTIZE, calibration=None, eval_data=None,
                class_names: Sequence[str] | None = None, opset: int = 17, *,
                sample_images=None, sample_note: str | None = None, parity_samples: int = 200,
                source: str | None = None, data_notes: Mapping[str, str] | None = None,
                tolerances: Mapping[str, float] | None = None, latency_runs: int = 30,
                tflite_outputs: str | Sequence[str] = art.DEFAULT_TFLITE_OUTPUTS,
                int8_io: str = "uint8", allow_flex: bool = False, metadata: bool = True,
                model_info: Mapping[str, str] | None = None,
                strict: bool = False, verbose: int = 1) -> dict:
    """Export head ``head`` of a SiLa model to deployable, parity-checked artifacts.

    Args:
        model: a SiLa model (a ``keras.Model`` with a ``sila_logits`` layer).
        head: k in 1..M (1 = the base model).
        out_dir: output folder; artifacts, ``labels.txt`` and ``manifest.json`` go there.
        formats: subset of ``keras, savedmodel, tflite, onnx`` (list or comma string).
        quantize: TFLite variants, subset of ``none, float16, dynamic, int8``.
        calibration: real images ``(n, H, W, C)`` (0–255) for int8 calibration, or an
            ``ImageData`` (its training images). Required for ``int8``.
        eval_data: ``(images, labels)`` or an ``ImageData`` (its test split): each
            format's accuracy is measured on it, and it serves as the parity images.
        class_names: N names (default ``class_0`` …).
        opset: ONNX opset (9–18).
        sample_images: parity images when there is no ``eval_data`` (default: the
            calibration images, else 64 random images, noted in the manifest).
        sample_note: where ``sample_images`` come from (for the manifest).
        parity_samples: at most this many parity images (eval images are all used).
        source: where the model came from (for the manifest).
        data_notes: ``{"calibration": ..., "eval": ...}`` dataset descriptions.
        tolerances: overrides of :data:`export.parity.DEFAULT_TOLERANCES`.
        latency_runs: timed batch-1 calls per artifact (median reported).
        tflite_outputs: outputs of the TFLite files, from ``logits, probabilities``
            (default: ``probabilities`` only, the one output phone classifiers read).
        int8_io: input/output type of the full-integer model: ``uint8`` (default: raw
            pixels, scale 1, zero point 0, what MediaPipe takes), ``int8`` or ``float32``.
        allow_flex: accept TFLite files that need Flex (TF) ops (they do not run on stock
            mobile LiteRT); by default such a model fails naming the ops and layers.
        metadata: write the TFLite metadata (:mod:`export.metadata`): RGB image input,
            normalization, labels, score semantics. Needs an RGB input.
        model_info: ``name``, ``description``, ``version``, ``author``, ``license`` for
            the metadata (defaults derived from the model and ``source``).
        strict: raise :class:`ExportFailed` when an artifact fails (after writing the manifest).
        verbose: 0 silent, 1 progress lines and the summary table.

    Returns:
        The manifest dict (also written to ``out_dir/manifest.json``); ``manifest["ok"]``
        is False when an artifact failed, ``manifest["failed"]`` says why.

    Raises:
        ValueError: bad arguments, head out of range, not a SiLa model, wrong image shapes,
            ``int8`` without calibration images, an ``out_dir`` holding foreign files.
        PermissionError: ``out_dir`` cannot be written.
        export.deps.MissingDependencyError: an optional package is missing.

    Example:
        >>> import sila_keras, export
        >>> m = sila_keras.build_sila_model("resnet20", 10, num_heads=3)
        >>> manifest = export.export_head(m, 2, "/tmp/head2", formats="tflite,onnx")  # doctest: +SKIP
        >>> manifest["artifacts"]["tflite"]["parity"]["passed"]  # doctest: +SKIP
        True
    """
    from sila_keras.core.heads import extract_head
    from sila_keras.training.precision import as_float32, is_float32, mixed_policy

    plan, options = _validate(model, head, formats, quantize, opset, tolerances,
                              tflite_outputs=tflite_outputs, int8_io=int8_io,
                              allow_flex=allow_flex, metadata=metadata)
    if not is_float32(model):  # trained with --mixed-precision: deployed models are float32
        options = {**options, "trained_precision": mixed_policy(model)}
        _say(verbose, f"Model '{model.name}' computes in {options['trained_precision']}: "
                      "exporting a float32 copy with the same weights")
        model = as_float32(model)
    input_shape = tuple(int(d) for d in model.input_shape[1:])
    cal = inputs.calibration_images(calibration, input_shape)
    if any(s.quantization == "int8" for s in plan) and cal is None:
        raise ConfigError(
            "int8 quantization needs calibration images (a representative set of real inputs). "
            "Received: calibration=None. Pass --calibration DATASET (folder:PATH or a tfds name), "
            "export from a run directory whose training data can be loaded, or drop int8 from --quantize."
        )
    eval_x, eval_y = inputs.eval_arrays(eval_data, input_shape)
    if any(s.quantization == "int8" for s in plan) and eval_y is None:
        raise ConfigError(
            "The int8 gate judges accuracy on labelled held-out images, and none were given. "
            "Received: eval_data=None. Pass --eval DATASET (its test split), export from a run "
            "directory whose test split can be loaded, or (Python) eval_data=(images, labels); "
            "never the calibration images.")
    out_dir = prepare_out_dir(out_dir)
    images, labels, image_note = inputs.parity_images(eval_x, eval_y, sample_images, sample_note, cal,
                                                parity_samples, input_shape)
    names = inputs.check_class_names(class_names, model)

    sub = art.to_builtin_layers(extract_head(model, int(head)))  # deployed heads: built-ins only
    _say(verbose, f"Head {head} of '{model.name}': checking it against sila_logits on {len(images)} images")
    reference = inputs.keras_logits(sub, images)
    slice_check = inputs.verify_slice(model, reference, images, int(head))
    export_model = art.build_export_model(sub)
    tflite_model = (export_model if options["tflite_outputs"] == art.OUTPUTS
                    else art.build_export_model(sub, options["tflite_outputs"]))
    phone = phone_context(model, sub, int(head), names, source, model_info, options)

    results, failed, staged = {}, {}, {}
    staging = Path(tempfile.mkdtemp(prefix=outdir.STAGING_PREFIX, dir=out_dir))
    try:
        saved_model = None
        own_source = tflite_model is not export_model or "savedmodel" not in options["formats"]
        if any(s.family == "tflite" for s in plan) and own_source:
            try:  # TFLite is converted from a SavedModel with its outputs; this one is not kept
                saved_model = _write_quiet(lambda p: art.write_savedmodel(tflite_model, p, input_shape),
                                           staging / "_tflite_source")
            except Exception as e:  # noqa: BLE001 - reported on each TFLite artifact
                options = {**options, "savedmodel_error": _one_line(e)}
        for spec in plan:
            _say(verbose, f"  {spec.name:15s} → {spec.file} …")
            entry = _export_one(spec, staging, sub, export_model, saved_model, cal, input_shape,
                                options, images, reference, labels, latency_runs, phone,
                                say=lambda text: _say(verbose, text))
            path = entry.pop("staged", None)
            if spec.family == "savedmodel" and path is not None and not own_source:
                saved_model = path  # TFLite converts from the verified SavedModel
            if entry.get("error"):
                reason = entry.pop("error")
                failed[spec.name] = {"reason": reason, **entry}
                _say(verbose, f"    FAILED: {reason}")
            else:
                results[spec.name], staged[spec.file] = entry, path

        timing = time_tflite(results, staged, saved_model, staging, images, latency_runs)
        keras_acc = parity.accuracy(reference, labels) if labels is not None else None
        manifest = report.build_manifest(
            model=model, head_model=sub, head=int(head), out_dir=out_dir, source=source,
            class_names=names, input_shape=input_shape, options=options, artifacts=results, failed=failed,
            slice_check=slice_check, image_note=image_note, n_images=len(images),
            keras_accuracy=keras_acc,
            calibration_count=len(cal) if any(sp.quantization == "int8" for sp in plan) else None,
            data_notes=dict(data_notes or {}), plan=plan)
        manifest.update(latency_reference=timing["reference"], warnings=timing["warnings"])
        outdir.commit(out_dir, staging, staged, [e["file"] for e in failed.values()], manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        print(report.summary_table(manifest), flush=True)
    if strict and not manifest["ok"]:
        raise ExportFailed(f"{len(failed)} artifact(s) failed: {', '.join(failed)}", manifest)
    return manifest


def export_heads(model, out_dir, heads: Sequence[int] | None = None, *, strict: bool = False,
                 verbose: int = 1, alone: dict | None = None, alone_note: str | None = None,
                 **kwargs) -> dict:
    """Export several heads (default: all) into ``out_dir/head_k``, plus ``heads.md``/``heads.csv``.

    Args:
        model: a SiLa model.
        out_dir: parent folder; head k goes to ``out_dir/head_k``.
        heads: head indices (default ``1..M``).
        strict: raise :class:`ExportFailed` after all heads when any artifact failed.
        verbose: 0 silent, 1 progress and tables.
        alone: ``{head: (mean, std, n)}`` of the sub-networks trained alone (an "alone"
            column; :func:`sila_keras.reports.study.alone_accuracy`); ``alone_note`` says where from.
        **kwargs: passed to :func:`export_head` (formats, quantize, calibration, …).

    Returns:
        ``{"heads": rows, "manifests": [...], "ok": bool}``; ``rows`` are the lines of
        ``heads.csv``: params, MiB, CR vs head 1, TFLite sizes, latency, accuracy.

    Raises:
        ValueError: a head out of range (before anything is exported), or as :func:`export_head`.
    """
    from sila_keras.core.heads import num_heads_of
    from sila_keras.utils import files

    m = num_heads_of(model)
    heads = list(range(1, m + 1)) if heads is None else list(heads)
    for k in heads:
        _validate(model, k, kwargs.get("formats", art.FORMATS), kwargs.get("quantize", DEFAULT_QUANTIZE),
                  kwargs.get("opset", 17), kwargs.get("tolerances"),
                  **{key: kwargs[key] for key in PHONE_OPTIONS if key in kwargs})
    out = prepare_out_dir(out_dir)
    manifests = [export_head(model, k, out / f"head_{k}", verbose=verbose, **kwargs) for k in heads]
    rows = report.heads_rows(manifests, alone)
    text = report.heads_markdown(rows, f"Heads of {model.name}", alone_note)
    files.write_csv(out / "heads.csv", rows, report.heads_columns(rows))
    files.write_text(out / "heads.md", text)
    if verbose:
        print("\n" + text, flush=True)
    result = {"heads": rows, "manifests": manifests, "ok": all(mf["ok"] for mf in manifests)}
    if strict and not result["ok"]:
        bad = [f"head_{mf['head']}: {', '.join(mf['failed'])}" for mf in manifests if not mf["ok"]]
        raise ExportFailed(f"artifacts failed ({'; '.join(bad)})", manifests[0])
    return result


# --------------------------------------------------------------------------- checks


def check_options(formats, quantize, opset: int = 17, tolerances=None, *,
                  tflite_outputs=art.DEFAULT_TFLITE_OUTPUTS, int8_io: str = "uint8",
                  allow_flex: bool = False, metadata: bool = True) -> dict:
    """Validate the export options (cheap: call it before loading anything).

    Returns:
        ``{"formats", "quantize", "opset", "tolerances", "tflite_outputs", "int8_io",
        "allow_flex", "metadata"}`` normalized.

    Raises:
        ValueError: unknown format/quantization, quantization without TFLite, bad opset or
            tolerance, unknown ``--tflite-outputs`` or ``--int8-io``.
        export.deps.MissingDependencyError: a package the formats need is not installed.
    """
    from sila_keras.utils.errors import ConfigError

    outputs = art.parse_outputs(tflite_outputs)
    if int8_io not in art.INT8_IO:
        raise ConfigError(f"Unknown --int8-io value {int8_io!r}. Available: {', '.join(art.INT8_IO)} "
                          "(uint8: raw pixels, what MediaPipe and NNAPI-style accelerators take). "
                          f"Received: --int8-io {int8_io}")
    formats = art.parse_choices(formats, art.FORMATS, "--formats")
    quantize = art.parse_choices(quantize, art.QUANTIZATIONS, "--quantize")
    if quantize != DEFAULT_QUANTIZE and "tflite" not in formats:
        raise ConfigError(f"--quantize applies to TFLite artifacts: add tflite to --formats. "
                         f"Received: formats={','.join(formats)}, quantize={','.join(quantize)}")
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not art.MIN_OPSET <= opset <= art.MAX_OPSET:
        raise ConfigError(f"`--opset` must be an integer in {art.MIN_OPSET}..{art.MAX_OPSET} "
                         f"(tf2onnx 1.17 supports opsets up to 18). Received: opset={opset}")
    tol = parity.resolve_tolerances(tolerances)
    deps.require(sorted({f for f in formats if f in deps.REQUIREMENTS}))
    if metadata and "tflite" in formats:
        deps.require(["tflite_metadata"])
    return {"formats": formats, "quantize": quantize, "opset": int(opset), "tolerances": tol,
            "tflite_outputs": outputs, "int8_io": int8_io, "allow_flex": bool(allow_flex),
            "metadata": bool(metadata)}


def check_head(model, head) -> int:
    """``head`` as an int in 1..M.

    Raises:
        ValueError: not a SiLa model, or the head is out of range (the valid heads listed).
    """
    from sila_keras.core.heads import num_heads_of

    m = num_heads_of(model)  # ValueError for a model without sila_logits
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not 1 <= head <= m:
        raise ConfigError(
            f"Head index out of range: model '{model.name}' has heads 1..{m} "
            f"({', '.join(f'head_{k}' for k in range(1, m + 1))}; head_1 is the base model). "
            f"Received: head={head}"
        )
    return int(head)


PHONE_OPTIONS = ("tflite_outputs", "int8_io", "allow_flex", "metadata")


def _validate(model, head, formats, quantize, opset, tolerances, **phone):
    from export import metadata as md

    options = check_options(formats, quantize, opset, tolerances, **phone)
    check_head(model, head)
    if any(d is None for d in model.input_shape[1:]):
        raise ConfigError(f"The model input needs a fixed (H, W, C) to export. "
                         f"Received: input_shape={model.input_shape}")
    if options["metadata"] and "tflite" in options["formats"]:
        md.check_channels(model.input_shape[1:])
    return art.plan(options["formats"], options["quantize"]), options


# --------------------------------------------------------------------------- one artifact


def _export_one(spec, staging, sub, export_model, saved_model, cal, input_shape, options,
                images, reference, labels, latency_runs, phone=None, say=None) -> dict:
    """Write one artifact into ``staging`` and verify it; ``entry["staged"]`` is its path
    (installed into the output folder only when the whole export commits), or
    ``entry["error"]`` says why it failed."""
    if spec.family == "tflite":
        return export_tflite(spec, staging, saved_model, cal, options, images, reference, labels,
                             latency_runs, phone, verify=_verify, one_line=_one_line, say=say)
    path = staging / spec.file
    entry = {"file": spec.file, "format": spec.family, "quantization": spec.quantization,
             "runtime": spec.runtime}
    t0 = time.perf_counter()
    try:
        if spec.family == "keras":
            art.write_keras(sub, path)
        elif spec.family == "savedmodel":
            _write_quiet(lambda p: art.write_savedmodel(export_model, p, input_shape), path)
        else:
            art.write_onnx(export_model, path, input_shape, options["opset"])
    except Exception as e:  # noqa: BLE001 - any converter failure is reported, not raised
        entry["error"] = f"conversion failed: {_one_line(e)}"
        return entry
    entry["convert_s"] = round(time.perf_counter() - t0, 2)
    if spec.family == "keras":
        entry["builtin_layers_only"] = True  # write_keras refuses custom classes
    return _verify(entry, spec, path, options, images, reference, labels, latency_runs)


def _verify(entry, spec, path, options, images, reference, labels, latency_runs) -> dict:
    """Size, parity in the artifact's runtime, accuracy, latency; ``entry["staged"]`` if it passes."""
    from export.runtimes import open_artifact

    entry["size_bytes"] = art.size_bytes(path)
    entry["size_mib"] = round(entry["size_bytes"] / 2**20, 3)
    if entry.get("flex_ops"):  # --allow-flex: nothing here links the Flex delegate
        entry["parity"] = {"passed": None, "checked": False, "criterion": (
            "not checked: neither ai_edge_litert nor TF 2.21's tf.lite.Interpreter links the Flex "
            "delegate; accepted unverified because of --allow-flex")}
        entry["staged"] = path
        return entry
    try:
        runner = open_artifact(spec, path)
        outputs = runner.predict(images)
    except Exception as e:  # noqa: BLE001
        entry["error"] = f"could not run in {spec.runtime}: {_one_line(e)}"
        return entry
    ref = reference if runner.output == "logits" else parity.softmax(reference)
    entry["parity"] = parity.compare(ref, outputs, spec.check, options["tolerances"], runner.output,
                                     labels=labels)
    if labels is not None:
        entry["accuracy"] = parity.accuracy(outputs, labels)
    if hasattr(runner, "input_details"):
        entry["input"] = runner.input_details
        entry["output"] = {"name": runner.output, **runner.output_details}
        entry["outputs"] = list(runner.outputs)
    if not entry["parity"]["passed"]:
        entry["error"] = parity.failure_reason(entry["parity"])
        return entry
    entry["latency"] = runner.latency_ms(images[:1], runs=latency_runs)
    del runner
    entry["staged"] = path
    return entry


def _write_quiet(write, path: Path) -> Path:
    """Run a writer that prints to stdout (ExportArchive), keeping the console clean."""
    import contextlib
    import io as _io

    with contextlib.redirect_stdout(_io.StringIO()):
        write(path)
    return path


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _say(verbose: int, text: str) -> None:
    if verbose:
        print(text, file=sys.stdout, flush=True)
