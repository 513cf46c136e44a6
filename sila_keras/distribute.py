"""tf.distribute strategies: the one place that knows about devices.

``auto`` picks ``MirroredStrategy`` over all GPUs when more than one is visible,
else the default (single-device) strategy. ``mirrored`` always mirrors: over the
GPUs, or, on a CPU-only machine, over the logical CPU devices (see
:func:`split_cpu`), which is how the distributed path is tested without GPUs.

Batch sizes given to the library are *global*: each of R replicas receives
``batch_size / R`` examples per step; gradients are summed over replicas from
per-example losses averaged over the global batch, so the lr means the same
thing as on one device.
"""

from __future__ import annotations

import tensorflow as tf


def split_cpu(n: int) -> None:
    """Split the physical CPU into ``n`` logical devices (before TF runs any op).

    Raises:
        RuntimeError: if TensorFlow has already initialised its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        raise RuntimeError(
            f"Cannot split the CPU into {n} logical devices after TensorFlow has started: {e}. "
            "Call split_cpu() (or pass --cpu-devices) before building any model."
        ) from None


_STRATEGIES: dict[tuple, tf.distribute.Strategy] = {}


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy for ``auto``, ``default`` or ``mirrored``.

    A mirrored strategy is created once per process and device set and then
    reused: two MirroredStrategy objects over the same devices in one process
    can clash in their collective ops (seen as "Shape mismatch in the
    collective instance" when a second run starts, e.g. tuning trials).
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) <= 1):
        return tf.distribute.get_strategy()
    if name in ("auto", "mirrored"):
        devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
        key = ("mirrored", devices)
        if key not in _STRATEGIES:
            _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(devices))
        return _STRATEGIES[key]
    raise ValueError(f"Unknown strategy '{name}'. Available: auto, default, mirrored")


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """A short name: ``default``, ``MirroredStrategy``, …"""
    name = type(strategy).__name__
    return "default" if name in ("_DefaultDistributionStrategy", "DefaultDistributionStrategy") else name


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, except non-chief multi-workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())


def worker_scratch_dir(run_dir, strategy: tf.distribute.Strategy):
    """Where a non-chief worker writes what it must (checkpoints): ``<run>/.workers/<type>_<id>``."""
    from pathlib import Path

    resolver = strategy.cluster_resolver
    return Path(run_dir) / ".workers" / f"{resolver.task_type}_{resolver.task_id}"
