"""Image files: cheap checks with Pillow, decoding and resizing inside tf.data.

Every image becomes uint8 ``(H, W, C)`` at the run's size, whatever it was on disk:
JPEG, PNG, BMP and GIF (first frame); grayscale, palette and RGBA images are converted to
the model's channels (3, or 1 when every image is grayscale). The resize policies are
Keras' (``keras.utils.image_dataset_from_directory``):

* ``squash``: resize to the size, ignoring the aspect ratio;
* ``crop``: take the largest centred crop of the target aspect ratio, then resize
  (``crop_to_aspect_ratio=True``);
* ``pad``: resize to fit inside the size keeping the aspect ratio, pad with zeros
  (``pad_to_aspect_ratio=True``).

An image already at the size is passed through untouched. The same function
(:func:`preprocess`) serves training, evaluation and (through ``summary.json``:
``data.image_size``, ``data.resize``) export.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sila_keras.utils.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESIZE_POLICIES = ("squash", "crop", "pad")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``"160"`` → ``(160, 160)``, ``"120,160"`` → ``(120, 160)`` (H, W); ``None`` stays ``None``.

    Raises:
        ConfigError: not one or two positive integers.
    """
    if text is None or text == "":
        return None
    if isinstance(text, (tuple, list)):
        parts = [int(v) for v in text]
    else:
        try:
            parts = [int(v) for v in str(text).replace("x", ",").split(",") if v.strip()]
        except ValueError:
            parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise ConfigError(f"`--image-size` must be H or H,W in pixels (e.g. 160 or 120,160). "
                          f"Received: image_size={text!r}")
    return parts[0], parts[1]


@dataclass
class FileInfo:
    """What a cheap look at one file found: its size, whether it is grayscale, or an error."""

    path: str
    size: tuple[int, int] | None = None  # (H, W)
    gray: bool = False
    error: str | None = None


def inspect_file(path: str) -> FileInfo:
    """Read the header and decode at reduced scale (JPEG draft mode), catching truncation.

    Far cheaper than a full decode: JPEGs are decoded at 1/8 scale, which still reads
    every byte of the entropy-coded data, so a truncated file is reported.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            size, gray = (im.height, im.width), im.mode in GRAY_MODES
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return FileInfo(path, size, gray)
    except Exception as e:  # noqa: BLE001 - any failure names the file
        return FileInfo(path, error=str(e).splitlines()[0][:120] if str(e) else type(e).__name__)


def inspect_files(paths: list[str], workers: int = 8) -> list[FileInfo]:
    """:func:`inspect_file` for every path, in a few threads (Pillow releases the GIL)."""
    if len(paths) < 64:
        return [inspect_file(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(inspect_file, paths, chunksize=64))


def choose_size(sizes: list[tuple[int, int]], requested: tuple[int, int] | None,
                where: str) -> tuple[int, int]:
    """The run's image size: ``requested``, else the one size every image has.

    Raises:
        DataError: images of several sizes and no ``--image-size``.
    """
    if requested is not None:
        return requested
    counts = Counter(sizes)
    if len(counts) == 1:
        return next(iter(counts))
    common = ", ".join(f"{h}x{w} ({n})" for (h, w), n in counts.most_common(4))
    raise DataError(f"Images in {where} have {len(counts)} different sizes (HxW: {common}"
                    f"{', …' if len(counts) > 4 else ''}). Pass --image-size H[,W] (and "
                    "--resize squash|crop|pad) to train at one size.")


# --------------------------------------------------------------------------- tf.data side


def decode(data, channels: int):
    """Encoded bytes → uint8 ``(h, w, channels)`` (first frame of a GIF)."""
    import tensorflow as tf

    img = tf.io.decode_image(data, channels=0, expand_animations=False)
    img = tf.ensure_shape(img, [None, None, None])
    c = tf.shape(img)[-1]
    if channels == 3:
        img = tf.cond(c < 3, lambda: tf.image.grayscale_to_rgb(img[..., :1]), lambda: img[..., :3])
    else:
        img = tf.cond(c < 3, lambda: img[..., :1],
                      lambda: tf.cast(tf.round(tf.image.rgb_to_grayscale(
                          tf.cast(img[..., :3], tf.float32))), tf.uint8))
    return tf.ensure_shape(img, [None, None, channels])


def resize(img, size: tuple[int, int], policy: str = "squash"):
    """uint8 ``(h, w, C)`` → uint8 ``(H, W, C)`` by ``policy`` (see module docstring)."""
    import tensorflow as tf

    if policy not in RESIZE_POLICIES:
        raise ConfigError(f"Unknown resize policy '{policy}'. Available: {', '.join(RESIZE_POLICIES)}")
    h, w = size
    channels = img.shape[-1]

    def to_size():
        x = img
        if policy == "crop":
            ih, iw = tf.shape(x)[0], tf.shape(x)[1]
            # largest centred crop with aspect w/h (Keras smart_resize)
            ch = tf.minimum(ih, tf.cast(tf.round(tf.cast(iw, tf.float32) * h / w), tf.int32))
            cw = tf.minimum(iw, tf.cast(tf.round(tf.cast(ih, tf.float32) * w / h), tf.int32))
            x = tf.image.crop_to_bounding_box(x, (ih - ch) // 2, (iw - cw) // 2,
                                              tf.maximum(ch, 1), tf.maximum(cw, 1))
            out = tf.image.resize(x, (h, w))
        elif policy == "pad":
            out = tf.image.resize_with_pad(tf.cast(x, tf.float32), h, w)
        else:
            out = tf.image.resize(x, (h, w))
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    same = tf.logical_and(tf.shape(img)[0] == h, tf.shape(img)[1] == w)
    out = tf.cond(same, lambda: img, to_size)
    return tf.ensure_shape(out, (h, w, channels))


def preprocess(data, size: tuple[int, int], channels: int, policy: str = "squash"):
    """Encoded image bytes → uint8 ``(H, W, C)``: :func:`decode` then :func:`resize`."""
    return resize(decode(data, channels), size, policy)


def decode_files(paths: list[str], size: tuple[int, int], channels: int,
                 policy: str = "squash") -> np.ndarray:
    """Decode files in parallel into one uint8 array ``(n, H, W, C)``.

    Raises:
        DataError: a file cannot be decoded (named).
    """
    import tensorflow as tf

    if not len(paths):
        return np.zeros((0, *size, channels), np.uint8)
    ds = (tf.data.Dataset.from_tensor_slices(list(paths))
          .map(lambda p: preprocess(tf.io.read_file(p), size, channels, policy),
               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(256).prefetch(2))
    try:
        return np.concatenate(list(ds.as_numpy_iterator()), axis=0)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        bad = next((i.path for i in inspect_files(list(paths)) if i.error), "<unknown file>")
        raise DataError(
            f"Cannot decode image file '{bad}' ({str(e).splitlines()[0][:120]}). Replace or "
            "remove the file, or pass --skip-bad-images to skip and count such files."
        ) from None
