"""Reproduce SilaNet's base-vs-SiLa comparison (not a test): several seeds per arm, then the report.

CPU scale (the default): ResNet-20 on real CIFAR-10 images from ``../shared/data``, base
(``--heads 1``) vs SiLa (``--heads 3``, β=0.1, λ=0.5), 3 seeds, a fixed budget of 15 epochs on
10,000 training / 2,000 test images that finishes in about an hour on 2 CPU cores:

    python benchmarks/reproduce_cpu.py [--out runs/reproduce_cpu] [--seeds 0,1,2] [--quick]

Paper scale, one command on a GPU machine (SilaNet Table 1: the paper's recipe, 260 epochs on
the full tfds dataset, β and λ from Table 1 for the model and dataset):

    python benchmarks/reproduce_cpu.py --paper --model resnet18 --dataset cifar10 --seeds 0,1,2

Finished runs are skipped and interrupted ones resumed, so the script can simply be started
again after a crash. The report (``python -m sila_keras.report``) lands in ``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

CPU_BUDGET = ["--limit-train", "10000", "--limit-test", "2000", "--epochs", "15", "--milestones", "8,12",
              "--gamma", "0.2", "--batch-size", "128", "--lr", "0.1"]
QUICK = ["--limit-train", "500", "--limit-test", "200", "--epochs", "2", "--milestones", "",
         "--batch-size", "64"]
PAPER_BUDGET: list[str] = []  # sila-train's defaults are the paper's recipe (260 epochs, …)

# SilaNet Table 1: (β, λ) per model on CIFAR-10 and CIFAR-100.
PAPER_HPARAMS = {
    "vgg19": {"cifar10": (0.05, 0.8), "cifar100": (0.3, 0.5)},
    "resnet18": {"cifar10": (0.1, 0.5), "cifar100": (0.1, 0.5)},
    "wrn40_10": {"cifar10": (0.1, 0.5), "cifar100": (0.1, 0.5)},
    "mobilenetv1": {"cifar10": (0.2, 0.5), "cifar100": (0.2, 0.5)},
    "densenet121": {"cifar10": (0.1, 0.5), "cifar100": (0.1, 0.5)},
    "inceptionv3": {"cifar10": (0.1, 0.5), "cifar100": (0.1, 0.5)},
}


def arms(model: str, dataset: str) -> dict[str, list[str]]:
    """The two arms: base (head 1 only) and SiLa (3 heads, the paper's β/λ where it gives them)."""
    beta, lam = PAPER_HPARAMS.get(model, {}).get(dataset.split(":")[-1], (0.1, 0.5))
    return {"base": ["--heads", "1"], "sila": ["--heads", "3", "--beta", str(beta), "--lam", str(lam)]}


def run_arm(out: Path, arm: str, arm_args: list[str], model: str, seed: int, budget: list[str],
            dataset: str) -> Path:
    name = f"{arm}-seed{seed}"
    run_dir = out / name
    if (run_dir / "summary.json").exists():
        print(f"[skip] {name}: finished", flush=True)
        return run_dir
    cmd = [sys.executable, "-m", "sila_keras.train", dataset, model, *arm_args, *budget,
           "--seed", str(seed), "--out", str(out), "--name", name]
    if (run_dir / "config.json").exists():
        cmd.append("--resume")
    print("$", " ".join(cmd), flush=True)
    t = time.time()
    # oneDNN kernels: 1.4-2.5x faster training on CPUs where TensorFlow leaves them off
    # (benchmarks/RESULTS.md section 2); set TF_ENABLE_ONEDNN_OPTS=0 to compare.
    env = {"TF_ENABLE_ONEDNN_OPTS": "1", **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(cmd, check=True, env=env)
    print(f"[done] {name} in {time.time() - t:.0f}s", flush=True)
    return run_dir


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="runs and report go here (default runs/reproduce_cpu, or runs/paper-DATASET-MODEL)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run per arm each")
    p.add_argument("--model", default=None, help="backbone (default resnet20; --paper: resnet18)")
    p.add_argument("--dataset", default=None,
                   help=f"dataset (default folder:{DATA.relative_to(ROOT.parent)}; --paper: cifar10)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a 2-epoch smoke version")
    mode.add_argument("--paper", action="store_true",
                      help="the paper's full recipe (260 epochs, full data): for a GPU machine")
    p.add_argument("--extra", default="", help="more sila-train options, e.g. '--data-dir /data/tfds'")
    args = p.parse_args(argv)
    model = args.model or ("resnet18" if args.paper else "resnet20")
    dataset = args.dataset or ("cifar10" if args.paper else f"folder:{DATA}")
    out = args.out or ROOT / "runs" / (f"paper-{dataset.split(':')[-1]}-{model}" if args.paper else "reproduce_cpu")
    budget = (PAPER_BUDGET if args.paper else QUICK if args.quick else CPU_BUDGET) + args.extra.split()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, e.g. 0,1,2. Received: {args.seeds!r}")
    arm_args = arms(model, dataset)
    runs = [run_arm(out, arm, arm_args[arm], model, s, budget, dataset) for s in seeds for arm in arm_args]
    subprocess.run([sys.executable, "-m", "sila_keras.report", *map(str, runs),
                    "--out", str(out / "report.md")], check=True)
    for arm in arm_args:
        summaries = [json.loads((out / f"{arm}-seed{s}" / "summary.json").read_text()) for s in seeds]
        for key in ("final_acc", "best_acc"):
            mean, std = mean_std([s["heads"]["head_1"][key] for s in summaries])
            print(f"{arm:>5}: head_1 {key.replace('_acc', '')} test accuracy {100 * mean:.2f} ± {100 * std:.2f} % "
                  f"over seeds {seeds}")
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
