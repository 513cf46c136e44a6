"""Wide Residual Networks WRN-d-k (Zagoruyko & Komodakis 2016), CIFAR variant.

Pre-activation basic blocks (BN → ReLU → 3×3 conv → BN → ReLU → dropout → 3×3
conv) in three groups of ``(d − 4) / 6`` blocks with 16k, 32k, 64k filters; the
second and third groups start with stride 2; a final BN → ReLU → global average
pooling → dense. As in the common CIFAR zoos (and SilaNet's count), every conv —
1×1 shortcuts included — has a bias. With N = 10, ``wrn40_10`` has 55,856,330
trainable parameters (SilaNet Table 3: 213.07 MiB).

Taps: the ends of groups 1 and 2 (pre-activation sums, so ``preact=True``: the
auxiliary module starts with BN + ReLU). Module C (head 2) sits at the end of
group 2 (320 channels for k = 10), module D (head 3) at the end of group 1.
"""

from __future__ import annotations

from keras import layers

from sila_keras.models.layers import bn_relu
from sila_keras.models.registry import BackboneOutput, Tap, register_backbone
from sila_keras.utils.errors import ModelError

# name → (depth d, widen factor k); variants are data.
WRN_VARIANTS = {"wrn16_8": (16, 8), "wrn28_10": (28, 10), "wrn40_10": (40, 10)}


def _conv(filters: int, kernel_size: int, strides: int, name: str) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=True,
                         kernel_initializer="he_normal", name=name)


def wide_block(x, filters: int, strides: int, dropout: float, *, name: str):
    """One pre-activation wide basic block; 1×1 conv shortcut when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_shortcut")(x)
    y = bn_relu(x, name=f"{name}_pre")
    y = _conv(filters, 3, strides, f"{name}_conv1")(y)
    y = bn_relu(y, name=f"{name}_mid")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    return layers.Add(name=f"{name}_out")([shortcut, y])


def wrn(x, num_classes: int, depth: int, widen: int, *, dropout: float = 0.3) -> BackboneOutput:
    """Build WRN-``depth``-``widen`` on ``x``.

    Args:
        x: normalized input ``(B, H, W, C)``; H, W ≥ 4.
        num_classes: N.
        depth: total depth d; (d − 4) must be divisible by 6.
        widen: widening factor k.
        dropout: dropout rate between the two convs of each block (0.3 in the WRN paper).

    Returns:
        BackboneOutput with pre-activation taps at the ends of groups 1 and 2.

    Raises:
        ValueError: bad depth (the registered builder refuses an input smaller than 4×4).
    """
    if depth < 10 or (depth - 4) % 6:
        raise ModelError(f"WRN depth must be 6n + 4 (16, 22, 28, 40, …). Received: depth={depth}")
    n = (depth - 4) // 6
    x = _conv(16, 3, 1, "stem_conv")(x)
    taps, done = [], 1
    for g, w in enumerate((16 * widen, 32 * widen, 64 * widen), start=1):
        for b in range(1, n + 1):
            x = wide_block(x, w, 2 if (b == 1 and g > 1) else 1, dropout, name=f"group{g}_block{b}")
            done += 2
        if g < 3:
            taps.append(Tap(f"group{g}", x, w, 2 ** (g - 1), done, preact=True))
    x = bn_relu(x, name="final")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="classifier")(x)
    return BackboneOutput(logits, taps, done + 1)


def _register(name: str):
    depth, widen = WRN_VARIANTS[name]

    @register_backbone(name, min_input_size=4, family="wrn",
                       description=f"Wide ResNet WRN-{depth}-{widen} (pre-activation, dropout)")
    def builder(x, num_classes, **kwargs):
        return wrn(x, num_classes, depth, widen, **kwargs)

    builder.__name__ = name
    return builder


for _name in WRN_VARIANTS:
    _register(_name)
