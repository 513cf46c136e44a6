"""A ten-minute check of a GPU machine before a long run (prints figures; not a test).

    python benchmarks/gpu_check.py            # one or more GPUs: 2 logical GPUs on GPU 0
    python benchmarks/gpu_check.py --cpu      # no GPU: 2 logical CPUs, tiny sizes

1. **Environment**: Python, TensorFlow, Keras, CUDA/cuDNN build, each GPU's name and compute
   capability (bfloat16 from 8.0), the CPU.
2. **Correctness on 2 replicas** (2 logical GPUs carved out of GPU 0, or 2 logical CPUs):
   a training batch that leaves one replica with no example; ``--jit`` with 2 replicas; an
   inf gradient on replica 1 only under float16 loss scaling (the weights must stay finite
   and the scale must drop). Each prints PASS or FAIL with the reason; none stops the script.
   For information, also Keras' steps-per-execution > 1 with 2 replicas (keras#19246).
3. **Throughput**: ResNet-20 with 3 SiLa heads on one device, synthetic CIFAR batches held in
   memory: img/s at steps-per-execution 1 vs auto (what ``--steps-per-execution auto``
   resolves to here; on a CPU, where it is 1, also 32), and float32 vs mixed bfloat16 vs
   mixed float16.
4. **Augmentation**: img/s of the training input pipeline (standard, autoaugment,
   randaugment) drained without a model.

On one GPU expected 3–6 minutes, mostly graph and XLA compilation (not yet run on a GPU:
this was written on a CPU-only machine); ``--quick`` shortens timings. On the 2-core test
CPU, ``--cpu`` takes 3–6 minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

AUGMENTATIONS = ("standard", "autoaugment", "randaugment")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="no GPU: 2 logical CPUs and tiny sizes")
    p.add_argument("--batch-size", type=int, default=None,
                   help="throughput batch (default 128 on GPU, 32 with --cpu)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per round (default 200 on GPU, 8 with --cpu)")
    p.add_argument("--gpu-memory-mb", type=int, default=4096,
                   help="memory of each of the 2 logical GPUs carved out of GPU 0")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds per throughput case, alternating the cases (median)")
    p.add_argument("--quick", action="store_true", help="fewer steps and shorter drains")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- devices


def setup_devices(cpu: bool, memory_mb: int) -> list[str]:
    """Two logical devices for the replica checks (before TensorFlow starts). Returns their
    names; the throughput runs use the first one alone."""
    if cpu:
        tf.config.set_visible_devices([], "GPU")
        from sila_keras.devices.distribute import split_cpu

        split_cpu(2)
        return [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        sys.exit("gpu_check: no GPU visible to TensorFlow (see the environment above). "
                 "Install tensorflow[and-cuda], or run with --cpu.")
    if len(gpus) == 1:
        tf.config.set_logical_device_configuration(
            gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=memory_mb)] * 2)
    else:
        for g in gpus:
            tf.config.experimental.set_memory_growth(g, True)
    return [d.name for d in tf.config.list_logical_devices("GPU")][:2]


def environment() -> list[str]:
    import keras

    build = tf.sysconfig.get_build_info()
    lines = [f"python {platform.python_version()}  tensorflow {tf.__version__}  "
             f"keras {keras.__version__}  cuda {build.get('cuda_version', '-')}  "
             f"cudnn {build.get('cudnn_version', '-')}",
             f"cpu: {cpu_name()} ({os.cpu_count()} logical cores)"]
    for g in tf.config.list_physical_devices("GPU"):
        d = tf.config.experimental.get_device_details(g)
        cc = d.get("compute_capability")
        bf16 = ("bfloat16 yes" if cc and tuple(cc) >= (8, 0)
                else "bfloat16 no (float16 + loss scaling)")
        lines.append(f"gpu: {g.name} {d.get('device_name', '?')} compute capability "
                     f"{'.'.join(map(str, cc)) if cc else '?'} — {bf16}")
    if not tf.config.list_physical_devices("GPU"):
        lines.append("gpu: none visible")
    return lines


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --------------------------------------------------------------------------- correctness


def check(name: str, fn) -> bool:
    """Run one correctness case; print PASS/FAIL with the reason, never raise."""
    t = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as e:  # noqa: BLE001 - a diagnostic script reports every failure
        detail = f"{type(e).__name__}: {reason(e)}"
        if os.environ.get("GPU_CHECK_DEBUG"):
            traceback.print_exc()
        ok = False
    print(f"  {'PASS' if ok else 'FAIL'}  {name} ({time.perf_counter() - t:.0f}s): {detail}",
          flush=True)
    return ok


def reason(e: Exception) -> str:
    """The informative line of an exception (TF's graph errors put it after a traceback)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    known = re.compile(r"Incompatible shapes|must feed a value|Trying to access|merge_call|"
                       r"INVALID_ARGUMENT|Received:")
    hit = next((ln for ln in lines if known.search(ln)), None)
    return (hit or (lines[-1] if lines else ""))[:300]


def fake_cifar(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def train_data(config, x, y):
    """The training pipeline's public entry (the one call to change if its API changes)."""
    from sila_keras.training.train import make_datasets

    train, _, steps = make_datasets(config, x, y, x[:4], y[:4])
    return train, steps


def sila_model(config, strategy, steps: int):
    from sila_keras import build_sila_model
    from sila_keras.training.train import compile_model

    with strategy.scope():
        model = build_sila_model(config.net.model, 10, config.sila.heads)
        return compile_model(model, config, 10, steps)


def fit_one_epoch(config, strategy, images: int):
    """(model, steps, final loss) of one epoch on ``images`` fake CIFAR images; the loss must
    be finite."""
    x, y = fake_cifar(images)
    ds, steps = train_data(config, x, y)
    model = sila_model(config, strategy, steps)
    loss = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0).history["loss"][-1]
    assert np.isfinite(loss), f"non-finite loss {loss}"
    return model, steps, loss


def case_empty_replica(strategy) -> str:
    """13 images, global batch 12, 2 replicas: the last batch has 1 image (one replica none)."""
    from sila_keras.training.config import TrainConfig

    config = TrainConfig.create("check", "resnet20", batch_size=12, epochs=1, milestones=(),
                         augment="none", sync_bn=False)
    _, steps, loss = fit_one_epoch(config, strategy, 13)
    return f"{steps} steps, loss {loss:.3f}"


def case_jit_two_replicas(strategy) -> str:
    from sila_keras.training.config import TrainConfig

    config = TrainConfig.create("check", "resnet20", batch_size=8, epochs=1, milestones=(),
                         augment="none", jit=True)
    model, _, loss = fit_one_epoch(config, strategy, 16)
    from sila_keras.devices import replica_jit

    mode = "per replica" if replica_jit.is_installed(model) else "whole step"
    return f"loss {loss:.3f}, jit {mode}"


def case_fp16_overflow_one_replica(strategy) -> str:
    import keras

    from sila_keras.training.precision import wrap_optimizer

    with strategy.scope():
        w = keras.Variable(np.ones(3, np.float32))
        opt = wrap_optimizer(keras.optimizers.SGD(0.1), "mixed_float16")
        opt.build([w])

    @tf.function
    def step():
        def fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            g = tf.where(tf.equal(rid, 1), tf.constant([np.inf, 1.0, 1.0]), tf.ones(3))
            opt.apply_gradients([(g, w)])
        strategy.run(fn)

    before = float(opt.dynamic_scale.numpy())
    step()
    after = float(opt.dynamic_scale.numpy())
    assert np.all(np.isfinite(w.numpy())), f"weights became {w.numpy()}"
    assert after < before, f"loss scale not lowered ({before} → {after})"
    return f"weights finite, scale {before:g} → {after:g} ({type(opt).__name__})"


def case_multi_step_two_replicas(strategy) -> str:
    """Keras' own steps_per_execution 2 with 2 replicas (keras#19246; refused by sila-train)."""
    import keras

    x, y = fake_cifar(16)
    ds = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y)).batch(8).repeat()
    with strategy.scope():
        inp = keras.Input((32, 32, 3))
        out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(inp))
        model = keras.Model(inp, out)
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      steps_per_execution=2)
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    return "works here: resolve_steps_per_execution could allow > 1 with several replicas"


# --------------------------------------------------------------------------- throughput


def bench_model(policy: str, spe: int, batch: int, device: str):
    """ResNet-20 + 3 SiLa heads on ``device`` under ``policy``, traced and warmed up, with
    its synthetic input (one batch held in memory, repeated)."""
    import keras

    from sila_keras import build_sila_model
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import compile_model

    keras.mixed_precision.set_global_policy(policy)
    try:
        strategy = tf.distribute.OneDeviceStrategy(device)
        x, y = fake_cifar(batch)
        ds = tf.data.Dataset.from_tensors((x.astype(np.float32), y.astype(np.int32))).repeat()
        config = TrainConfig.create("bench", "resnet20", batch_size=batch, milestones=(),
                             steps_per_execution=spe)
        with strategy.scope():
            model = compile_model(build_sila_model("resnet20", 10, 3), config, 10, steps=1)
        model.fit(ds, epochs=1, steps_per_epoch=spe if spe > 1 else 2, verbose=0)  # warm-up
        return model, ds
    finally:
        keras.mixed_precision.set_global_policy("float32")


def images_per_second(model, ds, batch: int, steps: int) -> float:
    """img/s over ``steps`` train steps, timed between the ends of the first and the last
    execution of one ``fit`` (so tracing and the first execution are excluded)."""
    import keras

    spe = model.steps_per_execution
    executions = max(1, steps // spe)
    marks = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: marks.append((b, time.perf_counter())))
    model.fit(ds, epochs=1, steps_per_epoch=spe * (executions + 1), verbose=0, callbacks=[clock])
    (b0, t0), (b1, t1) = marks[0], marks[-1]
    return (b1 - b0) * batch / (t1 - t0)


def augmentation_rate(name: str, x, y, batch: int, seconds: float) -> float:
    """img/s drained from the training pipeline with augmentation ``name``."""
    from pipeline_speed import drain  # benchmarks/pipeline_speed.py (this script's folder)

    from sila_keras.data.pipeline import train_dataset

    return drain(train_dataset(x, y, batch, augment=name, epochs=1000), seconds)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    devices = setup_devices(args.cpu, args.gpu_memory_mb)
    import sila_keras  # noqa: F401  (registers layers, augmentations)
    from sila_keras.devices.distribute import resolve_steps_per_execution

    print("== environment")
    for line in environment():
        print("  " + line)
    print(f"  replica devices: {', '.join(devices)}", flush=True)

    print("== correctness on 2 replicas")
    # NCCL refuses two ranks on one physical GPU: reduce through one device when GPU 0 is split.
    shared_gpu = not args.cpu and len(tf.config.list_physical_devices("GPU")) == 1
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice() if shared_gpu else None)
    results = [
        check("a training batch leaves one replica empty", lambda: case_empty_replica(strategy)),
        check("--jit with 2 replicas", lambda: case_jit_two_replicas(strategy)),
        check("float16 inf on replica 1 only", lambda: case_fp16_overflow_one_replica(strategy)),
    ]
    print("  (information, not counted: a known Keras limitation)")
    check("Keras steps-per-execution 2 with 2 replicas (keras#19246)",
          lambda: case_multi_step_two_replicas(strategy))

    gpu = not args.cpu
    batch = args.batch_size or (128 if gpu else 32)
    steps = args.steps or ((60 if args.quick else 200) if gpu else (4 if args.quick else 8))
    auto = resolve_steps_per_execution("auto", gpu)
    print(f"== ResNet-20 + 3 SiLa heads, batch {batch}, {steps} timed steps × {args.rounds} "
          f"rounds on {devices[0]} (img/s; step time)")
    spes = [1, auto] if auto != 1 else [1, 32]
    cases = [("float32", spe) for spe in dict.fromkeys(spes)]
    cases += [("mixed_bfloat16", auto), ("mixed_float16", auto)]
    models = [bench_model(policy, spe, batch, devices[0]) for policy, spe in cases]
    rates = [[] for _ in cases]
    for _ in range(args.rounds):  # alternate the cases: a busy machine slows them alike
        for i, (model, ds) in enumerate(models):
            rates[i].append(images_per_second(model, ds, batch, steps))
    for (policy, spe), r in zip(cases, rates):
        rate = statistics.median(r)
        label = f"{policy}, steps-per-execution {spe}" + (" (auto)" if spe == auto else "")
        print(f"  {label:<46} {rate:9.0f} img/s  {1000 * batch / rate:8.1f} ms/step "
              f"(median of {len(r)})", flush=True)
    print("== augmentation (training input pipeline alone)")
    x, y = fake_cifar(2048 if gpu else 512)
    for name in AUGMENTATIONS:
        rate = augmentation_rate(name, x, y, 128, 2.0 if args.quick else 5.0)
        print(f"  {name:<12} {rate:9.0f} img/s ({os.cpu_count()} CPU cores)", flush=True)
    print(f"== {sum(results)}/{len(results)} correctness checks passed "
          f"in {time.perf_counter() - t0:.0f}s total")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
