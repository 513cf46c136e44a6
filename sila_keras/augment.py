"""Training augmentations, registered by name for ``--augment``: the registry, the CIFAR
standard (``none``, ``crop``, ``standard`` = pad 4 + crop + flip), AutoAugment (CIFAR-10
policy) and RandAugment, as tf.data augmentations.

:data:`AUGMENTATIONS` maps each name (``--augment``) to ``fn(image, seed)``.
Both take one uint8 HWC image and a ``[2]`` int32 seed and return a uint8 image of
the same shape; all randomness is stateless, derived from the seed, so a resumed
run sees the same augmentations.

* ``autoaugment`` — Cubuk et al. 2018 ("AutoAugment: Learning Augmentation
  Policies from Data"), the published CIFAR-10 policy (25 sub-policies of two
  ``(operation, probability, magnitude)`` steps, the paper's appendix table),
  followed, as in the paper's CIFAR recipe, by the standard pad-4 crop + flip
  and Cutout 16×16. One sub-policy is drawn uniformly per image; each step
  runs with its probability.
* ``randaugment`` — Cubuk et al. 2019: ``num_ops`` operations drawn uniformly
  from 14 (identity included), each at one shared ``magnitude`` (of 30), then
  pad-crop + flip.

Magnitudes: the integer m ∈ 0..9 (AutoAugment) is mapped linearly onto the
AutoAugment paper's ranges — shear ±0.3, translate ±150/331 of the image side,
rotate ±30°, Brightness/Color/Contrast/Sharpness factor 1 ± 0.9, Posterize 8…4
bits, Solarize threshold 255…0 — with a random sign for the signed operations.
Geometric operations fill with grey (128) and sample the nearest pixel.
Image operations follow PIL's definitions (``ImageOps``/``ImageEnhance``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from sila_keras.errors import DataError

AUGMENTATIONS: dict[str, Callable] = {}
# Vectorised forms (``fn(images_uint8_bhwc, seeds[B, 2])``), registered by sila_keras.pipeline.
BATCH_AUGMENTATIONS: dict[str, Callable] = {}


def register_augmentation(name: str, batched: bool = False):
    """Register ``fn(image_uint8_hwc, seed[2]) -> image_uint8_hwc`` under ``name``, or with
    ``batched=True`` its vectorised form ``fn(images_uint8_bhwc, seeds[B, 2]) -> images``."""
    registry = BATCH_AUGMENTATIONS if batched else AUGMENTATIONS

    def deco(fn):
        if name in registry:
            raise DataError(f"Augmentation '{name}' is already registered.")
        registry[name] = fn
        return fn

    return deco


@register_augmentation("none")
def no_augment(image, seed):
    return image


@register_augmentation("crop")
def pad_crop(image, seed, pad: int = 4):
    """Zero-pad by ``pad`` pixels and take a random crop of the original size."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, seed)


@register_augmentation("standard")
def pad_crop_flip(image, seed):
    """CIFAR standard: pad 4 + random crop + random horizontal flip."""
    image = pad_crop(image, seed)
    return tf.image.stateless_random_flip_left_right(image, seed + 1)


def get_augmentation(name: str) -> Callable:
    """The augmentation registered as ``name``."""
    if name not in AUGMENTATIONS:
        raise DataError(f"Unknown augmentation '{name}'. Available: {', '.join(sorted(AUGMENTATIONS))}")
    return AUGMENTATIONS[name]


FILL = 128.0
CUTOUT = 16
NUM_BINS = 10

# Cubuk et al. 2018, appendix: the policy found on reduced CIFAR-10.
# Each sub-policy: two (operation, probability, magnitude 0..9) steps.
CIFAR10_POLICY = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)

# RandAugment's operation set (Cubuk et al. 2019, Table: 14 transformations).
RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color",
                   "Posterize", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY")


# --------------------------------------------------------------------------- operations
# Every op: fn(image float32 HWC in [0, 255] with integral values, level in [0, 1],
#              sign ±1 float32 scalar) -> float32 HWC, rounded and clipped to [0, 255].


def _to_pixels(x):
    return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def _grayscale(image):
    if image.shape[-1] == 3:
        return tf.image.rgb_to_grayscale(image)
    return image[..., :1]


def _blend(degenerate, image, factor):
    """PIL ImageEnhance: ``degenerate + factor·(image − degenerate)``."""
    return _to_pixels(degenerate + factor * (image - degenerate))


def _affine(image, transform):
    """Apply a projective transform (output pixel → input pixel), nearest, grey fill."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(tf.reshape(transform, (1, 8)), tf.float32),
        output_shape=tf.stack([h, w]), fill_value=FILL, interpolation="NEAREST",
        fill_mode="CONSTANT")
    return tf.ensure_shape(out[0], image.shape)


def identity(image, level, sign):
    return image


def shear_x(image, level, sign):
    v = 0.3 * level * sign
    return _affine(image, tf.stack([1.0, v, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level, sign):
    v = 0.3 * level * sign
    return _affine(image, tf.stack([1.0, 0.0, 0.0, v, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image, level, sign):
    t = tf.round(150.0 / 331.0 * float(image.shape[1]) * level) * sign
    return _affine(image, tf.stack([1.0, 0.0, t, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, level, sign):
    t = tf.round(150.0 / 331.0 * float(image.shape[0]) * level) * sign
    return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, t, 0.0, 0.0]))


def rotate(image, level, sign):
    """Rotate by ±30·level degrees about the image centre."""
    theta = math.radians(30.0) * level * sign
    c, s = tf.cos(theta), tf.sin(theta)
    cx, cy = (float(image.shape[1]) - 1) / 2, (float(image.shape[0]) - 1) / 2
    # output (x, y) samples input R(θ)·(x − c) + c
    return _affine(image, tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy,
                                    0.0, 0.0]))


def auto_contrast(image, level, sign):
    """Stretch every channel to the full 0..255 range (PIL ``autocontrast``)."""
    lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
    hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(hi > lo, lo, 0.0)
    return _to_pixels((image - offset) * scale)


def _equalize_channel(channel):
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

    def remap():
        lut = (tf.cumsum(hist) + step // 2) // step
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], axis=0), 0, 255)
        return tf.cast(tf.gather(lut, values), tf.float32)

    return tf.cond(step > 0, remap, lambda: channel)


def equalize(image, level, sign):
    """Histogram equalization of every channel (PIL ``equalize``)."""
    return tf.stack([_equalize_channel(image[..., i]) for i in range(image.shape[-1])], axis=-1)


def invert(image, level, sign):
    return 255.0 - image


def solarize(image, level, sign):
    """Invert the pixels at or above the threshold 255·(1 − level)."""
    return tf.where(image >= 255.0 * (1.0 - level), 255.0 - image, image)


def posterize(image, level, sign):
    """Keep the top 8 − round(4·level) bits of every pixel (zero the round(4·level) low bits)."""
    q = tf.pow(2.0, tf.round(4.0 * level))
    return tf.floor(image / q) * q


def color(image, level, sign):
    return _blend(tf.broadcast_to(_grayscale(image), tf.shape(image)), image, 1.0 + 0.9 * level * sign)


def contrast(image, level, sign):
    degenerate = tf.round(tf.reduce_mean(_grayscale(image)))
    return _blend(degenerate, image, 1.0 + 0.9 * level * sign)


def brightness(image, level, sign):
    return _blend(tf.zeros_like(image), image, 1.0 + 0.9 * level * sign)


def sharpness(image, level, sign):
    """Blend with PIL's SMOOTH-filtered image (3×3 kernel, centre 5, /13); borders kept."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    channels = image.shape[-1]
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.round(smooth)
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.zeros_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]], constant_values=True)
    degenerate = tf.where(border, image, degenerate)
    return _blend(degenerate, image, 1.0 + 0.9 * level * sign)


OPS: dict[str, Callable] = {
    "Identity": identity, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Rotate": rotate, "AutoContrast": auto_contrast,
    "Equalize": equalize, "Invert": invert, "Solarize": solarize, "Posterize": posterize,
    "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
}
OP_NAMES = tuple(OPS)


def _op_by_id(image, op_id, level, sign):
    """``switch_case`` over all operations: one small graph, whatever the policy."""
    branches = [lambda f=OPS[n]: f(image, level, sign) for n in OP_NAMES]
    out = tf.switch_case(op_id, branches)
    return tf.ensure_shape(_to_pixels(out), image.shape)


@tf.autograph.experimental.do_not_convert
def apply_op(image, name: str, magnitude, sign=1.0, num_bins: int = NUM_BINS):
    """Apply operation ``name`` at ``magnitude`` (0 … num_bins−1) to a uint8 or float HWC image.

    Returns an image of the input's dtype and shape.

    Raises:
        ValueError: unknown operation or magnitude out of range.
    """
    if name not in OPS:
        raise DataError(f"Unknown augmentation op '{name}'. Available: {', '.join(OP_NAMES)}")
    if not 0 <= magnitude <= num_bins - 1:
        raise DataError(f"`magnitude` must be in [0, {num_bins - 1}]. Received: magnitude={magnitude}")
    x = tf.cast(image, tf.float32)
    level = tf.constant(float(magnitude) / (num_bins - 1), tf.float32)
    out = OPS[name](x, level, tf.cast(sign, tf.float32))
    return tf.cast(tf.ensure_shape(_to_pixels(out), image.shape), image.dtype)


def _sign(u):
    return tf.where(u < 0.5, -1.0, 1.0)


def _policy_tables(policy):
    ids = [[OP_NAMES.index(name) for name, _, _ in sub] for sub in policy]
    probs = [[p for _, p, _ in sub] for sub in policy]
    levels = [[m / (NUM_BINS - 1) for _, _, m in sub] for sub in policy]
    return (tf.constant(ids, tf.int32), tf.constant(probs, tf.float32),
            tf.constant(levels, tf.float32))


@tf.autograph.experimental.do_not_convert
def apply_subpolicy(image, index, draws, policy=CIFAR10_POLICY):
    """Run sub-policy ``index`` of ``policy`` on a float32 image.

    ``draws`` = 4 uniforms in [0, 1): (apply step 1?, apply step 2?, sign 1, sign 2).
    A step whose draw is at or above its probability is skipped (Identity).
    """
    ids, probs, levels = _policy_tables(policy)
    for step in range(2):
        op_id = tf.where(draws[step] < probs[index, step], ids[index, step], OP_NAMES.index("Identity"))
        image = _op_by_id(image, op_id, levels[index, step], _sign(draws[2 + step]))
    return image


@tf.autograph.experimental.do_not_convert
def cutout(image, seed, size: int = CUTOUT, fill: float = FILL):
    """Cutout (DeVries & Taylor 2017): grey out a ``size``×``size`` square at a random centre."""
    h, w = image.shape[0], image.shape[1]
    cy = tf.random.stateless_uniform([], seed, 0, h, tf.int32)
    cx = tf.random.stateless_uniform([], seed + 1, 0, w, tf.int32)
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = ((ys >= cy - size // 2) & (ys < cy + size - size // 2)
              & (xs >= cx - size // 2) & (xs < cx + size - size // 2))
    return tf.where(inside[:, :, None], tf.cast(fill, image.dtype), image)


@tf.autograph.experimental.do_not_convert
def auto_augment_policy(image, seed):
    """The CIFAR-10 AutoAugment policy alone (one random sub-policy), uint8 → uint8."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
    index = tf.random.stateless_uniform([], seeds[0], 0, len(CIFAR10_POLICY), tf.int32)
    draws = tf.random.stateless_uniform([4], seeds[1])
    out = apply_subpolicy(tf.cast(image, tf.float32), index, draws)
    return tf.cast(out, tf.uint8)


@register_augmentation("autoaugment")
@tf.autograph.experimental.do_not_convert
def auto_augment(image, seed):
    """CIFAR AutoAugment recipe: policy → pad-4 crop + flip → Cutout 16 (uint8 HWC)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 3)
    image = auto_augment_policy(image, seeds[0])
    image = pad_crop_flip(image, seeds[1])
    return cutout(image, seeds[2])


@tf.autograph.experimental.do_not_convert
def rand_augment(image, seed, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31):
    """RandAugment: ``num_ops`` uniformly drawn operations at ``magnitude``/(num_bins−1), uint8 → uint8."""
    if not 0 <= magnitude <= num_bins - 1:
        raise DataError(f"`magnitude` must be in [0, {num_bins - 1}]. Received: magnitude={magnitude}")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2 * num_ops)
    table = tf.constant([OP_NAMES.index(n) for n in RANDAUGMENT_OPS], tf.int32)
    level = tf.constant(magnitude / (num_bins - 1), tf.float32)
    x = tf.cast(image, tf.float32)
    for k in range(num_ops):
        pick = tf.random.stateless_uniform([], seeds[2 * k], 0, len(RANDAUGMENT_OPS), tf.int32)
        sign = _sign(tf.random.stateless_uniform([], seeds[2 * k + 1]))
        x = _op_by_id(x, table[pick], level, sign)
    return tf.cast(x, tf.uint8)


@register_augmentation("randaugment")
@tf.autograph.experimental.do_not_convert
def rand_augment_cifar(image, seed):
    """RandAugment (N=2, M=9 of 30) → pad-4 crop + flip (uint8 HWC)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
    return pad_crop_flip(rand_augment(image, seeds[0]), seeds[1])
