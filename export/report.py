"""The manifest of an export, its printed summary, and the ``--head all`` trade-off table."""

from __future__ import annotations

import importlib.metadata
import math
import time
from pathlib import Path

import numpy as np

from export.artifacts import INPUT_NAME, SIGNATURE
from sila_keras.utils.errors import ConfigError

MANIFEST_KIND = "sila-export"
MANIFEST_VERSION = 1
HEADS_COLUMNS = ("head", "params", "mib", "cr_percent", "macs", "keras_mib", "tflite_mib", "tflite_int8_mib",
                 "tflite_latency_ms", "tflite_int8_latency_ms", "accuracy", "tflite_accuracy",
                 "tflite_int8_accuracy", "ok")


def build_manifest(*, model, head_model, head, out_dir, source, class_names, input_shape, options,
                   trained_precision, artifacts, failed, slice_check, image_note, n_images,
                   keras_accuracy, calibration_count, data_notes, plan) -> dict:
    """Everything a deployer needs to know about one exported head (see docs/export.md);
    ``options`` is the :class:`export.ExportOptions` it was exported with."""
    from sila_keras.core.heads import extract_head, num_heads_of, trainable_params
    from sila_keras.core.sizes import compression_percent, count_macs, float32_mib

    n = int(head_model.output.shape[-1])
    names = list(class_names) if class_names else [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise ConfigError(f"`class_names` needs one name per class ({n}). Received: {len(names)} names")
    base_model = extract_head(model, 1)
    total, base, own = (trainable_params(model), trainable_params(base_model),
                        trainable_params(head_model))
    eval_block = None
    if keras_accuracy is not None:
        acc = {"keras_reference": keras_accuracy}
        acc.update({k: v["accuracy"] for k, v in artifacts.items() if "accuracy" in v})
        eval_block = {"dataset": data_notes.get("eval"), "images": n_images, "accuracy": acc}
    return {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(source) if source else model.name,
        "model_name": model.name,
        "head": head,
        "num_heads": num_heads_of(model),
        "head_layer": f"head_{head}",
        "input": input_block(model, input_shape),
        "outputs": {
            "logits": f"float32 (batch, {n}): head_{head} logits",
            "probabilities": f"float32 (batch, {n}): softmax of the logits",
            "tflite": list(options.tflite_outputs),
            "note": f"SavedModel signature '{SIGNATURE}' and ONNX outputs are named logits and "
                    "probabilities; the TFLite files have the outputs listed under 'tflite' "
                    "(default: probabilities only, what phone classifiers read); model.keras "
                    "outputs the logits only",
        },
        "class_names": names,
        "num_classes": n,
        "params": {
            "sila_model": total, "base_head_1": base, "head": own,
            "head_mib": round(float32_mib(own), 3), "base_mib": round(float32_mib(base), 3),
            "cr_percent": round(compression_percent(base, own), 2) if base else 0.0,
            "head_macs": count_macs(head_model), "base_macs": count_macs(base_model),
            "note": "trainable parameters (BN moving statistics excluded); CR = 1 − head/base; "
                    "MACs: multiply-accumulates of one image (convolutions and dense layers)",
        },
        "options": {"formats": list(options.formats), "quantize": list(options.quantize),
                    "opset": options.opset, "tolerances": options.tolerances,
                    "planned": [s.name for s in plan],
                    "tflite_outputs": list(options.tflite_outputs),
                    "int8_io": options.int8_io, "allow_flex": options.allow_flex,
                    "metadata": options.metadata, "trained_precision": trained_precision},
        "submodel_check": slice_check,
        "parity_images": {"source": image_note, "count": int(n_images)},
        "calibration": None if calibration_count is None else {
            "dataset": data_notes.get("calibration"), "images": int(calibration_count)},
        "eval": eval_block,
        "artifacts": {k: _clean(v) for k, v in artifacts.items()},
        "failed": {k: _clean(v) for k, v in failed.items()},
        "ok": not failed,
        "versions": versions(),
        "out_dir": str(out_dir),
    }


def input_block(model, input_shape) -> dict:
    """The serving input and the preprocessing the model does inside."""
    block = {
        "name": INPUT_NAME, "dtype": "float32", "layout": "NHWC",
        "shape": [None, *(int(d) for d in input_shape)], "range": [0, 255],
        "preprocessing": "feed raw pixel values 0–255 as float32 (no scaling outside the model); "
                         "the model standardizes each channel inside: (x − mean) / std",
        "int8_tflite": "model_int8.tflite (scheme int8 or int8-selective) takes raw uint8 pixels by "
                       "default (scale 1, zero point 0; --int8-io) and gives uint8 probabilities "
                       "(scale 1/256); the exact values are in artifacts.tflite_int8.input/output. "
                       "An int16x8 fallback takes float32 pixels 0–255",
    }
    try:
        layer = model.get_layer("normalize")
        block["mean"] = [round(float(v), 4) for v in np.ravel(np.asarray(layer.mean))]
        block["std"] = [round(math.sqrt(float(v)), 4) for v in np.ravel(np.asarray(layer.variance))]
    except (ValueError, AttributeError, TypeError):
        block["preprocessing"] = "feed raw pixel values 0–255 as float32, as the model was trained"
    return block


def versions() -> dict:
    import sila_keras

    out = {"sila_keras": sila_keras.__version__}
    for dist in ("tensorflow", "keras", "ai-edge-litert", "tf2onnx", "onnx", "onnxruntime",
                 "mediapipe"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _clean(entry: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in entry.items()}


# --------------------------------------------------------------------------- printed summary


def summary_table(manifest: dict) -> str:
    """A short fixed-width table: one line per artifact, failures with their reason."""
    p = manifest["params"]
    macs = (f", {p['head_macs'] / 1e6:.2f} MMACs (base {p['base_macs'] / 1e6:.2f})"
            if p.get("head_macs") is not None else "")
    lines = [f"Head {manifest['head']} of {manifest['model_name']}: {p['head']:,} params "
             f"(base {p['base_head_1']:,}, CR {p['cr_percent']:.1f}%){macs} → {manifest['out_dir']}",
             f"Parity on {manifest['parity_images']['count']} images: {manifest['parity_images']['source']}"]
    header = (f"{'artifact':16s} {'file':22s} {'MiB':>8s} {'max|Δlogit|':>12s} {'top-1 agr':>9s} "
              f"{'accuracy':>8s} {'ms/img':>8s}  status")
    lines += [header, "-" * len(header)]
    if manifest.get("eval"):
        acc = manifest["eval"]["accuracy"]["keras_reference"]
        lines.append(f"{'keras (ref)':16s} {'-':22s} {'':>8s} {'':>12s} {'':>9s} {_pct(acc):>8s} {'':>8s}")
    rows = [(k, v, "ok" if v.get("scheme") in (None, "float32", "float16", "dynamic", "int8")
             else f"ok ({v['scheme']})") for k, v in manifest["artifacts"].items()]
    rows += [(k, v, "FAILED") for k, v in manifest["failed"].items()]
    for name, entry, status in rows:
        par = entry.get("parity") or {}
        lat = (entry.get("latency") or {}).get("median_ms")
        lines.append(
            f"{name:16s} {entry.get('file', ''):22s} {_num(entry.get('size_mib'), '.3f'):>8s} "
            f"{_num(par.get('max_abs_diff'), '.2e'):>12s} {_pct(par.get('top1_agreement')):>9s} "
            f"{_pct(entry.get('accuracy')):>8s} {_num(lat, '.2f'):>8s}  {status}")
    for name, entry in manifest["failed"].items():
        lines.append(f"  {name}: {entry['reason']}")
    for name, entry in manifest["artifacts"].items():
        if entry.get("fallback"):
            lines.append(f"  {name}: {entry['fallback']}")
        lat = entry.get("latency") or {}
        if entry.get("format") == "tflite" and lat.get("vs_float32") is not None:
            lines.append(f"  {name}: LiteRT {lat['median_ms']:.3g} ms ({lat['vs_float32']:.2f}x float32, "
                         f"{lat.get('threads')} threads, {lat.get('delegate_pieces')} XNNPACK piece(s))")
        mp = entry.get("mediapipe") or {}
        if mp.get("runs"):
            lines.append(f"  {name}: MediaPipe ImageClassifier top-1 agreement "
                         f"{mp['top1_agreement']:.1%} on {mp['images']} images")
    lines += [f"  WARNING: {w}" for w in manifest.get("warnings", [])]
    return "\n".join(lines)


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


# --------------------------------------------------------------------------- --head all


def heads_rows(manifests: list[dict], alone: dict | None = None) -> list[dict]:
    """One row per exported head: size / accuracy / latency trade-off.

    ``alone``: ``{head: (mean, std, n)}``, the accuracy of each head's sub-network
    trained alone (:func:`sila_keras.reports.study.alone_accuracy`); adds ``alone_accuracy`` /
    ``alone_std`` / ``alone_seeds`` to every row (None for a head without one).
    """
    rows = []
    for m in manifests:
        a = m["artifacts"]
        acc = (m.get("eval") or {}).get("accuracy", {})

        def get(name, key, sub=None, _a=a):
            v = _a.get(name, {}).get(key)
            return v.get(sub) if isinstance(v, dict) and sub else v

        rows.append({
            "head": m["head"], "params": m["params"]["head"], "mib": m["params"]["head_mib"],
            "cr_percent": m["params"]["cr_percent"], "macs": m["params"].get("head_macs"),
            "keras_mib": get("keras", "size_mib"),
            "tflite_mib": get("tflite", "size_mib"), "tflite_int8_mib": get("tflite_int8", "size_mib"),
            "tflite_latency_ms": get("tflite", "latency", "median_ms"),
            "tflite_int8_latency_ms": get("tflite_int8", "latency", "median_ms"),
            "accuracy": acc.get("keras_reference"), "tflite_accuracy": acc.get("tflite"),
            "tflite_int8_accuracy": acc.get("tflite_int8"), "ok": m["ok"],
        })
        if alone is not None:  # a head-vs-alone benchmark was found
            mean, std, n = alone.get(m["head"], (None, None, 0))
            rows[-1].update(alone_accuracy=mean, alone_std=std, alone_seeds=n)
    return rows


def heads_columns(rows: list[dict]) -> tuple[str, ...]:
    """``heads.csv``'s columns: :data:`HEADS_COLUMNS`, plus the alone ones when present."""
    extra = ("alone_accuracy", "alone_std", "alone_seeds")
    return HEADS_COLUMNS + (extra if rows and "alone_accuracy" in rows[0] else ())


def heads_markdown(rows: list[dict], title: str, alone_note: str | None = None) -> str:
    """``heads.md``: the trade-off table a user reads to pick the head to ship.

    With an ``alone_accuracy`` in the rows, an "alone" column: the test accuracy of the
    head's sub-network trained by itself (same layers and recipe; mean ± std over seeds, from
    ``alone_note``'s benchmark), '—' where the benchmark has none.
    """
    alone = bool(rows) and "alone_accuracy" in rows[0]
    out = [f"# {title}", "",
           "Trainable params, float32 size (MiB), compression ratio vs head 1 (the base model), "
           "millions of multiply-accumulates per image (MMACs), TFLite file sizes, median batch-1 LiteRT latency, and accuracy on the eval data "
           "(Keras reference / TFLite fp32 / TFLite int8; '-' = not measured)."
           + (" alone: the same sub-network trained by itself, test split of the benchmark "
              f"(mean ± std over seeds; {alone_note})." if alone else ""), "",
           "| head | params | MiB | CR % | MMACs | TFLite MiB | int8 MiB | TFLite ms | int8 ms | "
           "acc | TFLite acc | int8 acc | ok |" + (" alone |" if alone else ""),
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--:|"
           + ("---:|" if alone else "")]
    for r in rows:
        cell = ""
        if alone:
            cell = " — |" if r["alone_accuracy"] is None else (
                f" {100 * r['alone_accuracy']:.1f}%" + (f" ± {100 * r['alone_std']:.1f}"
                                                         if r["alone_seeds"] > 1 else "") + " |")
        out.append(
            f"| {r['head']} | {r['params']:,} | {r['mib']:.3f} | {r['cr_percent']:.1f} | "
            f"{_num(None if r.get('macs') is None else r['macs'] / 1e6, '.2f')} | "
            f"{_num(r['tflite_mib'], '.3f')} | {_num(r['tflite_int8_mib'], '.3f')} | "
            f"{_num(r['tflite_latency_ms'], '.2f')} | {_num(r['tflite_int8_latency_ms'], '.2f')} | "
            f"{_pct(r['accuracy'])} | {_pct(r['tflite_accuracy'])} | {_pct(r['tflite_int8_accuracy'])} | "
            f"{'yes' if r['ok'] else 'NO'} |" + cell)
    return "\n".join(out) + "\n"
