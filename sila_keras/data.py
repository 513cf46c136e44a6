"""Datasets: tfds names or ``folder:PATH`` image folders, held in memory as uint8 arrays.

``DATASET`` is either a tensorflow-datasets name (``cifar10``, ``cifar100``,
``mnist``…; ``data_dir`` points at pre-downloaded data) or ``folder:PATH`` where
PATH (a folder, or a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive of one) holds
``train/<class>/*`` and ``test/<class>/*`` images. Class order is the sorted
folder names of ``train/``.

The paper datasets fit in memory, so images are decoded once into NumPy arrays;
the tf.data pipelines (see :mod:`sila_keras.pipeline`) read from those.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sila_keras.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass
class ImageData:
    """Train and test images (uint8, NHWC) with integer labels and class names."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train_x.shape[1:])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training pixels (0–255 scale)."""
        x = self.train_x.reshape(-1, self.train_x.shape[-1]).astype(np.float64)
        return x.mean(axis=0).tolist(), np.maximum(x.std(axis=0), 1e-3).tolist()


def load_dataset(dataset: str, *, data_dir: str | None = None, limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, download: str = "auto",
                 cache_dir: str | None = None, skip_bad_images: bool = False) -> ImageData:
    """Load ``dataset`` into memory.

    Args:
        dataset: a tfds name or ``folder:PATH``.
        data_dir: tfds data directory with pre-downloaded data.
        limit_train: keep at most this many training images, balanced over classes.
        limit_test: the same for the test split.
        seed: seed of the subset draw.
        download: tfds only: ``"auto"`` downloads when the network is reachable,
            ``"never"`` fails at once if the data is not prepared.
        cache_dir: where archives given to ``folder:`` are extracted.
        skip_bad_images: ``folder:`` only: skip (and count in ``notes``) image
            files that cannot be decoded instead of failing on the first one.

    Raises:
        ValueError: unknown dataset, data missing and no network, malformed
            folder, unreadable image (named), labels out of range.
    """
    if dataset.startswith("folder:"):
        data = _load_folder(dataset[len("folder:"):], limit_train, limit_test, seed, cache_dir,
                            skip_bad_images)
    else:
        data = _load_tfds(dataset, data_dir, limit_train, limit_test, seed, download)
    for split, y in (("train", data.train_y), ("test", data.test_y)):
        if len(y) and (y.min() < 0 or y.max() >= data.num_classes):
            raise DataError(
                f"Labels of the {split} split must lie in [0, {data.num_classes}). "
                f"Received: min={y.min()}, max={y.max()} in {dataset}"
            )
    return data


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


def holdout_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0):
    """Split ``(x, y)`` into (train, validation) parts, stratified by class.

    Returns:
        ``(x_train, y_train, x_val, y_val)``.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"The validation fraction must be in (0, 1). Received: {fraction}")
    n_val = max(1, int(round(len(y) * fraction)))
    val = balanced_subset(y, n_val, seed + 7919)
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    return x[mask], y[mask], x[val], y[val]


# --------------------------------------------------------------------------- folders


def _load_folder(path: str, limit_train, limit_test, seed, cache_dir, skip_bad=False) -> ImageData:
    root = resolve_folder(path, cache_dir)
    class_names, train_files, train_y, test_files, test_y, notes = scan_folder(root)
    ti = balanced_subset(train_y, limit_train, seed)
    vi = balanced_subset(test_y, limit_test, seed + 1)
    train_files, train_y = [train_files[i] for i in ti], train_y[ti]
    test_files, test_y = [test_files[i] for i in vi], test_y[vi]
    bad: list[str] = []
    if skip_bad:
        bad = _find_bad_images(train_files + test_files, first_only=False)
        if bad:
            gone = set(bad)
            keep_tr = [i for i, f in enumerate(train_files) if f not in gone]
            keep_te = [i for i, f in enumerate(test_files) if f not in gone]
            train_files, train_y = [train_files[i] for i in keep_tr], train_y[keep_tr]
            test_files, test_y = [test_files[i] for i in keep_te], test_y[keep_te]
            notes.append(f"skipped {len(bad)} unreadable image file(s): "
                         + ", ".join(bad[:5]) + (" …" if len(bad) > 5 else ""))
        if not len(train_y):
            raise DataError(f"No readable training images left in '{root}' after skipping bad files.")
    size, channels = _probe_image(train_files[0])
    train_x = decode_images(train_files, size, channels)
    test_x = decode_images(test_files, size, channels)
    return ImageData(train_x, train_y, test_x, test_y, class_names, f"folder:{root}", notes)


def resolve_folder(path: str, cache_dir: str | None = None) -> Path:
    """The dataset root for ``folder:PATH``, extracting an archive once if needed."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"Dataset folder not found: '{path}'. Pass folder:PATH with PATH a folder holding "
            "train/<class>/* and test/<class>/* images (or a .tar.gz of one)."
        )
    if p.is_file():
        if not p.name.endswith(ARCHIVE_SUFFIXES):
            raise DataError(
                f"'{path}' is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)}). "
                "Pass a folder with train/ and test/, or an archive of one."
            )
        p = extract_archive(p, cache_dir)
    if not (p / "train").is_dir():
        subdirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
            p = subdirs[0]
    return p


def default_cache_dir() -> Path:
    """``$SILA_KERAS_CACHE``, else ``~/.cache/sila_keras``."""
    return Path(os.environ.get("SILA_KERAS_CACHE", Path.home() / ".cache" / "sila_keras"))


def extract_archive(archive: Path, cache_dir: str | None = None) -> Path:
    """Extract ``archive`` once into the cache (atomically: temp folder, then rename)."""
    st = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = archive.name
    for suf in ARCHIVE_SUFFIXES:
        stem = stem.removesuffix(suf)
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    target = base / "extracted" / f"{stem}-{key}"
    if target.is_dir():
        return target
    base.joinpath("extracted").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=base / "extracted"))
    try:
        print(f"Extracting {archive} → {target} (once) …", flush=True)
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            if not target.is_dir():
                raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"Cannot read archive '{archive}': {e}. Re-download or re-create it.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _class_dirs(split_dir: Path) -> dict[str, list[Path]]:
    out = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(f for f in d.iterdir()
                             if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    return out


def scan_folder(root: Path):
    """List and validate ``root/train/<class>/*`` and ``root/test/<class>/*``.

    Returns:
        ``(class_names, train_files, train_labels, test_files, test_labels, notes)``.
    """
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"Dataset folder '{root}' has no '{split}/' subfolder. Expected "
                f"{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg."
            )
    train, test = _class_dirs(root / "train"), _class_dirs(root / "test")
    if len(train) < 2:
        raise DataError(f"'{root / 'train'}' needs at least 2 class folders. Received: {sorted(train)}")
    for split, classes in (("train", train), ("test", test)):
        empty = [c for c, files in classes.items() if not files]
        if empty:
            raise DataError(
                f"Class folder(s) {', '.join(repr(str(root / split / c)) for c in empty)} hold no "
                f"images ({', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folder."
            )
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise DataError(
            f"Test class folder(s) {unknown} have no counterpart in '{root / 'train'}'. "
            "Train and test must use the same class folder names."
        )
    notes = []
    missing = sorted(set(train) - set(test))
    if missing:
        notes.append(f"test split has no images of class(es) {missing}")
    names = sorted(train)
    index = {c: i for i, c in enumerate(names)}

    def flatten(classes):
        files = [f for c in names if c in classes for f in classes[c]]
        labels = np.asarray([index[c] for c in names if c in classes for _ in classes[c]], np.int64)
        return [str(f) for f in files], labels

    tr_f, tr_y = flatten(train)
    te_f, te_y = flatten(test)
    return names, tr_f, tr_y, te_f, te_y, notes


def _probe_image(path: str) -> tuple[tuple[int, int], int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return (im.height, im.width), (1 if im.mode in ("L", "I;16", "1") else 3)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"Cannot read image file '{path}': {e}. Replace or remove it.") from None


def decode_images(files: list[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode image files in parallel into one uint8 array ``(n, H, W, C)``.

    Images of another size are resized to ``size``. A file that cannot be
    decoded raises ``ValueError`` naming it.
    """
    import tensorflow as tf

    if not files:
        return np.zeros((0, *size, channels), np.uint8)
    h, w = size

    def decode(path):
        img = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        same = tf.logical_and(tf.shape(img)[0] == h, tf.shape(img)[1] == w)
        img = tf.cond(same, lambda: img, lambda: tf.cast(
            tf.clip_by_value(tf.round(tf.image.resize(img, (h, w))), 0, 255), tf.uint8))
        return tf.ensure_shape(img, (h, w, channels))

    ds = (tf.data.Dataset.from_tensor_slices(files)
          .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(1024).prefetch(2))
    try:
        return np.concatenate(list(ds.as_numpy_iterator()), axis=0)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        bad = (_find_bad_images(files) or ["<unknown file>"])[0]
        raise DataError(
            f"Cannot decode image file '{bad}' ({str(e).splitlines()[0][:120]}). "
            "Replace or remove the file, or pass --skip-bad-images to skip and count such files."
        ) from None


def _find_bad_images(files: list[str], first_only: bool = True) -> list[str]:
    """Files PIL cannot fully decode (only the first one unless ``first_only=False``)."""
    from PIL import Image

    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
        except Exception:  # noqa: BLE001 - any failure names the file
            bad.append(f)
            if first_only:
                break
    return bad


# --------------------------------------------------------------------------- tfds


def network_available(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` answers within ``timeout`` seconds (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(result and result[0])


def _load_tfds(name, data_dir, limit_train, limit_test, seed, download) -> ImageData:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises several not-found types
        if "not found" not in str(e).lower():
            raise
        known = tfds.list_builders()
        close = difflib.get_close_matches(name, known, n=3)
        raise DataError(
            f"Unknown dataset '{name}'. It is neither a tensorflow-datasets name "
            f"(closest: {', '.join(close) or 'none'}; e.g. cifar10, cifar100, mnist) nor "
            "folder:PATH (a folder with train/<class>/* and test/<class>/*)."
        ) from None
    splits = _tfds_splits(tfds, name, data_dir, download)
    label = builder.info.features["label"] if "label" in builder.info.features else None
    if label is None or not hasattr(label, "names"):
        raise DataError(f"tfds dataset '{name}' has no class label feature; it is not an image classification dataset.")
    arrays = [_to_numpy(ds) for ds in splits]
    (tx, ty), (vx, vy) = arrays
    ti, vi = balanced_subset(ty, limit_train, seed), balanced_subset(vy, limit_test, seed + 1)
    names = list(label.names)
    return ImageData(tx[ti], ty[ti], vx[vi], vy[vi], names, f"tfds:{name}")


def _tfds_splits(tfds, name, data_dir, download):
    try:
        return tfds.load(name, split=["train", "test"], as_supervised=True, data_dir=data_dir,
                         download=False)
    except AssertionError:
        pass  # not prepared in data_dir
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    if download == "never" or not network_available():
        raise DataError(
            f"tfds dataset '{name}' is not downloaded in {where} and "
            f"{'downloading is off' if download == 'never' else 'there is no network'}. "
            f"Prepare it on a machine with network (tfds build {name}) and pass --data-dir DIR, "
            "or use an image folder: folder:PATH with train/<class>/* and test/<class>/*."
        )
    return tfds.load(name, split=["train", "test"], as_supervised=True, data_dir=data_dir, download=True)


def _to_numpy(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in ds.batch(2048).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).astype(np.uint8), np.concatenate(ys).astype(np.int64)
