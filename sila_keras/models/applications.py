"""``keras:<Name>`` backbones: ``keras.applications`` image models as SiLa backbones.

A phone classifier starts from a pretrained mobile backbone at 160–224 px. Any model named
here resolves through the one backbone registry (:func:`sila_keras.models.get_backbone` with
the ``keras:`` prefix) and is built as:

* the application's own input preprocessing, **inside** the model with built-in,
  weight-free Keras layers (``Rescaling``; the applications' own ``include_preprocessing``;
  for the caffe-style ResNet50 the ImageNet mean is subtracted and the loaded first conv
  kernel is flipped to take RGB instead of BGR), so training data, export and the phone all
  feed raw 0–255 pixels;
* the application with ``include_top=False``, flat in the graph (``input_tensor=``), then
  global average pooling and a ``Dense`` classifier named ``classifier`` (``head_1``);
* taps found by the same placement rule as for any functional classifier
  (:func:`sila_keras.models.taps.find_taps`: the ends of the resolution stages but the last), or
  the layer names given as ``taps=``.

Weights (``weights=``): ``"none"`` (random init), ``"imagenet"`` (Keras' own download and
cache, ``~/.keras/models/``; offline with an empty cache it fails at once naming the file and
where to put it), or the path of a ``.weights.h5`` file saved from the same application
(``keras.applications.MobileNetV2(include_top=False, …).save_weights(path)``), loaded by the
application itself (a mismatch names the layer).

The table of names is static (no TensorFlow import), so ``--help`` can list them.

Example:
    >>> from sila_keras.core.heads import build_sila_model
    >>> m = build_sila_model("keras:MobileNetV2", 10, 3, (32, 32, 3), weights="none")
    >>> m.output.shape
    (None, 30)
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sila_keras.models.registry import APPLICATION_PREFIX as PREFIX
from sila_keras.models.registry import (
    BackboneOutput,
    BackboneSpec,
    is_application,
    register_prefix,
)
from sila_keras.utils.errors import ModelError

WEIGHTS_CHOICES = ("none", "imagenet")
# Layer names our builder adds around the application (never part of the application).
CLASSIFIER = "classifier"
PREPROCESS = "preprocess"

# How each application wants its 0–255 RGB input (keras.applications.imagenet_utils modes):
#   builtin: the application preprocesses inside (include_preprocessing / always);
#   tf: x / 127.5 − 1;  caffe: RGB → BGR, minus the ImageNet mean.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Application:
    """One supported ``keras.applications`` model (static facts, no TF import)."""

    name: str
    preprocessing: str  # builtin | tf | caffe
    min_input_size: int = 32
    builtin_flag: bool = False  # takes include_preprocessing=True
    family: str = ""


def _apps(*rows) -> dict[str, Application]:
    return {a.name: a for a in rows}


APPLICATIONS = _apps(
    Application("MobileNet", "tf", family="mobilenet"),
    Application("MobileNetV2", "tf", family="mobilenet"),
    Application("MobileNetV3Small", "builtin", builtin_flag=True, family="mobilenet"),
    Application("MobileNetV3Large", "builtin", builtin_flag=True, family="mobilenet"),
    Application("EfficientNetB0", "builtin", family="efficientnet"),
    Application("EfficientNetB1", "builtin", family="efficientnet"),
    Application("EfficientNetB2", "builtin", family="efficientnet"),
    Application("EfficientNetB3", "builtin", family="efficientnet"),
    Application("EfficientNetV2B0", "builtin", builtin_flag=True, family="efficientnet"),
    Application("ResNet50", "caffe", family="resnet"),
)


def application_names() -> list[str]:
    """``keras:<Name>`` for every supported application (static; no TF import)."""
    return [PREFIX + n for n in APPLICATIONS]


def get_application(model: str) -> Application:
    """The :class:`Application` of ``keras:<Name>``.

    Raises:
        ModelError: unknown name, with the close matches and the list.
    """
    name = str(model)[len(PREFIX):] if is_application(model) else str(model)
    if name in APPLICATIONS:
        return APPLICATIONS[name]
    close = difflib.get_close_matches(name, APPLICATIONS, n=3, cutoff=0.5)
    by_case = [n for n in APPLICATIONS if n.lower() == name.lower()]
    close = by_case or close
    hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    raise ModelError(f"Unknown keras.applications model '{name}'.{hint} Available: "
                     f"{', '.join(application_names())}. Received: model={model!r}")


def check_weights(model: str, weights: str, input_shape: Sequence[int] | None = None,
                  check_file: bool = True) -> None:
    """Check a ``weights`` value for ``keras:<Name>`` before anything is built or loaded.

    Raises:
        ModelError: unknown application; a ``PATH`` that is not an existing
            ``.weights.h5`` file; ``imagenet`` with an input smaller than the application's
            minimum or without 3 channels (any class count works: ``include_top=False``).
    """
    app = get_application(model)
    if weights in ("none", None):
        return
    if weights == "imagenet":
        if input_shape is not None:
            h, w, c = (int(d) for d in input_shape)
            if min(h, w) < app.min_input_size or c != 3:
                raise ModelError(
                    f"`--weights imagenet` for {PREFIX}{app.name} needs RGB inputs of at least "
                    f"{app.min_input_size}×{app.min_input_size} pixels (include_top=False is "
                    "used, so any class count works). Resize the images (--image-size) or use "
                    f"--weights none. Received: input_shape={tuple(input_shape)}"
                )
        return
    path = Path(weights)
    if not path.name.endswith(".weights.h5"):
        raise ModelError(
            "`--weights` must be none, imagenet or the path of a '.weights.h5' file saved from "
            f"the same application (model.save_weights('{app.name}.weights.h5')). "
            f"Received: weights={weights!r}"
        )
    if check_file and not path.is_file():
        raise ModelError(f"Weights file not found. Received: weights={weights!r}")


def build_application(x, num_classes: int, *, app: Application, weights: str | None = "none",
                      taps: Sequence[str] | None = None, **kwargs) -> BackboneOutput:
    """Build ``keras:<Name>`` on the raw-pixel input ``x`` (a ``keras.Input``).

    Args:
        x: the model input, raw pixels 0–255, ``(B, H, W, C)``.
        num_classes: N (the ``classifier`` Dense width).
        app: the application.
        weights: ``"none"``, ``"imagenet"`` or a ``.weights.h5`` path.
        taps: layer names to use as attach points instead of the automatic ones.
        **kwargs: passed to the application (``alpha=``, ``minimalistic=`` …).

    Returns:
        BackboneOutput with the classifier logits and the taps, shallow → deep.

    Raises:
        ModelError: bad weights (see :func:`check_weights`), a weights file that does not
            match the architecture (naming the layer), imagenet weights missing offline.
    """
    import keras
    from keras import layers

    from sila_keras.models.taps import find_taps, last_stage_reduction, taps_by_name

    weights = "none" if weights is None else str(weights)
    check_weights(PREFIX + app.name, weights, tuple(x.shape[1:]))
    ctor = getattr(keras.applications, app.name)
    if app.builtin_flag:
        kwargs.setdefault("include_preprocessing", True)
    try:
        with _offline_guard(app), warnings.catch_warnings():
            # Keras 3.15 warns once per weight-free container when a file saved from the plain
            # application meets our extra preprocessing layer; the weights still load.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            features = ctor(include_top=False, weights=None if weights == "none" else weights,
                            input_tensor=_preprocess(x, app), pooling="avg", **kwargs)
    except ModelError:
        raise
    except (ValueError, KeyError, OSError) as e:
        if weights == "none":
            raise
        detail = _mismatch(str(e)) or type(e).__name__
        raise ModelError(
            f"The weights file does not match {PREFIX}{app.name} (include_top=False): {detail} "
            f"Save it from keras.applications.{app.name}(include_top=False, ...). "
            f"Received: weights={weights!r}"
        ) from None
    if app.preprocessing == "caffe" and weights != "none":
        _bgr_to_rgb(features)
    logits = layers.Dense(num_classes, name=CLASSIFIER)(features.output)
    base = keras.Model(x, logits, name=app.name.lower())
    found = taps_by_name(base, list(taps)) if taps else find_taps(base)
    depth = sum(1 for w in base.weights if w.path.endswith("kernel"))
    return BackboneOutput(logits, found, depth, reduction=last_stage_reduction(base))


def _mismatch(message: str) -> str:
    """The first offending layer of a Keras weight-loading error, in one short line."""
    text = " ".join(message.split())
    layer = re.search(r"object <(\w+) name=([^,>]+)", text) or re.search(r"[Ll]ayer '([^']+)'", text)
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    if layer and shapes:
        name = layer.group(layer.lastindex)
        return (f"layer '{name}' has weights of shape {shapes.group(1)} but the file has "
                f"{shapes.group(2)}.")
    if layer:
        return f"layer '{layer.group(layer.lastindex)}': {text[:200]}"
    return text[:300]


def _preprocess(x, app: Application):
    """The application's input preprocessing as weight-free built-in layers (raw 0–255 in),
    so the application's weight files load as they are."""
    from keras import layers

    if app.preprocessing == "builtin":
        return x
    if app.preprocessing == "tf":
        return layers.Rescaling(1 / 127.5, offset=-1.0, name=PREPROCESS)(x)
    # caffe: x_bgr − mean_bgr. Here x_rgb − mean_rgb; the first conv's kernel takes its input
    # channels in RGB order instead (see _bgr_to_rgb), which is the same function.
    return layers.Rescaling(1.0, offset=[-m for m in reversed(_CAFFE_MEAN_BGR)], name=PREPROCESS)(x)


def _bgr_to_rgb(features) -> None:
    """Flip the input-channel axis of the first conv of a caffe-style application, whose
    loaded weights expect BGR input, so that it takes RGB."""
    from keras import layers

    first = next(la for la in features.layers if isinstance(la, layers.Conv2D))
    kernel, *rest = first.get_weights()
    first.set_weights([kernel[:, :, ::-1, :], *rest])


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models`` (default ``~/.keras``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


@contextlib.contextmanager
def _offline_guard(app: Application):
    """Around an application build: a weights file that is neither cached nor reachable fails
    at once (no urllib retries), naming the file, its URL and where to put it."""
    from keras.src.utils import file_utils

    original = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        name = fname or (origin or "").rsplit("/", 1)[-1]
        cache_dir = kwargs.get("cache_dir")
        subdir = kwargs.get("cache_subdir", "datasets")
        base = Path(cache_dir).expanduser() if cache_dir else keras_cache_dir().parent
        target = base / subdir / name
        if not target.exists() and not _online(origin):
            raise ModelError(
                f"ImageNet weights for {PREFIX}{app.name} are not in the Keras cache and the "
                f"network is unreachable. Fetch {origin} and put it at {target} (or use "
                f"--weights none / --weights PATH). Received: weights='imagenet'"
            )
        return original(fname, origin, *args, **kwargs)

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = original


def _online(url: str | None, timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    from sila_keras.data import network_available

    host = urlparse(url or "").hostname or "storage.googleapis.com"
    return network_available(host, 443, timeout)


def _resolve(name: str) -> BackboneSpec:
    app = get_application(name)

    def builder(x, num_classes, **kwargs):
        return build_application(x, num_classes, app=app, **kwargs)

    builder.__doc__ = f"keras.applications.{app.name} (include_top=False) + Dense classifier"
    return BackboneSpec(PREFIX + app.name, builder, app.min_input_size,
                        description=builder.__doc__, family=app.family, raw_input=True)


register_prefix(PREFIX, _resolve)
