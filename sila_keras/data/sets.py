"""Image sets: the examples of one split, read lazily, and the index arithmetic on them.

An :class:`ImageSet` knows its labels (a small int array) and how to produce its
images as a tf.data stream of ``(uint8 (H, W, C), int32 label, int64 index)``, where
``index`` identifies the example for good (the seed of its augmentation):

* :class:`ArraySet` — images already in memory (``--cache memory``, tests, tuning);
* :class:`FileSet` — image files, decoded in parallel inside tf.data (random access:
  a permutation of indices is decoded, so nothing is held in memory);
* :class:`TfdsSet` — a tfds split read as a stream (sequential access), with the
  images decoded by us so that every dataset is resized the same way.

``take(indices)`` gives a subset that keeps the original example indices.
"""

from __future__ import annotations

import numpy as np

from sila_keras.data import images as img
from sila_keras.utils.errors import ConfigError, DataError

STATS_SAMPLE = 2000  # images read for the normalization mean/std of a streamed set


def balanced_subset(labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` examples, spread over classes as evenly as possible."""
    labels = np.asarray(labels)
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [idx for rank in range(max(len(p) for p in per_class))
             for p in per_class if rank < len(p) for idx in [p[rank]]]
    return np.sort(np.asarray(order[:limit], dtype=np.int64))


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0):
    """(train indices, held-out indices): ``round(fraction·n_c)`` (≥ 1) of every class c held out.

    A pure function of ``(labels, fraction, seed)``: the same split on resume and on every worker.

    Raises:
        ConfigError: ``fraction`` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"`--val-split` must be in (0, 1). Received: val_split={fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 7919])
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.append(idx[:max(1, int(round(len(idx) * fraction)))])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def holdout_indices(y: np.ndarray, fraction: float, seed: int = 0):
    """(train positions, validation positions): a class-balanced ``fraction`` held out."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"The validation fraction must be in (0, 1). Received: {fraction}")
    n_val = max(1, int(round(len(y) * fraction)))
    val = balanced_subset(y, n_val, seed + 7919)
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def holdout_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0):
    """Split in-memory ``(x, y)`` into (train, validation) parts, stratified by class.

    Returns:
        ``(x_train, y_train, x_val, y_val)``.
    """
    tr, val = holdout_indices(y, fraction, seed)
    return x[tr], y[tr], x[val], y[val]


def per_class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts)}


def array_channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images ``(n, H, W, C)`` (0–255 scale)."""
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0, dtype=np.float64)
    # E[x²] − E[x]² in float64 over a uint8 array: no float copy of the whole set
    sq = np.einsum("ij,ij->j", flat, flat, dtype=np.float64) / max(1, len(flat))
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


class ImageSet:
    """Base class: ``labels``, ``indices`` (the examples' identities), ``image_size``, ``channels``."""

    random_access = True

    def __init__(self, labels, indices=None, *, image_size, channels: int, resize: str = "squash"):
        self.labels = np.asarray(labels, np.int64)
        self.indices = (np.arange(len(self.labels), dtype=np.int64) if indices is None
                        else np.asarray(indices, np.int64))
        self.image_size = tuple(int(v) for v in image_size)
        self.channels = int(channels)
        self.resize = resize

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded set (what ``--cache memory`` holds)."""
        return len(self) * int(np.prod(self.shape))

    def take(self, positions) -> ImageSet:
        """The subset at ``positions`` (0 … len−1), keeping example indices."""
        raise NotImplementedError

    def elements(self, positions=None):
        """tf.data of ``(image uint8 HWC, label int32, index int64)``.

        ``positions``: a 1-D int64 tensor of positions to read, in that order (random
        access sets only); ``None`` reads the whole set in order.
        """
        raise NotImplementedError

    def to_array(self) -> np.ndarray:
        """Decode the whole set into memory ``(n, H, W, C)`` uint8."""

        if not len(self):
            return np.zeros((0, *self.shape), np.uint8)
        batches = self.elements().map(lambda x, y, i: x).batch(256).prefetch(2)
        return np.concatenate(list(batches.as_numpy_iterator()), axis=0)

    def channel_stats(self, sample: int = STATS_SAMPLE, seed: int = 0):
        """Per-channel mean/std (0–255 scale) over a class-balanced sample of ≤ ``sample`` images."""
        pick = balanced_subset(self.labels, sample, seed)
        return array_channel_stats(self.take(pick).to_array())


class ArraySet(ImageSet):
    """Images already decoded in memory (uint8 NHWC)."""

    def __init__(self, x: np.ndarray, labels, indices=None, resize: str = "squash"):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        super().__init__(labels, indices, image_size=x.shape[1:3], channels=x.shape[3],
                         resize=resize)
        self.x = x

    def take(self, positions) -> ArraySet:
        positions = np.asarray(positions, np.int64)
        return ArraySet(self.x[positions], self.labels[positions], self.indices[positions],
                        self.resize)

    def elements(self, positions=None):
        import tensorflow as tf

        images = tf.constant(self.x)
        labels = tf.constant(self.labels.astype(np.int32))
        indices = tf.constant(self.indices)
        if positions is None:
            positions = tf.range(len(self), dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(positions).map(
            lambda p: (tf.gather(images, p), tf.gather(labels, p), tf.gather(indices, p)))

    def to_array(self) -> np.ndarray:
        return self.x

    def channel_stats(self, sample: int | None = None, seed: int = 0):
        """Exact statistics over every image (the set is in memory anyway)."""
        return array_channel_stats(self.x)


class FileSet(ImageSet):
    """Image files decoded (and resized) in parallel inside tf.data."""

    def __init__(self, files, labels, indices=None, *, image_size, channels: int,
                 resize: str = "squash"):
        super().__init__(labels, indices, image_size=image_size, channels=channels, resize=resize)
        self.files = np.asarray(files, dtype=object)

    def take(self, positions) -> FileSet:
        positions = np.asarray(positions, np.int64)
        return FileSet(self.files[positions], self.labels[positions], self.indices[positions],
                       image_size=self.image_size, channels=self.channels, resize=self.resize)

    def elements(self, positions=None):
        import tensorflow as tf

        files = tf.constant([str(f) for f in self.files], tf.string)
        labels = tf.constant(self.labels.astype(np.int32))
        indices = tf.constant(self.indices)
        if positions is None:
            positions = tf.range(len(self), dtype=tf.int64)
        size, channels, policy = self.image_size, self.channels, self.resize

        def load(p):
            data = tf.io.read_file(tf.gather(files, p))
            return img.preprocess(data, size, channels, policy), tf.gather(labels, p), tf.gather(indices, p)

        return tf.data.Dataset.from_tensor_slices(positions).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class TfdsSet(ImageSet):
    """A tfds split, streamed: records are read in order, images decoded by :mod:`images`.

    ``indices`` are positions in the split as tfds yields it (``shuffle_files=False``).
    """

    random_access = False

    def __init__(self, name: str, split: str, data_dir, labels, indices, *, image_size,
                 channels: int, resize: str = "squash", image_key: str = "image",
                 label_key: str = "label"):
        super().__init__(labels, indices, image_size=image_size, channels=channels, resize=resize)
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key

    def take(self, positions) -> TfdsSet:
        positions = np.sort(np.asarray(positions, np.int64))
        return TfdsSet(self.name, self.split, self.data_dir, self.labels[positions],
                       self.indices[positions], image_size=self.image_size, channels=self.channels,
                       resize=self.resize, image_key=self.image_key, label_key=self.label_key)

    def raw(self):
        """tf.data of ``(encoded image bytes, label int32, index int64)`` for this subset."""
        import tensorflow as tf

        from sila_keras.data.tfds_source import load_records

        records = load_records(self.name, self.split, self.data_dir, self.image_key)
        keep = np.zeros(int(self.indices.max(initial=-1)) + 1, bool)
        keep[self.indices] = True
        keep_t = tf.constant(keep)
        n_keep = len(keep)
        ik, lk = self.image_key, self.label_key
        ds = records.enumerate().take(n_keep).filter(lambda i, ex: tf.gather(keep_t, i))
        return ds.map(lambda i, ex: (ex[ik], tf.cast(ex[lk], tf.int32), i))

    def elements(self, positions=None):
        import tensorflow as tf

        if positions is not None:
            raise ConfigError("A tfds split is read as a stream; it has no random access.")
        size, channels, policy = self.image_size, self.channels, self.resize
        return self.raw().map(lambda b, y, i: (img.preprocess(b, size, channels, policy), y, i),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
