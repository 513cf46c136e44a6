"""tf.data input pipelines: in-memory images → (augmented) float32 batches.

The training pipeline is a pure function of ``(seed, epoch)``: epoch e shuffles
with seed ``(seed, e)`` and augments example i with the stateless seed
``(seed·7 + e, i)``. A resumed run therefore sees exactly the data order and
augmentations the uninterrupted run would have seen, and parallel map stays
deterministic.

Augmentations are registered by name in :data:`sila_keras.augment.AUGMENTATIONS`
(``fn(image, seed)`` on one uint8 HWC image with a ``[2]`` int32 seed, returning uint8 HWC).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from sila_keras.augment import (  # noqa: F401  (the augmentation registry lives there)
    AUGMENTATIONS,
    get_augmentation,
    pad_crop,
    pad_crop_flip,
    register_augmentation,
)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches per epoch (the last one may be partial)."""
    return max(1, math.ceil(num_examples / batch_size))


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0,
                  augment: str = "standard", initial_epoch: int = 0, epochs: int = 1,
                  options: tf.data.Options | None = None) -> tf.data.Dataset:
    """Epochs ``initial_epoch … epochs-1`` of shuffled, augmented float32 batches.

    Batches never straddle epochs; pass ``steps_per_epoch(len(y), batch_size)``
    to ``fit``.
    """
    fn = get_augmentation(augment)
    n = len(y)
    images = tf.constant(x)
    labels = tf.constant(np.asarray(y, np.int32))

    def one_epoch(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        order = tf.data.Dataset.from_tensor_slices(perm)

        def load(i):
            s = tf.stack([tf.cast(seed * 7 + epoch, tf.int32), tf.cast(i, tf.int32)])
            img = fn(tf.gather(images, i), s)
            return tf.cast(img, tf.float32), tf.gather(labels, i)

        return (order.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(batch_size))

    ds = tf.data.Dataset.range(initial_epoch, max(epochs, initial_epoch + 1)).flat_map(one_epoch)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options) if options is not None else ds


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int,
                 options: tf.data.Options | None = None) -> tf.data.Dataset:
    """Un-augmented float32 batches in a fixed order."""
    ds = (tf.data.Dataset.from_tensor_slices((x, np.asarray(y, np.int32)))
          .map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    return ds.with_options(options) if options is not None else ds
