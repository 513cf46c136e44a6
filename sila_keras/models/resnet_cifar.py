"""He et al.'s CIFAR ResNets (ResNet-8/20/32/56, "Deep Residual Learning", §4.2).

Three stages of n basic blocks with 16, 32, 64 filters (depth = 6n + 2), a 3×3
stem, global average pooling and one dense layer. Shortcuts that change shape
use the parameter-free option A (subsample + zero-pad channels), so ResNet-20
has ≈0.27M parameters — the model for CPU-scale work. ResNet-8 (n = 1, 75,290 parameters at N = 10)
is the smallest of the family: a phone-sized model, and the quick one for smoke runs and
tests where the backbone is not what is checked.
"""

from __future__ import annotations

from keras import layers

from sila_keras.models.layers import conv_bn_relu, pad_shortcut
from sila_keras.models.registry import BackboneOutput, Tap, register_backbone
from sila_keras.utils.errors import ModelError


def basic_block(x, filters: int, strides: int, *, name: str):
    """Two 3×3 conv-BN layers with an identity (or option-A) shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = pad_shortcut(x, filters, strides, name=f"{name}_shortcut")
    y = conv_bn_relu(x, filters, 3, strides, name=f"{name}_1")
    y = conv_bn_relu(y, filters, 3, 1, name=f"{name}_2", relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(x, num_classes: int, depth: int, widths=(16, 32, 64)) -> BackboneOutput:
    """Build a CIFAR ResNet of ``depth`` = 6n + 2 layers on ``x``."""
    if (depth - 2) % 6:
        raise ModelError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110). Received: depth={depth}")
    n = (depth - 2) // 6
    x = conv_bn_relu(x, widths[0], 3, 1, name="stem")
    taps, layers_done = [], 1
    for s, w in enumerate(widths, start=1):
        for b in range(1, n + 1):
            x = basic_block(x, w, 2 if (b == 1 and s > 1) else 1, name=f"stage{s}_block{b}")
            layers_done += 2
        if s < len(widths):
            taps.append(Tap(f"stage{s}", x, w, 2 ** (s - 1), layers_done))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="classifier")(x)
    return BackboneOutput(logits, taps, layers_done + 1)


def _register(depth: int):
    name = f"resnet{depth}"

    @register_backbone(name, min_input_size=8, family="resnet_cifar",
                       description=f"He et al. CIFAR ResNet-{depth} (option-A shortcuts)")
    def builder(x, num_classes, **kwargs):
        return cifar_resnet(x, num_classes, depth, **kwargs)

    builder.__name__ = name
    return builder


for _depth in (8, 20, 32, 56):
    _register(_depth)
