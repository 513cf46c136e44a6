"""What to export from: a training run directory or a ``.keras`` file, and image data.

A run directory (written by ``sila-train``) holds ``model.keras``, ``config.json``
(the ``dataset`` it was trained on), ``labels.txt`` and ``summary.json``
(``data.input_shape``, ``data.class_names``). A bare ``.keras`` file works too;
its class names come from a ``labels.txt`` beside it when there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sila_keras.utils.errors import ModelError
from sila_keras.utils.rundir import RunDir

MODEL_FILE = RunDir.MODEL


@dataclass
class ExportSource:
    """A loaded SiLa model and what is known about it.

    Attributes:
        model: the full SiLa model (output ``sila_logits``).
        model_path: the ``.keras`` file it was loaded from.
        run_dir: the training run directory, or None for a bare ``.keras`` file.
        class_names: N names, in label order.
        config: the run's ``config.json`` (empty without a run directory).
        summary: the run's ``summary.json`` (empty without one).
        notes: things the user should know (e.g. generic class names).
    """

    model: object
    model_path: Path
    run_dir: Path | None
    class_names: list[str]
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.input_shape[1:])

    @property
    def default_out(self) -> Path:
        """``<run>/export`` (or ``export/`` beside a bare ``.keras`` file)."""
        return (self.run_dir or self.model_path.parent) / RunDir.EXPORT


def load_source(source: str | os.PathLike) -> ExportSource:
    """Load a run directory or a ``.keras`` file and check it is a SiLa model.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        PermissionError: it cannot be read.
        ValueError: no ``model.keras`` in the folder, not a ``.keras`` file, a file
            Keras cannot load, or a model without ``sila_logits``.
    """
    from sila_keras.core.heads import num_heads_of

    path = Path(source).expanduser()
    if not path.exists():
        raise ModelError(
            f"SOURCE not found: '{source}'. Pass a run directory written by sila-train "
            f"(holding {MODEL_FILE}) or a .keras file. Received: SOURCE={str(source)!r}"
        )
    run_dir = None
    if path.is_dir():
        run_dir, path = path, path / MODEL_FILE
        if not path.is_file():
            raise ModelError(
                f"'{run_dir}' is not a run directory: it has no {MODEL_FILE}. Pass a run directory "
                f"written by sila-train or a .keras file. Received: SOURCE={str(source)!r}"
            )
    elif path.suffix != ".keras":
        raise ModelError(
            f"SOURCE must be a run directory or a .keras file. Received: SOURCE={str(source)!r}"
        )
    if not os.access(path, os.R_OK):
        raise ModelError(f"Cannot read '{path}': permission denied. Received: SOURCE={str(source)!r}")
    model = _load_model(path)
    num_heads_of(model)  # raises ValueError when there is no sila_logits layer
    config = RunDir(run_dir).read_config() if run_dir else {}
    summary = RunDir(run_dir).read_summary() if run_dir else {}
    names, notes = _class_names(model, path, summary)
    return ExportSource(model, path, run_dir, names, config, summary, notes)


def _load_model(path: Path):
    import keras

    import sila_keras  # noqa: F401  (registers the custom layers and objects)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"Cannot read the Keras model '{path}' ({type(e).__name__}: {first}). "
            "Pass a model saved by sila-train (model.keras) or by keras.Model.save."
        ) from None




def num_classes_of(model) -> int:
    """N: the width of ``head_1``."""
    return int(model.get_layer("head_1").output.shape[-1])


def _class_names(model, model_path: Path, summary: dict) -> tuple[list[str], list[str]]:
    n = num_classes_of(model)
    labels = RunDir(model_path.parent).read_labels()
    candidates = []
    if labels:
        candidates.append(labels)
    data_names = (summary.get("data") or {}).get("class_names")
    if data_names:
        candidates.append(list(data_names))
    for names in candidates:
        names = [str(s).strip() for s in names if str(s).strip()]
        if len(names) == n:
            return names, []
    note = f"no class names found for the model's {n} classes; using class_0 … class_{n - 1}"
    return [f"class_{i}" for i in range(n)], [note]


def load_images(dataset: str, *, train: int | None, test: int | None, data_dir: str | None = None,
                download: str = "auto", seed: int = 0, **options):
    """Load ``dataset`` (``folder:PATH`` or a tfds name) with at most ``train``/``test`` images.

    A limit of 0 still decodes one training image (the loaders need one to
    probe the image size); callers slice what they need. ``options``: more
    :func:`sila_keras.data.load_dataset` arguments (``image_size``, ``resize``, splits) —
    the model's input size, so a folder of photos at mixed sizes loads as it trained.
    """
    from sila_keras.data import load_dataset

    return load_dataset(dataset, data_dir=data_dir, limit_train=max(1, train) if train is not None else None,
                        limit_test=max(1, test) if test is not None else None, seed=seed,
                        download=download, **{k: v for k, v in options.items() if v is not None})


def check_images(x: np.ndarray, input_shape, what: str) -> np.ndarray:
    """``x`` as float32 ``(n, H, W, C)`` matching the model input.

    Raises:
        ValueError: wrong rank or image size.
    """
    x = np.asarray(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ModelError(
            f"{what} images must be (n, {', '.join(map(str, input_shape))}) to fit the model input. "
            f"Received: shape={list(x.shape)}"
        )
    return x.astype(np.float32)
