"""Training augmentations, registered by name for ``--augment``: the registry, the CIFAR
standard (``none``, ``crop``, ``standard`` = pad 4 + crop + flip), AutoAugment (CIFAR-10
policy) and RandAugment, as tf.data augmentations; and Cutout (``--cutout N``), applied after
whichever of them runs.

:data:`AUGMENTATIONS` maps each name (``--augment``) to ``fn(image, seed)``;
:func:`get_augmentation` binds the options (AutoAugment semantics, Cutout). Both take one
uint8 HWC image and a ``[2]`` int32 seed and return a uint8 image of the same shape; all
randomness is stateless, derived from the seed, so a resumed run sees the same
augmentations.

* ``autoaugment`` — Cubuk et al. 2018 ("AutoAugment: Learning Augmentation
  Policies from Data"), the published CIFAR-10 policy (25 sub-policies of two
  ``(operation, probability, magnitude)`` steps, the paper's appendix table),
  followed by the standard pad-4 crop + flip. One sub-policy is drawn uniformly per
  image; each step runs with its probability. Magnitudes follow ``semantics``
  (``--autoaugment-semantics``): ``official`` (the authors' code, default) or
  ``torchvision`` — see :mod:`sila_keras.data.augment_ops` and ``docs/augment.md``.
* ``randaugment`` — Cubuk et al. 2019: ``num_ops`` operations drawn uniformly
  from 14 (identity included), each at one shared ``magnitude`` (of 30), then
  pad-crop + flip; always torchvision's semantics (its N=2, M=9 of 31 bins are
  torchvision's parametrisation).
* Cutout (DeVries & Taylor 2017; ``--cutout N``, off by default): a grey (128) N×N
  square at a uniformly drawn centre, clipped at the borders. The AutoAugment paper's
  CIFAR recipe adds Cutout 16 after the policy and crop + flip; SiLa paper B does not
  mention it, so it is its own option.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tensorflow as tf

from sila_keras.data import augment_ops as ops
from sila_keras.data.augment_ops import OP_NAMES, OPS, SEMANTICS, check_semantics  # noqa: F401
from sila_keras.utils.errors import DataError

AUGMENTATIONS: dict[str, Callable] = {}
# Vectorised forms (``fn(images_uint8_bhwc, seeds[B, 2])``), registered by sila_keras.data.pipeline.
BATCH_AUGMENTATIONS: dict[str, Callable] = {}
# Augmentations that take ``semantics=`` (AutoAugment's magnitude semantics).
TAKES_SEMANTICS: set[str] = set()
DEFAULT_SEMANTICS = SEMANTICS[0]


def register_augmentation(name: str, batched: bool = False, semantics: bool = False):
    """Register ``fn(image_uint8_hwc, seed[2]) -> image_uint8_hwc`` under ``name``, or with
    ``batched=True`` its vectorised form ``fn(images_uint8_bhwc, seeds[B, 2]) -> images``.
    ``semantics=True``: ``fn`` also takes ``semantics=`` (``--autoaugment-semantics``)."""
    registry = BATCH_AUGMENTATIONS if batched else AUGMENTATIONS

    def deco(fn):
        if name in registry:
            raise DataError(f"Augmentation '{name}' is already registered.")
        registry[name] = fn
        if semantics:
            TAKES_SEMANTICS.add(name)
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


def get_augmentation(name: str, *, semantics: str = DEFAULT_SEMANTICS,
                     cutout: int = 0) -> Callable:
    """The augmentation registered as ``name`` (``fn(image, seed)``), with AutoAugment's
    magnitude ``semantics`` bound where it takes them, then Cutout of side ``cutout``
    (0 = none)."""
    if name not in AUGMENTATIONS:
        raise DataError(f"Unknown augmentation '{name}'. Available: {', '.join(sorted(AUGMENTATIONS))}")
    fn = AUGMENTATIONS[name]
    if name in TAKES_SEMANTICS:
        fn = functools.partial(fn, semantics=check_semantics(semantics))
    return with_cutout(fn, cutout) if cutout else fn


FILL = 128.0  # Cutout's grey
CUTOUT_SALT = 0x0C07  # Cutout's seed: the example's seed folded with this
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


# --------------------------------------------------------------------------- the policy


@tf.autograph.experimental.do_not_convert
def apply_op(image, name: str, magnitude, sign=1.0, num_bins: int = NUM_BINS,
             semantics: str = DEFAULT_SEMANTICS):
    """Apply operation ``name`` at ``magnitude`` (0 … num_bins−1) to a uint8 or float HWC
    image, as ``semantics`` defines it (official: on its own RGBA image, then unwrapped).

    Returns an image of the input's dtype and shape.

    Raises:
        DataError: unknown operation or magnitude out of range.
    """
    if name not in OPS:
        raise DataError(f"Unknown augmentation op '{name}'. Available: {', '.join(OP_NAMES)}")
    if not 0 <= magnitude <= num_bins - 1:
        raise DataError(f"`magnitude` must be in [0, {num_bins - 1}]. Received: magnitude={magnitude}")
    check_semantics(semantics)
    channels = image.shape[-1]
    state = ops.start(image, semantics)
    state = ops.apply_by_id(state, tf.constant(OP_NAMES.index(name)), tf.constant(float(magnitude)),
                            tf.cast(sign, tf.float32), channels, semantics, num_bins)
    out = ops.finish(state, channels, semantics)
    return tf.cast(tf.ensure_shape(ops.to_pixels(out), image.shape), image.dtype)


def _sign(u):
    return tf.where(u < 0.5, -1.0, 1.0)


def _policy_tables(policy):
    ids = [[OP_NAMES.index(name) for name, _, _ in sub] for sub in policy]
    probs = [[p for _, p, _ in sub] for sub in policy]
    mags = [[float(m) for _, _, m in sub] for sub in policy]
    return (tf.constant(ids, tf.int32), tf.constant(probs, tf.float32),
            tf.constant(mags, tf.float32))


@tf.autograph.experimental.do_not_convert
def apply_subpolicy(image, index, draws, policy=CIFAR10_POLICY,
                    semantics: str = DEFAULT_SEMANTICS):
    """Run sub-policy ``index`` of ``policy`` on a float32 image, under ``semantics``.

    ``draws`` = 4 uniforms in [0, 1): (apply step 1?, apply step 2?, sign 1, sign 2).
    A step whose draw is at or above its probability is skipped (Identity).
    """
    ids, probs, mags = _policy_tables(policy)
    channels = image.shape[-1]
    state = ops.start(image, semantics)
    for step in range(2):
        op_id = tf.where(draws[step] < probs[index, step], ids[index, step], OP_NAMES.index("Identity"))
        state = ops.apply_by_id(state, op_id, mags[index, step], _sign(draws[2 + step]), channels,
                                semantics)
    return ops.finish(state, channels, semantics)


@tf.autograph.experimental.do_not_convert
def cutout(image, seed, size: int = 16, fill: float = FILL):
    """Cutout (DeVries & Taylor 2017): grey out a ``size``×``size`` square at a random centre
    (clipped at the borders)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    cy = tf.random.stateless_uniform([], seed, 0, h, tf.int32)
    cx = tf.random.stateless_uniform([], seed + 1, 0, w, tf.int32)
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = ((ys >= cy - size // 2) & (ys < cy + size - size // 2)
              & (xs >= cx - size // 2) & (xs < cx + size - size // 2))
    return tf.where(inside[:, :, None], tf.cast(fill, image.dtype), image)


def with_cutout(fn: Callable, size: int) -> Callable:
    """``fn`` followed by Cutout of side ``size``, seeded by the example's seed folded with
    :data:`CUTOUT_SALT` (``fn``'s own draws are unchanged)."""

    def augment(image, seed):
        seed = tf.cast(seed, tf.int32)
        square = tf.random.experimental.stateless_fold_in(seed, CUTOUT_SALT)
        return cutout(fn(image, seed), tf.cast(square, tf.int32), size)

    return augment


@tf.autograph.experimental.do_not_convert
def auto_augment_policy(image, seed, semantics: str = DEFAULT_SEMANTICS):
    """The CIFAR-10 AutoAugment policy alone (one random sub-policy), uint8 → uint8."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
    index = tf.random.stateless_uniform([], seeds[0], 0, len(CIFAR10_POLICY), tf.int32)
    draws = tf.random.stateless_uniform([4], seeds[1])
    out = apply_subpolicy(tf.cast(image, tf.float32), index, draws, semantics=semantics)
    return tf.cast(out, tf.uint8)


@register_augmentation("autoaugment", semantics=True)
@tf.autograph.experimental.do_not_convert
def auto_augment(image, seed, semantics: str = DEFAULT_SEMANTICS):
    """CIFAR AutoAugment: policy (``semantics``) → pad-4 crop + flip (uint8 HWC). Cutout,
    which the AutoAugment paper adds, is ``--cutout``'s (:func:`with_cutout`)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
    image = auto_augment_policy(image, seeds[0], semantics)
    return pad_crop_flip(image, seeds[1])


@tf.autograph.experimental.do_not_convert
def rand_augment(image, seed, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31):
    """RandAugment: ``num_ops`` uniformly drawn operations at ``magnitude`` of ``num_bins``
    (torchvision's semantics, fill 0), uint8 → uint8."""
    if not 0 <= magnitude <= num_bins - 1:
        raise DataError(f"`magnitude` must be in [0, {num_bins - 1}]. Received: magnitude={magnitude}")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2 * num_ops)
    table = tf.constant([OP_NAMES.index(n) for n in RANDAUGMENT_OPS], tf.int32)
    x = tf.cast(image, tf.float32)
    for k in range(num_ops):
        pick = tf.random.stateless_uniform([], seeds[2 * k], 0, len(RANDAUGMENT_OPS), tf.int32)
        sign = _sign(tf.random.stateless_uniform([], seeds[2 * k + 1]))
        x = ops.apply_by_id(x, table[pick], tf.constant(float(magnitude)), sign, x.shape[-1],
                            "torchvision", num_bins)
    return tf.cast(x, tf.uint8)


@register_augmentation("randaugment")
@tf.autograph.experimental.do_not_convert
def rand_augment_cifar(image, seed):
    """RandAugment (N=2, M=9 of 30, torchvision semantics) → pad-4 crop + flip (uint8 HWC)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
    return pad_crop_flip(rand_augment(image, seeds[0]), seeds[1])
