"""CPU-scale reproduction of SilaNet's claim on real CIFAR-10 images (not a test).

ResNet-20 base (``--heads 1``) vs SiLa (``--heads 3``, β=0.1, λ=0.5), several seeds each, a
fixed epoch budget that finishes in about an hour on 2 CPU cores, then the Markdown report
(``python -m sila_keras.report``). Finished runs are skipped and interrupted ones resumed, so
the script can simply be started again.

    python benchmarks/reproduce_cpu.py [--out runs/reproduce_cpu] [--seeds 0,1,2] [--quick]

The paper's full-scale recipe on a GPU machine is one command per arm (260 epochs, full data):

    sila-train cifar10 resnet18 --heads 1 --name base  &&  sila-train cifar10 resnet18 --name sila
    python -m sila_keras.report runs/base runs/sila --out report.md
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

BUDGET = ["--limit-train", "10000", "--limit-test", "2000", "--epochs", "15", "--milestones", "8,12",
          "--gamma", "0.2", "--batch-size", "128", "--lr", "0.1"]
QUICK = ["--limit-train", "500", "--limit-test", "200", "--epochs", "2", "--milestones", "",
         "--batch-size", "64"]
ARMS = {"base": ["--heads", "1"], "sila": ["--heads", "3", "--beta", "0.1", "--lam", "0.5"]}


def run_arm(out: Path, arm: str, seed: int, budget: list[str], dataset: str) -> Path:
    name = f"{arm}-seed{seed}"
    run_dir = out / name
    if (run_dir / "summary.json").exists():
        print(f"[skip] {name}: finished", flush=True)
        return run_dir
    cmd = [sys.executable, "-m", "sila_keras.train", dataset, "resnet20", *ARMS[arm], *budget,
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce_cpu")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--dataset", default=f"folder:{DATA}")
    p.add_argument("--quick", action="store_true", help="a 2-epoch smoke version")
    args = p.parse_args(argv)
    budget = QUICK if args.quick else BUDGET
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_arm(args.out, arm, s, budget, args.dataset) for s in seeds for arm in ARMS]
    subprocess.run([sys.executable, "-m", "sila_keras.report", *map(str, runs),
                    "--out", str(args.out / "report.md")], check=True)
    for arm in ARMS:
        accs = [json.loads((args.out / f"{arm}-seed{s}" / "summary.json").read_text())["heads"]["head_1"]["final_acc"]
                for s in seeds]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1)) ** 0.5
        print(f"{arm:>5}: head_1 test accuracy {100 * mean:.2f} ± {100 * std:.2f} % over seeds {seeds}")
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
