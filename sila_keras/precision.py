"""Mixed precision: the global dtype policy for training, float32 copies for export.

Training with ``--mixed-precision`` computes the backbone and heads in float16 (GPU) or
bfloat16 (CPU) with float32 variables; ``sila_logits``, the SiLa loss and the metrics stay
float32. A deployed model must take and compute float32 everywhere (LiteRT and ONNX runtimes
on phones), so the exporter rebuilds a mixed model in float32 with the same weights
(:func:`as_float32`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras

from sila_keras.errors import ConfigError

FLOAT32 = "float32"
# CPU flags with native bfloat16 arithmetic (otherwise every bf16 op is emulated).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")


def policy_for(mixed: bool, has_gpu: bool) -> str:
    """``mixed_float16`` on GPU, ``mixed_bfloat16`` on CPU, else ``float32``."""
    if not mixed:
        return FLOAT32
    return "mixed_float16" if has_gpu else "mixed_bfloat16"


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

    policy = policy_for(mixed, bool(tf.config.list_logical_devices("GPU")))
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
    if mixed and str(model_name).endswith((".keras", ".h5")):
        raise ConfigError(
            f"--mixed-precision cannot be applied to a saved model: '{model_name}' keeps the dtype "
            "policy it was saved with. Rebuild it after "
            "keras.mixed_precision.set_global_policy('mixed_float16') (or 'mixed_bfloat16' on CPU) "
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
