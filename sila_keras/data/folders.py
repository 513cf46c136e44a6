"""``folder:PATH`` sources: a folder (or an archive of one) of ``<class>/*`` images.

Layouts, checked in this order:

1. ``PATH/train/<class>/*`` + ``PATH/test/<class>/*``;
2. ``PATH/train/`` + ``PATH/val/`` or ``PATH/validation/`` (+ optional ``PATH/test/``);
3. ``PATH/<class>/*``: one tree, split by ``--val-split`` (class-stratified, a pure
   function of ``--seed``: the same split on resume and on every worker) — the
   convention of Keras' ``image_dataset_from_directory``.

The held-out split the run reports accuracy on is ``test/`` when present, else
``val/``/``validation/``, else the ``--val-split`` part. Class order is the sorted class
folder names. A folder holding only one folder is looked into (an archive's top folder).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sila_keras.data.images import IMAGE_EXTENSIONS
from sila_keras.utils.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
VAL_NAMES = ("val", "validation")


@dataclass
class FolderPlan:
    """The files and labels of the training and held-out splits of a folder dataset."""

    root: Path
    class_names: list[str]
    train_files: list[str]
    train_y: np.ndarray
    eval_files: list[str]
    eval_y: np.ndarray
    layout: str  # "train+test", "train+val", "train+val+test", "single"
    eval_split: str  # e.g. "test/" or "val-split 0.2 of PATH"
    notes: list[str] = field(default_factory=list)


def resolve_folder(path: str, cache_dir: str | None = None) -> Path:
    """The dataset root for ``folder:PATH``, extracting an archive once if needed."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"Dataset folder not found: '{path}'. Pass folder:PATH with PATH a folder of "
            "<class>/* images, or with train/<class>/* and test/<class>/* (or a .tar.gz of one)."
        )
    if p.is_file():
        if not p.name.endswith(ARCHIVE_SUFFIXES):
            raise DataError(
                f"'{path}' is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)}). "
                "Pass a folder with train/ and test/, or an archive of one."
            )
        p = extract_archive(p, cache_dir)
    if not (p / "train").is_dir():
        subdirs = _subdirs(p)
        wrapper = len(subdirs) == 1 and subdirs[0].name not in ("train", "test", *VAL_NAMES)
        if wrapper and ((subdirs[0] / "train").is_dir() or len(_subdirs(subdirs[0])) > 1):
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


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_dirs(split_dir: Path) -> dict[str, list[str]]:
    return {d.name: sorted(str(f) for f in d.iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            for d in _subdirs(split_dir)}


def _check_classes(classes: dict[str, list[str]], where: Path) -> None:
    if not any(classes.values()):
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in '{where}'. Expected "
                        f"{where}/<class>/*.jpg (one folder per class).")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise DataError(
            f"Class folder(s) {', '.join(repr(str(where / c)) for c in empty)} hold no "
            f"images ({', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folder."
        )
    if len(classes) < 2:
        raise DataError(f"'{where}' needs at least 2 class folders. Received: {sorted(classes)}")


def _flatten(classes: dict[str, list[str]], names: list[str]):
    files = [f for c in names for f in classes.get(c, [])]
    labels = np.asarray([i for i, c in enumerate(names) for _ in classes.get(c, [])], np.int64)
    return files, labels


def scan_folder(root: Path, val_split: float | None = None, seed: int = 0) -> FolderPlan:
    """Find the layout of ``root`` and list its splits (see the module docstring).

    Raises:
        DataError: no images, an empty class folder, a class in one split only, too few
            classes, or a ``--val-split`` that leaves a class without training images.
        ConfigError: ``--val-split`` outside (0, 1).
    """
    from sila_keras.data.sets import stratified_split

    root = Path(root)
    if not (root / "train").is_dir():
        split_dirs = [n for n in ("test", *VAL_NAMES) if (root / n).is_dir()]
        if split_dirs:
            raise DataError(f"Dataset folder '{root}' has '{split_dirs[0]}/' but no 'train/' "
                            f"subfolder. Add {root}/train/<class>/*, or put the class folders "
                            f"directly in {root} and use --val-split.")
        if val_split is None:
            val_split = 0.2
        classes = _class_dirs(root)
        if not classes:
            raise DataError(f"No class folders in '{root}'. Expected {root}/<class>/*.jpg, or "
                            f"{root}/train/<class>/* and {root}/test/<class>/*.")
        _check_classes(classes, root)
        names = sorted(classes)
        files, labels = _flatten(classes, names)
        tr, ev = stratified_split(labels, val_split, seed)
        left = np.bincount(labels[tr], minlength=len(names))
        if (left == 0).any():
            empty = [names[i] for i in np.flatnonzero(left == 0)]
            raise DataError(f"`--val-split` {val_split} leaves class(es) {empty} with no training "
                            f"images (they have too few in '{root}'). Lower --val-split or add "
                            f"images. Received: val_split={val_split}")
        return FolderPlan(root, names, [files[i] for i in tr], labels[tr],
                          [files[i] for i in ev], labels[ev], "single",
                          f"val-split {val_split} of {root} (seed {int(seed)})")
    held_dirs = [root / n for n in ("test", *VAL_NAMES) if (root / n).is_dir()]
    if not held_dirs:
        raise DataError(f"Dataset folder '{root}' has 'train/' but no 'test/' or 'val/' subfolder. "
                        f"Add {root}/test/<class>/*, or put the class folders directly in {root} "
                        "and use --val-split.")
    eval_dir = held_dirs[0]
    splits = {"train": _class_dirs(root / "train"), eval_dir.name: _class_dirs(eval_dir)}
    for name, classes in splits.items():
        _check_classes(classes, root / name)
    train, held = splits["train"], splits[eval_dir.name]
    only = sorted(set(train) ^ set(held))
    if only:
        c = only[0]
        inside = "train" if c in train else eval_dir.name
        raise DataError(f"Class '{c}' exists in '{root / inside}' only: every class needs a "
                        f"folder in both train/ and {eval_dir.name}/ (mismatched: {only}).")
    names = sorted(train)
    tr_f, tr_y = _flatten(train, names)
    ev_f, ev_y = _flatten(held, names)
    others = [d.name for d in held_dirs[1:]]
    layout = "train+" + "+".join(d.name for d in held_dirs)
    notes = [f"{'/, '.join(others)}/ not used (evaluating on {eval_dir.name}/)"] if others else []
    return FolderPlan(root, names, tr_f, tr_y, ev_f, ev_y, layout, f"{eval_dir.name}/", notes)
