"""Early-exit cascade of the SiLa heads, over seeds: one command from data to the table.

For each seed, the ``sila`` run of ``benchmarks/head_vs_alone.py`` (same presets; e.g.
ResNet-20, 10,000 class-balanced CIFAR-10 training images, 15 epochs, M = 3) is trained (or
kept when finished), then

1. ``python -m sila_keras.cascade RUN --target-drop D`` calibrates the thresholds on the
   training images the run left out (``--limit-train``: 40,000 of CIFAR-10's 50,000; never
   the test split) and measures Top-1 vs mean MACs on the test split;
2. ``python -m export RUN --cascade`` writes the TFLite segments, checks them in LiteRT
   against the Keras cascade and times them (mean LiteRT latency);

and ``OUT/cascade_seeds.{json,md}`` holds mean ± std over seeds of head 1 alone, each head
alone and the calibrated cascade (Top-1, mean MACs, mean latency). Rerun the same command to
resume (finished runs and cascades are kept; ``--redo-cascade`` recalibrates).

    python benchmarks/cascade_seeds.py folder:../shared/data/cifar10-jpg.tar.gz \\
        --model resnet20 --preset cifar10-10k-15ep --out bench/cascade-resnet20
    python benchmarks/cascade_seeds.py DATASET --preset smoke --out /tmp/cascade-smoke
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from head_vs_alone import (  # noqa: E402
    ARMS,
    DISTILL_ARMS,
    DISTILL_LEVERS,
    PRESETS,
    settings,
    variant_tag,
)
from head_vs_alone import build_parser as study_parser  # noqa: E402

from sila_keras.utils.rundir import RunDir, StudyDir  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="as for sila-train (folder:PATH or a tfds name)")
    p.add_argument("--model", default="resnet20", help="a registered backbone or keras:<Name>")
    p.add_argument("--preset", default="cifar10-10k-15ep", choices=sorted(PRESETS))
    p.add_argument("--seeds", default=None, help="comma-separated (default: the preset's)")
    p.add_argument("--target-drop", type=float, default=0.5,
                   help="Top-1 points below head 1 allowed on the calibration images")
    p.add_argument("--confidence", default="max", help="max, margin or entropy")
    p.add_argument("--calibration", default=None,
                   help="calibration DATASET (needed only when the runs train on every image)")
    p.add_argument("--latency-runs", type=int, default=100, help="timed calls per segment")
    p.add_argument("--arm", default="sila", choices=[a for a in ARMS if a != "alone"],
                   help="the benchmark arm whose runs cascade (default: sila)")
    p.add_argument("--train-args", default="",
                   help="more head_vs_alone.py flags, space-separated (e.g. '--head-module sep "
                        "--grad-equilibrium': the runs of that variant)")
    p.add_argument("--redo-cascade", action="store_true", help="recalibrate finished cascades")
    p.add_argument("--out", type=Path, required=True, help="the benchmark folder")
    return p


def run_variant(study: list[str], dataset: str, arm: str) -> str:
    """The run-name tag of ``arm``'s runs in the study these flags describe (one head module;
    the levers that apply to that arm), as ``head_vs_alone.py`` names them."""
    s = settings(study_parser().parse_args([dataset, *study]))
    if len(s["modules"]) != 1:
        raise SystemExit(f"cascade_seeds: error: one --head-module at a time (got "
                         f"{','.join(s['modules'])}); run the command once per module")
    levers = {k: v for k, v in s["levers"].items()
              if k not in DISTILL_LEVERS or arm in DISTILL_ARMS}
    return variant_tag(s["modules"][0], levers)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    seeds = [int(v) for v in (args.seeds or PRESETS[args.preset]["seeds"]).split(",") if v]
    here = Path(__file__).resolve().parent
    study = ["--model", args.model, "--preset", args.preset, "--arms", args.arm,
             "--seeds", ",".join(map(str, seeds)), "--out", str(args.out),
             *args.train_args.split()]
    variant = run_variant(study, args.dataset, args.arm)
    train = [sys.executable, str(here / "head_vs_alone.py"), args.dataset, *study]
    print("training:", " ".join(train), flush=True)
    if subprocess.call(train) != 0:
        raise SystemExit("cascade_seeds: error: training failed; fix it and rerun (finished "
                         "runs are kept)")
    from export.cli import main as export_main
    from sila_keras.reports.cascade import main as cascade_main

    rows = []
    for seed in seeds:
        run = StudyDir(args.out).run(args.arm, seed, variant)
        if args.redo_cascade or not (run / RunDir.CASCADE_JSON).is_file():
            argv = [str(run.path), "--target-drop", str(args.target_drop), "--confidence",
                    args.confidence] + (["--calibration", args.calibration]
                                        if args.calibration else [])
            if cascade_main(argv) != 0:
                raise SystemExit(f"cascade_seeds: error: sila-cascade {' '.join(argv)} failed")
        if export_main([str(run.path), "--cascade", "--latency-runs",
                        str(args.latency_runs)]) != 0:
            raise SystemExit(f"cascade_seeds: error: export {run.path} --cascade failed")
        rows.append(run.path)
    from sila_keras.reports.cascade_eval import seeds_table

    table = seeds_table(rows)
    from sila_keras.utils import files

    json_path, md_path = StudyDir(args.out).cascade_files(args.arm, variant)
    files.write_json(json_path, table)
    files.write_text(md_path, table["markdown"])
    print(table["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
