"""The run directory: the one owner of its file names, its writes and its loading.

A training run (``sila-train``) writes ``<out>/<name>/``::

    config.json       the resolved TrainConfig (written first, once the inputs proved good)
    metrics.csv       one row per finished epoch (test-split metrics, see EpochLogger)
    summary.json      final accuracies, parameter counts, data description
    model.keras       the trained SiLa model
    labels.txt        class names, one a line, in label order
    curves.png        test accuracy per head vs epoch
    checkpoints/      state.json (the commit point) + epoch-<e>.keras, for --resume
    tensorboard/      TensorBoard logs
    .workers/         multi-worker scratch folders of non-chief processes
    nets.csv, anytime.csv, … mode-specific extras (paper B), named here too
    cascade.json/csv/png  the early-exit cascade of the heads (sila-cascade)

A search (``sila-tune``) writes :class:`SearchDir`; the digit-pair task :class:`PairsDir`;
the head-vs-alone benchmark (``benchmarks/head_vs_alone.py``) :class:`StudyDir`.
Every write is atomic (:mod:`sila_keras.utils.files`), so a killed process leaves old or new files,
never half-written ones. Nothing else in the package spells one of these names.

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.write_config({"dataset": "mnist", "model": "resnet20"})
    >>> run.read_config()["model"]
    'resnet20'
    >>> run.load(finished=False).rows
    []
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sila_keras.utils import files
from sila_keras.utils.errors import RunDirError


def flat_config(d: dict) -> dict:
    """A ``config.json`` by flat field name (``{"epochs": 3, …}``). Files written since the
    grouping hold one object per group (``{"data": {…}, "optim": {…}, …}``: every value an
    object) and are flattened one level; older flat files come back as they are."""
    if d and all(isinstance(v, dict) for v in d.values()):
        return {k: v for group in d.values() for k, v in group.items()}
    return dict(d)

@dataclass
class LoadedRun:
    """What a run directory holds (files that are absent give empty values).

    Attributes:
        path: the run directory.
        config: ``config.json``.
        summary: ``summary.json`` (empty for a run that did not finish).
        rows: ``metrics.csv`` rows (values are strings).
        class_names: ``labels.txt``.
    """

    path: Path
    config: dict
    summary: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.summary)


class RunDir:
    """A training run directory (see the module docstring for its layout)."""

    CONFIG = "config.json"
    METRICS = "metrics.csv"
    SUMMARY = "summary.json"
    MODEL = "model.keras"
    LABELS = "labels.txt"
    CURVES = "curves.png"
    CHECKPOINTS = "checkpoints"
    STATE = "state.json"
    LEGACY_CHECKPOINT = "last.keras"  # checkpoints written before state.json named its model
    TENSORBOARD = "tensorboard"
    WORKERS = ".workers"
    EXPORT = "export"
    # Mode extras (paper B) and analyses written into a run directory.
    NETS = "nets.csv"
    ANYTIME = "anytime.csv"
    ANYTIME_PLOT = "anytime.png"
    BUDGETED = "budgeted.csv"
    BUDGETED_PLOT = "budgeted.png"
    NOISE = "noise.csv"
    NOISE_PLOT = "noise.png"
    CASCADE_JSON = "cascade.json"  # early-exit cascade of the heads (sila-cascade)
    CASCADE_CSV = "cascade.csv"
    CASCADE_PLOT = "cascade.png"

    @staticmethod
    def net_curves(k: int) -> str:
        """``curves_net_<k>.png``: test accuracy of net k (``--mode mutual/dml``)."""
        return f"curves_net_{k}.png"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir('{self.path}')"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def model_path(self) -> Path:
        return self.path / self.MODEL

    @property
    def labels_path(self) -> Path:
        return self.path / self.LABELS

    @property
    def curves_path(self) -> Path:
        return self.path / self.CURVES

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def export_dir(self) -> Path:
        return self.path / self.EXPORT

    def worker_dir(self, kind: str, index: int) -> RunDir:
        """The scratch run directory of a non-chief multi-worker process."""
        return RunDir(self.path / self.WORKERS / f"{kind}_{index}")

    @classmethod
    def checkpoint_name(cls, epoch: int) -> str:
        """``epoch-<e>.keras``, the checkpoint file of epoch ``epoch`` (1-based)."""
        return f"epoch-{int(epoch):04d}.keras"

    # ------------------------------------------------------------------ state

    def is_used(self) -> bool:
        """The folder exists and holds something."""
        return self.path.is_dir() and any(self.path.iterdir())

    def has_model(self) -> bool:
        return self.model_path.is_file()

    def check_new(self, hint: str = "Add --resume to continue it, or choose another "
                                    "--name/--out (nothing there is overwritten).") -> None:
        """Refuse a folder that already holds files.

        Raises:
            RunDirError: it exists and is not empty.
        """
        if self.is_used():
            raise RunDirError(f"Run directory '{self.path}' already exists. {hint}")

    def create(self) -> RunDir:
        """Create the folder (and parents).

        Raises:
            RunDirError: it cannot be created (permissions, a file in the way).
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"Cannot create the run directory '{self.path}': {e.strerror}. "
                              "Choose a writable --out.") from None
        return self

    # ------------------------------------------------------------------ writes (atomic)

    def write_config(self, config: dict) -> None:
        files.write_json(self.config_path, config)

    def write_summary(self, summary: dict) -> None:
        files.write_json(self.summary_path, summary)

    def write_metrics(self, rows: list[dict], columns: list[str] | None = None) -> None:
        files.write_csv(self.metrics_path, rows, columns)

    def write_labels(self, class_names) -> None:
        files.write_text(self.labels_path, "\n".join(class_names) + "\n")

    def save_model(self, model) -> Path:
        """``model.keras`` (atomic)."""
        return save_model(model, self.model_path)

    # ------------------------------------------------------------------ reads

    def read_config(self) -> dict:
        """The run's settings by flat field name (``{"epochs": 3, …}``), whether
        ``config.json`` is grouped (:meth:`TrainConfig.to_dict`) or flat (older runs)."""
        return flat_config(files.read_json_object(self.config_path))

    def read_summary(self) -> dict:
        return files.read_json_object(self.summary_path)

    def read_metrics(self) -> list[dict]:
        return files.read_csv(self.metrics_path) if self.metrics_path.is_file() else []

    def read_labels(self) -> list[str]:
        if not self.labels_path.is_file():
            return []
        return [s.strip() for s in self.labels_path.read_text().splitlines() if s.strip()]

    def load(self, finished: bool = True, need_model: bool = False,
             hint: str = "Pass run directories written by sila-train.") -> LoadedRun:
        """Load the run's files.

        Args:
            finished: require ``summary.json`` and ``metrics.csv`` (a run that completed);
                False also loads a partial run (``config.json`` alone is required).
            need_model: require ``model.keras``.
            hint: the fix named in the error message.

        Raises:
            RunDirError: not a folder, or a required file is missing.
        """
        if not self.path.is_dir():
            raise RunDirError(f"Run directory not found: '{self.path}'. {hint}")
        required = [self.CONFIG]
        if finished:
            required += [self.SUMMARY, self.METRICS]
        if need_model:
            required.append(self.MODEL)
        missing = [f for f in required if not (self.path / f).is_file()]
        if missing:
            kind = "finished " if finished else ""
            raise RunDirError(f"'{self.path}' is not a {kind}run directory (missing "
                              f"{', '.join(missing)}). {hint}")
        return LoadedRun(self.path, self.read_config(), self.read_summary(), self.read_metrics(),
                         self.read_labels())

    def load_model(self, compile: bool = False):
        """``model.keras``. Its custom objects are registered: importing this module imported
        the ``sila_keras`` package, which registers them when Keras loads."""
        import keras

        return keras.models.load_model(self.model_path, compile=compile)

    # ------------------------------------------------------------------ checkpoints

    def write_checkpoint(self, model, epoch: int, extra_state: dict | None = None) -> None:
        """Commit epoch ``epoch`` in ``checkpoints/`` (see :func:`write_checkpoint`)."""
        write_checkpoint(self.checkpoints, model, epoch, extra_state)

    def checkpoint_state(self) -> dict | None:
        """The committed checkpoint of ``checkpoints/`` (see :func:`read_checkpoint`)."""
        return read_checkpoint(self.checkpoints)

    # ------------------------------------------------------------------ resume

    def read_resumable_config(self, config_cls, config_file: str | None = None):
        """The stored config of a run to resume, as ``config_cls``.

        Raises:
            RunDirError: there is no stored config (nothing to resume).
        """
        path = self.path / (config_file or self.CONFIG)
        if not path.is_file():
            raise RunDirError(f"Cannot resume: '{path}' not found. Start the run without --resume.")
        return config_cls.from_dict(files.read_json(path))


def check_resume(old, new, where: str, hint: str = "Use the original command plus --resume.") -> None:
    """Refuse to resume with settings that differ from the stored ones.

    Args:
        old: the stored config; ``new``: the requested one (both with ``differences``).
        where: what is resumed, for the message (``"'runs/x'"``, ``"the search in 'out'"``).
        hint: how to fix it.

    Raises:
        RunDirError: listing every differing setting (``name: old → new``).
    """
    diff = old.differences(new)
    if diff:
        listed = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
        raise RunDirError(f"Cannot resume {where} with different settings ({listed}). {hint}")


def write_checkpoint(folder: str | os.PathLike, model, epoch: int,
                     extra_state: dict | None = None) -> None:
    """Commit epoch ``epoch`` in a checkpoint folder, crash-safe.

    Writes ``epoch-<e>.keras``, then ``state.json`` (``{"epoch": e, "model": "epoch-<e>.keras",
    …extra_state}``), each atomically, then deletes older model files. ``state.json`` is the
    commit point: a process killed anywhere leaves one whose model file exists and matches it.
    """
    folder = Path(folder)
    name = RunDir.checkpoint_name(epoch)
    save_model(model, folder / name)
    files.write_json(folder / RunDir.STATE, {"epoch": int(epoch), "model": name, **(extra_state or {})})
    # Older epochs, and temp files of writes a killed process never finished.
    for old in [*folder.glob("epoch-*.keras"), *folder.glob(".epoch-*"),
                *folder.glob(f".{RunDir.STATE}.*"), folder / RunDir.LEGACY_CHECKPOINT]:
        if old.name != name and old.exists():
            old.unlink()


def read_checkpoint(folder: str | os.PathLike) -> dict | None:
    """The committed checkpoint (``epoch``, ``model``: the model file's path, …), or None.

    Raises:
        RunDirError: ``state.json`` names a model file that is missing.
    """
    folder = Path(folder)
    path = folder / RunDir.STATE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    model = folder / state.get("model", RunDir.LEGACY_CHECKPOINT)
    if not model.exists():
        raise RunDirError(
            f"Checkpoint '{path}' names the model file '{model.name}', which is missing. "
            "Restore it from a backup, or start the run again under another --name."
        )
    return {**state, "model": model}


def save_model(model, path: str | os.PathLike) -> Path:
    """Save a Keras model atomically at ``path``."""
    path = Path(path)
    with files.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


class SearchDir:
    """A search folder (``sila-tune --out``): config, trials, best, final run, keras-tuner project."""

    CONFIG = "search_config.json"
    TRIALS = "trials.csv"
    PLOT = "search.png"
    BEST = "best_hparams.json"
    FINAL_TEST = "final_test.json"
    FINAL = "final"  # a RunDir-like folder: model.keras + labels.txt
    PROJECT = "tuner"  # keras-tuner's project folder
    ORACLE = "oracle.json"
    TENSORBOARD = RunDir.TENSORBOARD

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def final(self) -> RunDir:
        return RunDir(self.path / self.FINAL)

    @property
    def project(self) -> Path:
        return self.path / self.PROJECT

    def holds_search(self) -> bool:
        """A chief's view: a search was started here (workers may have created ``tuner/``)."""
        return any((self.path / f).exists() for f in
                   (self.CONFIG, f"{self.PROJECT}/{self.ORACLE}", self.TRIALS))


class PairsDir:
    """A digit-pair output folder (``sila-pairs --out``)."""

    RESULTS = "results.json"
    TABLE = "table.md"
    TABLE_JSON = "table.json"
    GRID = "grid.md"
    GRID_JSON = "grid.json"
    CURVES = RunDir.CURVES
    DONE = "done"  # one JSON per finished configuration, for --resume
    RECIPE = "recipe.json"  # --recipe and each setting's origin

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def existing_results(self) -> list[str]:
        return [n for n in (self.RESULTS, self.TABLE_JSON, self.GRID_JSON, self.DONE)
                if (self.path / n).exists()]


class StudyDir:
    """A head-vs-alone benchmark folder (``benchmarks/head_vs_alone.py --out``).

    ``runs/<arm>[-<variant>]-s<seed>/`` are ordinary run directories (one per arm × head
    module × levers × seed, finished when they hold ``summary.json``; the variant is named
    unless it is the paper's module without levers); ``models/`` the re-initialised
    sub-networks trained alone.
    """

    RESULTS = "head_vs_alone.json"
    TABLE = "head_vs_alone.md"
    TABLE_CSV = "head_vs_alone.csv"
    PLOT = "head_vs_alone.png"
    TRADEOFF_PLOT = "head_vs_alone_tradeoff.png"  # accuracy vs parameters and vs MACs
    CASCADE = "cascade_seeds.json"  # benchmarks/cascade_seeds.py: the sila runs' cascades
    CASCADE_TABLE = "cascade_seeds.md"
    RUNS = "runs"
    MODELS = "models"
    DIAGNOSE = "diagnose"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def holds_results(self) -> bool:
        return (self.path / self.RESULTS).is_file()

    def run(self, arm: str, seed: int, variant: str = "") -> RunDir:
        """The run directory of one arm × seed; ``variant`` names a head module or levers
        other than the paper's module without levers."""
        name = f"{arm}-{variant}" if variant else arm
        return RunDir(self.path / self.RUNS / f"{name}-s{int(seed)}")

    def cascade_files(self, arm: str = "sila", variant: str = "") -> tuple[Path, Path]:
        """``(json, md)`` of ``benchmarks/cascade_seeds.py`` over one arm × variant's runs:
        ``cascade_seeds.json`` for the plain ``sila`` runs, else ``cascade_seeds-<name>.json``
        (the runs' name, e.g. ``ship-sep``)."""
        name = f"{arm}-{variant}" if variant else arm
        if name == "sila":
            return self.path / self.CASCADE, self.path / self.CASCADE_TABLE
        return (self.path / self.CASCADE.replace(".json", f"-{name}.json"),
                self.path / self.CASCADE_TABLE.replace(".md", f"-{name}.md"))

    def model_file(self, head: int, seed: int, variant: str = "") -> Path:
        """The re-initialised sub-network of head k for one seed (MODEL of its alone run);
        ``variant`` names a head module other than the paper's it was cut with."""
        tag = f"-{variant}" if variant else ""
        return self.path / self.MODELS / f"head_{int(head)}{tag}-s{int(seed)}.keras"

