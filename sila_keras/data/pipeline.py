"""tf.data input pipelines: image sets → (augmented) float32 batches.

The training pipeline is a pure function of ``(seed, epoch)``: epoch e visits the
examples in the order of a stateless permutation seeded ``(seed, e)`` (for streamed tfds
splits and disk caches, which have no random access: stateless permutations within
consecutive windows of :data:`SHUFFLE_BUFFER` examples), and augments example i with the seed
``(seed·7 + e, index_i)``, whatever batch it lands in. A resumed run therefore sees exactly
the data order and augmentations the uninterrupted run would have seen, and parallel
decoding stays deterministic.

Images are decoded (and resized) per example, in parallel; augmentation runs per
*batch* where it has a vectorised form (:data:`BATCH_AUGMENTATIONS`: ``none``, ``crop``,
``standard``; randomness from :func:`batch_uniform`, a counter-based hash of each
example's seed), else per example before batching (:data:`AUGMENTATIONS`:
``fn(image uint8 HWC, seed[2])``; ``autoaugment``, ``randaugment``). Cutout (``cutout=N``)
follows either form, drawn from the same per-example seed (:func:`cutout_batch`,
:func:`sila_keras.data.augment.with_cutout`).

Training batches: with ``drop_remainder`` (any run with more than one replica) every
batch is full, so no replica is ever left without examples; evaluation batches keep the
remainder, so every held-out image is counted once. ``shard=(num, index)`` makes this
process read only its part of each global batch (multi-worker), before decoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from sila_keras.data.augment import (  # noqa: F401  (the augmentation registry lives there)
    AUGMENTATIONS,
    BATCH_AUGMENTATIONS,
    DEFAULT_SEMANTICS,
    FILL,
    get_augmentation,
    pad_crop,
    pad_crop_flip,
    register_augmentation,
)
from sila_keras.data.sets import ArraySet, ImageSet
from sila_keras.utils.errors import DataError

SHUFFLE_BUFFER = 4096  # streamed sets (tfds, disk cache): examples shuffled within windows


# --------------------------------------------------------------------------- randomness


_M1, _M2, _GOLD = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15
ORDER_STRIDE = 1_000_003  # seed strides: keep the seeds of different epochs/passes apart
AUGMENT_STRIDE = 7


def mix_seed(outer, inner, item, *, stride: int, dtype=tf.int64):
    """The seed pair ``[outer·stride + inner, item]`` of a stateless random op.

    The one place where the pipeline mixes its seeds: the run's seed, the epoch and an item
    (an example's index, a shuffle window, a pass over the set), so every random choice is a
    pure function of them. ``item`` may be a vector (then ``[len, 2]``, one pair per entry).
    The first entry is computed in int64, then cast to ``dtype``.
    """
    first = tf.cast(tf.cast(outer, tf.int64) * stride + tf.cast(inner, tf.int64), dtype)
    item = tf.cast(item, dtype)
    return tf.stack([tf.broadcast_to(first, tf.shape(item)), item], axis=-1)


def _mix(z):
    """SplitMix64 finalizer on uint64 (wrapping arithmetic)."""
    def shr(v, k):
        return tf.bitwise.right_shift(v, tf.constant(k, tf.uint64))

    z = tf.bitwise.bitwise_xor(z, shr(z, 30)) * tf.constant(_M1, tf.uint64)
    z = tf.bitwise.bitwise_xor(z, shr(z, 27)) * tf.constant(_M2, tf.uint64)
    return tf.bitwise.bitwise_xor(z, shr(z, 31))


def batch_uniform(seeds, count: int, salt: int = 0):
    """``[B, count]`` uniforms in [0, 1), row b a pure function of ``(seeds[b], k, salt)``.

    A counter-based hash (SplitMix64), vectorised over the batch: an example's draws do
    not depend on which batch, or which position in it, the example is in.
    """
    s = tf.cast(tf.cast(seeds, tf.int64), tf.uint64)
    key = _mix(_mix(s[:, 0] + tf.constant(_GOLD, tf.uint64)) ^ s[:, 1]) ^ tf.constant(
        (salt * _GOLD) % 2**64, tf.uint64)
    k = tf.range(count, dtype=tf.int64)
    z = _mix(key[:, None] + tf.cast(k + 1, tf.uint64)[None, :] * tf.constant(_GOLD, tf.uint64))
    return tf.cast(tf.bitwise.right_shift(z, tf.constant(11, tf.uint64)), tf.float64) * 2.0**-53


def batch_randint(seeds, lo: int, hi: int, count: int = 1, salt: int = 0):
    """``[B, count]`` integers uniform in ``[lo, hi)`` (see :func:`batch_uniform`)."""
    u = batch_uniform(seeds, count, salt)
    return lo + tf.cast(tf.floor(u * (hi - lo)), tf.int32)


# --------------------------------------------------------------------------- augmentations


@register_augmentation("none", batched=True)
def no_augment_batch(images, seeds):
    return images


def shift_flip_batch(images, dy, dx, flip, pad: int = 4, fill: int = 0):
    """Per example: shift by ``(dy, dx)`` ∈ [-pad, pad]² (exposed pixels = ``fill``), then
    flip horizontally where ``flip`` is 1 — i.e. a random crop of the ``pad``-padded image.
    Two batched gathers on the padded batch: exact pixel moves, no interpolation."""
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=fill)
    rows = pad + tf.reshape(dy, [-1, 1]) + tf.range(h)[None]
    cols = tf.where(tf.reshape(flip, [-1, 1]) > 0, tf.range(w - 1, -1, -1)[None], tf.range(w)[None])
    cols = pad + tf.reshape(dx, [-1, 1]) + cols
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.ensure_shape(tf.gather(out, cols, axis=2, batch_dims=1), images.shape)


@register_augmentation("crop", batched=True)
def pad_crop_batch(images, seeds, pad: int = 4):
    """Vectorised ``crop``: a random shift in ``[-pad, pad]`` per example, zero fill."""
    d = batch_randint(seeds, -pad, pad + 1, 2, salt=1)
    return shift_flip_batch(images, d[:, 0], d[:, 1], tf.zeros_like(d[:, 0]), pad)


@register_augmentation("standard", batched=True)
def pad_crop_flip_batch(images, seeds, pad: int = 4):
    """Vectorised ``standard``: pad-4 random crop + random horizontal flip per example."""
    d = batch_randint(seeds, -pad, pad + 1, 2, salt=1)
    flip = batch_randint(seeds, 0, 2, 1, salt=2)[:, 0]
    return shift_flip_batch(images, d[:, 0], d[:, 1], flip, pad)


def cutout_batch(images, seeds, size: int, fill: float = FILL):
    """Vectorised Cutout: per example a ``size``×``size`` grey square at a uniformly drawn
    centre, clipped at the borders (a pure function of each example's seed)."""
    h, w = images.shape[1], images.shape[2]
    cy = batch_randint(seeds, 0, h, 1, salt=3)  # [B, 1]
    cx = batch_randint(seeds, 0, w, 1, salt=4)
    ys, xs = tf.range(h)[None, :], tf.range(w)[None, :]
    rows = (ys >= cy - size // 2) & (ys < cy + size - size // 2)  # [B, H]
    cols = (xs >= cx - size // 2) & (xs < cx + size - size // 2)  # [B, W]
    inside = (tf.cast(rows, images.dtype)[:, :, None, None]
              * tf.cast(cols, images.dtype)[:, None, :, None])  # [B, H, W, 1]: 1 in the square
    # x − (x − fill)·inside: fill inside, x elsewhere (exact in uint8, whose wrap-around
    # cancels); cheaper than a broadcasting tf.where
    return images - (images - tf.cast(fill, images.dtype)) * inside


def check_cutout(cutout: int, shape) -> None:
    """``--cutout`` must leave part of an image of ``shape`` (H, W, …) visible."""
    if cutout and cutout >= min(int(shape[0]), int(shape[1])):
        raise DataError(f"`--cutout` must be smaller than the image side ({shape[0]}x{shape[1]} "
                        f"px). Received: cutout={cutout}")


def get_batch_augmentation(name: str, *, semantics: str = DEFAULT_SEMANTICS,
                           cutout: int = 0) -> Callable:
    """``fn(images [B,H,W,C] uint8, seeds [B,2] int32)``: the vectorised form of ``name``
    (then :func:`cutout_batch` when ``cutout``), else the per-image one (with its Cutout)
    applied to each example of the batch."""
    per_image = get_augmentation(name, semantics=semantics, cutout=cutout)
    if name in BATCH_AUGMENTATIONS:
        base = BATCH_AUGMENTATIONS[name]
        if not cutout:
            return base
        return lambda images, seeds: cutout_batch(base(images, seeds), seeds, cutout)

    def per_example(images, seeds):
        return tf.map_fn(lambda a: per_image(a[0], a[1]), (images, seeds),
                         fn_output_signature=tf.TensorSpec(images.shape[1:], images.dtype))

    return per_example


# --------------------------------------------------------------------------- datasets


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches per epoch: the last one may be partial unless ``drop_remainder``."""
    if drop_remainder:
        return max(1, num_examples // batch_size)
    return max(1, math.ceil(num_examples / batch_size))


def as_set(x, y=None) -> ImageSet:
    """An :class:`ImageSet` as is; in-memory ``(x, y)`` arrays as an :class:`ArraySet`."""
    return x if isinstance(x, ImageSet) else ArraySet(np.asarray(x), np.asarray(y))


def fill_disk_cache(source: ImageSet, path: str) -> tf.data.Dataset:
    """``source``'s decoded images cached in tf.data cache files at ``path`` (written once,
    now, in full, so that a partly read epoch never leaves a half-written cache)."""
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ds = source.elements().cache(path)
    if not os.path.exists(path + ".index"):
        for _ in ds.batch(1024):
            pass
    return ds


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """What each epoch of :func:`train_dataset` reads, in which order, and how it is augmented
    and batched; built and checked once by :meth:`build`.

    Attributes:
        seed: the run's seed: with the epoch, it seeds every permutation and augmentation.
        examples: size of the source set.
        total: examples per epoch over all workers: one pass over the set, or
            ``steps × batch_size`` (further passes, each its own permutation).
        passes: permutations of the set an epoch draws from.
        steps: batches per epoch.
        batch_size: the global batch size.
        shards: ``(num, index)``: the workers, and which one reads here.
        augment: ``fn(images, seeds)`` on batches when ``batched``, else ``fn(image, seed)``.
        batched: whether ``augment`` runs on batches (its vectorised form).
        streamed: read in shuffled windows (tfds splits and disk caches have no random access).
        cache_path: the tf.data cache files read instead of the source (or ``None``).
        epochs: ``(first, end)``: the epochs produced, ``first … end-1``.
    """

    seed: int
    examples: int
    total: int
    passes: int
    steps: int
    batch_size: int
    shards: tuple[int, int]
    augment: Callable
    batched: bool
    streamed: bool
    cache_path: str | None
    epochs: tuple[int, int]

    @classmethod
    def build(cls, source: ImageSet, batch_size: int, *, seed: int, augment: str,
              initial_epoch: int, epochs: int, drop_remainder: bool, steps: int | None, shard,
              cache_path: str | None, cutout: int, autoaugment_semantics: str) -> EpochPlan:
        """The plan of :func:`train_dataset`'s arguments (see there).

        Raises:
            DataError: ``cutout`` not smaller than the image side, an unknown augmentation,
                or a global batch that does not divide over the ``shard`` workers.
        """
        check_cutout(cutout, source.shape)
        aug_kw = dict(semantics=autoaugment_semantics, cutout=cutout)
        per_image = get_augmentation(augment, **aug_kw)
        batched = augment in BATCH_AUGMENTATIONS
        n = len(source)
        drop = drop_remainder or shard is not None
        natural = steps_per_epoch(n, batch_size, drop)
        total = n if (steps is None and not drop) else int(steps or natural) * batch_size
        num, index = shard or (1, 0)
        if batch_size % num:
            raise DataError(f"The global batch size must divide over {num} workers. "
                            f"Received: batch_size={batch_size}")
        return cls(seed=seed, examples=n, total=total, passes=max(1, math.ceil(total / max(n, 1))),
                   steps=int(steps or natural), batch_size=batch_size, shards=(num, index),
                   augment=get_batch_augmentation(augment, **aug_kw) if batched else per_image,
                   batched=batched, streamed=bool(cache_path) or not source.random_access,
                   cache_path=cache_path or None,
                   epochs=(initial_epoch, max(epochs, initial_epoch + 1)))

    @property
    def local_batch(self) -> int:
        """This worker's share of every global batch."""
        return self.batch_size // self.shards[0]

    @property
    def window(self) -> int:
        """Examples shuffled together when streamed."""
        return min(SHUFFLE_BUFFER, max(1, self.total))

    def order_seed(self, epoch, r):
        """Seed of the permutation of pass ``r`` in ``epoch``: ``[seed + r·stride, epoch]``."""
        return mix_seed(r, self.seed, epoch, stride=ORDER_STRIDE)

    def window_seed(self, epoch, w):
        """Seed of the shuffle of streamed window ``w`` in ``epoch``."""
        return mix_seed(self.seed, epoch, w, stride=ORDER_STRIDE)

    def example_seeds(self, epoch, indices):
        """Augmentation seed(s) of the example(s) ``indices`` in ``epoch`` (int32 pairs)."""
        return mix_seed(self.seed, epoch, indices, stride=AUGMENT_STRIDE, dtype=tf.int32)


def train_dataset(x, y=None, batch_size: int = 128, *, seed: int = 0, augment: str = "standard",
                  initial_epoch: int = 0, epochs: int = 1, options: tf.data.Options | None = None,
                  drop_remainder: bool = False, steps: int | None = None, shard=None,
                  cache_path: str | None = None, cutout: int = 0,
                  autoaugment_semantics: str = DEFAULT_SEMANTICS) -> tf.data.Dataset:
    """Epochs ``initial_epoch … epochs-1`` of shuffled, augmented float32 batches.

    Args:
        x, y: an :class:`ImageSet` (``y`` unused) or in-memory uint8 images and labels.
        batch_size: the global batch size.
        drop_remainder: drop each epoch's last partial batch (needed with > 1 replica).
        steps: batches per epoch (default: one pass, :func:`steps_per_epoch`); more than
            one pass continues with further permutations.
        shard: ``(num, index)``: yield only this process's ``batch_size // num`` examples
            of every global batch (chosen before decoding), in batches of that size.
        cache_path: read decoded images from tf.data cache files there (see
            :func:`fill_disk_cache`).
        cutout: side of the Cutout square applied after ``augment`` (0: none).
        autoaugment_semantics: AutoAugment's magnitude semantics (``official`` or
            ``torchvision``; used by ``augment="autoaugment"`` only).

    Raises:
        DataError: ``cutout`` not smaller than the image side, an unknown ``augment``, or a
            ``batch_size`` that does not divide over the ``shard`` workers.

    Batches never straddle epochs; pass the same ``steps`` to ``fit``.
    """
    source = as_set(x, y)
    plan = EpochPlan.build(source, batch_size, seed=seed, augment=augment,
                           initial_epoch=initial_epoch, epochs=epochs,
                           drop_remainder=drop_remainder, steps=steps, shard=shard,
                           cache_path=cache_path, cutout=cutout,
                           autoaugment_semantics=autoaugment_semantics)
    read_epoch = _epoch_source(source, plan)

    def one_epoch(epoch):
        return _augmented_batches(read_epoch(epoch), plan, epoch).take(plan.steps)

    ds = tf.data.Dataset.range(*plan.epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options) if options is not None else ds


def _epoch_source(source: ImageSet, plan: EpochPlan) -> Callable:
    """``epoch → tf.data`` of this worker's ``(image uint8, label, index)`` of that epoch, in
    the epoch's order. A disk cache is filled and a stream opened here, once (tfds.load is
    eager), not in the per-epoch function."""
    if not plan.streamed:
        return lambda epoch: source.elements(_positions(plan, epoch))
    if plan.cache_path:
        cached = fill_disk_cache(source, plan.cache_path)
        return lambda epoch: _shuffled_stream(cached, plan, epoch)
    raw = source.raw()
    return lambda epoch: _decoded(_shuffled_stream(raw, plan, epoch), source)


def _positions(plan: EpochPlan, epoch):
    """The positions an epoch reads from a random-access set: ``passes`` stateless
    permutations cut to ``total``, then this worker's slice of every global batch."""
    n, (num, index) = plan.examples, plan.shards
    perms = [tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=plan.order_seed(epoch, r)) for r in range(plan.passes)]
    pos = tf.concat(perms, 0)[:plan.total]
    if num > 1:
        steps, local = plan.steps, plan.local_batch
        pos = tf.reshape(tf.reshape(pos[:steps * plan.batch_size], [steps, num, local])[:, index],
                         [-1])
    return pos


def _shuffled_stream(base: tf.data.Dataset, plan: EpochPlan, epoch) -> tf.data.Dataset:
    """``base`` repeated to ``total`` examples, each window shuffled by a stateless permutation
    (a pure function of seed, epoch and window); then this worker's part of every batch."""
    def shuffle_window(w, items):
        perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(items[-1])[0]),
                                                        seed=plan.window_seed(epoch, w))
        return tf.data.Dataset.from_tensor_slices(tuple(tf.gather(t, perm) for t in items))

    ds = (base.repeat(plan.passes).take(plan.total).batch(plan.window).enumerate()
          .flat_map(shuffle_window))
    (num, index), local = plan.shards, plan.local_batch
    if num > 1:
        ds = ds.enumerate().filter(lambda k, e: (k // local) % num == index).map(lambda k, e: e)
    return ds


def _decoded(ds: tf.data.Dataset, source: ImageSet) -> tf.data.Dataset:
    """Encoded images of a stream decoded (and resized) in parallel, in order."""
    from sila_keras.data.images import preprocess

    size, channels, policy = source.image_size, source.channels, source.resize
    return ds.map(lambda b, lab, i: (preprocess(b, size, channels, policy), lab, i),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _augmented_batches(ds: tf.data.Dataset, plan: EpochPlan, epoch) -> tf.data.Dataset:
    """float32 ``(images, labels)`` batches of ``plan.local_batch``, each example augmented with
    its own seed (:meth:`EpochPlan.example_seeds`): per batch where the augmentation has a
    vectorised form, else per example before batching (same seeds, same result).

    Every epoch is already cut to whole batches when dropping: the batch dimension stays
    dynamic (None), as Keras and tf.distribute are used to.
    """
    def augment(images, labels, indices):
        seeds = plan.example_seeds(epoch, indices)
        return tf.cast(plan.augment(images, seeds), tf.float32), labels

    par = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if plan.batched:
        return ds.batch(plan.local_batch).map(augment, **par)
    return ds.map(augment, **par).batch(plan.local_batch)


def _eval_padding(n: int, batch_size: int, replicas: int) -> int:
    """Blank images to append so that no replica gets an empty share of the last batch."""
    if replicas <= 1 or n == 0:
        return 0
    last = n % batch_size or batch_size
    if math.ceil(last / replicas) * (replicas - 1) < last:
        return 0
    return (-n) % replicas


def eval_dataset(x, y=None, batch_size: int = 128, options: tf.data.Options | None = None,
                 cache_path: str | None = None, replicas: int = 1) -> tf.data.Dataset:
    """Un-augmented float32 batches in a fixed order; the last batch keeps the remainder.

    When the last batch would leave one of ``replicas`` without images (a distributed batch
    of b images gives each replica ceil(b/replicas)), the set is padded up to a multiple of
    ``replicas`` with blank images of sample weight 0, so that the weighted metrics
    (``compile(weighted_metrics=…)``) still count every image exactly once; batches are then
    ``(x, y, weight)``. (Keras' loss divides by the padded batch size: the test loss of such
    a run is low by the factor n / (n + padding).)
    """
    source = as_set(x, y)
    ds = fill_disk_cache(source, cache_path) if cache_path else source.elements()
    pads = _eval_padding(len(source), batch_size, replicas)
    if pads:
        ds = ds.map(lambda a, b, i: (a, b, tf.constant(1.0)))
        blank = (tf.zeros(source.shape, tf.uint8), tf.constant(0, tf.int32), tf.constant(0.0))
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pads))
        cast = lambda a, b, w: (tf.cast(a, tf.float32), b, w)  # noqa: E731
    else:
        cast = lambda a, b, i: (tf.cast(a, tf.float32), b)  # noqa: E731
    ds = ds.map(cast, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options) if options is not None else ds
