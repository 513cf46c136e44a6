"""Cross-worker metric reductions per step: one per metric vs one stacked (prints figures).

Starts 2 ``MultiWorkerMirroredStrategy`` workers on loopback, each training ResNet-20 with
3 SiLa heads on synthetic CIFAR batches, once with the stacked reduction of
:func:`sila_keras.devices.multiworker.reduce_scalars_stacked` (one all-reduce for all of a step's
scalar metrics) and once with one ``strategy.reduce`` per metric (the unstacked way). Prints
the number of metric all-reduces traced into one train step, the ms per step, and the
logged metrics of both (last step and epoch; they must be identical). The epoch-end reads
of the metrics' sync-on-read variables are Keras' own and the same in both.

    python benchmarks/metric_reduce.py [--steps 20] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import free_ports  # noqa: E402  (one owner: a local cluster's ports)


def worker(mode: str, steps: int, batch: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from sila_keras import build_sila_model, multiworker
    from sila_keras.devices.distribute import make_strategy
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import compile_model

    strategy = make_strategy("multiworker")
    calls = []
    real_reduce = strategy.reduce

    def counting_reduce(*a, **kw):  # count the reductions traced into Keras' step function
        if any(f.name == "one_step_on_data" for f in traceback.extract_stack()):
            calls.append(1)
        return real_reduce(*a, **kw)

    strategy.reduce = counting_reduce
    if mode == "per_metric":
        def per_leaf(values, strategy, other=None):
            def one(v):
                if multiworker._rank(v) == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return v if other is None else other(v)
            return tf.nest.map_structure(one, values)

        multiworker.reduce_scalars_stacked = per_leaf
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * 4, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch * 4).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    config = TrainConfig.create("bench", "resnet20", batch_size=batch, milestones=(), sync_bn=False)
    with strategy.scope():
        model = compile_model(build_sila_model("resnet20", 10, 3), config, 10, steps=1)
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)  # traces the train step once
    per_step = len(calls)
    last_batch = {}
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: last_batch.update(
        {k: float(v) for k, v in logs.items()}))
    t = time.perf_counter()
    hist = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[record])
    ms = 1000 * (time.perf_counter() - t) / steps
    print("RESULT " + json.dumps({"mode": mode, "reduces_traced": per_step, "ms_per_step": ms,
                                  "epoch_logs": {k: v[-1] for k, v in hist.history.items()},
                                  "step_logs": last_batch}), flush=True)


def run_pair(mode: str, steps: int, batch: int, timeout: int = 600) -> dict:
    workers = free_ports(2)
    procs = []
    for i in range(2):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                        "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", mode, "--steps", str(steps),
             "--batch-size", str(batch)], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    line = next((ln for ln in outs[0].splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"worker 0 failed:\n{outs[0][-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (2 workers)")
    p.add_argument("--worker", choices=("stacked", "per_metric"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.batch_size)
        return 0
    results = [run_pair(mode, args.steps, args.batch_size) for mode in ("per_metric", "stacked")]
    for r in results:
        print(f"{r['mode']:>10}: {r['reduces_traced']} metric all-reduce(s) per train step, "
              f"{r['ms_per_step']:.1f} ms/step")
    for key in ("step_logs", "epoch_logs"):
        same = results[0][key] == results[1][key]
        print(f"{key.replace('_', ' ')} identical: {same}")
        if not same:
            print(json.dumps([r[key] for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
