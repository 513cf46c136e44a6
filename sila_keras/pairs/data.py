"""Digit pairs from MNIST (Deng & Li, project 1, §1).

Each example is two MNIST digits, each downsampled 28→14 by 2×2 average pooling.
The paper stores a pair as a ``2×14×14`` tensor (channels first); here it is
**channels-last, ``(14, 14, 2)``**: ``x[..., 0]`` is the first digit and
``x[..., 1]`` the second. Targets:

* ``comparison``: 1 if the first digit ≤ the second, else 0;
* ``digit_1``, ``digit_2``: the two digit classes (0–9), for the auxiliary loss.

Sources, in this order:

1. ``--mnist-dir DIR`` given: the IDX files there. With ``train-*`` *and* ``t10k-*``
   files, training pairs come from the MNIST training set and test pairs from the
   test set (as in the paper). With only the ``t10k-*`` files (the real MNIST test
   set, as in ``../shared/data``) the 10,000 images are split once, by a seeded
   permutation, into two disjoint halves of 5,000: training pairs are drawn from one
   half, test pairs from the other.
2. Otherwise tfds ``mnist`` if it is prepared in ``--data-dir`` (never downloaded):
   training pairs from ``train``, test pairs from ``test``.
3. Otherwise the IDX files in the default folder (``$SILA_MNIST_DIR``, else
   ``$SILA_SHARED_DIR/data``, else ``../shared/data`` beside the checkout).

Pairs (``--pair-draw``, :data:`PAIR_DRAWS`): each set is ``n`` pairs of ``2·n`` distinct
images of its pool, paired in order. With ``once`` (the default, as the authors' code: the
pair sets are drawn once, before all rounds) every round trains and tests on the same
pairs, seeded by ``seed``; what varies between rounds is the network's initialisation and
the shuffling. With ``per-round`` every round draws fresh pairs, seeded by ``(seed, round)``
(this package's behaviour before the option existed).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sila_keras.utils.errors import DataError

IMAGE_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions
LABEL_MAGIC = 2049  # IDX: unsigned byte, 1 dimension
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
PAIR_SHAPE = (14, 14, 2)
TARGETS = ("comparison", "digit_1", "digit_2")
PAIR_DRAWS = ("once", "per-round")  # --pair-draw; "once" is the authors' protocol


# --------------------------------------------------------------------------- IDX files


def _open_idx(path: Path) -> bytes:
    """The bytes of an IDX file, gunzipped when its name ends in ``.gz``."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"Cannot read IDX file '{path}': {e}. The file is corrupt or truncated; "
            "download it again (MNIST: t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)."
        ) from None


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX3 image file (``*-images-idx3-ubyte[.gz]``) as ``uint8 (n, rows, cols)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong magic number (expected 2051), or fewer bytes than the header says.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MNIST image file not found: '{path}'.")
    data = _open_idx(path)
    if len(data) < 16:
        raise DataError(f"'{path}' is too short to be an IDX image file ({len(data)} bytes).")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != IMAGE_MAGIC:
        raise DataError(
            f"'{path}' is not an IDX image file: magic number {magic}, expected {IMAGE_MAGIC}. "
            "Received a wrong or corrupt file (a label file has magic 2049)."
        )
    size = n * rows * cols
    if len(data) - 16 < size:
        raise DataError(
            f"'{path}' is truncated: its header announces {n} images of {rows}×{cols} "
            f"({size} bytes) but only {len(data) - 16} bytes follow. Download it again."
        )
    return np.frombuffer(data, np.uint8, size, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX1 label file (``*-labels-idx1-ubyte[.gz]``) as ``int64 (n,)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong magic number (expected 2049), truncated, or labels outside 0–9.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MNIST label file not found: '{path}'.")
    data = _open_idx(path)
    if len(data) < 8:
        raise DataError(f"'{path}' is too short to be an IDX label file ({len(data)} bytes).")
    magic, n = struct.unpack(">II", data[:8])
    if magic != LABEL_MAGIC:
        raise DataError(
            f"'{path}' is not an IDX label file: magic number {magic}, expected {LABEL_MAGIC}. "
            "Received a wrong or corrupt file (an image file has magic 2051)."
        )
    if len(data) - 8 < n:
        raise DataError(
            f"'{path}' is truncated: its header announces {n} labels but only "
            f"{len(data) - 8} bytes follow. Download it again."
        )
    labels = np.frombuffer(data, np.uint8, n, offset=8).astype(np.int64)
    if n and labels.max() > 9:
        raise DataError(f"'{path}' holds labels outside 0–9 (max {labels.max()}); it is not MNIST.")
    return labels


def _find(directory: Path, name: str) -> Path | None:
    """``name`` in ``directory``, or its uncompressed twin (without ``.gz``)."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_mnist_split(directory: str | os.PathLike,
                     files: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (n, 28, 28)`` and labels of one split in ``directory``.

    Raises:
        FileNotFoundError: a file is missing (all missing files are named).
        ValueError: a file is corrupt, or the image and label counts differ.
    """
    directory = Path(directory)
    found = [_find(directory, f) for f in files]
    missing = [str(directory / f) for f, p in zip(files, found, strict=True) if p is None]
    if missing:
        raise DataError(
            f"MNIST IDX file(s) not found: {', '.join(repr(m) for m in missing)}. Pass "
            f"--mnist-dir DIR with {' and '.join(files)} (the real MNIST test set is in "
            "../shared/data), or prepare tfds 'mnist' and pass --data-dir."
        )
    images, labels = read_idx_images(found[0]), read_idx_labels(found[1])
    if images.shape[1:] != (28, 28):
        raise DataError(
            f"MNIST images must be 28×28. Received: shape {images.shape[1:]} in '{found[0]}'")
    if len(images) != len(labels):
        raise DataError(
            f"Image and label counts differ: {len(images)} in '{found[0]}' vs {len(labels)} "
            f"in '{found[1]}'. Use the matching pair of files."
        )
    return images, labels


# --------------------------------------------------------------------------- pools


def downsample(images: np.ndarray) -> np.ndarray:
    """28×28 → 14×14 by 2×2 average pooling (``F.avg_pool2d(x, 2)``), float32, 0–255 scale.

    Accepts ``(n, 28, 28)`` or ``(n, 28, 28, 1)``.
    """
    x = np.asarray(images, np.float32)
    if x.ndim == 4:
        x = x[..., 0]
    n, h, w = x.shape
    if h % 2 or w % 2:
        raise DataError(f"Images need even height and width to pool 2×2. Received: {h}×{w}")
    return x.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


@dataclass
class DigitPools:
    """The two image pools pairs are drawn from (14×14 float32 images, int labels).

    ``disjoint`` is True when the pools hold different images (always, for the
    sources here); ``notes`` say where they came from, for the run's output.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)
    disjoint: bool = True

    def pixel_stats(self) -> tuple[float, float]:
        """Mean and std of the training-pool pixels (for the model's input normalization)."""
        return float(self.train_x.mean()), float(max(self.train_x.std(), 1e-3))

    def describe(self) -> dict:
        return {"source": self.source, "train_pool": int(len(self.train_y)),
                "test_pool": int(len(self.test_y)), "disjoint": self.disjoint, "notes": list(self.notes)}


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint halves of ``range(n)``, by a seeded permutation.

    A random (not first/second-half) split, because the first 5,000 MNIST test
    images come from NIST's SD-3 writers and the last 5,000 from SD-1 (harder).
    """
    perm = np.random.default_rng([seed, 20_000_605]).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def pools_from_idx(mnist_dir: str | os.PathLike, seed: int = 0) -> DigitPools:
    """Pools from the IDX files in ``mnist_dir`` (see the module docstring)."""
    d = Path(mnist_dir).expanduser()
    if not d.is_dir():
        raise DataError(
            f"MNIST folder not found: '{d}'. Pass --mnist-dir DIR holding "
            f"{' and '.join(TEST_FILES)} (../shared/data has them)."
        )
    test_x, test_y = read_mnist_split(d, TEST_FILES)
    if all(_find(d, f) for f in TRAIN_FILES):
        train_x, train_y = read_mnist_split(d, TRAIN_FILES)
        return DigitPools(downsample(train_x), train_y, downsample(test_x), test_y,
                          f"idx:{d}", [f"training pairs from the MNIST training set ({len(train_y)} "
                                       f"images), test pairs from the MNIST test set ({len(test_y)})"])
    a, b = split_halves(len(test_y), seed)
    note = (f"only the MNIST test set is available ({len(test_y)} images in {d}): training pairs "
            f"come from one half ({len(a)} images) and test pairs from the other half ({len(b)}), "
            f"disjoint (seeded random split, seed {seed})")
    x = downsample(test_x)
    return DigitPools(x[a], test_y[a], x[b], test_y[b], f"idx:{d} (t10k halves)", [note])


def pools_from_tfds(data_dir: str | None = None) -> DigitPools | None:
    """Pools from tfds ``mnist`` if it is prepared in ``data_dir`` (never downloads), else None."""
    from sila_keras.data import load_dataset

    try:
        data = load_dataset("mnist", data_dir=data_dir, download="never")
    except ValueError:  # not prepared there
        return None
    return DigitPools(downsample(data.train_x), np.asarray(data.train_y, np.int64),
                      downsample(data.test_x), np.asarray(data.test_y, np.int64), "tfds:mnist",
                      [f"training pairs from tfds mnist 'train' ({len(data.train_y)} images), "
                       f"test pairs from 'test' ({len(data.test_y)})"])


def default_mnist_dir() -> Path:
    """``$SILA_MNIST_DIR``, else ``$SILA_SHARED_DIR/data``, else ``../shared/data`` (checkout's sibling)."""
    if os.environ.get("SILA_MNIST_DIR"):
        return Path(os.environ["SILA_MNIST_DIR"])
    shared = os.environ.get("SILA_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared")
    return Path(shared) / "data"


def load_pools(mnist_dir: str | None = None, data_dir: str | None = None, seed: int = 0) -> DigitPools:
    """The image pools for this run: IDX in ``mnist_dir``, else tfds, else the default IDX folder."""
    if mnist_dir is not None:
        return pools_from_idx(mnist_dir, seed)
    pools = pools_from_tfds(data_dir)
    if pools is not None:
        return pools
    pools = pools_from_idx(default_mnist_dir(), seed)
    pools.notes.append("tfds 'mnist' is not prepared" + (f" in {data_dir}" if data_dir else "")
                       + "; used the IDX files instead")
    return pools


# --------------------------------------------------------------------------- pairs


@dataclass
class PairSet:
    """``n`` digit pairs: ``x`` float32 ``(n, 14, 14, 2)`` and the three targets."""

    x: np.ndarray
    comparison: np.ndarray
    digit_1: np.ndarray
    digit_2: np.ndarray

    def __len__(self) -> int:
        return len(self.comparison)

    def targets(self, names=TARGETS) -> dict[str, np.ndarray]:
        """Targets keyed by model output name (``sila_logits`` gets the comparison label)."""
        table = {"comparison": self.comparison, "digit_1": self.digit_1, "digit_2": self.digit_2,
                 "comparison_2": self.comparison, "sila_logits": self.comparison}
        return {k: table[k].astype(np.int32) for k in names}

    def take(self, index: slice | np.ndarray) -> PairSet:
        return PairSet(self.x[index], self.comparison[index], self.digit_1[index], self.digit_2[index])


def make_pairs(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> PairSet:
    """Draw ``n`` pairs of ``2n`` distinct images, paired in order.

    Args:
        images: ``(m, 14, 14)`` pool images.
        labels: ``(m,)`` digit classes.
        n: number of pairs.
        rng: the NumPy generator of this round.

    Raises:
        ValueError: the pool has fewer than ``2n`` images.
    """
    if n < 1:
        raise DataError(f"The number of pairs must be >= 1. Received: pairs={n}")
    if 2 * n > len(labels):
        raise DataError(
            f"{n} pairs need {2 * n} distinct images but the pool has {len(labels)}. "
            f"Lower --pairs to at most {len(labels) // 2}."
        )
    idx = rng.permutation(len(labels))[: 2 * n].reshape(n, 2)
    x = np.stack([images[idx[:, 0]], images[idx[:, 1]]], axis=-1).astype(np.float32)
    d1, d2 = labels[idx[:, 0]].astype(np.int64), labels[idx[:, 1]].astype(np.int64)
    return PairSet(x, (d1 <= d2).astype(np.int64), d1, d2)


def round_pairs(pools: DigitPools, n: int, seed: int, round_index: int,
                draw: str = "once") -> tuple[PairSet, PairSet]:
    """The (train, test) pairs of one round.

    Args:
        pools: the image pools.
        n: pairs per set.
        seed: the run's seed.
        round_index: the round (0-based).
        draw: ``"once"``: the same pairs in every round (those of round 0);
            ``"per-round"``: fresh pairs, seeded by ``(seed, round)``.

    Raises:
        DataError: a pool too small for ``n`` pairs.
    """
    rng = np.random.default_rng([seed, round_index if draw == "per-round" else 0])
    train = make_pairs(pools.train_x, pools.train_y, n, rng)
    return train, make_pairs(pools.test_x, pools.test_y, n, rng)


def split_validation(pairs: PairSet, fraction: float) -> tuple[PairSet, PairSet]:
    """Hold out the last ``fraction`` of the (already random) training pairs for validation."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-split must be in (0, 1). Received: val_split={fraction}")
    n_val = int(round(len(pairs) * fraction))
    if n_val < 1 or n_val >= len(pairs):
        raise DataError(
            f"--val-split {fraction} of {len(pairs)} pairs leaves an empty train or validation "
            "set. Use a fraction such as 0.2."
        )
    return pairs.take(slice(0, len(pairs) - n_val)), pairs.take(slice(len(pairs) - n_val, None))


def pair_dataset(pairs: PairSet, names, batch_size: int, *, shuffle_seed: int | None = None):
    """A ``tf.data`` pipeline of ``(x, {output: target})`` batches.

    With ``shuffle_seed`` the pairs are reshuffled every epoch (deterministically)
    and the dataset repeats forever (pass ``steps`` to ``fit``); without, one pass
    in a fixed order (for evaluation).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((pairs.x, pairs.targets(names)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(pairs), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).repeat()
    else:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
