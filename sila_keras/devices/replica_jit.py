"""``--jit`` with several replicas: XLA-compile each replica's forward and backward pass.

Keras 3 compiles ``strategy.run(train_step)`` as one XLA cluster when ``jit_compile=True``
(keras-team/keras#19005). Under ``MirroredStrategy`` with more than one device that cluster
reads every replica's variables from one device and the first step fails ("Trying to access
resource …/replica_1 located in device CPU:1 from device CPU:0"). With one device it works.

The fix here compiles one level lower, per replica, as tf.keras 2 did: a ``train_step``
whose forward pass, loss and gradients are one ``tf.function(jit_compile=True)`` (run by
each replica on its own device, with its own variables), followed by the uncompiled
optimizer update (which all-reduces the gradients) and the metric updates. Its body follows
Keras' own ``TensorFlowTrainer.train_step``; it uses three private Keras names
(``_compute_loss``, ``_loss_tracker``, ``_call_has_training_arg``), so it is guarded by
version (:data:`KERAS_MIN` … :data:`KERAS_MAX`) and by their presence.

Synchronized BatchNorm all-reduces inside the forward pass; a collective inside an XLA
cluster is not supported under ``MirroredStrategy``, so :func:`install` refuses that pair.

Example:
    >>> from sila_keras.devices import replica_jit
    >>> replica_jit.install(model)  # after compile, in strategy.scope()  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sila_keras.utils.errors import ConfigError

KERAS_MIN = (3, 0)
KERAS_MAX = (4, 0)  # exclusive: re-check keras#19005 before widening
_PRIVATE = ("_compute_loss", "_loss_tracker", "_call_has_training_arg")
_MARK = "_sila_replica_jit"


def _keras_version() -> tuple[int, int]:
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_supported(model) -> None:
    """Raise unless the per-replica step can be installed on ``model``.

    Raises:
        ConfigError: an unsupported Keras version, a model without the private members the
            step uses, or synchronized BatchNorm (the reason and the alternatives).
    """
    alternative = ("Use --jit with one device (--strategy default), or drop --jit "
                   "(--steps-per-execution auto keeps the host out of the loop)")
    supported = KERAS_MIN <= _keras_version() < KERAS_MAX
    if not supported or not all(hasattr(model, a) for a in _PRIVATE):
        raise ConfigError(
            f"--jit with several replicas compiles each replica's step with private Keras "
            f"members that Keras {keras.__version__} does not have (supported: 3.x). "
            f"{alternative}. Received: keras=={keras.__version__}")
    synced = [layer.name for layer in _layers(model)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
    if synced:
        raise ConfigError(
            "--jit with several replicas cannot compile synchronized BatchNorm (its all-reduce "
            f"inside an XLA cluster is unsupported under MirroredStrategy). Add --no-sync-bn, or "
            f"{alternative[0].lower()}{alternative[1:]}. Received: sync-bn layers={synced[:3]}…")


def _layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def is_installed(model) -> bool:
    """Whether ``model`` trains with the per-replica compiled step."""
    return getattr(model, _MARK, False)


def install(model) -> None:
    """Give a compiled ``model`` the per-replica XLA train step (``model.jit_compile`` off).

    Raises:
        ConfigError: see :func:`check_supported`.
    """
    from keras.src.losses import loss as loss_module
    from keras.src.trainers.data_adapters import data_adapter_utils

    check_supported(model)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def loss_and_grads(x, y, sample_weight):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                       training=True)
            scaled = model.optimizer.scale_loss(loss) if model.optimizer is not None else loss
        return loss, y_pred, tape.gradient(scaled, model.trainable_weights)

    def train_step(data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        loss, y_pred, grads = loss_and_grads(x, y, sample_weight)
        batch = tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0]
        model._loss_tracker.update_state(loss_module.unscale_loss_for_distribution(loss),
                                         sample_weight=batch)
        model.optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    model.jit_compile = False
    model.train_step = train_step  # instance attribute: Keras' make_train_function reads it
    setattr(model, _MARK, True)
    model.train_function = None


def uninstall(model) -> None:
    """Back to Keras' own ``train_step`` (no-op when not installed)."""
    if is_installed(model):
        del model.train_step
        setattr(model, _MARK, False)
        model.train_function = None
