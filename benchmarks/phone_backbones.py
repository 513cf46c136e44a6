"""Phone-side compression of modern mobile backbones: heads 2 and 3 vs head 1 at 224 px.

SilaNet's Table 3 counts the parameters of the paper's CIFAR networks; this is the same
question for the backbones a phone app ships (``keras:MobileNetV2``, ``keras:MobileNetV3Small``
at 224×224, N = 10 classes, M = 3 heads): trainable parameters, TFLite size (float32 and
full-integer int8) and LiteRT latency (batch 1) of each extracted head, exported with the
project's exporter (``export.export_heads``).

    python benchmarks/phone_backbones.py [--models keras:MobileNetV2,keras:MobileNetV3Small]
                                         [--size 224] [--runs 30] [--json PATH]

Weights are random (``--weights none``): sizes and latency do not depend on their values, so
int8 agreement is recorded but not judged. int8 is calibrated on 32 random 0–255 images.
Latency is the median of ``--runs`` batch-1 calls in LiteRT with its default threading on
this machine's CPU; compare figures within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from sila_keras.core.sizes import float32_mib  # noqa: E402

DEFAULT_MODELS = ("keras:MobileNetV2", "keras:MobileNetV3Small")


def bench(model_name: str, size: int, out: Path, runs: int) -> list[dict]:
    """Export heads 1–3 of an untrained 3-head, 10-class ``model_name`` at ``size`` px."""
    import keras

    import export
    from sila_keras import build_sila_model

    model = build_sila_model(model_name, num_classes=10, num_heads=3, input_shape=(size, size, 3),
                             weights="none")
    taps = {k: tuple(model.get_layer(f"head_{k}_conv").input.shape[1:]) for k in (2, 3)}
    calibration = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    options = export.ExportOptions(formats="tflite", quantize="none,int8", latency_runs=runs,
                                   tolerances={"int8": 0.0, "int8-drop": 100.0})  # random weights:
    result = export.export_heads(model, out / model_name.replace(":", "_"), heads=[1, 2, 3],  # gate off
                                 options=options, calibration=calibration,
                                 eval_data=(calibration[:8], np.zeros(8, int)), verbose=0)
    keras.backend.clear_session()
    rows = []
    for row, manifest in zip(result["heads"], result["manifests"], strict=True):
        int8 = manifest["artifacts"].get("tflite_int8", {}).get("parity", {})
        rows.append({"model": model_name, **row, "tap": taps.get(row["head"]),
                     "int8_top1_agreement": int8.get("top1_agreement")})
    return rows


def print_table(rows: list[dict], size: int) -> None:
    print(f"{size}×{size} px, N=10, M=3; LiteRT batch 1, {platform.processor() or 'CPU'}, "
          f"{os.cpu_count()} CPU(s)")
    head = (f"{'model':22s} {'head':>4s} {'attached at':>14s} {'params':>10s} {'MiB':>6s} "
            f"{'CR %':>6s} {'fp32 MiB':>9s} {'int8 MiB':>9s} {'fp32 ms':>8s} {'int8 ms':>8s} "
            f"{'fp32 ×':>7s}")
    print(head)
    print("-" * len(head))
    base = {}
    for r in rows:
        if r["head"] == 1:
            base[r["model"]] = r
        b = base.get(r["model"], r)
        speedup = b["tflite_latency_ms"] / r["tflite_latency_ms"] if r["tflite_latency_ms"] else 0
        tap = "classifier" if r["tap"] is None else "×".join(str(d) for d in r["tap"])
        print(f"{r['model']:22s} {r['head']:>4d} {tap:>14s} {r['params']:>10,d} "
              f"{float32_mib(r['params']):>6.2f} {r['cr_percent']:>6.1f} {r['tflite_mib']:>9.2f} "
              f"{_f(r['tflite_int8_mib']):>9s} {r['tflite_latency_ms']:>8.2f} "
              f"{_f(r['tflite_int8_latency_ms']):>8s} {speedup:>6.2f}×")


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=30, help="timed batch-1 calls per artifact")
    p.add_argument("--out", default=None, help="keep the exported files here")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="phone_backbones_"))
    rows = []
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        rows += bench(name, args.size, out, args.runs)
    print_table(rows, args.size)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
