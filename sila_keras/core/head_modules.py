"""The auxiliary head modules: what ``--head-module NAME`` attaches at each tap.

A module turns one tap (a feature map of the trunk, :class:`~sila_keras.models.registry.Tap`)
into head k's ``(B, N)`` logits. Every module is built from Keras' built-in layers only (an
extracted head loads with plain Keras and converts to TFLite's built-in ops), names every
layer ``head_k_*`` and its output layer ``head_k`` (the contract of
:mod:`sila_keras.core.heads`):

* ``conv`` (default) — SilaNet's module (Gan et al., §2.2, modules C/D): [BN + ReLU when the
  tap is not activated yet] → 3×3 conv to N (with bias) → global average pooling. The
  parameter counts of SilaNet Table 3; runs made before modules existed used it.
* ``bn_conv`` — the same conv on normalised features: BN → ReLU → 3×3 conv to N → global
  average pooling, on every tap (on a pre-activation tap it is ``conv``). A bare conv on
  an un-normalised residual sum did not train alone at lr 0.1, and did with BatchNorm
  first (docs/heads.md, "The two anomalies").
* ``sep`` — private capacity, as the multi-exit networks give their exits: downsampling
  depthwise-separable blocks from the tap's resolution to the backbone's last one (one
  block per halving: 3×3 depthwise conv, stride 2 → BN → ReLU → 1×1 conv doubling the
  channels → BN → ReLU; MobileNetV1's block, Howard et al. 2017), then global average
  pooling and a dense layer to N. Sources: MSDNet's classifier (Huang et al. 2018: two 3×3
  stride-2 convs → average pooling → linear), "Be Your Own Teacher" (Zhang et al. 2019:
  per-stage private blocks down to the last resolution → fully connected), Shallow-Deep
  Networks (Kaya et al. 2019: feature reduction before a linear exit). A tap already at
  the last resolution gets one stride-1 block.

How many halvings ``sep`` makes: ``log2(R / r)``, r the tap's reduction and R the
backbone's last stage's (:func:`halvings`); each needs a side of 2 or more positions before
it, so a tap too small for its halvings is refused (:func:`check_fit`) — one line naming the
head, the tap's shape and the modules that fit. The registered backbones fit every module at
every input size they take (their taps shrink with the input); the check guards taps whose
declared reduction is larger than their size allows.

This module imports no TensorFlow (the parsers list :func:`list_head_modules`); the builders
import Keras when called.

Example:
    >>> list_head_modules()
    ['conv', 'bn_conv', 'sep']
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

from sila_keras.utils.errors import ConfigError, ModelError

DEFAULT_MODULE = "conv"
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # the zoo's BatchNorm (PyTorch's 0.1 momentum)


@dataclass(frozen=True)
class HeadModule:
    """A registered head module.

    Attributes:
        name: the ``--head-module`` value.
        build: ``build(tap, name, num_classes, halvings) -> logits``; ``name`` is the head's
            layer name (``head_k``), ``halvings`` from :func:`halvings`.
        summary: one line for ``--help`` and docs.
        downsamples: whether it halves the tap's resolution (and so needs room to).
    """

    name: str
    build: Callable
    summary: str
    downsamples: bool = False


def _bn_relu(x, name: str):
    from keras import layers

    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _conv(tap, name: str, num_classes: int, halvings: int, normalise: bool = False):
    from keras import layers

    x = tap.tensor
    if tap.preact or normalise:
        x = _bn_relu(x, name)
    x = layers.Conv2D(num_classes, 3, padding="same", name=f"{name}_conv")(x)
    return layers.GlobalAveragePooling2D(name=name)(x)


def _bn_conv(tap, name: str, num_classes: int, halvings: int):
    return _conv(tap, name, num_classes, halvings, normalise=True)


def _sep(tap, name: str, num_classes: int, halvings: int):
    from keras import layers

    x = _bn_relu(tap.tensor, name) if tap.preact else tap.tensor
    channels = int(tap.channels)
    for j in range(1, max(halvings, 1) + 1):
        stride = 2 if j <= halvings else 1
        channels *= stride  # double the channels when halving the side, as the backbones do
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                   name=f"{name}_dw{j}")(x)
        x = _bn_relu(x, f"{name}_dw{j}")
        x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_pw{j}")(x)
        x = _bn_relu(x, f"{name}_pw{j}")
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return layers.Dense(num_classes, name=name)(x)


_REGISTRY: dict[str, HeadModule] = {m.name: m for m in (
    HeadModule("conv", _conv, "SilaNet's module: [BN + ReLU on a pre-activation tap] → 3×3 conv "
                              "to N → global average pooling (Table 3's sizes)"),
    HeadModule("bn_conv", _bn_conv, "BN → ReLU → 3×3 conv to N → global average pooling: the "
                                    "paper's conv on normalised features"),
    HeadModule("sep", _sep, "private capacity: one depthwise-separable stride-2 block per halving "
                            "down to the backbone's last resolution (channels ×2 each) → global "
                            "average pooling → dense to N (MSDNet / BYOT / SDN exits)",
               downsamples=True),
)}


def list_head_modules() -> list[str]:
    """The registered module names, the default (``conv``) first."""
    return list(_REGISTRY)


def get_head_module(name: str) -> HeadModule:
    """The :class:`HeadModule` registered as ``name``.

    Raises:
        ConfigError: unknown name, listing the available ones.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=2)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"Unknown head module '{name}'.{hint} Available: "
                          f"{', '.join(_REGISTRY)}. Received: head_module={name!r}")
    return _REGISTRY[name]


def halvings(tap, last_reduction: int) -> int:
    """How many times a tap's resolution halves to the backbone's last: ``log2(R / r)``.

    Args:
        tap: the tap (its ``reduction`` r).
        last_reduction: R, the reduction of the backbone's last resolution stage.

    Example:
        >>> from sila_keras.models.registry import Tap
        >>> halvings(Tap("stage1", None, 16, 1, 7), 4)
        2
    """
    ratio = max(1, int(last_reduction)) / max(1, int(tap.reduction))
    return max(0, round(math.log2(ratio))) if ratio > 1 else 0


def min_side(n: int) -> int:
    """The smallest side that halves ``n`` times (stride 2, same padding: s → ⌈s/2⌉) with at
    least 2 positions before every halving: 1 for n = 0, else ``2^(n−1) + 1``.

    Example:
        >>> [min_side(n) for n in range(4)]
        [1, 2, 3, 5]
    """
    return 1 if n <= 0 else 2 ** (n - 1) + 1


def fits(module: HeadModule, tap, last_reduction: int) -> bool:
    """Whether ``module`` fits ``tap``: a module that halves the resolution needs 2 or more
    positions per side before every halving (:func:`min_side`; unknown sides are not checked)."""
    if not module.downsamples:
        return True
    need = min_side(halvings(tap, last_reduction))
    sides = [d for d in tuple(tap.tensor.shape)[1:3] if d is not None]
    return all(int(d) >= need for d in sides)


def check_fit(module: HeadModule, tap, head: str, last_reduction: int) -> None:
    """Refuse a module that cannot fit the tap of ``head`` (its layer name), in one line.

    Raises:
        ModelError: the tap has too few positions for the module's halvings.
    """
    if fits(module, tap, last_reduction):
        return
    n, side = halvings(tap, last_reduction), min_side(halvings(tap, last_reduction))
    shape = tuple(int(d) if d is not None else None for d in tuple(tap.tensor.shape)[1:])
    ok = [m for m in _REGISTRY.values() if fits(m, tap, last_reduction)]
    raise ModelError(
        f"Head module '{module.name}' does not fit {head}: it halves the tap "
        f"'{tap.name}' ({'×'.join(map(str, shape))}, reduction {tap.reduction}) {n} time(s) to "
        f"the backbone's last resolution (reduction {last_reduction}), which needs at least "
        f"{side}×{side} positions. Modules that fit this tap: "
        f"{', '.join(m.name for m in ok)}; or train on larger images (--image-size). "
        f"Received: head_module='{module.name}', tap shape {shape}")


def build_head(tap, name: str, num_classes: int, module: str, last_reduction: int):
    """A head's logits ``(B, N)`` from ``tap`` through the module named ``module``.

    Args:
        tap: where the head attaches.
        name: the head's layer name, ``head_k`` (:func:`sila_keras.core.heads.head_name`);
            its other layers are named ``head_k_*``.
        num_classes: N.
        module: a registered module name (:func:`list_head_modules`).
        last_reduction: the reduction of the backbone's last resolution stage.

    Raises:
        ConfigError: unknown module.
        ModelError: the module does not fit the tap (:func:`check_fit`).
    """
    spec = get_head_module(module)
    check_fit(spec, tap, name, int(last_reduction))
    return spec.build(tap, name, int(num_classes), halvings(tap, int(last_reduction)))
