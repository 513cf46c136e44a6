"""Explicit registration of everything ``sila_keras`` adds to Keras and to its own registries.

``import sila_keras`` calls :func:`register_on_keras_import`: the custom Keras objects
(losses, metrics, layers, the optimizer — what ``keras.models.load_model`` needs to
read a ``model.keras`` written by any mode) and the backbones are registered as soon
as Keras is imported (at once if it already is). ``import sila_keras`` itself therefore
does not start TensorFlow, so ``sila-train --help`` stays fast, while a saved model
loads after only ``import sila_keras``::

    import sila_keras, keras
    model = keras.models.load_model("runs/x/model.keras")

The training modes register when :mod:`sila_keras.modes` is imported (no TensorFlow);
the augmentations when :mod:`sila_keras.data.augment` is (``sila_keras.data.pipeline`` imports it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

# Every module that defines a registered Keras object (the backbone families follow, see
# register_all). Each imports only Keras at module level.
KERAS_MODULES = (
    "sila_keras.core.losses",         # SilaLoss, MutualLoss
    "sila_keras.core.metrics",        # HeadAccuracy, HeadTopK, HeadNLL
    "sila_keras.training.optim",          # SGDL2
    "sila_keras.core.heads",          # SilaLogits (the sila_logits layer)
    "sila_keras.models.layers",  # PadShortcut
    "sila_keras.pairs.models",   # the digit-pair layers
)

_done = False


def register_all() -> None:
    """Import every registering module (idempotent); imports Keras and so TensorFlow."""
    global _done
    from sila_keras.models.registry import load_families

    for name in KERAS_MODULES:
        importlib.import_module(name)
    load_families()  # every backbone, msdnet included
    _done = True


def register_on_keras_import() -> None:
    """Run :func:`register_all` now if Keras is imported, else right after it is."""
    if _done:
        return
    if "keras" in sys.modules and not _HOOK.importing:
        register_all()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls :func:`register_all` once ``keras`` and ``tensorflow`` have finished importing
    (TensorFlow imports Keras half-way through its own import) and no ``sila_keras`` module
    is half-way through its own (``from sila_keras.core.heads import …`` as a first import
    imports Keras from inside ``heads``; registering then would import modules that need
    the half-made ``heads``), then removes itself."""

    WATCHED = ("keras", "tensorflow")
    PACKAGE = "sila_keras."

    def __init__(self):
        self.importing: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        watched = fullname in self.WATCHED or fullname.startswith(self.PACKAGE)
        if not watched or fullname in self.importing:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, fullname, self)
        return spec

    def finished(self, fullname: str) -> None:
        self.importing.discard(fullname)
        if self.importing or "keras" not in sys.modules:
            return
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            register_all()
        except Exception as e:  # never break the user's `import keras`
            warnings.warn(f"sila_keras could not register its Keras objects ({e!r}); call "
                          "sila_keras.registration.register_all() before loading a model.",
                          stacklevel=2)


class _Loader(importlib.abc.Loader):
    """The original loader, with a call back to the hook after the module ran."""

    def __init__(self, loader, fullname: str, hook: _AfterImport):
        self._loader, self._fullname, self._hook = loader, fullname, hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._hook.importing.add(self._fullname)
        try:
            self._loader.exec_module(module)
        finally:
            self._hook.finished(self._fullname)

    def __getattr__(self, name):  # resource readers etc. of the original loader
        return getattr(self._loader, name)


_HOOK = _AfterImport()
