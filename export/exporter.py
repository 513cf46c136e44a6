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

import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export import artifacts as art
from export import inputs, outdir, parity, report
from export.options import ExportOptions
from export.outdir import prepare_out_dir
from export.phone import export_tflite, phone_context, time_tflite
from sila_keras.utils.errors import ConfigError, RunFailed


class ExportFailed(RunFailed):
    """Raised by :func:`export_head` with ``strict=True`` when an artifact failed (exit 3)."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


@dataclasses.dataclass(frozen=True)
class HeadExport:
    """One head on its way out: what its artifacts are written from and checked against.

    Attributes:
        model: the SiLa model (a float32 copy when it was trained in mixed precision).
        head: k in 1..M.
        out_dir: the output folder (checked and created).
        options: the export settings.
        trained_precision: the dtype policy ``model`` was trained in.
        input_shape: ``(H, W, C)``.
        calibration: float32 images for int8 calibration, or None.
        head_model: head k as extracted, built-in Keras layers only (``model.keras``).
        export_model: the head with logits and probabilities outputs (SavedModel, ONNX).
        tflite_model: the head with the TFLite outputs (``export_model`` when those are both).
        images: the parity images; ``image_note`` says where they come from.
        reference: the Keras head's logits on ``images``, which every artifact must reproduce.
        labels: the labels of ``images`` (eval data), or None.
        slice_check: ``reference`` compared with slice k of ``sila_logits``.
        class_names: one name per class, or None.
        source: where the model came from (for the manifest and the metadata).
        phone: labels, layer names and metadata of the TFLite files
            (:func:`export.phone.phone_context`).
    """

    model: Any
    head: int
    out_dir: Path
    options: ExportOptions
    trained_precision: str
    input_shape: tuple[int, ...]
    calibration: np.ndarray | None
    head_model: Any
    export_model: Any
    tflite_model: Any
    images: np.ndarray
    image_note: str
    reference: np.ndarray
    labels: np.ndarray | None
    slice_check: dict
    class_names: list[str] | None
    source: str | None
    phone: dict

    @property
    def own_tflite_source(self) -> bool:
        """TFLite converts from a SavedModel of its own, not from the exported one."""
        return self.tflite_model is not self.export_model or "savedmodel" not in self.options.formats


def export_head(model, head: int, out_dir, *, options: ExportOptions | None = None,
                calibration=None, eval_data=None, class_names: Sequence[str] | None = None,
                sample_images=None, sample_note: str | None = None, source: str | None = None,
                data_notes: Mapping[str, str] | None = None,
                model_info: Mapping[str, str] | None = None,
                strict: bool = False, verbose: int = 1) -> dict:
    """Export head ``head`` of a SiLa model to deployable, parity-checked artifacts.

    Args:
        model: a SiLa model (a ``keras.Model`` with a ``sila_logits`` layer).
        head: k in 1..M (1 = the base model).
        out_dir: output folder; artifacts, ``labels.txt`` and ``manifest.json`` go there.
        options: formats, quantization, opset, tolerances, TFLite outputs and int8 I/O,
            metadata, latency runs and parity images (:class:`export.ExportOptions`;
            default: its defaults).
        calibration: real images ``(n, H, W, C)`` (0–255) for int8 calibration, or an
            ``ImageData`` (its training images). Required for ``int8``.
        eval_data: ``(images, labels)`` or an ``ImageData`` (its test split): each
            format's accuracy is measured on it, and it serves as the parity images.
        class_names: N names (default ``class_0`` …).
        sample_images: parity images when there is no ``eval_data`` (default: the
            calibration images, else 64 random images, noted in the manifest).
        sample_note: where ``sample_images`` come from (for the manifest).
        source: where the model came from (for the manifest).
        data_notes: ``{"calibration": ..., "eval": ...}`` dataset descriptions.
        model_info: ``name``, ``description``, ``version``, ``author``, ``license`` for
            the metadata (defaults derived from the model and ``source``).
        strict: raise :class:`ExportFailed` when an artifact fails (after writing the manifest).
        verbose: 0 silent, 1 progress lines and the summary table.

    Returns:
        The manifest dict (also written to ``out_dir/manifest.json``); ``manifest["ok"]``
        is False when an artifact failed, ``manifest["failed"]`` says why.

    Raises:
        ValueError: head out of range, not a SiLa model, wrong image shapes, ``int8``
            without calibration images, an ``out_dir`` holding foreign files (and bad
            settings: :class:`export.ExportOptions`).
        PermissionError: ``out_dir`` cannot be written.
        export.deps.MissingDependencyError: an optional package is missing (the default
            ``options`` need them all).

    Example:
        >>> import sila_keras, export
        >>> m = sila_keras.build_sila_model("resnet20", 10, num_heads=3)
        >>> opts = export.ExportOptions(formats="tflite,onnx")  # doctest: +SKIP
        >>> manifest = export.export_head(m, 2, "/tmp/head2", options=opts)  # doctest: +SKIP
        >>> manifest["artifacts"]["tflite"]["parity"]["passed"]  # doctest: +SKIP
        True
    """
    options = options or ExportOptions()
    head = _check_model(model, head, options)
    job = _prepare(model, head, out_dir, options, calibration=calibration, eval_data=eval_data,
                   class_names=class_names, sample_images=sample_images, sample_note=sample_note,
                   source=source, model_info=model_info, verbose=verbose)
    staging = Path(tempfile.mkdtemp(prefix=outdir.STAGING_PREFIX, dir=job.out_dir))
    try:
        results, failed, staged, timing = _write_artifacts(job, staging, verbose)
        manifest = _manifest(job, results, failed, data_notes)
        manifest.update(latency_reference=timing["reference"], warnings=timing["warnings"])
        outdir.commit(job.out_dir, staging, staged, [e["file"] for e in failed.values()], manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        print(report.summary_table(manifest), flush=True)
    if strict and not manifest["ok"]:
        raise ExportFailed(f"{len(failed)} artifact(s) failed: {', '.join(failed)}", manifest)
    return manifest


def export_heads(model, out_dir, heads: Sequence[int] | None = None, *,
                 options: ExportOptions | None = None, strict: bool = False, verbose: int = 1,
                 alone: dict | None = None, alone_note: str | None = None, **kwargs) -> dict:
    """Export several heads (default: all) into ``out_dir/head_k``, plus ``heads.md``/``heads.csv``.

    Args:
        model: a SiLa model.
        out_dir: parent folder; head k goes to ``out_dir/head_k``.
        heads: head indices (default ``1..M``).
        options: the export settings of every head (:class:`export.ExportOptions`).
        strict: raise :class:`ExportFailed` after all heads when any artifact failed.
        verbose: 0 silent, 1 progress and tables.
        alone: ``{head: (mean, std, n)}`` of the sub-networks trained alone (an "alone"
            column; :func:`sila_keras.reports.study.alone_accuracy`); ``alone_note`` says where from.
        **kwargs: passed to :func:`export_head` (calibration, eval_data, class_names, …).

    Returns:
        ``{"heads": rows, "manifests": [...], "ok": bool}``; ``rows`` are the lines of
        ``heads.csv``: params, MiB, CR vs head 1, TFLite sizes, latency, accuracy.

    Raises:
        ValueError: a head out of range (before anything is exported), or as :func:`export_head`.
    """
    from sila_keras.core.heads import num_heads_of
    from sila_keras.utils import files

    options = options or ExportOptions()
    m = num_heads_of(model)
    heads = list(range(1, m + 1)) if heads is None else list(heads)
    for k in heads:
        _check_model(model, k, options)
    out = prepare_out_dir(out_dir)
    manifests = [export_head(model, k, out / f"head_{k}", options=options, verbose=verbose, **kwargs)
                 for k in heads]
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


def _check_model(model, head, options: ExportOptions) -> int:
    """``head`` checked (:func:`check_head`), and the model exportable with ``options``."""
    from export import metadata as md

    head = check_head(model, head)
    if any(d is None for d in model.input_shape[1:]):
        raise ConfigError(f"The model input needs a fixed (H, W, C) to export. "
                         f"Received: input_shape={model.input_shape}")
    if options.writes_metadata:
        md.check_channels(model.input_shape[1:])
    return head


def _check_data(options: ExportOptions, calibration, eval_data, input_shape):
    """``(calibration images or None, (eval images, labels) or (None, None))``, checked.

    Raises:
        ValueError: images of the wrong shape, or ``int8`` without calibration images or
            without labelled held-out images (the int8 gate's data).
    """
    cal = inputs.calibration_images(calibration, input_shape)
    if options.needs_calibration and cal is None:
        raise ConfigError(
            "int8 quantization needs calibration images (a representative set of real inputs). "
            "Received: calibration=None. Pass --calibration DATASET (folder:PATH or a tfds name), "
            "export from a run directory whose training data can be loaded, or drop int8 from --quantize."
        )
    eval_x, eval_y = inputs.eval_arrays(eval_data, input_shape)
    if options.needs_calibration and eval_y is None:
        raise ConfigError(
            "The int8 gate judges accuracy on labelled held-out images, and none were given. "
            "Received: eval_data=None. Pass --eval DATASET (its test split), export from a run "
            "directory whose test split can be loaded, or (Python) eval_data=(images, labels); "
            "never the calibration images.")
    return cal, (eval_x, eval_y)


# --------------------------------------------------------------------------- steps


def _prepare(model, head: int, out_dir, options: ExportOptions, *, calibration, eval_data,
             class_names, sample_images, sample_note, source, model_info, verbose) -> HeadExport:
    """Check the data, create ``out_dir``, extract the head and prove it is slice ``head`` of
    ``sila_logits``, and build the models the artifacts are written from."""
    from sila_keras.core.heads import extract_head

    model, precision = _as_float32(model, verbose)
    input_shape = tuple(int(d) for d in model.input_shape[1:])
    cal, (eval_x, eval_y) = _check_data(options, calibration, eval_data, input_shape)
    out_dir = prepare_out_dir(out_dir)
    images, labels, image_note = inputs.parity_images(eval_x, eval_y, sample_images, sample_note,
                                                      cal, options.parity_samples, input_shape)
    names = inputs.check_class_names(class_names, model)

    sub = art.to_builtin_layers(extract_head(model, head))  # deployed heads: built-ins only
    _say(verbose, f"Head {head} of '{model.name}': checking it against sila_logits on {len(images)} images")
    reference = inputs.keras_logits(sub, images)
    slice_check = inputs.verify_slice(model, reference, images, head)
    export_model = art.build_export_model(sub)
    tflite_model = (export_model if options.tflite_outputs == art.OUTPUTS
                    else art.build_export_model(sub, options.tflite_outputs))
    phone = phone_context(model, sub, head, names=names, source=source, model_info=model_info,
                          outputs=options.tflite_outputs)
    return HeadExport(model=model, head=head, out_dir=out_dir, options=options,
                      trained_precision=precision, input_shape=input_shape, calibration=cal,
                      head_model=sub, export_model=export_model, tflite_model=tflite_model,
                      images=images, image_note=image_note, reference=reference, labels=labels,
                      slice_check=slice_check, class_names=names, source=source, phone=phone)


def _as_float32(model, verbose: int):
    """``(model computing in float32, the policy it was trained in)``: deployed models are
    float32; a model trained with --mixed-precision is exported as a copy with its weights."""
    from sila_keras.training.precision import as_float32, is_float32, mixed_policy

    if is_float32(model):
        return model, "float32"
    policy = mixed_policy(model)
    _say(verbose, f"Model '{model.name}' computes in {policy}: "
                  "exporting a float32 copy with the same weights")
    return as_float32(model), policy


def _write_artifacts(job: HeadExport, staging: Path, verbose: int):
    """Write and verify each planned artifact in ``staging``.

    Returns:
        ``(results, failed, staged, timing)``: the manifest entries of the verified artifacts
        and of the failed ones (by name), the staged path of each verified artifact (by file),
        and the LiteRT timing of the TFLite files next to float32
        (:func:`export.phone.time_tflite`, which adds it to their entries).
    """
    results, failed, staged = {}, {}, {}
    saved_model, source_error = _tflite_source(job, staging)
    for spec in job.options.plan:
        _say(verbose, f"  {spec.name:15s} → {spec.file} …")
        entry = _export_one(spec, job, staging, saved_model, source_error,
                            say=lambda text: _say(verbose, text))
        path = entry.pop("staged", None)
        if spec.family == "savedmodel" and path is not None and not job.own_tflite_source:
            saved_model = path  # TFLite converts from the verified SavedModel
        if entry.get("error"):
            reason = entry.pop("error")
            failed[spec.name] = {"reason": reason, **entry}
            _say(verbose, f"    FAILED: {reason}")
        else:
            results[spec.name], staged[spec.file] = entry, path
    timing = time_tflite(results, staged, saved_model, staging, job.images, job.options.latency_runs)
    return results, failed, staged, timing


def _tflite_source(job: HeadExport, staging: Path):
    """``(path, None)`` of the SavedModel TFLite files convert from when it cannot be the
    exported one (another set of outputs, or no SavedModel exported), ``(None, why)`` when it
    could not be written, ``(None, None)`` when not needed (yet)."""
    if not (job.own_tflite_source and any(s.family == "tflite" for s in job.options.plan)):
        return None, None
    try:  # TFLite is converted from a SavedModel with its outputs; this one is not kept
        return _write_quiet(lambda p: art.write_savedmodel(job.tflite_model, p, job.input_shape),
                            staging / "_tflite_source"), None
    except Exception as e:  # noqa: BLE001 - reported on each TFLite artifact
        return None, _one_line(e)


def _manifest(job: HeadExport, results: dict, failed: dict, data_notes) -> dict:
    labels, plan = job.labels, job.options.plan
    return report.build_manifest(
        model=job.model, head_model=job.head_model, head=job.head, out_dir=job.out_dir,
        source=job.source, class_names=job.class_names, input_shape=job.input_shape,
        options=job.options, trained_precision=job.trained_precision, artifacts=results,
        failed=failed, slice_check=job.slice_check, image_note=job.image_note,
        n_images=len(job.images),
        keras_accuracy=parity.accuracy(job.reference, labels) if labels is not None else None,
        calibration_count=len(job.calibration) if job.options.needs_calibration else None,
        data_notes=dict(data_notes or {}), plan=plan)


# --------------------------------------------------------------------------- one artifact


def _export_one(spec, job: HeadExport, staging: Path, saved_model, source_error,
                say=None) -> dict:
    """Write one artifact into ``staging`` and verify it; ``entry["staged"]`` is its path
    (installed into the output folder only when the whole export commits), or
    ``entry["error"]`` says why it failed. TFLite files convert from ``saved_model``
    (None: it could not be written, ``source_error`` says why when known)."""
    path = staging / spec.file
    entry = {"file": spec.file, "format": spec.family, "quantization": spec.quantization,
             "runtime": spec.runtime}
    if spec.family == "tflite":
        if saved_model is None:
            entry["error"] = ("conversion failed: the SavedModel it is converted from could not be "
                              "written" + (f" ({source_error})" if source_error else ""))
            return entry
        return export_tflite(entry, spec, path, job, saved_model, verify=_verify,
                             one_line=_one_line, say=say)
    t0 = time.perf_counter()
    try:
        if spec.family == "keras":
            art.write_keras(job.head_model, path)
        elif spec.family == "savedmodel":
            _write_quiet(lambda p: art.write_savedmodel(job.export_model, p, job.input_shape), path)
        else:
            art.write_onnx(job.export_model, path, job.input_shape, job.options.opset)
    except Exception as e:  # noqa: BLE001 - any converter failure is reported, not raised
        entry["error"] = f"conversion failed: {_one_line(e)}"
        return entry
    entry["convert_s"] = round(time.perf_counter() - t0, 2)
    if spec.family == "keras":
        entry["builtin_layers_only"] = True  # write_keras refuses custom classes
    return _verify(entry, spec, path, job)


def _verify(entry, spec, path, job: HeadExport) -> dict:
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
        outputs = runner.predict(job.images)
    except Exception as e:  # noqa: BLE001
        entry["error"] = f"could not run in {spec.runtime}: {_one_line(e)}"
        return entry
    ref = job.reference if runner.output == "logits" else parity.softmax(job.reference)
    entry["parity"] = parity.compare(ref, outputs, spec.check, job.options.tolerances, runner.output,
                                     labels=job.labels)
    if job.labels is not None:
        entry["accuracy"] = parity.accuracy(outputs, job.labels)
    if hasattr(runner, "input_details"):
        entry["input"] = runner.input_details
        entry["output"] = {"name": runner.output, **runner.output_details}
        entry["outputs"] = list(runner.outputs)
    if not entry["parity"]["passed"]:
        entry["error"] = parity.failure_reason(entry["parity"])
        return entry
    entry["latency"] = runner.latency_ms(job.images[:1], runs=job.options.latency_runs)
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
