"""Small building blocks shared by the backbone families."""

from __future__ import annotations

import keras
from keras import layers, ops


def conv_bn_relu(x, filters: int, kernel_size=3, strides: int = 1, *, name: str,
                 use_bias: bool = False, relu: bool = True, padding: str = "same"):
    """Conv2D → BatchNorm → (ReLU), layers named ``{name}_conv/_bn/_relu``."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def bn_relu(x, *, name: str):
    """BatchNorm → ReLU (the pre-activation of WRN and DenseNet), named ``{name}_bn/_relu``."""
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def pad_shortcut(x, filters: int, strides: int = 2, *, name: str):
    """Parameter-free 'option A' shortcut of He et al.'s CIFAR ResNets, in built-in layers.

    Subsamples ``x`` by ``strides`` (a 1×1 max-pool: it keeps ``x[:, ::s, ::s, :]``) and
    zero-pads the channels up to ``filters`` (half before, half after). The padding is a
    ``ZeroPadding2D`` read as ``channels_first``: on an NHWC tensor its "rows, cols" are W
    and C, so ``((0, 0), (before, after))`` pads the channels only. Exactly
    :class:`PadShortcut`, but a model built from it loads with plain Keras and converts to
    single builtin TFLite ops (MAX_POOL_2D, PAD). Layers: ``{name}_pool``, ``{name}_pad``.

    Example:
        >>> x = keras.Input((32, 32, 16))
        >>> tuple(pad_shortcut(x, 32, 2, name="s").shape)
        (None, 16, 16, 32)
    """
    if int(strides) != 1:
        x = layers.MaxPooling2D(pool_size=1, strides=int(strides), name=f"{name}_pool")(x)
    extra = int(filters) - int(x.shape[-1])
    if extra > 0:
        x = layers.ZeroPadding2D(((0, 0), (extra // 2, extra - extra // 2)),
                                 data_format="channels_first", name=f"{name}_pad")(x)
    return x


@keras.saving.register_keras_serializable(package="sila_keras")
class PadShortcut(layers.Layer):
    """Parameter-free 'option A' shortcut of He et al.'s CIFAR ResNets (custom layer).

    Subsamples the input by ``strides`` and zero-pads channels up to ``filters``.
    Kept registered so models saved before :func:`pad_shortcut` replaced it still
    load; new models use :func:`pad_shortcut` (built-in layers only), and the
    exporter rewrites this layer into those built-ins.
    """

    def __init__(self, filters: int, strides: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, x):
        x = x[:, :: self.strides, :: self.strides, :]
        extra = self.filters - x.shape[-1]
        if extra > 0:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        h = None if h is None else -(-h // self.strides)
        w = None if w is None else -(-w // self.strides)
        return (b, h, w, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}
