"""Size and LiteRT latency of head 2 vs head 1 (the base model), TFLite float32 and int8.

What SilaNet's compression buys on a phone: the head-2 model (the base network
cut at its second-to-last stage + a small auxiliary head) against the full base
model, exported with the same pipeline (``export.export_heads``) and timed in
LiteRT with batch 1.

    python benchmarks/export_bench.py [--backbones vgg19,resnet18] [--runs 50] [--out DIR]

Weights are untrained: file sizes and latency do not depend on their values
(int8 parity is therefore not judged here; it is recorded). int8 is calibrated
on real CIFAR-10 images from the shared data when available, else on random
images. Latency is the median of ``--runs`` batch-1 calls on this machine's
CPU with LiteRT's default threading; compare figures only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def calibration_images(n: int) -> tuple[np.ndarray, str]:
    """``n`` real CIFAR-10 training images if the shared archive is there, else random ones."""
    from sila_keras.data import load_dataset
    from tests import helpers as testing

    if testing.CIFAR_TAR.exists():
        root = testing.cifar_subset_folder(Path(tempfile.mkdtemp(prefix="bench_cifar_")),
                                           max(1, n // 10), 1)
        return load_dataset(f"folder:{root}").train_x[:n], "CIFAR-10 train images"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "random images (no shared data)"


def bench(backbone: str, out: Path, calibration: np.ndarray, runs: int) -> list[dict]:
    """Export heads 1 and 2 of an untrained 3-head ``backbone`` model; one row per head."""
    import export
    from sila_keras import build_sila_model

    model = build_sila_model(backbone, num_classes=10, num_heads=3)
    options = export.ExportOptions(formats="tflite", quantize="none,int8", latency_runs=runs,
                                   tolerances={"int8": 0.0, "int8-drop": 100.0})  # untrained: gate off
    result = export.export_heads(model, out / backbone, heads=[1, 2], options=options,
                                 calibration=calibration,
                                 eval_data=(calibration[:32], np.zeros(32, int)), verbose=0)
    rows = []
    for row, manifest in zip(result["heads"], result["manifests"], strict=True):
        int8 = manifest["artifacts"].get("tflite_int8", {}).get("parity", {})
        rows.append({"backbone": backbone, **row, "int8_top1_agreement": int8.get("top1_agreement")})
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'backbone':10s} {'head':>4s} {'params':>11s} {'CR %':>6s} {'fp32 MiB':>9s} "
            f"{'int8 MiB':>9s} {'fp32 ms':>8s} {'int8 ms':>8s} {'fp32 speed-up':>13s}")
    print(head)
    print("-" * len(head))
    base = {}
    for r in rows:
        if r["head"] == 1:
            base[r["backbone"]] = r
        b = base.get(r["backbone"], r)
        speedup = (b["tflite_latency_ms"] / r["tflite_latency_ms"]) if r["tflite_latency_ms"] else float("nan")
        print(f"{r['backbone']:10s} {r['head']:>4d} {r['params']:>11,d} {r['cr_percent']:>6.1f} "
              f"{r['tflite_mib']:>9.2f} {_f(r['tflite_int8_mib']):>9s} {r['tflite_latency_ms']:>8.2f} "
              f"{_f(r['tflite_int8_latency_ms']):>8s} {speedup:>12.2f}×")


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    from sila_keras import list_backbones

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbones", default="vgg19,resnet18", help="comma-separated backbone names")
    p.add_argument("--runs", type=int, default=50, help="timed batch-1 LiteRT calls per artifact")
    p.add_argument("--calibration-samples", type=int, default=100, help="int8 calibration images")
    p.add_argument("--out", default=None, help="where to write the exports (default: a temp dir)")
    args = p.parse_args(argv)
    wanted = [b.strip() for b in args.backbones.split(",") if b.strip()]
    available = [b for b in wanted if b in list_backbones()]
    for b in sorted(set(wanted) - set(available)):
        print(f"note: backbone '{b}' is not registered; skipped. Available: {', '.join(list_backbones())}")
    out = Path(args.out or tempfile.mkdtemp(prefix="export_bench_"))
    cal, cal_note = calibration_images(args.calibration_samples)
    print(f"int8 calibration: {len(cal)} {cal_note}; exports in {out}\n")
    rows = [r for b in available for r in bench(b, out, cal, args.runs)]
    print_table(rows)
    (out / "bench.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
