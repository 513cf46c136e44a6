"""tensorflow-datasets sources: any image dataset with a class label, streamed.

Split plan: ``--train-split`` / ``--test-split`` (tfds split syntax, e.g. ``train[:90%]``)
when given; otherwise ``train`` and the builder's ``test`` (else ``validation``) split; a
dataset with only a ``train`` split (``tf_flowers``) is split by ``--val-split``
(class-stratified). Images are read undecoded (``tfds.decode.SkipDecoding``) and decoded
and resized by :mod:`sila_keras.data.images`, so variable-size photos batch.
"""

from __future__ import annotations

import difflib
import os
import socket
import threading

import numpy as np

from sila_keras.utils.errors import DataError

DEFAULT_PHOTO_SIZE = (224, 224)  # variable-size tfds images and no --image-size


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


def get_builder(name: str, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises several not-found types
        if "not found" not in str(e).lower():
            raise
        close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
        raise DataError(
            f"Unknown dataset '{name}'. It is neither a tensorflow-datasets name "
            f"(closest: {', '.join(close) or 'none'}; e.g. cifar10, cifar100, mnist) nor "
            "folder:PATH (a folder of <class>/* images, or with train/ and test/)."
        ) from None


def image_and_label_keys(builder) -> tuple[str, str]:
    """The image and class-label feature names.

    Raises:
        DataError: no image feature or no class label.
    """
    import tensorflow_datasets as tfds

    feats = builder.info.features
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    else:
        image_key, label_key = "image", "label"
    ok = (hasattr(feats, "keys") and image_key in feats and label_key in feats
          and isinstance(feats[image_key], tfds.features.Image)
          and isinstance(feats[label_key], tfds.features.ClassLabel))
    if not ok:
        raise DataError(f"tfds dataset '{builder.name}' has no image feature with a class label "
                        "(ClassLabel); it is not an image classification dataset. Received: "
                        f"features={sorted(feats.keys()) if hasattr(feats, 'keys') else feats}")
    return image_key, label_key


def ensure_prepared(builder, name: str, data_dir, download: str) -> None:
    """Download and prepare the data when missing and allowed; fail fast offline."""
    import tensorflow_datasets as tfds

    try:
        tfds.load(name, split="train", data_dir=data_dir, download=False)
        return
    except AssertionError:
        pass  # not prepared in data_dir
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    if download == "never" or not network_available():
        raise DataError(
            f"tfds dataset '{name}' is not downloaded in {where} and "
            f"{'downloading is off' if download == 'never' else 'there is no network'}. "
            f"Prepare it on a machine with network (tfds build {name}) and pass --data-dir DIR, "
            "or use an image folder: folder:PATH."
        )
    builder.download_and_prepare()


def plan_splits(available: list[str], train_split: str | None, test_split: str | None,
                val_split: float | None = None):
    """``(train split, test split or None)``; None means: hold out ``--val-split`` of train.

    ``available`` is the builder's split list; it is empty when unknown (data not prepared
    yet, or ``tfds.testing.mock_data``): then ``test`` is assumed unless ``--val-split`` asks
    for a split of ``train``.
    """
    train = train_split or "train"
    if test_split:
        return train, test_split
    if not available:
        return train, (None if val_split is not None else "test")
    for name in ("test", "validation"):
        if name in available:
            return train, name
    return train, None


def load_records(name: str, split: str, data_dir, image_key: str):
    """The split's records in a fixed order, images left encoded."""
    import tensorflow_datasets as tfds

    return tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False,
                     decoders={image_key: tfds.decode.SkipDecoding()})


def read_labels(name: str, split: str, data_dir, label_key: str) -> np.ndarray:
    """Every label of the split, in order (one pass over the records, images not decoded)."""
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False,
                   decoders=tfds.decode.PartialDecoding({label_key: True}))
    labels = [y for y in ds.map(lambda ex: ex[label_key]).batch(4096).as_numpy_iterator()]
    return np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)


def image_spec(builder, image_key: str) -> tuple[tuple[int, int] | None, int]:
    """(fixed (H, W) or None, channels) from the builder's image feature."""
    shape = builder.info.features[image_key].shape
    size = None if shape[0] is None or shape[1] is None else (int(shape[0]), int(shape[1]))
    return size, int(shape[2] or 3)
