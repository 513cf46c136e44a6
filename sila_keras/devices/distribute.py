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
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from sila_keras.utils.errors import ConfigError

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


def apply_cpu_devices(n: int | None) -> None:
    """The ``--cpu-devices N`` flag of ``sila-train`` and ``sila-tune``: split the CPU into
    ``n`` logical devices (:func:`split_cpu`); nothing when ``n`` is ``None`` or 0.

    Raises:
        RuntimeError: if TensorFlow has already initialised its devices.
    """
    if n:
        split_cpu(n)


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
    from sila_keras.utils.rundir import RunDir

    return Path(run_dir) if chief else RunDir(run_dir).worker_dir(kind, index).path


def make_multiworker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (once per process and TF_CONFIG).

    Collectives use RING on CPU-only machines and NCCL where GPUs are visible. Also
    installs the Keras ``fit`` fix of :mod:`sila_keras.devices.multiworker` (only here, so
    other strategies run unpatched Keras).

    Raises:
        ValueError: a missing or malformed ``TF_CONFIG``, or a Keras version the fix
            does not cover.
    """
    from sila_keras.devices import multiworker

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


# --------------------------------------------------------------------------- speed settings

GPU_STEPS_PER_EXECUTION = 32  # --steps-per-execution auto on one GPU (1 on CPUs, replicas > 1)
SYNC_BN_BELOW = 32  # --sync-bn auto: on when replicas > 1 and the per-replica batch is smaller


@dataclass(frozen=True)
class SpeedSettings:
    """The machine-dependent training settings of a run, resolved from its flags.

    Applied to a freshly compiled model *and* to one loaded from a checkpoint (``--resume``
    uses this machine's settings, not the checkpoint's compile settings).
    """

    replicas: int
    global_batch: int
    steps_per_execution: int
    jit: bool
    sync_bn: bool
    has_gpu: bool

    @property
    def per_replica_batch(self) -> int:
        return self.global_batch // self.replicas

    @property
    def jit_mode(self) -> str:
        """``off``, ``whole step`` (one device) or ``per replica`` (see :mod:`replica_jit`)."""
        return "off" if not self.jit else ("whole step" if self.replicas == 1 else "per replica")

    def to_dict(self) -> dict:
        return {"global_batch": self.global_batch, "per_replica_batch": self.per_replica_batch,
                "replicas": self.replicas, "steps_per_execution": self.steps_per_execution,
                "jit": self.jit_mode, "sync_bn": self.sync_bn}

    def line(self) -> str:
        """The log line: global and per-replica batch, and every resolved speed setting."""
        return (f"Batch {self.global_batch} global = {self.per_replica_batch} per replica × "
                f"{self.replicas} replica(s); steps per execution {self.steps_per_execution}; "
                f"jit {self.jit_mode}; sync-BN {'on' if self.sync_bn else 'off'}")


def has_gpu(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether training runs on GPUs (the strategy's devices; else any visible GPU)."""
    try:
        devices = strategy.extended.worker_devices if strategy is not None else None
    except RuntimeError:  # the default strategy has no device list
        devices = None
    if devices:
        return any("GPU" in d.upper() for d in devices)
    return bool(tf.config.list_logical_devices("GPU"))


def resolve_steps_per_execution(value: int | str, gpu: bool, replicas: int = 1) -> int:
    """``auto`` → 1 on CPUs (a step is long; the host sync is cheap) and
    :data:`GPU_STEPS_PER_EXECUTION` on one GPU (one host round trip per 32 steps).

    With several replicas Keras 3 cannot run more than one step per call: its multi-step
    loop puts ``strategy.run`` inside a ``tf.cond``, and the optimizer's cross-replica
    ``merge_call`` there fails ("You must feed a value for placeholder tensor",
    keras-team/keras#19246, reproduced with Keras 3.15 on 2 logical CPUs), so ``auto`` is 1
    there and an explicit value above 1 is refused.

    Raises:
        ConfigError: an explicit value above 1 with several replicas.
    """
    from sila_keras.utils.errors import ConfigError

    if value == "auto":
        return GPU_STEPS_PER_EXECUTION if gpu and replicas == 1 else 1
    if int(value) > 1 and replicas > 1:
        raise ConfigError(
            f"--steps-per-execution above 1 fails in Keras {_keras_version()} with several "
            "replicas (its multi-step loop cannot hold the cross-replica gradient update, "
            "keras-team/keras#19246). Use --steps-per-execution auto (1 with several "
            f"replicas) or one device. Received: steps_per_execution={value}, "
            f"replicas={replicas}")
    return int(value)


def _keras_version() -> str:
    import keras

    return keras.__version__


def resolve_sync_bn(value: bool | None, replicas: int, global_batch: int) -> bool:
    """``None`` (auto) → on when ``replicas > 1`` and the per-replica batch is below
    :data:`SYNC_BN_BELOW`; an explicit value holds (but one replica has nothing to sync)."""
    if value is not None:
        return bool(value) and replicas > 1
    return replicas > 1 and global_batch // replicas < SYNC_BN_BELOW


def resolve_speed(config, strategy: tf.distribute.Strategy) -> SpeedSettings:
    """The run's :class:`SpeedSettings` on this machine (before any data or model).

    ``--jit`` with several replicas compiles each replica's step (:mod:`replica_jit`); XLA
    cannot compile synchronized BatchNorm there, so auto sync-BN stays off with ``--jit``.

    Raises:
        ConfigError: ``--jit`` with an explicit ``--sync-bn`` on several replicas, an explicit
            ``--steps-per-execution`` above 1 on several replicas, or a global batch smaller
            than the number of replicas.
    """
    from sila_keras.utils.errors import ConfigError

    replicas = int(strategy.num_replicas_in_sync)
    if config.optim.batch_size < replicas:
        raise ConfigError(
            f"`--batch-size` is global: every one of the {replicas} replicas needs at least one "
            f"example per step. Use --batch-size {replicas} or more. "
            f"Received: batch_size={config.optim.batch_size}")
    jit = bool(config.run.jit)
    if jit and replicas > 1 and config.run.sync_bn:
        raise ConfigError(
            "--jit with several replicas cannot compile synchronized BatchNorm (an all-reduce "
            "inside an XLA cluster is unsupported under MirroredStrategy). Drop --sync-bn "
            "(BatchNorm per replica) or --jit. Received: jit=True, sync_bn=True, "
            f"replicas={replicas}")
    sync = False if jit and config.run.sync_bn is None else resolve_sync_bn(
        config.run.sync_bn, replicas, config.optim.batch_size)
    gpu = has_gpu(strategy)
    return SpeedSettings(replicas=replicas, global_batch=int(config.optim.batch_size),
                         steps_per_execution=resolve_steps_per_execution(
                             config.run.steps_per_execution, gpu, replicas),
                         jit=jit, sync_bn=sync, has_gpu=gpu)


def set_sync_bn(model, on: bool) -> int:
    """Switch every ``BatchNormalization`` of ``model`` (nested models included) to
    synchronized (statistics over the global batch, one all-reduce per layer) or per-replica
    statistics. Takes effect at the next trace. Returns the number of layers switched."""
    import keras

    def layers(m):
        for layer in m.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from layers(layer)

    count = 0
    for layer in layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = bool(on)
            count += 1
    return count


def apply_speed(model, speed: SpeedSettings):
    """Apply ``speed`` to a compiled model (fresh or loaded from a checkpoint): sync-BN,
    steps per execution and jit (whole step on one device, per replica on several).
    Returns ``model``.

    Raises:
        ConfigError: see :func:`sila_keras.devices.replica_jit.check_supported`.
    """
    from sila_keras.devices import replica_jit

    set_sync_bn(model, speed.sync_bn)
    model.steps_per_execution = speed.steps_per_execution
    replica_jit.uninstall(model)
    if speed.jit and speed.replicas > 1:
        replica_jit.install(model)
    else:
        model.jit_compile = speed.jit
    compile_config = getattr(getattr(model, "_compile_config", None), "config", None)
    if isinstance(compile_config, dict):  # what the next checkpoint records
        compile_config.update(steps_per_execution=speed.steps_per_execution,
                              jit_compile=speed.jit and speed.replicas == 1)
    model.train_function = model.test_function = model.predict_function = None
    return model
