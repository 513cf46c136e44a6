"""``load_dataset``: a folder or tfds dataset → :class:`ImageData` (two lazy image sets).

Nothing is decoded here unless the decoded set is small: ``cache="auto"`` holds the
images in memory (as arrays) when train + held-out split decode to less than
:data:`MEMORY_CACHE_LIMIT`, else streams them (``"none"``). ``"disk[:DIR]"`` streams the
first epoch and reads tf.data's cache files afterwards (see :mod:`sila_keras.data.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sila_keras.data import folders, images, sets, tfds_source
from sila_keras.utils.errors import ConfigError, DataError

MEMORY_CACHE_LIMIT = 1 << 30  # bytes of decoded images held in memory by --cache auto
CACHE_MODES = ("auto", "none", "memory", "disk")


def parse_cache(cache: str | None) -> tuple[str, str | None]:
    """``"disk:/tmp/c"`` → ``("disk", "/tmp/c")``; ``"memory"`` → ``("memory", None)``.

    Raises:
        ConfigError: unknown mode.
    """
    mode, _, where = (cache or "auto").partition(":")
    if mode not in CACHE_MODES or (where and mode != "disk"):
        raise ConfigError(f"`--cache` must be none, memory, disk or disk:DIR (default: memory when "
                          f"the decoded images fit in 1 GiB). Received: cache={cache!r}")
    return mode, where or None


@dataclass
class ImageData:
    """The training and held-out image sets of a run, with class names and provenance.

    ``train_x``/``test_x`` decode a whole set into memory on first use (for the few
    consumers that need arrays); training streams through :mod:`sila_keras.data.pipeline`.
    """

    train: sets.ImageSet
    test: sets.ImageSet
    class_names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)
    split_info: dict = field(default_factory=dict)
    cache: str = "memory"
    holdout: object = None  # --mode dynamic: (x, y) set aside from the training split
    _arrays: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.shape

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.image_size

    @property
    def resize(self) -> str:
        return self.train.resize

    @property
    def train_y(self) -> np.ndarray:
        return self.train.labels

    @property
    def test_y(self) -> np.ndarray:
        return self.test.labels

    @property
    def train_x(self) -> np.ndarray:
        if "train" not in self._arrays:
            self._arrays["train"] = self.train.to_array()
        return self._arrays["train"]

    @property
    def test_x(self) -> np.ndarray:
        if "test" not in self._arrays:
            self._arrays["test"] = self.test.to_array()
        return self._arrays["test"]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training pixels (0–255 scale): exact when in
        memory, else over a class-balanced sample of :data:`sets.STATS_SAMPLE` images."""
        if not isinstance(self, ImageData):  # quacking callers (tuning's SearchData)
            return sets.array_channel_stats(self.train_x)
        if "stats" not in self._arrays:
            self._arrays["stats"] = self.train.channel_stats()
        return self._arrays["stats"]

    def with_train(self, train: sets.ImageSet, note: str | None = None) -> ImageData:
        """A copy with another training set (e.g. without a hold-out)."""
        notes = [*self.notes, note] if note else list(self.notes)
        return ImageData(train, self.test, self.class_names, self.source, notes,
                         dict(self.split_info), self.cache, self.holdout)

    def describe(self) -> dict:
        """The ``data`` block of ``summary.json`` (without the normalization statistics)."""
        return {"source": self.source, "train_examples": len(self.train),
                "test_examples": len(self.test), "input_shape": list(self.input_shape),
                "image_size": list(self.image_size), "resize": self.resize, "cache": self.cache,
                "class_names": self.class_names, **self.split_info, "notes": self.notes}


def load_dataset(dataset: str, *, data_dir: str | None = None, limit_train: int | None = None,
                 limit_test: int | None = None, seed: int = 0, download: str = "auto",
                 cache_dir: str | None = None, skip_bad_images: bool = False,
                 image_size=None, resize: str = "squash", val_split: float | None = None,
                 train_split: str | None = None, test_split: str | None = None,
                 cache: str = "auto") -> ImageData:
    """Describe ``dataset`` (a tfds name or ``folder:PATH``) as two lazy image sets.

    Args:
        dataset: a tfds name or ``folder:PATH`` (layouts: :mod:`sila_keras.data.folders`).
        data_dir: tfds data directory with pre-downloaded data.
        limit_train: keep at most this many training images, balanced over classes.
        limit_test: the same for the held-out split.
        seed: seed of the subset draws and of the ``val_split`` split.
        download: tfds only: ``"auto"`` downloads when online, ``"never"`` fails at once.
        cache_dir: where archives given to ``folder:`` are extracted.
        skip_bad_images: skip (and count in ``notes``) unreadable image files.
        image_size: ``(H, W)`` or ``"H[,W]"``; default: the images' one size.
        resize: ``squash``, ``crop`` or ``pad`` (:mod:`sila_keras.data.images`).
        val_split: fraction held out when the source has no held-out split.
        train_split, test_split: tfds split names/slices (``train[:90%]``).
        cache: ``auto``, ``none``, ``memory`` or ``disk[:DIR]``.

    Raises:
        DataError: the dataset cannot be read or does not fit (named, with the fix).
        ConfigError: a bad flag value.
    """
    size = images.parse_image_size(image_size)
    mode, _ = parse_cache(cache)
    if resize not in images.RESIZE_POLICIES:
        raise ConfigError(f"`--resize` must be one of {', '.join(images.RESIZE_POLICIES)}. "
                          f"Received: resize={resize!r}")
    if dataset.startswith("folder:"):
        if train_split or test_split:
            raise ConfigError("--train-split/--test-split apply to tfds datasets; a folder's "
                              f"splits are its subfolders. Received: dataset={dataset}")
        data = _folder(dataset[len("folder:"):], size, resize, val_split, seed, limit_train,
                       limit_test, cache_dir, skip_bad_images)
    else:
        data = _tfds(dataset, data_dir, download, size, resize, val_split, seed, limit_train,
                     limit_test, train_split, test_split)
    for split, y in (("train", data.train_y), ("test", data.test_y)):
        if len(y) and (y.min() < 0 or y.max() >= data.num_classes):
            raise DataError(f"Labels of the {split} split must lie in [0, {data.num_classes}). "
                            f"Received: min={y.min()}, max={y.max()} in {dataset}")
    if mode == "auto":
        mode = "memory" if data.train.nbytes + data.test.nbytes < MEMORY_CACHE_LIMIT else "none"
    data.cache = cache if cache.startswith("disk") else mode
    if mode == "memory":
        data.train = sets.ArraySet(data.train.to_array(), data.train.labels, data.train.indices,
                                   data.train.resize)
        data.test = sets.ArraySet(data.test.to_array(), data.test.labels, data.test.indices,
                                  data.test.resize)
    return data


def run_dataset_kwargs(config: dict) -> dict:
    """``load_dataset`` keyword arguments that reproduce a run's data from its ``config.json``
    (same size, resize policy and splits; limits left to the caller)."""
    keys = ("data_dir", "image_size", "resize", "val_split", "train_split", "test_split",
            "skip_bad_images")
    out = {k: config[k] for k in keys if config.get(k) is not None}
    out["seed"] = int(config.get("seed", 0))
    return out


def _limit(labels, limit, seed):
    return sets.balanced_subset(labels, limit, seed)


def _folder(path, size, resize, val_split, seed, limit_train, limit_test, cache_dir, skip_bad):
    root = folders.resolve_folder(path, cache_dir)
    plan = folders.scan_folder(root, val_split, seed)
    ti, vi = _limit(plan.train_y, limit_train, seed), _limit(plan.eval_y, limit_test, seed + 1)
    train_f, train_y = [plan.train_files[i] for i in ti], plan.train_y[ti]
    eval_f, eval_y = [plan.eval_files[i] for i in vi], plan.eval_y[vi]
    infos = images.inspect_files(train_f + eval_f)
    bad = [i.path for i in infos if i.error]
    notes = list(plan.notes)
    if bad and not skip_bad:
        first = next(i for i in infos if i.error)
        raise DataError(f"Cannot read image file '{first.path}' ({first.error}). Replace or remove "
                        "it, or pass --skip-bad-images to skip and count such files.")
    if bad:
        gone = set(bad)
        keep_tr = [k for k, f in enumerate(train_f) if f not in gone]
        keep_ev = [k for k, f in enumerate(eval_f) if f not in gone]
        train_f, train_y = [train_f[k] for k in keep_tr], train_y[keep_tr]
        eval_f, eval_y = [eval_f[k] for k in keep_ev], eval_y[keep_ev]
        notes.append(f"skipped {len(bad)} unreadable image file(s): "
                     + ", ".join(bad[:5]) + (" …" if len(bad) > 5 else ""))
        if not len(train_y):
            raise DataError(f"No readable training images left in '{root}' after skipping bad files.")
    good = [i for i in infos if not i.error]
    chosen = images.choose_size([i.size for i in good], size, f"'{root}'")
    channels = 1 if all(i.gray for i in good) else 3
    kw = dict(image_size=chosen, channels=channels, resize=resize)
    names = plan.class_names
    info = {"layout": plan.layout, "eval_split": plan.eval_split, "skipped_images": len(bad),
            "train_per_class": sets.per_class_counts(train_y, names),
            "eval_per_class": sets.per_class_counts(eval_y, names)}
    return ImageData(sets.FileSet(train_f, train_y, **kw), sets.FileSet(eval_f, eval_y, **kw),
                     names, f"folder:{root}", notes, info)


def _tfds(name, data_dir, download, size, resize, val_split, seed, limit_train, limit_test,
          train_split, test_split):
    builder = tfds_source.get_builder(name, data_dir)
    image_key, label_key = tfds_source.image_and_label_keys(builder)
    tfds_source.ensure_prepared(builder, name, data_dir, download)
    train_name, test_name = tfds_source.plan_splits(list(builder.info.splits), train_split,
                                                    test_split, val_split)
    if test_name is not None and val_split is not None:
        raise ConfigError(f"`--val-split` applies only when the dataset has no held-out split; "
                          f"'{name}' has '{test_name}'. Received: val_split={val_split}")
    fixed, channels = tfds_source.image_spec(builder, image_key)
    notes = []
    if size is None and fixed is None:
        size = tfds_source.DEFAULT_PHOTO_SIZE
        notes.append(f"images vary in size: resized to {size[0]}x{size[1]} (--resize {resize}); "
                     "pass --image-size to choose")
    size = size or fixed
    names = list(builder.info.features[label_key].names)

    def make(split, labels, positions):
        return sets.TfdsSet(name, split, data_dir, labels[positions], positions,
                            image_size=size, channels=channels, resize=resize,
                            image_key=image_key, label_key=label_key)

    train_y = tfds_source.read_labels(name, train_name, data_dir, label_key)
    if not len(train_y):
        raise DataError(f"tfds dataset '{name}' split '{train_name}' has no examples.")
    if test_name is None:
        fraction = 0.2 if val_split is None else val_split
        tr, ev = sets.stratified_split(train_y, fraction, seed)
        train, held = make(train_name, train_y, tr), make(train_name, train_y, ev)
        eval_split = f"val-split {fraction} of '{train_name}' (seed {int(seed)})"
    else:
        test_y = tfds_source.read_labels(name, test_name, data_dir, label_key)
        train = make(train_name, train_y, np.arange(len(train_y)))
        held = make(test_name, test_y, np.arange(len(test_y)))
        eval_split = test_name
    train = train.take(_limit(train.labels, limit_train, seed))
    held = held.take(_limit(held.labels, limit_test, seed + 1))
    info = {"layout": "tfds", "train_split": train_name, "eval_split": eval_split,
            "train_per_class": sets.per_class_counts(train.labels, names),
            "eval_per_class": sets.per_class_counts(held.labels, names)}
    return ImageData(train, held, names, f"tfds:{name}", notes, info)
