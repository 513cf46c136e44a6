"""sila_keras: Siamese Labels (SiLa) auxiliary training for Keras 3 / TensorFlow.

Public API::

    from sila_keras import SilaLoss, build_sila_model, extract_head, list_backbones

``import sila_keras`` imports the API (and so registers every custom Keras object). The one
exception is the start of a console script (``sila-train``, ``python -m tuning``, …): there
the API is imported by the CLI runner after the arguments are parsed, so ``--help`` and
argument errors never import TensorFlow (:mod:`sila_keras.cli`). Attribute access imports it
on demand in that case too.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# Name → module of the public API. Everything that imports Keras/TensorFlow goes through
# _load_api(), never at the top of this file.
_API = {
    "SGDL2": "sila_keras.optim", "attach_heads": "sila_keras.attach",
    "load_and_attach": "sila_keras.attach", "HeadAccuracy": "sila_keras.metrics",
    "HeadNLL": "sila_keras.metrics", "HeadTopK": "sila_keras.metrics",
    "SilaLoss": "sila_keras.losses", "build_sila_model": "sila_keras.heads",
    "extract_head": "sila_keras.heads", "get_backbone": "sila_keras.models",
    "list_backbones": "sila_keras.models", "num_heads_of": "sila_keras.heads",
    "register_backbone": "sila_keras.models", "set_weights": "sila_keras.losses",
    "sila_loss": "sila_keras.losses", "sila_metrics": "sila_keras.metrics",
    "trainable_params": "sila_keras.heads",
}
__all__ = sorted(_API)

# Console scripts and ``python -m`` modules whose start must not import TensorFlow.
_CONSOLE_SCRIPTS = ("sila-train", "sila-tune", "sila-export", "sila-params", "sila-report",
                    "sila-analyze", "sila-pairs")
_CLI_MODULES = ("sila_keras.train", "sila_keras.params", "sila_keras.report", "sila_keras.analyze",
                "sila_keras.pairs", "sila_keras.pairs.cli", "tuning", "tuning.cli", "export",
                "export.cli")


def _cli_starting() -> bool:
    """True while one of our console scripts is starting (before its arguments are parsed)."""
    if _os.path.basename(_sys.argv[0] if _sys.argv else "") in _CONSOLE_SCRIPTS:
        return True
    argv = list(getattr(_sys, "orig_argv", ()))
    return any(a == "-m" and i + 1 < len(argv) and argv[i + 1] in _CLI_MODULES
               for i, a in enumerate(argv))


def _load_api() -> None:
    """Import the public API (registers the custom Keras objects); idempotent."""
    import importlib

    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO/WARNING lines
    for name, module in _API.items():
        globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name: str):
    if name in _API:
        _load_api()
        return globals()[name]
    raise AttributeError(f"module 'sila_keras' has no attribute '{name}'")


if not _cli_starting():
    _load_api()
