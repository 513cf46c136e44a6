"""CIFAR ResNet-18/34 (He et al. 2016, "Deep Residual Learning", with the CIFAR stem).

The variant of the common CIFAR zoos used by SilaNet (Table 3): a 3×3 stem conv
with 64 filters and no max-pool, four stages of basic blocks with 64, 128, 256,
512 filters (the last three start with stride 2), global average pooling and
one dense layer. Convolutions have no bias (BatchNorm follows every one);
shortcuts that change shape are 1×1 conv + BN ("option B"). With N = 10,
``resnet18`` has 11,173,962 trainable parameters (Table 3: 42.63 MiB).

Taps: the ends of stages 1–3 (64, 128, 256 channels), so SilaNet's module C
(head 2) sits at the end of stage 3 and module D (head 3) at the end of stage 2.
"""

from __future__ import annotations

from keras import layers

from sila_keras.models.layers import conv_bn_relu
from sila_keras.models.registry import BackboneOutput, Tap, register_backbone

# Basic blocks per stage (variants are data).
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def basic_block(x, filters: int, strides: int, *, name: str):
    """Two 3×3 conv-BN layers; identity shortcut, or 1×1 conv + BN when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn_relu(x, filters, 1, strides, name=f"{name}_shortcut", relu=False)
    y = conv_bn_relu(x, filters, 3, strides, name=f"{name}_1")
    y = conv_bn_relu(y, filters, 3, 1, name=f"{name}_2", relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet(x, num_classes: int, blocks, widths=WIDTHS) -> BackboneOutput:
    """Build a CIFAR ResNet with basic blocks on ``x``.

    Args:
        x: normalized input ``(B, H, W, C)``; H, W ≥ 8.
        num_classes: N.
        blocks: basic blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        widths: filters per stage.

    Returns:
        BackboneOutput with a tap at the end of every stage but the last.
    """
    x = conv_bn_relu(x, widths[0], 3, 1, name="stem")
    taps, depth = [], 1
    for s, (n, w) in enumerate(zip(blocks, widths), start=1):
        for b in range(1, n + 1):
            x = basic_block(x, w, 2 if (b == 1 and s > 1) else 1, name=f"stage{s}_block{b}")
            depth += 2
        if s < len(widths):
            taps.append(Tap(f"stage{s}", x, w, 2 ** (s - 1), depth))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="classifier")(x)
    return BackboneOutput(logits, taps, depth + 1)


def _register(name: str):
    blocks = RESNET_BLOCKS[name]

    @register_backbone(name, min_input_size=8, family="resnet",
                       description=f"CIFAR {name.replace('resnet', 'ResNet-')} "
                                   f"(3×3 stem, basic blocks {blocks}, 1×1 conv shortcuts)")
    def builder(x, num_classes, **kwargs):
        return resnet(x, num_classes, blocks, **kwargs)

    builder.__name__ = name
    return builder


for _name in RESNET_BLOCKS:
    _register(_name)
