"""tf.distribute strategies: the one place that knows about devices.

``auto`` picks ``MirroredStrategy`` over all GPUs when more than one is visible,
else the default (single-device) strategy. ``mirrored`` always mirrors: over the
GPUs, or, on a CPU-only machine, over the logical CPU devices (see
:func:`split_cpu`), which is how the distributed path is tested without GPUs.

Batch sizes given to the library are *global*: each of R replicas receives
``batch_size / R`` examples per step; gradients are summed over replicas from
per-example losses averaged over the global batch, so the lr means the same
thing as on one device.

``multiworker`` trains over several machines with ``MultiWorkerMirroredStrategy``,
configured from the standard ``TF_CONFIG`` environment variable (validated by
:func:`parse_tf_config`); see ``docs/distributed.md``. The batch size is then
global over *all* workers' replicas.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tensorflow as tf

from sila_keras.errors import ConfigError

TF_CONFIG_EXAMPLE = (
    "Example for 2 machines (same list on both, index 0 on the first — the chief — and 1 on "
    "the second): TF_CONFIG='{\"cluster\": {\"worker\": [\"10.0.0.1:12345\", "
    "\"10.0.0.2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'"
)
TRAINING_JOBS = ("chief", "worker")


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
    """The strategy for ``auto``, ``default``, ``mirrored`` or ``multiworker``.

    A mirrored strategy is created once per process and device set and then
    reused: two MirroredStrategy objects over the same devices in one process
    can clash in their collective ops (seen as "Shape mismatch in the
    collective instance" when a second run starts, e.g. tuning trials). The
    multi-worker strategy is likewise created once per process and ``TF_CONFIG``.

    Raises:
        ValueError: an unknown name, or ``multiworker`` with a missing or malformed
            ``TF_CONFIG`` (the message shows a 2-machine example).
    """
    if name == "multiworker":
        return make_multiworker_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) <= 1):
        return tf.distribute.get_strategy()
    if name in ("auto", "mirrored"):
        devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
        key = ("mirrored", devices)
        if key not in _STRATEGIES:
            _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(devices))
        return _STRATEGIES[key]
    raise ConfigError(f"Unknown strategy '{name}'. Available: auto, default, mirrored, multiworker")


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """A short name: ``default``, ``MirroredStrategy``, ``MultiWorkerMirroredStrategy``, …"""
    name = type(strategy).__name__
    if name in ("_DefaultDistributionStrategy", "DefaultDistributionStrategy"):
        return "default"
    return "MultiWorkerMirroredStrategy" if name == "CollectiveAllReduceStrategy" else name


# --------------------------------------------------------------------------- multi-worker


def parse_tf_config(raw: str | None = None) -> dict:
    """Read and validate ``TF_CONFIG`` (the environment variable unless ``raw`` is given).

    Accepted: ``{"cluster": {"worker": ["host:port", ...], "chief": ["host:port"]?},
    "task": {"type": "worker" | "chief", "index": i}}``. Without a ``chief`` job,
    worker 0 is the chief (writes the run directory).

    Returns:
        The parsed dict, with ``task.index`` as an int.

    Raises:
        ValueError: missing, not JSON, or inconsistent (the message names the problem
            and shows a 2-machine example).
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw

    def bad(rule: str) -> ValueError:
        return ConfigError(f"--strategy multiworker needs a valid TF_CONFIG: {rule}. "
                          f"{TF_CONFIG_EXAMPLE}")

    if not raw or not raw.strip():
        raise bad("the environment variable TF_CONFIG is not set. Set it on every machine, "
                  "then start the same command on each")
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise bad(f"it is not valid JSON ({e.msg} at character {e.pos}). Received: TF_CONFIG={raw!r}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict):
        raise bad(f"it needs a \"cluster\" object. Received: TF_CONFIG={raw!r}")
    cluster, task = cfg["cluster"], cfg.get("task")
    unknown = sorted(set(cluster) - {*TRAINING_JOBS, "evaluator"})
    if unknown:
        raise bad(f"MultiWorkerMirroredStrategy has no parameter servers; the cluster may only "
                  f"list {', '.join(TRAINING_JOBS)}. Received: cluster jobs={unknown}")
    if not cluster.get("worker") and not cluster.get("chief"):
        raise bad(f"the cluster lists no workers. Received: cluster={cluster}")
    for job in TRAINING_JOBS:
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list) or not all(_is_address(a) for a in addresses):
            raise bad(f"cluster.{job} must be a list of \"host:port\" strings. "
                      f"Received: {job}={addresses!r}")
    if len(cluster.get("chief", [])) > 1:
        raise bad(f"there can be only one chief. Received: chief={cluster['chief']}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise bad(f"it needs \"task\": {{\"type\": ..., \"index\": ...}} naming this machine. "
                  f"Received: task={task!r}")
    kind, index = task["type"], task["index"]
    if kind not in cluster or kind == "evaluator":
        raise bad(f"task.type must be one of the cluster's training jobs "
                  f"({', '.join(j for j in TRAINING_JOBS if j in cluster)}). Received: type={kind!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise bad(f"task.index must be an integer from 0 to {len(cluster[kind]) - 1} (a position "
                  f"in cluster.{kind}). Received: index={index!r}")
    return cfg


def _is_address(a) -> bool:
    if not isinstance(a, str) or a.count(":") < 1:
        return False
    host, port = a.rsplit(":", 1)
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def tf_config_task(raw: str | None = None) -> tuple[str, int, bool]:
    """``(task type, index, is chief)`` from ``TF_CONFIG``, without starting TensorFlow.

    Lets a process know whether it writes the run directory (the chief: ``chief`` 0,
    or ``worker`` 0 when the cluster has no ``chief`` job) before anything is built.
    """
    cfg = parse_tf_config(raw)
    kind, index = cfg["task"]["type"], int(cfg["task"]["index"])
    chief = kind == "chief" or (kind == "worker" and index == 0 and not cfg["cluster"].get("chief"))
    return kind, index, chief


def process_run_dir(run_dir, strategy_name: str):
    """The folder this process writes: ``run_dir`` itself, except on a non-chief
    multi-worker process, which writes its scratch copy ``<run>/.workers/<type>_<id>``.

    Works from ``TF_CONFIG`` alone, so it can be called before the strategy exists
    (e.g. to find a worker's own checkpoint when resuming on separate machines).
    """
    if strategy_name != "multiworker":
        return Path(run_dir)
    kind, index, chief = tf_config_task()
    from sila_keras.rundir import RunDir

    return Path(run_dir) if chief else RunDir(run_dir).worker_dir(kind, index).path


def make_multiworker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (once per process and TF_CONFIG).

    Collectives use RING on CPU-only machines and NCCL where GPUs are visible. Also
    installs the Keras ``fit`` fix of :mod:`sila_keras.multiworker` (only here, so
    other strategies run unpatched Keras).

    Raises:
        ValueError: a missing or malformed ``TF_CONFIG``, or a Keras version the fix
            does not cover.
    """
    from sila_keras import multiworker

    parse_tf_config()
    raw = os.environ["TF_CONFIG"]
    key = ("multiworker", raw)
    if key not in _STRATEGIES:
        multiworker.install()
        gpus = tf.config.list_physical_devices("GPU")
        impl = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=impl.NCCL if gpus else impl.RING)
        _STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return _STRATEGIES[key]


def dataset_options(strategy: tf.distribute.Strategy) -> tf.data.Options | None:
    """tf.data options for ``strategy``: in-memory data is sharded by element
    (``AutoShardPolicy.DATA``) across workers; ``None`` (no change) otherwise."""
    if not getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)():
        return None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
