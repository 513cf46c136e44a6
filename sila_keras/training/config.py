"""Training configuration: :class:`TrainConfig`, a frozen set of validated groups (``data``,
``net``, ``sila``, ``optim``, ``run`` and one per mode with flags; the groups, their defaults and
their own checks are :mod:`sila_keras.training.config_groups`). :class:`TrainConfig` checks what
spans two groups, maps the flat field names to groups and reads/writes ``config.json``; the
flags live in ``flags.py``, the named paper recipes in ``recipes.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sila_keras.models.registry import is_application
from sila_keras.training.config_groups import (
    PRECISE_BN_IMAGES,
    DataConfig,
    DynamicConfig,
    MutualConfig,
    NetConfig,
    OptimConfig,
    RunConfig,
    SilaConfig,
    stale_statistics_possible,
)
from sila_keras.utils.errors import ConfigError

# Fields that may differ between a run and its --resume continuation (flat names).
RESUME_MUTABLE = ("resume", "epochs", "verbose", "debug", "steps_per_execution", "jit",
                  "sync_bn", "checkpoint_every")
# What a run records about where its values came from (never compared on --resume)
RECORD_ONLY = ("recipe", "origins")


# Group attribute → its class. A new mode or data source adds one entry (and its dataclass).
GROUPS: dict[str, type] = {"data": DataConfig, "net": NetConfig, "sila": SilaConfig,
                           "optim": OptimConfig, "run": RunConfig, "mutual": MutualConfig,
                           "dynamic": DynamicConfig}
# Flat field name → group attribute (names are unique across groups; a test checks it).
FIELD_GROUP: dict[str, str] = {f.name: g for g, cls in GROUPS.items()
                               for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on, in groups (:data:`GROUPS`); validated on
    construction. Build it from flat field names with :meth:`create`, change it with
    :meth:`replace`, read a group's field directly (``cfg.optim.epochs``).

    Example:
        >>> cfg = TrainConfig.create(dataset="folder:data", model="resnet20", epochs=1)
        >>> cfg.sila.heads, cfg.optim.epochs, cfg.data.dataset
        (3, 1, 'folder:data')
        >>> cfg.replace(beta=0.2).sila.beta
        0.2
    """

    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    sila: SilaConfig = field(default_factory=SilaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    mutual: MutualConfig = field(default_factory=MutualConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def __post_init__(self):
        for g, cls in GROUPS.items():
            if not isinstance(getattr(self, g), cls):
                raise TypeError(f"TrainConfig.{g} must be a {cls.__name__}, "
                                f"not {type(getattr(self, g)).__name__}")
        self._check_across_groups()

    def __getattr__(self, name: str):
        # Only called for missing attributes: point old flat reads at their group.
        group = FIELD_GROUP.get(name)
        if group is not None:
            raise AttributeError(f"TrainConfig has no field {name!r}; it is "
                                 f"TrainConfig.{group}.{name} (fields are grouped)")
        raise AttributeError(f"TrainConfig has no attribute {name!r}")

    def _check_across_groups(self) -> None:
        """Checks that read two groups: mode vs label smoothing, model vs pretrained flags."""
        optim, net = self.optim, self.net
        if optim.label_smoothing and self.sila.mode != "sila":
            raise ConfigError("`--label-smoothing` applies to --mode sila. Received: "
                              f"mode={self.sila.mode}, label_smoothing={optim.label_smoothing}")
        keras_model = is_application(net.model)
        only_keras = {"weights": net.weights != "none", "taps": net.taps is not None,
                      "freeze_epochs": optim.freeze_epochs > 0,
                      "backbone_lr_mult": optim.backbone_lr_mult != 1.0}
        used = [k for k, v in only_keras.items() if v]
        if used and not keras_model and net.model:
            raise ConfigError(
                f"`--{used[0].replace('_', '-')}` applies to keras:<Name> backbones only "
                "(a pretrained keras.applications model). Received: "
                f"model={net.model!r}, {used[0]}={self.value(used[0])!r}")
        if keras_model:
            from sila_keras.models.applications import check_weights, get_application

            get_application(net.model)
            check_weights(net.model, net.weights, check_file=False)

    # ------------------------------------------------------------------ flat names

    @classmethod
    def create(cls, dataset: str = "", model: str = "", **fields) -> TrainConfig:
        """A config from flat field names (``epochs=1``, ``beta=0.2``, …); the rest default.

        Raises:
            TypeError: a name that is no field (a programming error, like a bad keyword).
        """
        return cls().replace(dataset=dataset, model=model, **fields)

    def replace(self, **changes) -> TrainConfig:
        """This config with flat fields (or whole groups: ``optim=OptimConfig(...)``) changed."""
        groups = {g: changes.pop(g) for g in list(changes) if g in GROUPS}
        per_group: dict[str, dict] = {}
        for name, value in changes.items():
            group = FIELD_GROUP.get(name)
            if group is None:
                raise TypeError(f"TrainConfig has no field {name!r}")
            per_group.setdefault(group, {})[name] = value
        for g, values in per_group.items():
            groups[g] = dataclasses.replace(groups.get(g, getattr(self, g)), **values)
        return dataclasses.replace(self, **groups)

    def value(self, name: str):
        """The value of the flat field ``name`` (for code that holds names: resume checks,
        mode options, recipes)."""
        group = FIELD_GROUP.get(name)
        if group is None:
            raise TypeError(f"TrainConfig has no field {name!r}")
        return getattr(getattr(self, group), name)

    def flat(self) -> dict:
        """Every field by flat name (tuples as lists, as in JSON)."""
        return {k: v for g in GROUPS for k, v in _jsonable(getattr(self, g)).items()}

    def with_epochs(self, epochs: int) -> TrainConfig:
        """This config for a run of ``epochs`` epochs (a tuning trial, a final run): the
        freeze and warmup phases are cut to leave at least one epoch after them."""
        epochs = int(epochs)
        return self.replace(epochs=epochs,
                            freeze_epochs=max(0, min(self.optim.freeze_epochs, epochs - 1)),
                            warmup_epochs=max(0, min(self.optim.warmup_epochs, epochs - 1)))

    @property
    def run_dir(self) -> Path:
        """``<out>/<name>`` (name resolved by the CLI)."""
        return Path(self.run.out) / (self.run.name or "unnamed")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        """``{"data": {...}, "net": {...}, ...}``: what ``config.json`` holds."""
        return {g: _jsonable(getattr(self, g)) for g in GROUPS}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From :meth:`to_dict`'s form, or the flat form of runs written before the grouping.
        Unknown keys (fields of newer or older versions) are ignored."""
        from sila_keras.utils.rundir import flat_config

        grouped, d = "data" in d and isinstance(d["data"], dict), flat_config(d)
        if not grouped and "cutout" not in d and d.get("augment") == "autoaugment":
            # Written before --cutout existed: autoaugment had Cutout 16 and torchvision's
            # magnitudes built in (so --resume sees what the run did).
            d = {**d, "cutout": 16, "autoaugment_semantics": "torchvision"}
        return cls().replace(**{k: v for k, v in d.items() if k in FIELD_GROUP})

    def resolved(self) -> TrainConfig:
        """This config with ``precise_bn`` left at None set to the model kind's default
        (:func:`stale_statistics_possible`): what the run uses and records."""
        if self.net.precise_bn is not None:
            return self
        possible = stale_statistics_possible(self.net.model)
        return self.replace(precise_bn=PRECISE_BN_IMAGES if possible else 0)

    def differences(self, other: TrainConfig, ignore=RESUME_MUTABLE) -> dict:
        """Fields (outside ``ignore`` and :data:`RECORD_ONLY`) whose values differ: flat
        name → (self, other). Defaults are resolved first (:meth:`resolved`), so a run
        written before ``precise_bn`` existed compares equal to one that takes its default."""
        a, b = self.resolved().flat(), other.resolved().flat()
        return {k: (a[k], b[k]) for k in a
                if k not in ignore and k not in RECORD_ONLY and a[k] != b[k]}


def _jsonable(group) -> dict:
    d = dataclasses.asdict(group)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
