"""The image operations of AutoAugment and RandAugment, and their two magnitude semantics.

An operation is applied at an integer magnitude ``m`` (AutoAugment: 0…9; RandAugment: 0…30)
with a sign ±1 for the signed ones. How ``m`` becomes the operation's value (shear, pixels,
degrees, enhancement factor, bits, threshold), whether a sign applies and what fills the
pixels a geometric operation exposes is the *semantics* (``--autoaugment-semantics``; the
table in ``docs/augment.md``):

* ``official`` — the AutoAugment authors' code (tensorflow/models, research/autoaugment,
  ``augmentation_transforms.py``): a level is ``m/10`` of the maximum (``PARAMETER_MAX =
  10``), integer values truncated; shear ±0.03·m, translate ±m px (on 32-px images; scaled
  by side/32 otherwise), rotate ±⌊3m⌋°, Color/Contrast/Brightness/Sharpness factor
  0.1 + 0.18·m (no sign), Posterize keeps 4 − ⌊0.4m⌋ bits, Solarize threshold
  256 − ⌊25.6m⌋. The code works on RGBA images: geometric operations leave transparent
  pixels, which become the CIFAR-10 mean pixel in the end — unless a later operation of
  the sub-policy converts to RGB first (AutoContrast, Equalize, Invert, Posterize,
  Solarize), which makes them black. Both are reproduced (an alpha channel rides along).
* ``torchvision`` — ``torchvision.transforms.AutoAugment``/``RandAugment``: a level is
  ``m/(bins − 1)`` of the maximum; shear ±0.3·l, translate ±⌊150/331·side·l⌋ px, rotate
  ±30·l°, factor 1 ± 0.9·l (random sign), Posterize keeps 8 − round(4l) bits, Solarize
  threshold 255·(1 − l); fill 0 (its default ``fill=None``).

Every operation takes a float32 HWC image holding integral values in [0, 255] and returns
one of the same shape (callers round and clip: :func:`to_pixels`). Geometric operations
sample the nearest pixel with PIL's pixel-centre convention, so they match PIL's
``Image.transform``/``rotate`` pixel for pixel. Pixel operations equal PIL's
``ImageOps``/``ImageEnhance`` pixel for pixel too (``Image.blend`` truncates; grey is
``convert("L")``'s integer luma; ``autocontrast``'s lookup table is computed in float64), as
torchvision's ``AutoAugment`` runs them on PIL images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from sila_keras.utils.errors import ConfigError

# The first is the default (config_groups.AUTOAUGMENT_SEMANTICS, for the parser, must equal this).
SEMANTICS = ("official", "torchvision")
OFFICIAL_PARAMETER_MAX = 10  # official code: value = level · max / 10
# The official code's fill: zero in its normalised space = the CIFAR-10 mean pixel
# (255 · (0.4914, 0.4822, 0.4465), rounded); its luminance for single-channel images.
CIFAR10_MEAN_PIXEL = (125.0, 123.0, 114.0)
CIFAR10_MEAN_GREY = 123.0

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
# Official code: these run on ``img.convert('RGB')`` (transparent pixels become opaque black).
CONVERTS_TO_RGB = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize")


def to_pixels(x):
    return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ConfigError(f"Unknown --autoaugment-semantics '{semantics}'. Available: "
                          f"{', '.join(SEMANTICS)}")
    return semantics


# --------------------------------------------------------------------------- magnitude → value


def op_value(name: str, m, sign, shape, semantics: str, num_bins: int = 10):
    """The value operation ``name`` runs with at magnitude ``m`` (float32 scalar) and
    ``sign`` (±1) on an image of ``shape`` (H, W, …), under ``semantics``. Computed in
    float64, as the references' Python does, then cast to float32."""
    h, w = float(shape[0]), float(shape[1])
    m, sign = tf.cast(m, tf.float64), tf.cast(sign, tf.float64)
    if semantics == "official":
        def level(maxval, integer=False):  # float_parameter / int_parameter
            v = m * maxval / OFFICIAL_PARAMETER_MAX
            return tf.floor(v) if integer else v

        values = {
            "ShearX": lambda: level(0.3) * sign, "ShearY": lambda: level(0.3) * sign,
            "TranslateX": lambda: level(10.0 * w / 32.0, True) * sign,
            "TranslateY": lambda: level(10.0 * h / 32.0, True) * sign,
            "Rotate": lambda: level(30.0, True) * sign,
            "Posterize": lambda: 4.0 - level(4.0, True),
            "Solarize": lambda: 256.0 - level(256.0, True),
            **{e: (lambda: level(1.8) + 0.1) for e in ENHANCE},
        }
    else:
        lv = m / float(num_bins - 1)
        values = {
            "ShearX": lambda: 0.3 * lv * sign, "ShearY": lambda: 0.3 * lv * sign,
            "TranslateX": lambda: tf.floor(150.0 / 331.0 * w * lv) * sign,
            "TranslateY": lambda: tf.floor(150.0 / 331.0 * h * lv) * sign,
            "Rotate": lambda: 30.0 * lv * sign,
            "Posterize": lambda: 8.0 - tf.round(4.0 * lv),
            "Solarize": lambda: 255.0 * (1.0 - lv),
            **{e: (lambda: 1.0 + 0.9 * lv * sign) for e in ENHANCE},
        }
    return tf.cast(values[name](), tf.float32) if name in values else tf.constant(0.0)


# --------------------------------------------------------------------------- geometric


def _affine(image, a, b, c, d, e, f):
    """PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f))``, nearest, fill 0: output pixel
    centre (x, y) samples the input at (a·x + b·y + c, d·x + e·y + f) (continuous coords)."""
    # TF samples at index coordinates and rounds: shift PIL's half-pixel centres onto them.
    c2 = c + 0.5 * (a + b) - 0.5
    f2 = f + 0.5 * (d + e) - 0.5
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    transform = tf.cast(tf.stack([a, b, c2, d, e, f2, 0.0, 0.0]), tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.reshape(transform, (1, 8)),
        output_shape=tf.stack([h, w]), fill_value=0.0, interpolation="NEAREST",
        fill_mode="CONSTANT")
    return tf.ensure_shape(out[0], image.shape)


def shear_x(image, v):
    return _affine(image, 1.0, v, 0.0, 0.0, 1.0, 0.0)


def shear_y(image, v):
    return _affine(image, 1.0, 0.0, 0.0, v, 1.0, 0.0)


def translate_x(image, pixels):
    """Output x samples input x + pixels (PIL's ``(1, 0, t, 0, 1, 0)``: moves left for t > 0)."""
    return _affine(image, 1.0, 0.0, pixels, 0.0, 1.0, 0.0)


def translate_y(image, pixels):
    return _affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, pixels)


def rotate(image, degrees):
    """Rotate counter-clockwise by ``degrees`` about the image centre (PIL ``rotate``)."""
    theta = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = float(image.shape[1]) / 2, float(image.shape[0]) / 2
    # PIL's inverse map (image coordinates, y down): about the centre (cx, cy)
    return _affine(image, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


# --------------------------------------------------------------------------- pixel operations


def _grayscale(image):
    """PIL's ``convert("L")``: (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16, in integers."""
    if image.shape[-1] != 3:
        return image[..., :1]
    rgb = tf.cast(image, tf.int32)
    luma = (rgb[..., :1] * 19595 + rgb[..., 1:2] * 38470 + rgb[..., 2:] * 7471 + 32768) // 65536
    return tf.cast(luma, tf.float32)


def _blend(degenerate, image, factor):
    """PIL ``Image.blend`` (ImageEnhance): ``degenerate + factor·(image − degenerate)`` in
    float32, truncated and clipped to 0..255."""
    return tf.clip_by_value(tf.floor(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def identity(image, value):
    return image


def auto_contrast(image, value):
    """Stretch every channel to the full 0..255 range (PIL ``autocontrast``: its lookup
    table ``int(i·scale − lo·scale)``, in float64 as PIL computes it)."""
    x = tf.cast(image, tf.float64)
    lo = tf.reduce_min(x, axis=(0, 1), keepdims=True)
    hi = tf.reduce_max(x, axis=(0, 1), keepdims=True)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(hi > lo, -lo * scale, 0.0)
    return tf.cast(tf.clip_by_value(tf.floor(x * scale + offset), 0.0, 255.0), tf.float32)


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


def equalize(image, value):
    """Histogram equalization of every channel (PIL ``equalize``)."""
    return tf.stack([_equalize_channel(image[..., i]) for i in range(image.shape[-1])], axis=-1)


def invert(image, value):
    return 255.0 - image


def solarize(image, threshold):
    """Invert the pixels at or above ``threshold`` (PIL ``solarize``)."""
    return tf.where(image >= threshold, 255.0 - image, image)


def posterize(image, bits):
    """Keep the top ``bits`` bits of every pixel (PIL ``posterize``)."""
    q = tf.pow(2.0, 8.0 - bits)
    return tf.floor(image / q) * q


def color(image, factor):
    return _blend(tf.broadcast_to(_grayscale(image), tf.shape(image)), image, factor)


def contrast(image, factor):
    degenerate = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)  # int(mean + 0.5)
    return _blend(degenerate, image, factor)


def brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """Blend with PIL's SMOOTH-filtered image (3×3 kernel, centre 5, /13); borders kept."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    channels = image.shape[-1]
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.round(smooth)
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.zeros_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]], constant_values=True)
    degenerate = tf.where(border, image, degenerate)
    return _blend(degenerate, image, factor)


OPS: dict[str, Callable] = {
    "Identity": identity, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Rotate": rotate, "AutoContrast": auto_contrast,
    "Equalize": equalize, "Invert": invert, "Solarize": solarize, "Posterize": posterize,
    "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
}
OP_NAMES = tuple(OPS)


# --------------------------------------------------------------------------- with a semantics


def start(image, semantics: str):
    """The working state for a chain of operations: float32 pixels, plus (official) an
    alpha channel of 255 — PIL's RGBA image of the official code."""
    x = tf.cast(image, tf.float32)
    if semantics == "official":
        x = tf.concat([x, tf.fill(tf.concat([tf.shape(x)[:2], [1]], 0), 255.0)], -1)
    return x


def finish(state, channels: int, semantics: str):
    """Back to ``channels`` pixels: (official) transparent pixels become the CIFAR-10 mean."""
    if semantics != "official":
        return state
    rgb, alpha = state[..., :channels], state[..., channels:]
    mean = CIFAR10_MEAN_PIXEL if channels == 3 else (CIFAR10_MEAN_GREY,) * channels
    return tf.where(alpha > 0, rgb, tf.constant(mean, tf.float32))


def apply_by_id(state, op_id, m, sign, channels: int, semantics: str, num_bins: int = 10):
    """``switch_case`` over all operations (one small graph, whatever the policy): operation
    ``OP_NAMES[op_id]`` at magnitude ``m`` on a state made by :func:`start`."""

    def branch(name):
        def run():
            value = op_value(name, m, sign, state.shape, semantics, num_bins)
            if name in GEOMETRIC:  # moves the alpha channel too (exposed: transparent)
                return OPS[name](state, value)
            pixels = to_pixels(OPS[name](state[..., :channels], value))
            if state.shape[-1] == channels:
                return pixels
            alpha = state[..., channels:]
            if name in CONVERTS_TO_RGB:
                alpha = tf.fill(tf.shape(alpha), 255.0)
            return tf.concat([pixels, alpha], -1)
        return run

    out = tf.switch_case(op_id, [branch(n) for n in OP_NAMES])
    return tf.ensure_shape(to_pixels(out), state.shape)
