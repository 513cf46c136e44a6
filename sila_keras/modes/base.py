"""The :class:`Mode` base class and the mode registry.

A training mode (``--mode NAME``) is one registered :class:`Mode` subclass that owns
everything the mode changes in a run, in the order ``train.py`` calls it::

    mode = make_mode(config)          # validate (once per run)
    data = mode.prepare_data(data)    # e.g. set a hold-out aside, kept by the mode
    model = mode.build_model(data)    # output: sila_logits (sila_keras.core.heads.sila_output)
    loss = mode.loss(num_classes, num_heads)
    metrics = mode.metrics(num_classes, num_heads)
    summary = mode.after_training(model, data, run_dir, rows, summary)

Mode modules import Keras/TensorFlow only inside their methods, so the mode names
(``list_modes()``, the CLI's ``--mode`` choices) are known without starting TensorFlow.

Example:
    >>> from sila_keras.modes import list_modes
    >>> list_modes()
    ['sila', 'mutual', 'dml', 'dynamic']
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, ClassVar

from sila_keras.models.registry import is_model_file
from sila_keras.utils.errors import ConfigError

# Mode-specific TrainConfig fields and their CLI flags. A mode lists those it uses in
# ``Mode.options``; giving one to a mode that does not use it is an error.
OPTION_FLAGS = {"peer": "--peer", "dml": "--dml", "no_sila": "--no-sila",
                "dynamic_eval": "--dynamic-eval",
                "head_module": "--head-module",  # the auxiliary heads' module
                "ship_head": "--ship-head", "distill": "--distill",  # shipping a head
                "ramp_betas": "--ramp-betas", "distill_start": "--distill-start",
                "distill_ramp": "--distill-ramp",
                "grad_equilibrium": "--grad-equilibrium"}  # levers for heads 2..M

_REGISTRY: dict[str, type[Mode]] = {}


class Mode:
    """One training mode. Subclass it, set ``name``, and decorate with :func:`register_mode`.

    An instance belongs to one run: ``Mode(config)`` validates the mode's flags, and what
    the mode derives from the data (a hold-out split) is kept on the instance.

    Attributes:
        name: the ``--mode`` value.
        help: one line for ``--help``.
        options: the mode-specific config fields (keys of :data:`OPTION_FLAGS`) it uses.
        option_hints: extra advice when an option it does not use is given.
        model_files: whether ``MODEL`` may be the user's own ``.keras`` classifier.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    option_hints: ClassVar[dict[str, str]] = {}
    model_files: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check the mode's flags before data is loaded or anything is built.

        Raises:
            ConfigError: an option this mode does not use, or a model file where the
                mode needs a registered backbone.
        """
        config = self.config
        defaults = type(config)()  # a value equal to the default was not given
        for option, flag in OPTION_FLAGS.items():
            value = config.value(option)
            if value in (None, False) or value == defaults.value(option) or option in self.options:
                continue
            users = " or ".join(m for m in _REGISTRY if option in _REGISTRY[m].options)
            raise ConfigError(f"{flag} only applies to --mode {users}.{self.option_hints.get(option, '')}"
                              f" Received: mode={self.name}, {option}={value}")
        if is_model_file(config.net.model) and not self.model_files:
            with_files = " or ".join(m for m, cls in _REGISTRY.items() if cls.model_files)
            raise ConfigError(f"--mode {self.name} needs a registered backbone as MODEL; a .keras "
                              f"model file trains with --mode {with_files}. "
                              f"Received: model={config.net.model}")

    def check_before_data(self) -> None:
        """What the mode can check without data, before it is loaded (default: nothing)."""

    # ------------------------------------------------------------------ the run

    def prepare_data(self, data):
        """The data to train on (called once, right after loading). Default: unchanged."""
        return data

    def build_model(self, data):
        """The model to train: raw-pixel input, output ``sila_logits`` (``head_1 … head_M``)."""
        raise NotImplementedError

    def loss(self, num_classes: int, num_heads: int):
        """The Keras loss on ``sila_logits``."""
        raise NotImplementedError

    def metrics(self, num_classes: int, num_heads: int) -> list:
        """The compiled metrics: ``head_k_acc`` per head, ``top5``/``nll`` of head 1."""
        from sila_keras.core.metrics import sila_metrics

        return sila_metrics(num_heads, num_classes)

    def evaluate(self, model, data, run_dir, rows: list[dict]) -> dict:
        """Mode-specific evaluation after training (may write files into ``run_dir``);
        returns the keys it adds to ``summary.json``. Default: none."""
        return {}

    def after_training(self, model, data, run_dir, rows: list[dict], summary: dict) -> dict:
        """``summary`` plus the method label and :meth:`evaluate`'s results."""
        return {**summary, "method": self.label(self.config),
                **self.evaluate(model, data, run_dir, rows)}

    # ------------------------------------------------------------------ naming

    @classmethod
    def label(cls, config) -> str:
        """The method's row label in tables and legends (paper B's names), from a config
        (a ``TrainConfig`` or the ``config.json`` dict)."""
        return cls.name


def last_head_metrics(num_classes: int, num_heads: int) -> list:
    """Top-5 and NLL of the last head (``head_M_top5``, ``head_M_nll``) when there are several."""
    from sila_keras.core.metrics import HeadNLL, HeadTopK

    if num_heads < 2:
        return []
    return [HeadTopK(num_heads, num_classes, k=5), HeadNLL(num_heads, num_classes)]


def option(config, name: str, default: Any = None) -> Any:
    """The flat field ``name`` of a ``TrainConfig`` or of a ``config.json`` dict (either form)."""
    if isinstance(config, Mapping):
        from sila_keras.utils.rundir import flat_config

        return flat_config(config).get(name, default)
    return config.value(name)


def register_mode(cls: type[Mode]) -> type[Mode]:
    """Class decorator: register a :class:`Mode` subclass under ``cls.name``.

    Raises:
        ValueError: no name, or the name is already registered.
    """
    if not cls.name:
        raise ConfigError(f"A mode needs a name. Received: {cls.__name__}.name={cls.name!r}")
    if cls.name in _REGISTRY:
        raise ConfigError(f"Mode '{cls.name}' is already registered (by "
                         f"{_REGISTRY[cls.name].__module__}). Pick another name.")
    _REGISTRY[cls.name] = cls
    return cls


def list_modes() -> list[str]:
    """The registered mode names, in registration order (``sila`` first)."""
    return list(_REGISTRY)


def get_mode(name: str) -> type[Mode]:
    """The :class:`Mode` subclass registered as ``name``.

    Raises:
        ConfigError: unknown name, listing the available ones.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=2)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"Unknown mode '{name}'.{hint} Available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_mode(config) -> Mode:
    """The validated :class:`Mode` instance of one run (``config.sila.mode``)."""
    return get_mode(config.sila.mode)(config)


def method_label(config) -> str:
    """The method label of a run (``IND``, ``SiLa (M=3)``, ``SiLa+DML``, ``Dynamic SiLa``, …),
    from a ``TrainConfig`` or a ``config.json`` dict."""
    return get_mode(option(config, "mode", "sila")).label(config)
