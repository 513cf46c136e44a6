"""β/λ search for SiLa models with keras-tuner (``python -m tuning`` / ``sila-tune``).

Modules: :mod:`tuning.config` (``SearchConfig``), :mod:`tuning.hypermodel`
(``SilaHyperModel``, ``SearchData``), :mod:`tuning.search` (``run_search``,
``make_tuner``), :mod:`tuning.report` (``trials.csv``, ``best_hparams.json``,
``search.png``), :mod:`tuning.cli` (``main``). See ``docs/tuning.md``.

Names are imported lazily so ``python -m tuning --help`` does not load keras-tuner.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SearchConfig": "tuning.config",
    "SilaHyperModel": "tuning.hypermodel",
    "SearchData": "tuning.hypermodel",
    "run_search": "tuning.search",
    "make_tuner": "tuning.search",
    "SearchFailed": "tuning.search",
    "main": "tuning.cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tuning' has no attribute '{name}'")
