"""What each TFLite variant of a trained head costs and keeps: the table in docs/export.md.

For each run directory: ``python -m export RUN --head K --formats tflite --quantize
none,float16,dynamic,int8`` (the int8 gate judges the run's own held-out test split), then
the **plain** full-integer file is rebuilt from the same calibration next to what shipped
(which may be selective), and every file is timed side by side in LiteRT
(:func:`export.latency.measure`: batch 1, 2 threads, invoke()). ``--calibration-sweep``
re-calibrates plain int8 on more or fewer class-balanced training images to show whether
more calibration helps.

    python benchmarks/int8_schemes.py RUN [RUN …] [--head 2] [--eval-samples 1000]
        [--calibration-samples 200] [--calibration-sweep 50,200,1000] [--force-selective 0]
        [--calls 300] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILES = (("tflite", "fp32"), ("tflite_float16", "fp16"), ("tflite_dynamic", "dynamic"),
         ("tflite_int8", "int8 shipped"))


def _data_args(args, calibration_samples: int) -> argparse.Namespace:
    return argparse.Namespace(eval=None, calibration=None, data_dir=None,
                              calibration_samples=calibration_samples,
                              eval_samples=args.eval_samples, parity_samples=args.eval_samples)


def bench_run(run: str, args, work: Path) -> list[dict]:
    import numpy as np

    from export import artifacts as art
    from export import cli, gate, latency, quantize
    from export.parity import resolve_tolerances
    from export.runtimes import LiteRTRunner
    from export.source import load_source
    from sila_keras import extract_head

    out = work / Path(run).name
    rc = cli.main([run, "--head", str(args.head), "--formats", "tflite", "--quantize",
                   "none,float16,dynamic,int8", "--eval-samples", str(args.eval_samples),
                   "--calibration-samples", str(args.calibration_samples), "--latency-runs", "5",
                   "--out", str(out), "--quiet"])
    manifest = json.loads((out / "manifest.json").read_text())
    src = load_source(run)
    data = cli.load_data(_data_args(args, args.calibration_samples), src, True)
    x, y = data["eval_data"]
    sub = art.to_builtin_layers(extract_head(src.model, args.head))
    reference = sub.predict(np.asarray(x, np.float32), batch_size=64, verbose=0)
    saved = work / f"{Path(run).name}_sm"
    art.write_savedmodel(art.build_export_model(sub, ("probabilities",)), saved, src.input_shape)
    tol = resolve_tolerances(None)

    def judge(path):
        runner = LiteRTRunner(path)
        return gate.judge(gate.softmax(reference), runner.predict(x), y, tol, "probabilities")

    files = {label: out / manifest["artifacts"][name]["file"] for name, label in FILES
             if name in manifest["artifacts"]}
    forced = {}
    if args.force_selective is not None:  # what selective int8 costs where plain int8 would pass
        sel = work / f"{Path(run).name}_selective"
        cli.main([run, "--head", str(args.head), "--formats", "tflite", "--quantize", "int8",
                  "--eval-samples", str(args.eval_samples), "--calibration-samples",
                  str(args.calibration_samples), "--tolerance", f"int8-drop={args.force_selective}",
                  "--latency-runs", "5", "--out", str(sel), "--quiet"])
        forced = json.loads((sel / "manifest.json").read_text())["artifacts"].get("tflite_int8", {})
        if forced:
            files[f"int8 selective (int8-drop={args.force_selective})"] = sel / forced["file"]
    calibrated = quantize.calibrate(saved, data["calibration"])
    plain = work / f"{Path(run).name}_plain_int8.tflite"
    plain.write_bytes(quantize.quantize(calibrated))
    files["int8 plain"] = plain
    timings = latency.measure(files, x[:1], args.calls)
    rows = []
    for label, path in files.items():
        name = next((n for n, lab in FILES if lab == label), None)
        entry = manifest["artifacts"].get(name, {}) if name else forced if "selective" in label else {}
        g = judge(path)
        rows.append({"run": Path(run).name, "head": args.head, "file": label,
                     "scheme": entry.get("scheme", "int8" if label == "int8 plain" else None),
                     "bytes": path.stat().st_size, "agreement_all": entry.get("parity", {}).get("top1_agreement"),
                     "agreement_confident": g["confident_agreement"], "confident_images": g["confident_images"],
                     "accuracy": g["int8_accuracy"], "float_accuracy": g["float_accuracy"],
                     "float_mac_share": entry.get("float_mac_share", 0.0 if label == "int8 plain" else None),
                     "float_layers": [f["op"] for f in entry.get("float_layers", [])],
                     "median_ms": timings[label]["median_ms"], "min_ms": timings[label]["min_ms"],
                     "vs_fp32": round(timings[label]["median_ms"] / timings["fp32"]["median_ms"], 3),
                     "pieces": timings[label]["delegate_pieces"], "gate_passed": g["passed"],
                     "export_rc": rc})
    for n in args.calibration_sweep:
        cal = cli.load_data(_data_args(args, n), src, True)["calibration"]
        path = work / f"sweep_{n}.tflite"
        path.write_bytes(quantize.quantize(quantize.calibrate(saved, cal)))
        g = judge(path)
        rows.append({"run": Path(run).name, "head": args.head, "file": f"int8 plain, {len(cal)} calibration images",
                     "accuracy": g["int8_accuracy"], "float_accuracy": g["float_accuracy"],
                     "agreement_confident": g["confident_agreement"], "accuracy_drop": g["accuracy_drop"]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories written by sila-train")
    p.add_argument("--head", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=1000, help="held-out test images (class-balanced)")
    p.add_argument("--calibration-samples", type=int, default=200)
    p.add_argument("--calibration-sweep", default="", help="comma-separated calibration sizes to compare")
    p.add_argument("--force-selective", type=float, default=None, metavar="DROP",
                   help="also export int8 with --tolerance int8-drop=DROP (e.g. 0: selective)")
    p.add_argument("--calls", type=int, default=300, help="timed LiteRT calls per file (at least)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.calibration_sweep = [int(v) for v in args.calibration_sweep.split(",") if v.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8_schemes_") as tmp:
        for run in args.runs:
            rows += bench_run(run, args, Path(tmp))
    for r in rows:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": platform.processor() or platform.machine(),
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
