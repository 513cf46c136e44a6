"""InceptionV3 (Szegedy et al. 2016, "Rethinking the Inception Architecture"), CIFAR variant.

The CIFAR adaptation of the common CIFAR zoos that SilaNet counted: the stem
keeps full resolution (3×3 convs 32, 32, 64 with padding, 1×1 conv 80, then a
3×3 conv 192 without padding: 32 → 30), followed by Mixed_5b–5d (InceptionA),
Mixed_6a (grid reduction, 30 → 14), Mixed_6b–6e (InceptionC, factorized 7×7),
Mixed_7a (grid reduction, 14 → 6), Mixed_7b–7c (InceptionE), global average
pooling, dropout and a dense layer. Every conv is conv (no bias) → BN → ReLU.
In this variant the pooling branch of InceptionA uses a 3×3 conv. With N = 10 it
has 22,133,738 trainable parameters (SilaNet Table 3: 84.43 MiB).

Taps: the ends of the resolution stages but the last — after Conv2d_3b (80 ch,
32×32), Mixed_5d (288 ch, 30×30) and Mixed_6e (768 ch, 14×14). Module C (head 2)
sits after Mixed_6e, module D (head 3) after Mixed_5d.
"""

from __future__ import annotations

from keras import layers

from sila_keras.models.layers import conv_bn_relu
from sila_keras.models.registry import BackboneOutput, Tap, register_backbone


def _cbr(x, filters, kernel_size, name, strides=1, padding="same"):
    return conv_bn_relu(x, filters, kernel_size, strides, name=name, padding=padding)


def _pool_branch(x, filters, kernel_size, name):
    x = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    return _cbr(x, filters, kernel_size, f"{name}_conv")


def inception_a(x, pool_filters: int, *, name: str):
    """35×35-grid module (Fig. 5): 1×1, 5×5, double 3×3 and pooling branches."""
    b1 = _cbr(x, 64, 1, f"{name}_1x1")
    b5 = _cbr(_cbr(x, 48, 1, f"{name}_5x5_1"), 64, 5, f"{name}_5x5_2")
    b3 = _cbr(x, 64, 1, f"{name}_3x3dbl_1")
    b3 = _cbr(_cbr(b3, 96, 3, f"{name}_3x3dbl_2"), 96, 3, f"{name}_3x3dbl_3")
    bp = _pool_branch(x, pool_filters, 3, f"{name}_pool")
    return layers.Concatenate(name=name)([b1, b5, b3, bp])


def inception_b(x, *, name: str):
    """Grid reduction (35 → 17 in the paper): strided 3×3, double 3×3 and max-pool branches."""
    b3 = _cbr(x, 384, 3, f"{name}_3x3", strides=2, padding="valid")
    bd = _cbr(_cbr(x, 64, 1, f"{name}_3x3dbl_1"), 96, 3, f"{name}_3x3dbl_2")
    bd = _cbr(bd, 96, 3, f"{name}_3x3dbl_3", strides=2, padding="valid")
    bp = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return layers.Concatenate(name=name)([b3, bd, bp])


def inception_c(x, c7: int, *, name: str):
    """17×17-grid module (Fig. 6): factorized 7×7 convolutions."""
    b1 = _cbr(x, 192, 1, f"{name}_1x1")
    b7 = _cbr(x, c7, 1, f"{name}_7x7_1")
    b7 = _cbr(_cbr(b7, c7, (7, 1), f"{name}_7x7_2"), 192, (1, 7), f"{name}_7x7_3")
    bd = _cbr(x, c7, 1, f"{name}_7x7dbl_1")
    for i, (f, k) in enumerate(((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))), start=2):
        bd = _cbr(bd, f, k, f"{name}_7x7dbl_{i}")
    bp = _pool_branch(x, 192, 1, f"{name}_pool")
    return layers.Concatenate(name=name)([b1, b7, bd, bp])


def inception_d(x, *, name: str):
    """Grid reduction (17 → 8 in the paper): strided 3×3, 7×7 + strided 3×3, average pool."""
    b3 = _cbr(_cbr(x, 192, 1, f"{name}_3x3_1"), 320, 3, f"{name}_3x3_2", strides=2, padding="valid")
    b7 = _cbr(x, 192, 1, f"{name}_7x7x3_1")
    b7 = _cbr(_cbr(b7, 192, (1, 7), f"{name}_7x7x3_2"), 192, (7, 1), f"{name}_7x7x3_3")
    b7 = _cbr(b7, 192, 3, f"{name}_7x7x3_4", strides=2, padding="valid")
    bp = layers.AveragePooling2D(3, strides=2, name=f"{name}_pool")(x)
    return layers.Concatenate(name=name)([b3, b7, bp])


def inception_e(x, *, name: str):
    """8×8-grid module (Fig. 7): expanded filter bank with split 1×3 / 3×1 outputs."""
    b1 = _cbr(x, 320, 1, f"{name}_1x1")
    b3 = _cbr(x, 384, 1, f"{name}_3x3_1")
    b3 = layers.Concatenate(name=f"{name}_3x3")(
        [_cbr(b3, 384, (1, 3), f"{name}_3x3_2a"), _cbr(b3, 384, (3, 1), f"{name}_3x3_2b")])
    bd = _cbr(_cbr(x, 448, 1, f"{name}_3x3dbl_1"), 384, 3, f"{name}_3x3dbl_2")
    bd = layers.Concatenate(name=f"{name}_3x3dbl")(
        [_cbr(bd, 384, (1, 3), f"{name}_3x3dbl_3a"), _cbr(bd, 384, (3, 1), f"{name}_3x3dbl_3b")])
    bp = _pool_branch(x, 192, 1, f"{name}_pool")
    return layers.Concatenate(name=name)([b1, b3, bd, bp])


def inception_v3(x, num_classes: int, *, dropout: float = 0.5) -> BackboneOutput:
    """Build the CIFAR InceptionV3 on ``x``.

    Args:
        x: normalized input ``(B, H, W, C)``; H, W ≥ 16 (the stem and the two
            grid reductions use valid padding: 32 → 30 → 14 → 6).
        num_classes: N.
        dropout: dropout rate before the classifier.

    Returns:
        BackboneOutput with taps after the stem, Mixed_5d and Mixed_6e.
    """
    size = x.shape[1]
    x = _cbr(x, 32, 3, "conv2d_1a")
    x = _cbr(x, 32, 3, "conv2d_2a")
    x = _cbr(x, 64, 3, "conv2d_2b")
    x = _cbr(x, 80, 1, "conv2d_3b")
    taps = [Tap("conv2d_3b", x, 80, 1, 4)]
    x = _cbr(x, 192, 3, "conv2d_4a", padding="valid")
    for name, pool in (("mixed_5b", 32), ("mixed_5c", 64), ("mixed_5d", 64)):
        x = inception_a(x, pool, name=name)
    depth = 5 + 3 * 3  # weight layers on the longest path (double 3×3 branch)
    taps.append(Tap("mixed_5d", x, x.shape[-1], _reduction(size, x), depth))
    x = inception_b(x, name="mixed_6a")
    for name, c7 in (("mixed_6b", 128), ("mixed_6c", 160), ("mixed_6d", 160), ("mixed_6e", 192)):
        x = inception_c(x, c7, name=name)
    depth += 3 + 4 * 5
    taps.append(Tap("mixed_6e", x, x.shape[-1], _reduction(size, x), depth))
    x = inception_d(x, name="mixed_7a")
    x = inception_e(x, name="mixed_7b")
    x = inception_e(x, name="mixed_7c")
    depth += 4 + 2 * 3
    last = _reduction(size, x)  # the last stage's reduction, on the taps' scale
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="classifier")(x)
    return BackboneOutput(logits, taps, depth + 1, reduction=last)


def _reduction(size, x) -> int:
    return max(1, round(size / x.shape[1])) if size and x.shape[1] else 1


@register_backbone("inceptionv3", min_input_size=16, family="inception",
                   description="CIFAR InceptionV3 (full-resolution stem, Mixed_5b…7c)")
def inceptionv3(x, num_classes, **kwargs):
    """CIFAR InceptionV3."""
    return inception_v3(x, num_classes, **kwargs)
