"""sila_keras: Siamese Labels (SiLa) auxiliary training for Keras 3 / TensorFlow.

Public API::

    from sila_keras import SilaLoss, build_sila_model, extract_head, list_backbones

``import sila_keras`` is light (no TensorFlow): the public names load on first use, the
training modes register at once, and the custom Keras objects register as soon as Keras
is imported (:mod:`sila_keras.registration`), so every ``model.keras`` this package
writes loads with ``keras.models.load_model`` after only ``import sila_keras``.
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of CLIs

from sila_keras import modes as _modes  # noqa: E402, F401  (registers the training modes)
from sila_keras.registration import register_on_keras_import as _register  # noqa: E402

__version__ = "0.1.0"

# Public name → the module that defines it (imported on first access).
_API = {
    "SGDL2": "sila_keras.training.optim",
    "attach_heads": "sila_keras.core.attach",
    "load_and_attach": "sila_keras.core.attach",
    "HeadAccuracy": "sila_keras.core.metrics",
    "HeadNLL": "sila_keras.core.metrics",
    "HeadTopK": "sila_keras.core.metrics",
    "sila_metrics": "sila_keras.core.metrics",
    "MutualLoss": "sila_keras.core.losses",
    "SilaLoss": "sila_keras.core.losses",
    "set_weights": "sila_keras.core.losses",
    "ship_head_weights": "sila_keras.core.losses",  # shipping a shallow head
    "sila_loss": "sila_keras.core.losses",
    "SilaLogits": "sila_keras.core.heads",
    "build_sila_model": "sila_keras.core.heads",
    "extract_head": "sila_keras.core.heads",
    "standalone_head": "sila_keras.core.heads",  # head k's sub-network, to train alone
    "num_heads_of": "sila_keras.core.heads",
    "trainable_params": "sila_keras.core.heads",
    "get_backbone": "sila_keras.models.registry",
    "list_backbones": "sila_keras.models.registry",
    "register_backbone": "sila_keras.models.registry",
    "get_mode": "sila_keras.modes",
    "list_modes": "sila_keras.modes",
    "register_mode": "sila_keras.modes",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(_importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sila_keras' has no attribute '{name}'")


def _load_api() -> None:
    """Import every public name now (TensorFlow included); the CLI runner calls this after
    parsing the arguments, with TF's start-up output captured. Idempotent."""
    for name in _API:
        __getattr__(name)


def __dir__():
    return sorted({*globals(), *_API})


_register()
