"""The errors a user can cause, and the one that means a run failed.

Every console script goes through one runner (:mod:`sila_keras.utils.cli`) that maps these to exit
codes: a :class:`SilaError` is bad input (exit 2, one line: the rule, then ``Received: …``),
:class:`RunFailed` is a run that started and could not finish (exit 3), an interrupt is 130.
Anything else — a ``TypeError`` from our own code, say — is a bug and shows its traceback.

``SilaError`` subclasses ``ValueError`` so API callers that catch ``ValueError`` keep working.

Example:
    >>> from sila_keras.utils.errors import ConfigError, SilaError
    >>> try:
    ...     raise ConfigError("`--heads` must be >= 1. Received: heads=0")
    ... except SilaError as e:
    ...     print(e)
    `--heads` must be >= 1. Received: heads=0
"""

from __future__ import annotations


class SilaError(ValueError):
    """Bad input a user can fix: a flag, a file, a dataset, a model. Exit code 2."""


class ConfigError(SilaError):
    """A flag or configuration value is invalid or inconsistent with another."""


class DataError(SilaError):
    """A dataset cannot be read or does not fit the run (layout, images, splits, classes)."""


class ModelError(SilaError):
    """A model name, model file or weights file cannot be used."""


class RunDirError(SilaError):
    """A run directory is missing, already exists, or cannot be resumed with these settings."""


class DependencyError(SilaError):
    """An optional dependency is missing; the message gives the install command."""


class RunFailed(RuntimeError):
    """A run started and could not finish (non-finite loss, failed export, failed search).

    Exit code 3. Whatever was committed before (checkpoints, earlier exports) is kept.
    """
