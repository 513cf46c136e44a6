"""MobileNetV1 (Howard et al. 2017), CIFAR variant with width multiplier α.

A 3×3 stem conv (32α filters, stride 1) and 13 depthwise-separable blocks
(3×3 depthwise conv → BN → ReLU → 1×1 pointwise conv → BN → ReLU) with
64, 128, 128, 256, 256, 512 (×6), 1024, 1024 filters (times α); blocks 2, 4, 6 and
12 use stride 2, so a 32×32 input ends at 2×2; then global average pooling and
a dense layer. As in the CIFAR zoo that SilaNet counted, the stem and depthwise
convs have no bias and the pointwise convs do. With α = 1 and N = 10 it has
3,223,178 trainable parameters (SilaNet Table 3: 12.30 MiB).

Taps: the end of each resolution stage but the last (after blocks 1, 3, 5 and
11). Module C (head 2) sits after the 11th block (512 channels), module D
(head 3) after the 5th (256 channels).
"""

from __future__ import annotations

from keras import layers

from sila_keras.models.layers import conv_bn_relu
from sila_keras.models.registry import BackboneOutput, Tap, register_backbone
from sila_keras.utils.errors import ModelError

# (filters, stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def separable_block(x, filters: int, strides: int, *, name: str):
    """3×3 depthwise conv (no bias) → BN → ReLU → 1×1 conv (bias) → BN → ReLU."""
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               name=f"{name}_dw_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    return conv_bn_relu(x, filters, 1, 1, name=f"{name}_pw", use_bias=True)


def mobilenet_v1(x, num_classes: int, *, alpha: float = 1.0) -> BackboneOutput:
    """Build a CIFAR MobileNetV1 on ``x``.

    Args:
        x: normalized input ``(B, H, W, C)``; H, W ≥ 16.
        num_classes: N.
        alpha: width multiplier α (filters are ``int(f·α)``).

    Returns:
        BackboneOutput with a tap at the end of every resolution stage but the last.
    """
    if alpha <= 0:
        raise ModelError(f"`alpha` must be > 0. Received: alpha={alpha}")
    x = conv_bn_relu(x, int(32 * alpha), 3, 1, name="stem")
    taps, depth, reduction = [], 1, 1
    for i, (f, s) in enumerate(BLOCKS, start=1):
        f = int(f * alpha)
        if s > 1:  # the previous block ended a resolution stage
            taps.append(Tap(f"block{i - 1}", x, x.shape[-1], reduction, depth))
            reduction *= s
        x = separable_block(x, f, s, name=f"block{i}")
        depth += 2
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(num_classes, name="classifier")(x)
    return BackboneOutput(logits, taps, depth + 1)


@register_backbone("mobilenetv1", min_input_size=16, family="mobilenet",
                   description="CIFAR MobileNetV1 α=1 (13 depthwise-separable blocks)")
def mobilenetv1(x, num_classes, **kwargs):
    """CIFAR MobileNetV1, α = 1 by default (``alpha=`` to change)."""
    return mobilenet_v1(x, num_classes, **kwargs)
