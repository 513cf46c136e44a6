"""SiLa overhead and input-pipeline speed (prints figures; not a test).

1. Step time of the M-head SiLa model vs the 1-head base model, same backbone, same batch,
   measured alternately in one process (so machine load affects both alike); median ratio.
2. Images/s of the tf.data training pipeline alone vs the training step.

    python benchmarks/sila_overhead.py [--models vgg19,resnet20] [--batch-size 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sila_keras import build_sila_model  # noqa: E402
from sila_keras.data.pipeline import train_dataset  # noqa: E402
from sila_keras.training.config import TrainConfig  # noqa: E402
from sila_keras.training.train import compile_model  # noqa: E402


def compiled(model_name: str, heads: int, batch: int):
    model = build_sila_model(model_name, 10, heads)
    compile_model(model, TrainConfig.create("bench", model_name, heads=heads, milestones=()), 10, steps=1)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, 32, 32, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, batch).astype(np.int32))
    return model, x, y


def time_steps(model, x, y, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y, return_dict=False)
    float(np.asarray(loss).ravel()[0])
    return (time.perf_counter() - t) / steps


def overhead(model_name: str, heads: int, batch: int, rounds: int, steps: int) -> dict:
    base = compiled(model_name, 1, batch)
    sila = compiled(model_name, heads, batch)
    for m in (base, sila):
        time_steps(*m, 2)  # trace + warm up
    tb, ts = [], []
    for _ in range(rounds):
        tb.append(time_steps(*base, steps))
        ts.append(time_steps(*sila, steps))
    ratios = [s / b for s, b in zip(ts, tb)]
    return {"model": model_name, "base_ms": 1e3 * statistics.median(tb),
            "sila_ms": 1e3 * statistics.median(ts), "ratio": statistics.median(ratios),
            "img_s": batch / statistics.median(tb)}


def pipeline_speed(batch: int, n: int = 4096, seconds: float = 5.0) -> float:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    from pipeline_speed import drain  # benchmarks/pipeline_speed.py (this script's folder)

    return drain(train_dataset(x, y, batch, seed=0, augment="standard", epochs=1000), seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg19,resnet20")
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    args = p.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU threads, batch {args.batch_size}")
    print(f"{'model':<12}{'1 head ms':>11}{f'{args.heads} heads ms':>12}{'ratio':>8}{'train img/s':>13}")
    results = []
    for name in args.models.split(","):
        r = overhead(name, args.heads, args.batch_size, args.rounds, args.steps)
        results.append(r)
        print(f"{name:<12}{r['base_ms']:>11.1f}{r['sila_ms']:>12.1f}{r['ratio']:>8.3f}{r['img_s']:>13.1f}",
              flush=True)
    pipe = pipeline_speed(args.batch_size)
    print(f"input pipeline (pad+crop+flip, batch {args.batch_size}): {pipe:,.0f} img/s")
    for r in results:
        print(f"  pipeline / {r['model']} train step: {pipe / r['img_s']:.1f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
