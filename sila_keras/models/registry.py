"""One registry of backbones, each a small builder function.

A builder takes the (already normalized) input tensor and the number of
classes and returns a :class:`BackboneOutput`: the classifier logits and an
ordered list of :class:`Tap` s, the candidate attach points for auxiliary heads
(the ends of the resolution stages before the last one, shallow → deep).
Auxiliary heads pick taps from that list only, never by layer-name lookups.

A MODEL string names one of three things, told apart here only (:func:`model_kind`, no
TensorFlow import): a registered backbone (``resnet18``), a ``keras.applications`` model
(``keras:<Name>``, :mod:`sila_keras.models.applications`) or the user's own saved
classifier (a ``.keras``/``.h5`` file).

Example:
    >>> from sila_keras.models import register_backbone, list_backbones
    >>> "vgg19" in list_backbones()
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sila_keras.utils.errors import ConfigError, ModelError

# The prefix of the keras.applications family: MODEL = keras:<Name>.
APPLICATION_PREFIX = "keras:"
# A MODEL ending in one of these is the path of the user's own saved Keras classifier.
MODEL_FILE_SUFFIXES = (".keras", ".h5")


def is_model_file(model: str) -> bool:
    """Whether ``model`` names a saved Keras model file (``.keras``/``.h5``) rather than a backbone."""
    return str(model).endswith(MODEL_FILE_SUFFIXES)


def is_application(model: str) -> bool:
    """Whether ``model`` names a ``keras:<Name>`` backbone (known or not)."""
    return str(model).startswith(APPLICATION_PREFIX)


def model_kind(model: str) -> Literal["registered", "application", "file"]:
    """What a MODEL string names: ``"file"`` (the user's ``.keras``/``.h5`` classifier),
    ``"application"`` (``keras:<Name>``) or ``"registered"`` (a backbone name; whether it
    is known is :func:`get_backbone`'s check).

    Example:
        >>> [model_kind(m) for m in ("resnet18", "keras:MobileNetV2", "runs/a/model.keras")]
        ['registered', 'application', 'file']
    """
    if is_model_file(model):
        return "file"
    return "application" if is_application(model) else "registered"


@dataclass(frozen=True)
class Tap:
    """A named intermediate feature map where an auxiliary head may attach.

    Attributes:
        name: a stable name for the attach point (e.g. ``"stage4"``).
        tensor: the symbolic 4-D feature map ``(B, H, W, C)``.
        channels: C.
        reduction: spatial downsampling relative to the input (1, 2, 4, …).
        depth: number of weight layers (conv/dense) from the input up to here.
        preact: True for pre-activation networks (DenseNet, WRN) whose feature
            maps are not yet normalized: the head then starts with BN + ReLU.
    """

    name: str
    tensor: Any
    channels: int
    reduction: int
    depth: int
    preact: bool = False


@dataclass
class BackboneOutput:
    """What a backbone builder returns.

    Attributes:
        logits: the backbone's own classifier output ``(B, N)`` (becomes ``head_1``).
        taps: candidate attach points, ordered shallow → deep.
        depth: total weight layers of the base model, classifier included.
        exits: for multi-exit networks (MSDNet), the logits of every early
            exit, shallow → deep, the last being ``logits``; empty otherwise.
        reduction: the reduction of the last resolution stage (where the classifier pools),
            on the taps' scale; 0 = twice the deepest tap's (each stage halves the
            resolution, the rule of every registered family). Heads that downsample to the
            last resolution read it (:meth:`last_reduction`).
    """

    logits: Any
    taps: list[Tap] = field(default_factory=list)
    depth: int = 0
    exits: list = field(default_factory=list)
    reduction: int = 0

    def last_reduction(self) -> int:
        """The last resolution stage's reduction: ``reduction``, or twice the deepest tap's."""
        return last_reduction(self.taps, self.reduction)

    def __post_init__(self):
        depths = [t.depth for t in self.taps]
        if depths != sorted(depths) or len(set(t.name for t in self.taps)) != len(self.taps):
            raise ModelError(
                "Backbone taps must be ordered shallow → deep with unique names. "
                f"Received: {[(t.name, t.depth) for t in self.taps]}"
            )


def last_reduction(taps, declared: int = 0) -> int:
    """The reduction of a backbone's last resolution stage: ``declared`` when known (> 0),
    else twice the deepest tap's (taps end every stage but the last, and each stage halves
    the resolution), 1 without taps."""
    if declared:
        return int(declared)
    return 2 * max((int(t.reduction) for t in taps), default=0) or 1


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its builder and what it needs of its input.

    ``min_input_size`` is the one record of the smallest H and W the backbone takes (it
    downsamples that much); :meth:`check_input_size` and :meth:`check_image_size` are the
    checks against it.
    """

    name: str
    builder: Callable[..., BackboneOutput]
    min_input_size: int = 32
    description: str = ""
    family: str = ""
    # True when the builder takes raw 0–255 pixels and preprocesses itself
    # (keras: applications); otherwise build_backbone normalizes first.
    raw_input: bool = False

    def too_small(self, height: int | None, width: int | None) -> bool:
        """Whether H or W (where known) is below ``min_input_size``."""
        return any(d is not None and d < self.min_input_size for d in (height, width))

    def check_input_size(self, height: int | None, width: int | None, received: str) -> None:
        """Refuse, at build time, an input too small for this backbone.

        Args:
            height: the input's H (``None``: unknown, not checked).
            width: the input's W (``None``: unknown, not checked).
            received: how the input is shown after ``Received:`` (e.g. ``input_shape=(8, 8, 3)``).

        Raises:
            ModelError: H or W is below ``min_input_size``.
        """
        if self.too_small(height, width):
            m = self.min_input_size
            raise ModelError(
                f"Backbone '{self.name}' needs inputs of at least {m}×{m} pixels (it "
                f"downsamples that much). Received: {received}. Resize the images or pick "
                "another backbone."
            )

    def check_image_size(self, size: tuple[int, int]) -> None:
        """Refuse an ``--image-size`` (H, W) too small for this backbone, before any data is read.

        Raises:
            ConfigError: H or W is below ``min_input_size``.
        """
        if self.too_small(*size):
            raise ConfigError(f"`--image-size` must be at least {self.min_input_size} px for "
                              f"backbone '{self.name}'. Received: image_size={size[0]},{size[1]}")


def _checking_input_size(spec: BackboneSpec) -> Callable[..., BackboneOutput]:
    """``spec.builder``, first checking its input ``x`` against ``spec.min_input_size`` (for
    callers that bypass :func:`sila_keras.core.heads.build_backbone`)."""

    @functools.wraps(spec.builder)
    def builder(x, num_classes, **kwargs):
        h, w = x.shape[1], x.shape[2]
        spec.check_input_size(h, w, f"input of {h}×{w}")
        return spec.builder(x, num_classes, **kwargs)

    return builder


_REGISTRY: dict[str, BackboneSpec] = {}
# Name prefix → resolver(name) -> BackboneSpec, for families named by a prefix
# (``keras:<Name>``, see sila_keras/models/applications.py).
_PREFIXES: dict[str, Callable[[str], BackboneSpec]] = {}


def register_prefix(prefix: str, resolver: Callable[[str], BackboneSpec]) -> None:
    """Resolve every name starting with ``prefix`` through ``resolver`` (``keras:<Name>``).

    Raises:
        ModelError: ``prefix`` is already registered.
    """
    if prefix in _PREFIXES:
        raise ModelError(f"Backbone prefix '{prefix}' is already registered. Pick another prefix.")
    _PREFIXES[prefix] = resolver


def register_backbone(name: str, *, min_input_size: int = 32, description: str = "",
                      family: str = ""):
    """Decorator that registers a backbone builder under ``name``.

    Args:
        name: the backbone's name (MODEL on the command line).
        min_input_size: the smallest input H and W the backbone takes; the registered
            builder refuses a smaller input (:meth:`BackboneSpec.check_input_size`).
        description: one line for listings (default: the builder's first docstring line).
        family: the family module's name.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(fn):
        if name in _REGISTRY:
            raise ModelError(
                f"Backbone '{name}' is already registered (by {_REGISTRY[name].builder.__module__}). "
                "Pick another name."
            )
        spec = BackboneSpec(name, fn, min_input_size,
                            description or (fn.__doc__ or "").strip().split("\n")[0], family)
        _REGISTRY[name] = dataclasses.replace(spec, builder=_checking_input_size(spec))
        return fn

    return decorator


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    load_families()
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` registered as ``name``.

    Raises:
        ValueError: unknown name, listing the available ones.
    """
    load_families()
    for prefix, resolver in _PREFIXES.items():  # keras:<Name> and other prefixed names
        if name.startswith(prefix):
            return resolver(name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(
            f"Unknown backbone '{name}'.{hint} Available: {', '.join(sorted(_REGISTRY))}"
            + "".join(f", or {p}<Name>" for p in _PREFIXES)  # the prefixed families
        )
    return _REGISTRY[name]


# The family modules of this package; importing one registers its backbones.
FAMILIES = ("densenet", "inception", "mobilenet", "msdnet", "resnet", "resnet_cifar", "vgg", "wrn")
# Prefix families, imported by load_families too (applications: the keras:<Name> prefix).
PREFIX_FAMILIES = ("applications",)


def load_families() -> None:
    """Import every family module, registering its backbones (idempotent)."""
    for family in FAMILIES + PREFIX_FAMILIES:
        importlib.import_module(f"sila_keras.models.{family}")
