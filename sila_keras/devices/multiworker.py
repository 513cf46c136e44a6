"""The one place that patches Keras: ``fit`` under ``MultiWorkerMirroredStrategy``.

Keras 3's TensorFlow trainer fails with ``MultiWorkerMirroredStrategy`` out of the box
(keras-team/keras#20585, tensorflow/tensorflow#72388), in two private functions:

1. ``TensorFlowTrainer._maybe_symbolic_build`` builds the model from the first batch
   by ``strategy.reduce("MEAN", batch, axis=None)``, which under multi-worker tries to
   all-reduce the *data* and fails with ``ValueError: Attempt to convert a value
   (PerReplica…)``. Fix: build from this worker's first local replica batch,
   ``strategy.experimental_local_results(v)[0]`` for each leaf (only shapes and
   dtypes matter for a symbolic build).
2. ``reduce_per_replica`` reduces every per-replica metric with
   ``strategy.reduce("MEAN", v, axis=0)``; metric results are scalars, so this fails
   with ``Invalid reduction dimension 0``. Fix: reduce scalars with ``axis=None``
   (the mean over all replicas of all workers); other values go to the original.

Both fixes are narrow (nothing else changes, and both only act when the strategy is
in multi-worker mode), installed by :func:`install` — which
:func:`sila_keras.devices.distribute.make_multiworker_strategy` calls, so runs with other
strategies use unmodified Keras — and guarded by version: they are applied to
Keras ``[KERAS_MIN, KERAS_MAX)`` only (tested on 3.15.1) and only when the patched
functions still have the shape this module expects. ``tests/test_multiworker.py``
checks the result end to end (identical weights on two workers).

Example:
    >>> from sila_keras.devices import multiworker
    >>> multiworker.install()  # idempotent; returns True when the fix is active
    True
"""

from __future__ import annotations

import inspect

import keras
import tensorflow as tf

from sila_keras.utils.errors import ConfigError, DependencyError

KERAS_MIN = (3, 0)
KERAS_MAX = (4, 0)  # exclusive: re-check keras#20585 before widening
TESTED_ON = "3.15.1"

_ORIGINALS: dict[str, object] = {}


def keras_version() -> tuple[int, int]:
    """(major, minor) of the installed Keras."""
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _trainer_module():
    from keras.src.backend.tensorflow import trainer

    return trainer


def check_supported() -> None:
    """Raise unless the fix can be applied to the installed Keras.

    Raises:
        ValueError: the Keras version is outside ``[KERAS_MIN, KERAS_MAX)`` or the
            private functions the fix replaces are missing or changed.
    """
    version = keras_version()
    if not KERAS_MIN <= version < KERAS_MAX:
        raise DependencyError(
            "--strategy multiworker patches Keras' fit (keras#20585) and supports Keras "
            f"{'.'.join(map(str, KERAS_MIN))} to <{'.'.join(map(str, KERAS_MAX))} (tested on "
            f"{TESTED_ON}). Received: keras=={keras.__version__}. Install a supported Keras "
            "(pip install 'keras>=3.8,<4') or use --strategy mirrored on one machine."
        )
    try:
        module = _trainer_module()
        build = module.TensorFlowTrainer._maybe_symbolic_build
        reduce = module.reduce_per_replica
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"--strategy multiworker cannot patch this Keras ({keras.__version__}): {e}. "
            "Use --strategy mirrored on one machine."
        ) from None
    if (list(inspect.signature(_ORIGINALS.get("build", build)).parameters)
            != ["self", "iterator", "data_batch"]
            or list(inspect.signature(_ORIGINALS.get("reduce", reduce)).parameters)
            != ["values", "strategy", "reduction"]):
        raise ConfigError(
            f"--strategy multiworker: Keras {keras.__version__} changed the functions its fix "
            "replaces (TensorFlowTrainer._maybe_symbolic_build, reduce_per_replica). "
            f"Install Keras {TESTED_ON} or use --strategy mirrored on one machine."
        )


def is_installed() -> bool:
    """Whether the fix is active in this process."""
    return bool(_ORIGINALS)


def install() -> bool:
    """Apply both fixes (idempotent). Returns True once they are active.

    Raises:
        ValueError: see :func:`check_supported`.
    """
    if _ORIGINALS:
        return True
    check_supported()
    module = _trainer_module()
    _ORIGINALS["build"] = module.TensorFlowTrainer._maybe_symbolic_build
    _ORIGINALS["reduce"] = module.reduce_per_replica
    module.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    module.reduce_per_replica = _reduce_per_replica
    return True


def uninstall() -> None:
    """Restore Keras' own functions (for tests)."""
    if not _ORIGINALS:
        return
    module = _trainer_module()
    module.TensorFlowTrainer._maybe_symbolic_build = _ORIGINALS.pop("build")
    module.reduce_per_replica = _ORIGINALS.pop("reduce")


def in_multi_worker_mode(strategy) -> bool:
    """Whether ``strategy`` is a MultiWorkerMirroredStrategy spanning several workers."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def agree_on_epoch(strategy, epoch: int) -> None:
    """Check that every worker resumes after the same epoch (no-op unless multi-worker).

    Each worker resumes from its own checkpoint (the chief from ``<run>/checkpoints``,
    the others from ``<run>/.workers/<type>_<id>/checkpoints``); a worker killed between
    the chief's checkpoint and its own would otherwise train from a different state.

    Raises:
        ValueError: the workers' checkpoints name different epochs (on every worker, so
            none is left waiting in a collective).
    """
    if not in_multi_worker_mode(strategy):
        return
    per_replica = strategy.run(lambda: tf.constant([float(epoch)]))
    epochs = sorted({int(e) for e in strategy.gather(per_replica, axis=0).numpy()})
    if len(epochs) > 1:
        raise ConfigError(
            "Cannot resume: the workers' last checkpoints are from different epochs "
            f"(chief and workers hold epochs {epochs}). Copy the chief's '<run>/checkpoints' "
            "folder over each worker's '<run>/.workers/<type>_<id>/checkpoints' and start all "
            f"workers again with --resume. Received: this worker's epoch={epoch}"
        )


def barrier(strategy) -> None:
    """Wait until every worker reaches this point (no-op unless multi-worker).

    Called at the end of a run so no process exits while a peer still needs it.
    """
    if in_multi_worker_mode(strategy):
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None).numpy()


def first_local_batch(strategy, batch):
    """Each distributed leaf of ``batch`` replaced by this worker's first replica value."""
    def local(v):
        if isinstance(v, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(v)[0]
        return v

    return tf.nest.map_structure(local, batch)


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Fix 1: build the model from a local replica batch (multi-worker only)."""
    strategy = self._distribute_strategy
    if strategy is None or iterator is None or not in_multi_worker_mode(strategy):
        return _ORIGINALS["build"](self, iterator=iterator, data_batch=data_batch)
    for _, _, it in iterator:  # the TF epoch iterator yields (begin, end, iterator)
        data_batch = first_local_batch(strategy, next(it))
        break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    """Fix 2: mean-reduce scalar metrics with ``axis=None`` (multi-worker only), all of a
    step's scalars stacked into **one** cross-worker all-reduce (not one per metric)."""
    original = _ORIGINALS["reduce"]
    if not in_multi_worker_mode(strategy) or reduction not in ("auto", "mean"):
        return original(values, strategy, reduction)
    return reduce_scalars_stacked(values, strategy,
                                  other=lambda v: original(v, strategy, reduction))


def reduce_scalars_stacked(values, strategy, other=None):
    """Mean over all replicas of every scalar leaf of ``values``, with one ``strategy.reduce``.

    The per-replica scalars are stacked into one float32 vector per replica, reduced once,
    and split back (each cast to its own dtype): the same means as one reduction per leaf.
    Leaves that are not scalars go to ``other`` (unchanged when it is None).
    """
    leaves = tf.nest.flatten(values)
    scalar = [i for i, v in enumerate(leaves) if _rank(v) == 0]
    out = [v if other is None else other(v) if i not in scalar else None
           for i, v in enumerate(leaves)]
    if scalar:
        picked = [leaves[i] for i in scalar]
        stacked = strategy.run(lambda *xs: tf.stack([tf.cast(x, tf.float32) for x in xs]),
                               args=tuple(picked))
        means = strategy.reduce("MEAN", stacked, axis=None)
        for j, i in enumerate(scalar):
            out[i] = tf.cast(means[j], _dtype(leaves[i]))
    return tf.nest.pack_sequence_as(values, out)


def _dtype(v):
    if isinstance(v, tf.distribute.DistributedValues):
        v = v.values[0]
    return getattr(v, "dtype", tf.float32)


def _rank(v) -> int | None:
    if isinstance(v, tf.distribute.DistributedValues):
        v = v.values[0]  # every replica's value has the same shape
    shape = getattr(v, "shape", None)
    return None if shape is None else shape.rank
