"""DenseNet-BC (Huang et al. 2017), CIFAR variant; ``densenet121`` = blocks (6, 12, 24, 16), k = 32.

A 3×3 stem conv with 2k filters (no max-pool), four dense blocks of bottleneck
layers (BN → ReLU → 1×1 conv to 4k → BN → ReLU → 3×3 conv to k, concatenated
to the input), transitions (BN → ReLU → 1×1 conv halving the channels → 2×2
average pooling) between them, then BN → ReLU → global average pooling → dense.
No conv has a bias. With N = 10 it has 6,956,298 trainable parameters (SilaNet
Table 3: 26.54 MiB).

Taps: each transition's 1×1 conv output (the last tensor at its resolution,
before the pooling; 128, 256, 512 channels). They are not normalized yet, so
``preact=True``: the auxiliary module starts with BN + ReLU. Module C (head 2)
sits at the 3rd transition, module D (head 3) at the 2nd — this reproduces the
Table 3 "train" and "test" sizes exactly.
"""

from __future__ import annotations

from keras import layers

from sila_keras.models.layers import bn_relu
from sila_keras.models.registry import BackboneOutput, Tap, register_backbone
from sila_keras.utils.errors import ModelError

# name → (layers per dense block, growth rate k); variants are data.
DENSENET_VARIANTS = {"densenet121": ((6, 12, 24, 16), 32)}


def _conv(filters: int, kernel_size: int, name: str) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel_size, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


def bottleneck(x, growth: int, *, name: str):
    """One dense layer: BN-ReLU-1×1 conv (4k) → BN-ReLU-3×3 conv (k), concatenated to ``x``."""
    y = bn_relu(x, name=f"{name}_1")
    y = _conv(4 * growth, 1, f"{name}_1_conv")(y)
    y = bn_relu(y, name=f"{name}_2")
    y = _conv(growth, 3, f"{name}_2_conv")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def densenet(x, num_classes: int, blocks, growth: int = 32, *, reduction: float = 0.5) -> BackboneOutput:
    """Build a CIFAR DenseNet-BC on ``x``.

    Args:
        x: normalized input ``(B, H, W, C)``; H, W ≥ 2^(len(blocks) − 1).
        num_classes: N.
        blocks: bottleneck layers per dense block.
        growth: growth rate k.
        reduction: channel compression θ of each transition.

    Returns:
        BackboneOutput with a pre-activation tap at every transition.
    """
    if not 0 < reduction <= 1:
        raise ModelError(f"`reduction` must be in (0, 1]. Received: reduction={reduction}")
    x = _conv(2 * growth, 3, "stem_conv")(x)
    taps, depth = [], 1
    for b, n in enumerate(blocks, start=1):
        for i in range(1, n + 1):
            x = bottleneck(x, growth, name=f"block{b}_layer{i}")
            depth += 2
        if b < len(blocks):
            out = int(reduction * x.shape[-1])
            x = bn_relu(x, name=f"transition{b}")
            x = _conv(out, 1, f"transition{b}_conv")(x)
            depth += 1
            taps.append(Tap(f"transition{b}", x, out, 2 ** (b - 1), depth, preact=True))
            x = layers.AveragePooling2D(2, name=f"transition{b}_pool")(x)
    x = bn_relu(x, name="final")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="classifier")(x)
    return BackboneOutput(logits, taps, depth + 1)


def _register(name: str):
    blocks, growth = DENSENET_VARIANTS[name]

    @register_backbone(name, min_input_size=8, family="densenet",
                       description=f"CIFAR DenseNet-BC {blocks}, k={growth} (3×3 stem)")
    def builder(x, num_classes, **kwargs):
        return densenet(x, num_classes, blocks, growth, **kwargs)

    builder.__name__ = name
    return builder


for _name in DENSENET_VARIANTS:
    _register(_name)
