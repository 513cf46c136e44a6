"""Is the tf.data input pipeline ever the bottleneck? (prints figures; not a test)

Three measurements on CIFAR-sized in-memory uint8 images (what ``load_dataset`` gives):

1. images/s of the training pipeline alone (``sila_keras.data.pipeline.train_dataset``:
   per-example stateless pad+crop+flip in a parallel map, batching, prefetch) and of the
   eval pipeline, drained as fast as possible;
2. images/s of the SiLa train step alone (``train_on_batch`` on one resident batch);
3. ``fit`` throughput fed by the real pipeline vs fed by one already-materialised batch
   (``from_tensors(batch).repeat()``), alternating in one process: the slowdown the
   pipeline causes in actual training, where it shares the CPU with the step.

The goal is pipeline / train step ≥ 5× (then the pipeline needs ≤ 20 % of the CPU).

    python benchmarks/pipeline_speed.py [--models resnet20,vgg19] [--batch-size 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sila_keras import build_sila_model  # noqa: E402
from sila_keras.data.pipeline import eval_dataset, train_dataset  # noqa: E402
from sila_keras.training.config import TrainConfig  # noqa: E402
from sila_keras.training.train import compile_model  # noqa: E402


def fake_cifar(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def drain(ds, seconds: float) -> float:
    """Images/s pulled from ``ds`` (after 3 warm-up batches) for about ``seconds``."""
    it = iter(ds)
    for _ in range(3):
        next(it)
    count, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        count += int(next(it)[0].shape[0])
    return count / (time.perf_counter() - t)


def model_for(name: str, heads: int, batch: int):
    model = build_sila_model(name, 10, heads)
    compile_model(model, TrainConfig.create("bench", name, heads=heads, milestones=()), 10, steps=1)
    return model


def step_speed(model, x, y, steps: int, rounds: int) -> float:
    xb, yb = tf.constant(x.astype(np.float32)), tf.constant(y.astype(np.int32))
    model.train_on_batch(xb, yb)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(xb, yb, return_dict=False)
        float(np.asarray(loss).ravel()[0])
        times.append(time.perf_counter() - t)
    return len(y) * steps / statistics.median(times)


def fit_slowdown(model, x, y, batch: int, steps: int, rounds: int) -> dict:
    """Median img/s of ``fit`` with the real pipeline vs a resident batch, alternating
    (each ``fit`` call starts a fresh iterator, so its warm-up counts against the pipeline)."""
    real = train_dataset(x, y, batch, seed=0, augment="standard", epochs=10_000)
    first = next(iter(real))
    resident = tf.data.Dataset.from_tensors(first).repeat().prefetch(tf.data.AUTOTUNE)
    fits = {"pipeline": real, "resident": resident}
    for ds in fits.values():  # trace
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    times = {k: [] for k in fits}
    for _ in range(rounds):
        for k, ds in fits.items():
            t = time.perf_counter()
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            times[k].append(time.perf_counter() - t)
    out = {f"fit_{k}_img_s": batch * steps / statistics.median(v) for k, v in times.items()}
    out["fit_slowdown"] = statistics.median(a / b for a, b in zip(times["pipeline"], times["resident"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,vgg19")
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--examples", type=int, default=10_000, help="in-memory images to draw from")
    p.add_argument("--seconds", type=float, default=5.0, help="drain time per pipeline")
    p.add_argument("--steps", type=int, default=4, help="train steps per timed block")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fit-seconds", type=float, default=4.0, help="length of each timed fit block")
    p.add_argument("--quick", action="store_true", help="resnet20 only, short timings")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.examples, args.seconds, args.rounds = "resnet20", 2048, 2.0, 2
        args.fit_seconds = 2.0
    b = args.batch_size
    x, y = fake_cifar(args.examples)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU threads, batch {b}, "
          f"load average {os.getloadavg()[0]:.1f}")
    train_pipe = drain(train_dataset(x, y, b, seed=0, augment="standard", epochs=10_000), args.seconds)
    eval_pipe = drain(eval_dataset(x, y, b).repeat(), args.seconds)
    print(f"train pipeline (pad+crop+flip): {train_pipe:,.0f} img/s;  eval pipeline: {eval_pipe:,.0f} img/s")
    results = {"batch": b, "train_pipeline_img_s": train_pipe, "eval_pipeline_img_s": eval_pipe,
               "models": []}
    print(f"{'model':<12}{'step img/s':>11}{'pipe/step':>11}{'fit+pipe':>10}{'fit+resident':>14}"
          f"{'slowdown':>10}")
    for name in args.models.split(","):
        model = model_for(name, args.heads, b)
        step = step_speed(model, x[:b], y[:b], args.steps, args.rounds)
        fit_steps = max(args.steps, round(args.fit_seconds * step / b))  # ~fit_seconds per block
        r = {"model": name, "step_img_s": step, "pipeline_over_step": train_pipe / step,
             **fit_slowdown(model, x, y, b, fit_steps, args.rounds)}
        results["models"].append(r)
        print(f"{name:<12}{step:>11.1f}{r['pipeline_over_step']:>10.1f}×{r['fit_pipeline_img_s']:>10.1f}"
              f"{r['fit_resident_img_s']:>14.1f}{r['fit_slowdown']:>10.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
