"""A head's size: float32 MiB of its trainable parameters, its compression ratio, and the
multiply-accumulates (MACs) of one image through it.

The papers' convention (SilaNet §3.2, Table 3): size = trainable parameters × 4 bytes
(float32, BatchNorm moving statistics not counted) in MiB, and the compression ratio of
head k is CR = 1 − head/base, where the base is the backbone alone (``head_1``).
:func:`count_macs` counts the multiply-accumulates of the convolutions and dense layers, the
convention of MobileNet's "mult-adds" (Howard et al. 2017, Table 1).

Callers round for their own output; this module imports nothing heavy at import time (Keras
only inside :func:`count_macs`), so the TensorFlow-free ``sila-report`` can use it.

Example:
    >>> float32_mib(269_722)
    1.0289077758789062
    >>> round(compression_percent(269_722, 68_442), 2)
    74.62
"""

from __future__ import annotations

import math


def float32_mib(params: int) -> float:
    """MiB of ``params`` float32 weights (params × 4 / 2^20), unrounded."""
    return params * 4 / 2**20


def compression_percent(base_params: int, head_params: int) -> float:
    """CR = 100 · (1 − head/base), in percent, unrounded.

    Args:
        base_params: trainable parameters of the base model (``head_1``).
        head_params: trainable parameters of the extracted head.
    """
    return 100 * (1 - head_params / base_params)



def count_macs(model) -> int:
    """Multiply-accumulates of one image through a Keras model, from its layers' shapes: the
    convolutions (``Conv1D/2D/3D``, ``DepthwiseConv2D``, ``SeparableConv2D``) and ``Dense``
    layers, nested models layer by layer. BatchNorm, activations, pooling and additions are
    not counted (MobileNet's "mult-adds", what the MSDNet paper calls FLOPs).

    Every call counts: a functional model's graph is walked node by node (a layer called
    twice costs twice; a sub-model cut from a larger one counts its own calls only). A call
    costs its kernel's size times its output positions (``H·W`` of a convolution's output, 1
    for a ``(B, C)`` dense input): ``H·W · kh·kw · C/groups · filters`` for a ``Conv2D``,
    ``H·W · kh·kw · C · depth_multiplier`` for a ``DepthwiseConv2D``.

    Args:
        model: a built ``keras.Model`` with static shapes (batch aside).

    Returns:
        The MACs of one example (the batch dimension is not counted).

    Example:
        >>> import keras
        >>> x = keras.Input((8, 8, 3))
        >>> y = keras.layers.Conv2D(4, 3, padding="same")(x)           # 64 · 9 · 3 · 4 = 6912
        >>> y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y))  # 4 · 2 = 8
        >>> count_macs(keras.Model(x, y))
        6920
    """
    nodes = getattr(model, "_nodes_by_depth", None)
    if nodes is None:  # a Sequential: its layers, each called once
        return int(sum(_call_macs(layer, layer.output.shape) for layer in model.layers))
    return int(sum(_call_macs(node.operation, node.outputs[0].shape)
                   for depth in nodes.values() for node in depth))


def _call_macs(layer, out_shape) -> int:
    """Multiply-accumulates of one call of ``layer`` whose output has ``out_shape`` (0 for
    layers without kernels; a nested model counts its own graph)."""
    import keras
    from keras import layers

    if isinstance(layer, keras.Model):
        return count_macs(layer)
    kinds = (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv2D, layers.Dense,
             layers.SeparableConv2D)
    if not isinstance(layer, kinds):
        return 0
    out_shape = tuple(out_shape)
    positions = math.prod(int(d) for d in out_shape[1:-1]) if len(out_shape) > 2 else 1
    if isinstance(layer, layers.SeparableConv2D):
        return positions * (math.prod(layer.depthwise_kernel.shape)
                            + math.prod(layer.pointwise_kernel.shape))
    return positions * math.prod(layer.kernel.shape)
