"""Run every benchmark and print their figures (``--quick``: a few minutes on 2 CPU cores).

Each benchmark runs in its own subprocess (fresh TensorFlow, no state shared between
them): SiLa overhead (``sila_overhead.py``), Keras vs PyTorch (``vs_pytorch.py``, skipped
with a note when PyTorch is absent), the input pipeline (``pipeline_speed.py``) and the
scaling estimate (``scaling.py``, fed the 1-head step times just measured). Step times
are measured alternately *within* each process, so the ratios hold on a loaded machine;
the load average is printed so absolute speeds can be judged. Results go to
``--out`` (JSON per benchmark + the combined log).

    python benchmarks/run_all.py --quick [--out bench-results]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FULL = {
    "overhead": ["--models", "vgg19,resnet18,mobilenetv1", "--batch-size", "32", "--rounds", "5",
                 "--steps", "3"],
    "vs_pytorch": ["--models", "resnet20,vgg19", "--rounds", "5", "--steps", "3"],
    "pipeline": [],
    "scaling": ["--models", "vgg19,resnet18"],
}
QUICK = {
    "overhead": ["--models", "resnet18,mobilenetv1", "--batch-size", "32", "--rounds", "2",
                 "--steps", "2"],
    "vs_pytorch": ["--models", "resnet20", "--rounds", "2", "--steps", "2"],
    "pipeline": ["--quick"],
    "scaling": ["--models", "vgg19,resnet18"],
}
ROW = re.compile(r"^(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def run(script: str, args: list[str], log, env: dict | None = None) -> str:
    """Run ``benchmarks/<script>`` with ``args`` (and extra ``env``); echo and log its
    output; return stdout."""
    cmd = [sys.executable, str(HERE / script), *args]
    extra = dict(env or {})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    shown = " ".join(f"{k}={v}" for k, v in extra.items())
    header = (f"\n$ {shown + ' ' if shown else ''}{' '.join(cmd[1:])}   "
              f"(load average {os.getloadavg()[0]:.1f})")
    print(header, flush=True)
    log.write(header + "\n")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    if proc.returncode:
        lines += [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()][-5:]
        lines.append(f"(exit {proc.returncode})")
    lines.append(f"({time.perf_counter() - t:.0f} s)")
    text = "\n".join(lines)
    print(text, flush=True)
    log.write(text + "\n")
    return proc.stdout


def sila_step_ms(overhead_stdout: str) -> dict[str, float]:
    """SiLa-model (M heads) ms/step per model from ``sila_overhead.py``'s table."""
    out = {}
    for line in overhead_stdout.splitlines():
        m = ROW.match(line.strip())
        if m:
            out[m.group(1)] = float(m.group(3))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer models and rounds (a few minutes)")
    p.add_argument("--out", default="bench-results", help="folder for the JSON results and the log")
    p.add_argument("--skip", default="", help="comma-separated: overhead, vs_pytorch, pipeline, scaling")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(plan)
    if unknown:
        print(f"run_all: error: unknown --skip {sorted(unknown)}. Available: {', '.join(plan)}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "run_all.log", "w") as log:
        log.write(f"{os.uname().nodename}: {os.cpu_count()} CPU threads; {'quick' if args.quick else 'full'}\n")
        steps = {}
        if "overhead" not in skip:
            steps = sila_step_ms(run("sila_overhead.py", plan["overhead"], log))
        if "vs_pytorch" not in skip:
            if importlib.util.find_spec("torch") is None:
                msg = "\nvs_pytorch skipped: PyTorch not installed (pip install torch==2.13.0)"
                print(msg)
                log.write(msg + "\n")
            else:  # TF's default kernels, then TF with oneDNN (PyTorch always uses oneDNN)
                run("vs_pytorch.py", [*plan["vs_pytorch"], "--json", str(out / "vs_pytorch.json")], log)
                run("vs_pytorch.py", [*plan["vs_pytorch"], "--json", str(out / "vs_pytorch_onednn.json")],
                    log, env={"TF_ENABLE_ONEDNN_OPTS": "1"})
        if "pipeline" not in skip:
            run("pipeline_speed.py", [*plan["pipeline"], "--json", str(out / "pipeline.json")], log)
        if "scaling" not in skip:
            extra = []
            known = {m: ms for m, ms in steps.items() if m in ("vgg19", "resnet18")}
            if known:
                extra = ["--step-ms", ",".join(f"{m}={ms}" for m, ms in known.items())]
            run("scaling.py", [*plan["scaling"], *extra, "--json", str(out / "scaling.json")], log)
        done = f"\nall benchmarks: {time.perf_counter() - t0:.0f} s; results in {out}/"
        print(done)
        log.write(done + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
