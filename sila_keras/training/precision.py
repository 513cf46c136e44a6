"""Mixed precision: the global dtype policy for training, float32 copies for export.

Training with ``--mixed-precision`` computes the backbone and heads in bfloat16 (GPUs of
compute capability ≥ 8.0, and CPUs) or float16 (older GPUs) with float32 variables;
``sila_logits``, the SiLa loss and the metrics stay float32. bfloat16 has float32's range
and needs no loss scaling; float16 trains with :class:`SyncLossScaleOptimizer`, whose
overflow decision is agreed by every replica (and worker) before any update.

A deployed model must take and compute float32 everywhere (LiteRT and ONNX runtimes
on phones), so the exporter rebuilds a mixed model in float32 with the same weights
(:func:`as_float32`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras

from sila_keras.models.registry import is_model_file
from sila_keras.utils.errors import ConfigError

FLOAT32 = "float32"
# CPU flags with native bfloat16 arithmetic (otherwise every bf16 op is emulated).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")


def policy_for(mixed: bool, has_gpu: bool, gpu_bf16: bool = False) -> str:
    """``mixed_bfloat16`` on CPU and on GPUs with bfloat16 (``gpu_bf16``: compute capability
    ≥ 8.0), ``mixed_float16`` on older GPUs, ``float32`` when not ``mixed``."""
    if not mixed:
        return FLOAT32
    return "mixed_float16" if has_gpu and not gpu_bf16 else "mixed_bfloat16"


def gpus_have_bf16() -> bool:
    """Whether every visible GPU has native bfloat16 (compute capability ≥ 8.0: A100, H100,
    RTX 30xx/40xx, L4 …). False with no GPU or an unknown capability."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    caps = [tf.config.experimental.get_device_details(g).get("compute_capability") for g in gpus]
    return bool(caps) and all(c is not None and tuple(c) >= (8, 0) for c in caps)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes bfloat16 natively (None when it cannot be told)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(f in flags for f in BF16_CPU_FLAGS) if flags else None


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy for training and return its name.

    Warns when ``mixed_bfloat16`` would run on a CPU without native bfloat16, where it is an
    order of magnitude slower than float32 (benchmarks/RESULTS.md §5).
    """
    import tensorflow as tf

    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    policy = policy_for(mixed, has_gpu, has_gpu and gpus_have_bf16())
    if policy == "mixed_bfloat16" and cpu_has_native_bf16() is False:
        warnings.warn(
            "--mixed-precision on this CPU uses bfloat16, which it has no instructions for "
            "(no AVX512_BF16/AMX): every op is emulated and training is about 10x slower than "
            "float32. Use --mixed-precision on GPUs or bfloat16-capable CPUs.",
            RuntimeWarning, stacklevel=2)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def check_mixed_precision(model_name: str, mixed: bool) -> None:
    """Refuse ``--mixed-precision`` for a model it cannot be applied to.

    A user's saved ``.keras``/``.h5`` classifier keeps the dtype policy it was saved with, so
    the flag would only reach the SiLa heads attached to it.

    Raises:
        ValueError: with the fix.
    """
    if mixed and is_model_file(model_name):
        raise ConfigError(
            f"--mixed-precision cannot be applied to a saved model: '{model_name}' keeps the dtype "
            "policy it was saved with. Rebuild it after "
            "keras.mixed_precision.set_global_policy('mixed_bfloat16') (or 'mixed_float16' on GPUs "
            "older than compute capability 8.0) "
            "and save it again, or drop --mixed-precision."
        )


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def is_float32(model: keras.Model) -> bool:
    """Every layer (nested models included) computes and stores in float32."""
    return all(layer.dtype_policy.name == FLOAT32 for layer in _all_layers(model))


def mixed_policy(model: keras.Model) -> str:
    """The first non-float32 dtype policy among the model's layers (``float32`` if none)."""
    return next((layer.dtype_policy.name for layer in _all_layers(model)
                 if layer.dtype_policy.name != FLOAT32), FLOAT32)


def _to_float32_config(obj):
    """A layer/model config with every dtype policy replaced by float32."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "dtype" and isinstance(value, dict) and "Policy" in str(value.get("class_name", "")):
                out[key] = FLOAT32
            elif key == "dtype" and isinstance(value, str) and value.startswith("mixed_"):
                out[key] = FLOAT32
            else:
                out[key] = _to_float32_config(value)
        return out
    if isinstance(obj, list):
        return [_to_float32_config(v) for v in obj]
    return obj


def as_float32(model: keras.Model) -> keras.Model:
    """``model`` itself when it is float32 throughout, else a float32 copy with its weights.

    Mixed policies keep float32 variables, so the weights carry over exactly; only the
    computation dtype changes (outputs differ from the mixed model by its rounding).

    Raises:
        ValueError: the model cannot be rebuilt from its config (a custom layer without
            ``get_config``); the message names the fix.
    """
    if is_float32(model):
        return model
    import sila_keras  # noqa: F401  (registers the package's serializable layers)

    try:
        clone = model.__class__.from_config(_to_float32_config(model.get_config()))
        clone.set_weights(model.get_weights())
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a config it can't rebuild
        raise ConfigError(
            f"Model '{model.name}' was trained with mixed precision and could not be rebuilt in "
            f"float32 for export ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            "Give its custom layers a get_config, or rebuild it under the float32 policy and "
            "load_weights from the trained model."
        ) from None
    return clone


# --------------------------------------------------------------------------- float16 loss scaling


@keras.saving.register_keras_serializable(package="sila_keras")
class SyncLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' ``LossScaleOptimizer`` with the overflow decision agreed by all replicas.

    Keras decides whether a step overflowed from the gradients of replica 0 only (they are
    not yet all-reduced when it checks): an inf on another replica is then summed into the
    update and the scale is not lowered, and under ``MultiWorkerMirroredStrategy`` workers
    may take different branches around the gradient all-reduce and hang. Here each replica
    counts its non-finite gradients and one ``SUM`` all-reduce (across replicas and workers)
    decides for everyone before any update: skip the step and halve the scale, or apply it.
    With one replica it is Keras' optimizer unchanged.

    Example:
        >>> opt = SyncLossScaleOptimizer(keras.optimizers.SGD(0.1))
        >>> opt.initial_scale
        32768.0
    """

    def _tf_apply(self, grads, trainable_variables=None):
        import tensorflow as tf
        from keras import ops

        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return super()._tf_apply(grads, trainable_variables)
        local_bad = ops.cast(ops.logical_not(self.check_finite(grads)), "float32")
        finite = ops.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad), 0.0)
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            ops.cond(finite, lambda: self._stateful_handle_finite_grads(grads, trainable_variables),
                     self._stateful_handle_non_finite_grads)
            return None

        def cross_replica(distribution, finite, grads, trainable_variables):
            agreed = distribution.experimental_local_results(finite)[0]  # equal on all replicas

            def apply_fn():
                distribution.extended.call_for_each_replica(
                    self._stateful_handle_finite_grads, args=(grads, trainable_variables))

            ops.cond(agreed, apply_fn, self._stateful_handle_non_finite_grads)

        ctx.merge_call(cross_replica, args=(finite, grads, trainable_variables))
        return None


def wrap_optimizer(optimizer, policy: str | None = None):
    """``optimizer`` wrapped in :class:`SyncLossScaleOptimizer` under ``mixed_float16`` (the
    global policy unless ``policy`` is given); unchanged otherwise."""
    policy = policy or keras.mixed_precision.global_policy().name
    if policy != "mixed_float16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return SyncLossScaleOptimizer(optimizer)


def check_resumed_policy(model: keras.Model, policy: str) -> None:
    """Refuse to resume a checkpoint under another compute policy than it was trained with
    (e.g. a ``mixed_bfloat16`` run on a GPU without bfloat16, where the flag means float16).

    Raises:
        ConfigError: with the policies and the fix.
    """
    from sila_keras.utils.errors import ConfigError

    trained = mixed_policy(model)
    if trained != policy:
        raise ConfigError(
            f"Cannot resume: the checkpoint was trained with the {trained} policy and "
            f"--mixed-precision here means {policy}, which would change its weights' dtypes. "
            "Resume on a machine of the same kind, or with the original --mixed-precision. "
            f"Received: checkpoint={trained}, this run={policy}")
