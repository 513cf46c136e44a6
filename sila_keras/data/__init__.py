"""Datasets: tfds names or ``folder:PATH`` image folders, described lazily and streamed.

``DATASET`` is a tensorflow-datasets name (``cifar10``, ``tf_flowers``, ``imagenette``…;
``data_dir`` points at pre-downloaded data) or ``folder:PATH`` (a folder, or a
``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive of one) in one of three layouts
(:mod:`sila_keras.data.folders`). :func:`load_dataset` returns an :class:`ImageData`
of two :class:`~sila_keras.data.sets.ImageSet` (training and held-out split) that the
tf.data pipelines (:mod:`sila_keras.data.pipeline`) decode in parallel, at one size
(:mod:`sila_keras.data.images`), held in memory only when small or asked to.

Example:
    >>> data = load_dataset("folder:photos", image_size="160", resize="crop")  # doctest: +SKIP
    >>> data.input_shape, data.split_info["eval_split"]  # doctest: +SKIP
    ((160, 160, 3), 'val-split 0.2 of photos (seed 0)')
"""

from sila_keras.data.dataset import (
    CACHE_MODES,
    MEMORY_CACHE_LIMIT,
    ImageData,
    load_dataset,
    parse_cache,
    run_dataset_kwargs,
)
from sila_keras.data.folders import (
    ARCHIVE_SUFFIXES,
    default_cache_dir,
    extract_archive,
    resolve_folder,
    scan_folder,
)
from sila_keras.data.images import IMAGE_EXTENSIONS, RESIZE_POLICIES, decode_files, parse_image_size
from sila_keras.data.sets import (
    ArraySet,
    FileSet,
    ImageSet,
    TfdsSet,
    balanced_subset,
    holdout_indices,
    holdout_split,
    stratified_split,
)
from sila_keras.data.tfds_source import network_available

__all__ = [
    "ARCHIVE_SUFFIXES", "CACHE_MODES", "IMAGE_EXTENSIONS", "MEMORY_CACHE_LIMIT", "RESIZE_POLICIES",
    "ArraySet", "FileSet", "ImageData", "ImageSet", "TfdsSet", "balanced_subset", "decode_files",
    "default_cache_dir", "extract_archive", "holdout_indices", "holdout_split", "load_dataset", "network_available",
    "parse_cache", "parse_image_size", "run_dataset_kwargs", "resolve_folder", "scan_folder", "stratified_split",
]
