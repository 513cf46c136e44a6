"""Named paper recipes: ``--recipe NAME`` sets every training setting of one published experiment.

A :class:`Recipe` maps *flat* :class:`~sila_keras.training.config.TrainConfig` field names (or, for
``sila-pairs``, :class:`~sila_keras.pairs.experiment.PairConfig` names) to a :class:`Setting`:
the value, whether the paper states it (``paper``) or we assume it (``assumption``), and the
paper's words with their section (or why we assume it). :func:`resolve` layers defaults <
recipe < flags the user typed and returns every value's origin (``"default"``, ``"flag"``,
``"recipe:<name>"``), which ``sila-train`` writes to ``config.json``. The docs tables
(``docs/paper_a.md``, ``docs/paper_b.md``, ``docs/pairs.md``) present the same registry.

Settings of fields this build does not have are kept in the registry and skipped by
:func:`resolve` until the field exists.

This module imports no TensorFlow (``--recipe list`` and ``--help`` stay fast). The argparse
side (``--recipe``, telling typed flags from defaults) is in :mod:`sila_keras.training.flags`.

Example:
    >>> values, origins = resolve(get_recipe("msdnet-dynamic"), {"epochs": 1},
    ...                           {"epochs": 260, "batch_size": 128, "mode": "sila"})
    >>> values["epochs"], origins["epochs"], values["batch_size"], origins["batch_size"]
    (1, 'flag', 64, 'recipe:msdnet-dynamic')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sila_keras.utils.errors import ConfigError

TRAIN, PAIRS = "sila-train", "sila-pairs"
PAPER_A = "paper A (SilaNet, seeds 000/002)"
PAPER_B = "paper B (SiLa learning, seeds 001/004)"
PAPER_C = "digit pairs (Deng & Li, seed 003)"


@dataclass(frozen=True)
class Setting:
    """One value of a recipe, with its ``kind``: ``paper`` (the paper states it, ``note`` has its
    words and section), ``assumption`` (we assume it; ``note`` says why) or ``measured`` (ours,
    chosen by a measurement these docs report; ``note`` says which)."""

    value: Any
    kind: str
    note: str

    @property
    def paper(self) -> bool:
        return self.kind == "paper"


def paper(value, note: str) -> Setting:
    return Setting(value, "paper", note)


def assumed(value, note: str) -> Setting:
    return Setting(value, "assumption", note)


def measured(value, note: str) -> Setting:
    return Setting(value, "measured", note)


@dataclass(frozen=True)
class Recipe:
    """A named published experiment.

    Args:
        name: what ``--recipe`` takes.
        command: ``sila-train`` or ``sila-pairs``.
        modes: the ``--mode`` values it applies to (the first is the one it sets).
        source: paper, section, table.
        summary: one line on what it reproduces.
        settings: flat field name → :class:`Setting`, for every run of the recipe.
        rows: extra settings per row of a table (e.g. Table 1's β and λ per backbone and
            dataset), chosen by ``row_key(values)``; a missing row is an error naming the
            listed ones.
        row_key: resolved values → the row's key; ``None`` when the row does not apply.
        row_names: what the key is, for messages (``"backbone/dataset"``).
        derive: resolved values → values of a rule of the recipe (e.g. no reduced backbone
            lr without pretrained weights); applied to fields the user did not type.
    """

    name: str
    command: str
    modes: tuple[str, ...]
    source: str
    summary: str
    settings: Mapping[str, Setting]
    rows: Mapping[Any, Mapping[str, Setting]] = field(default_factory=dict)
    row_key: Callable[[Mapping], Any] | None = None
    row_names: str = ""
    derive: Callable[[Mapping], Mapping[str, Any]] | None = None

    def settings_for(self, values: Mapping) -> dict[str, Setting]:
        """The settings for a run whose (flag and default) values are ``values``."""
        out = dict(self.settings)
        if self.row_key is None:
            return out
        key = self.row_key(values)
        if key is not None and key not in self.rows:
            raise ConfigError(f"Recipe '{self.name}' ({self.source}) lists no {self.row_names} "
                              f"'{_key(key)}'. Listed: {self.listed_rows()}. "
                              f"Received: {self.row_names}={_key(key)}")
        return {**out, **self.rows.get(key, {})}

    def listed_rows(self) -> str:
        """The rows' keys, as ``a, b × c, d`` when they are every combination."""
        keys = list(self.rows)
        if keys and all(isinstance(k, tuple) and len(k) == 2 for k in keys):
            firsts = list(dict.fromkeys(k[0] for k in keys))
            seconds = list(dict.fromkeys(k[1] for k in keys))
            if len(keys) == len(firsts) * len(seconds):
                return f"{', '.join(firsts)} × {', '.join(seconds)}"
        return ", ".join(_key(k) for k in keys)


def _key(key) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    if recipe.name in _REGISTRY:
        raise ValueError(f"Recipe '{recipe.name}' is registered twice.")
    _REGISTRY[recipe.name] = recipe
    return recipe


def list_recipes(command: str | None = None) -> list[str]:
    return [n for n, r in _REGISTRY.items() if command is None or r.command == command]


def get_recipe(name: str) -> Recipe:
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown recipe '{name}'. Available: {', '.join(_REGISTRY)} "
                          f"(--recipe list describes them). Received: recipe={name!r}")
    return _REGISTRY[name]


def resolve(recipe: Recipe | None, explicit: Mapping[str, Any], defaults: Mapping[str, Any],
            command: str = TRAIN) -> tuple[dict, dict]:
    """Layer ``defaults`` < ``recipe`` < ``explicit`` (the flags the user typed).

    Args:
        recipe: the recipe, or ``None``.
        explicit: field → value of every flag typed.
        defaults: field → default value of every other field; only fields in ``explicit``
            or ``defaults`` are set (a recipe value for a field this build lacks is skipped).
        command: the command asking (a recipe of another command is an error).

    Returns:
        ``(values, origins)``: field → value, and field → ``"flag"``, ``"default"`` or
        ``"recipe:<name>"``.

    Raises:
        ConfigError: the recipe is for another command or ``--mode``, or lists no row for
            the run's backbone/dataset.
    """
    values = {**defaults, **explicit}
    origins = {k: "flag" if k in explicit else "default" for k in values}
    if recipe is None:
        return values, origins
    if recipe.command != command:
        raise ConfigError(f"Recipe '{recipe.name}' is for {recipe.command} ({recipe.source}), "
                          f"not {command}. {command} recipes: {', '.join(list_recipes(command))}. "
                          f"Received: recipe={recipe.name!r}")
    if recipe.modes and "mode" in explicit and explicit["mode"] not in recipe.modes:
        raise ConfigError(f"Recipe '{recipe.name}' is for --mode {' or '.join(recipe.modes)} "
                          f"({recipe.source}). Drop --mode or choose another recipe. Received: "
                          f"mode={explicit['mode']!r}, recipe={recipe.name!r}")
    if recipe.modes and "mode" in values and "mode" not in explicit:
        values["mode"], origins["mode"] = recipe.modes[0], f"recipe:{recipe.name}"
    for name, setting in recipe.settings_for(values).items():
        if name in values and name not in explicit:
            values[name], origins[name] = setting.value, f"recipe:{recipe.name}"
    derived = recipe.derive(values) if recipe.derive is not None else {}
    for name, value in derived.items():
        if name in values and name not in explicit:
            values[name], origins[name] = value, f"recipe:{recipe.name}"
    return values, origins


# --------------------------------------------------------------------------- the registry

SILANET_MILESTONES = (30, 55, 80, 105, 135, 160, 180, 200, 220, 240)
_A_SGD = ("§3.1: \"We use stochastic gradient descent (SGD) ... to train all models. The initial "
          "learning rate is 0.1, milestones = [30, 55, 80, 105, 135, 160, 180, 200, 220, 240], "
          "and epoch is 260.\"")
_B_SGD = ("§4.1: \"all models are trained for 260 epochs using stochastic gradient descent (SGD), "
          "batch size is 128, initial learning rate is 0.1, learning rate is adjusted using "
          "MultiStep, and milestones are [30, 55, 80, ...]\"")
_GAMMA = ("not stated; ×0.5 at each of the ten milestones takes 0.1 to ≈1e-4 (×0.1 would end "
          "at 1e-11)")
_ZOO = ("the CIFAR-100 PyTorch zoo whose model definitions reproduce Table 3's sizes "
        "(weiaicunzai/pytorch-cifar100) trains with SGD(momentum=0.9, weight_decay=5e-4), batch 128")
_MOMENTUM = f"not stated; {_ZOO}"
_WD = f"not stated; {_ZOO} (coupled L2, as PyTorch SGD)"
_STANDARD_AUG = "not stated; the standard CIFAR pad 4 + random 32×32 crop + horizontal flip"


def _sgd_step(note: str, *, batch: Setting) -> dict[str, Setting]:
    return {
        "optimizer": paper("sgd", note), "schedule": paper("step", note),
        "lr": paper(0.1, note), "milestones": paper(SILANET_MILESTONES, note),
        "epochs": paper(260, note), "batch_size": batch, "gamma": assumed(0.5, _GAMMA),
        "momentum": assumed(0.9, _MOMENTUM), "nesterov": assumed(False, "not stated; plain "
                                                                 "momentum (PyTorch's default)"),
        "weight_decay": assumed(5e-4, _WD), "warmup_epochs": assumed(0, "none mentioned"),
        "label_smoothing": assumed(0.0, "none mentioned"),
    }


_SILANET = {
    "heads": paper(3, "§3.1: \"we take M = 3, that is, two sets of auxiliary modules are used\""),
    "beta": paper(0.1, "§3.1: \"For other models, we mostly fine-tuned on the basis of β = 0.1 "
                       "and λ = 0.5\""),
    "lam": paper(0.5, "§3.1 (as β)"),
    "betas": paper(None, "§2.1, Eq. 4: set j+1 weighs λ^j·β (β and λ, no explicit list)"),
    **_sgd_step(_A_SGD, batch=assumed(128, "not stated in paper A; paper B §4.1 (same authors, "
                                           "same schedule): \"batch size is 128\"")),
    "augment": assumed("standard", _STANDARD_AUG),
    "cutout": assumed(0, "not mentioned"),  # --cutout (Cutout after --augment)
}

register(Recipe(
    "silanet-cifar", TRAIN, ("sila",), f"{PAPER_A}, §3.1, Table 1",
    "SilaNet (M = 3 heads) on CIFAR-10/100 with the paper's SGD schedule and the β, λ it starts "
    "from", _SILANET))


def table1_dataset(dataset: str) -> str | None:
    """``cifar10`` / ``cifar100`` from a tfds name or a folder path (its file name), else
    the dataset's own name (which Table 1 does not list)."""
    dataset = str(dataset)
    if dataset.startswith("folder:"):
        name = dataset.removeprefix("folder:").rstrip("/").rsplit("/", 1)[-1].lower()
    else:  # tfds: name[:version][/config]
        name = dataset.split(":", 1)[0].split("/", 1)[0].lower()
    if re.search(r"cifar[-_]?100(?!\d)", name):
        return "cifar100"
    if re.search(r"cifar[-_]?10(?!\d)", name):
        return "cifar10"
    return name or None


_T1 = "Table 1 (§3.1)"
_TABLE1_BETA_LAM = {  # (backbone, dataset) → (β, λ), paper A Table 1
    ("vgg19", "cifar10"): (0.05, 0.8), ("vgg19", "cifar100"): (0.3, 0.5),
    ("resnet18", "cifar10"): (0.1, 0.5), ("resnet18", "cifar100"): (0.1, 0.5),
    ("wrn40_10", "cifar10"): (0.1, 0.5), ("wrn40_10", "cifar100"): (0.1, 0.5),
    ("mobilenetv1", "cifar10"): (0.2, 0.5), ("mobilenetv1", "cifar100"): (0.2, 0.5),
    ("densenet121", "cifar10"): (0.1, 0.5), ("densenet121", "cifar100"): (0.1, 0.5),
    ("inceptionv3", "cifar10"): (0.1, 0.5), ("inceptionv3", "cifar100"): (0.1, 0.5),
}

register(Recipe(
    "silanet-cifar-table1", TRAIN, ("sila",), f"{PAPER_A}, §3.1, Table 1",
    "silanet-cifar with Table 1's β and λ for the backbone and dataset (WiderResNet = wrn40_10; "
    "the dataset is read from its tfds name or folder name: cifar10 / cifar100)",
    _SILANET,
    rows={k: {"beta": paper(b, _T1), "lam": paper(lam, _T1)}
          for k, (b, lam) in _TABLE1_BETA_LAM.items()},
    row_key=lambda v: (str(v.get("model")), table1_dataset(v.get("dataset", ""))),
    row_names="backbone/dataset"))

_SILA_B = {
    "betas": paper((1.0, 1.0), "§4.1: \"hyperparameter β = [1, 1]\" (Eq. 10)"),
    **_sgd_step(_B_SGD, batch=paper(128, _B_SGD)),
    "augment": assumed("standard", "Tables 1–2 name no augmentation; " + _STANDARD_AUG),
    "cutout": assumed(0, "not mentioned"),
}
_AA = ("§4.1, Table 3: \"we conduct experiments combining SiLa with data augmentation method "
       "AutoAugment (Cubuk et al., 2018)\"")

register(Recipe(
    "sila-b-cifar", TRAIN, ("mutual", "dml"), f"{PAPER_B}, §4.1, Table 1",
    "two networks with the SiLa module (add --dml for SiLa+DML; --mode dml for DML), CIFAR",
    _SILA_B))
register(Recipe(
    "sila-b-cifar-aa", TRAIN, ("mutual", "dml"), f"{PAPER_B}, §4.1, Table 3",
    "sila-b-cifar with AutoAugment (the CIFAR-10 policy), Table 3",
    {**_SILA_B, "augment": paper("autoaugment", _AA),
     "cutout": assumed(0, "paper B never mentions Cutout (the AutoAugment paper's CIFAR runs "
                          "add it)"),
     "autoaugment_semantics": assumed("official", "the AutoAugment paper's own op definitions")}))

_B42 = ("§4.2: \"all models are trained for 300 epochs using stochastic gradient descent (SGD) "
        "with a batch size of 64. The initial learning rate is 0.1, divided by 10 at 150 and "
        "255 epochs.\"")
_MSDNET = ("paper B does not state it; MSDNet (Huang et al., ICLR 2018, §5) trains CIFAR with "
           "\"Nesterov momentum with a momentum weight of 0.9 without dampening, and a weight "
           "decay of 10^-4\"")

register(Recipe(
    "msdnet-dynamic", TRAIN, ("dynamic",), f"{PAPER_B}, §4.2, Figs. 4–5",
    "dynamic SiLa (or --no-sila: the original MSDNet) on CIFAR-100 with MSDNet's recipe",
    {"optimizer": paper("sgd", _B42), "schedule": paper("step", _B42),
     "epochs": paper(300, _B42), "batch_size": paper(64, _B42), "lr": paper(0.1, _B42),
     "milestones": assumed((150, 225), _B42 + " — 255 read as MSDNet's 225 (a typo: MSDNet "
                                               "divides at 150 and 225 of 300)"),
     "gamma": paper(0.1, _B42),
     "betas": paper(None, "§4.2: \"the loss weight β_c of each classifier is 1\" (None = 1 per "
                          "exit)"),
     "momentum": assumed(0.9, _MSDNET), "nesterov": assumed(True, _MSDNET),
     "weight_decay": assumed(1e-4, _MSDNET),
     "warmup_epochs": assumed(0, "none mentioned"),
     "augment": assumed("standard", "not stated; MSDNet's CIFAR crop + flip"),
     "cutout": assumed(0, "not mentioned"),
     "dynamic_eval": assumed("both", "both figures (anytime and budgeted) from one run; "
                                     "MSDNet holds 5,000 training images out only for the "
                                     "budgeted thresholds — use --dynamic-eval anytime to train "
                                     "on all of them")}))

_C1 = "§1: \"All neural networks are trained on the training set with 25 epochs\""
_C_ROUNDS = ("§3: \"For each combination of hyper-parameters, we run 10 rounds\"; §4 "
             "(Table 2): \"we run 20 rounds\"")


def _pair_row(values: Mapping) -> str | None:
    if values.get("table"):
        return "--table"
    return None if values.get("grid") else values.get("arch")  # --grid searches lr and batch


register(Recipe(
    "pairs-003", PAIRS, (), f"{PAPER_C}, §1–4, Tables 1–2",
    "the digit-pair study: 1000 + 1000 pairs, 25 epochs, Table 1's lr and batch per network "
    "(Table 2: 0.005 / 50 for every row)",
    {"epochs": paper(25, _C1),
     "pairs": paper(1000, "§1: \"Both the train set and test set contain 1000 image pairs\""),
     "rounds": paper(10, _C_ROUNDS),
     "aux_weight": paper(1.0, "§2.3: \"the original loss of digit comparison plus cross-entropy "
                              "loss for the classification of each digit\" (weights 1)"),
     "momentum": assumed(0.9, "the report names no optimizer; the authors' code: SGD, "
                              "momentum 0.9"),
     "normalize": assumed(False, "the authors' code feeds raw 0–255 pixels"),
     "pair_draw": assumed("once", "the authors' code draws the pairs once, before all rounds")},
    rows={**{arch: {"lr": paper(lr, "Table 1"), "batch_size": paper(bs, "Table 1")}
             for arch, lr, bs in (("fc", 0.1, 100), ("conv", 0.05, 25),
                                  ("parallel", 0.01, 100), ("siamese", 0.005, 50))},
          "--table": {"lr": assumed(0.005, "§4 states none; the authors' Table 2 code"),
                    "batch_size": assumed(50, "§4 states none; the authors' Table 2 code"),
                    "rounds": paper(20, _C_ROUNDS)}},
    row_key=_pair_row, row_names="network"))

FINETUNE = "keras-finetune"
_OURS = "ours, not a paper: fine-tuning a pretrained keras.applications model"
register(Recipe(
    FINETUNE, TRAIN, (), "ours, not a paper's (the default for keras:<Name>)",
    "AdamW + cosine fine-tuning of a pretrained keras:<Name> backbone (backbone lr ×0.1 when "
    "pretrained, else 1)",
    {"lr": assumed(1e-3, _OURS), "weight_decay": assumed(0.01, _OURS),
     "optimizer": assumed("adamw", _OURS), "schedule": assumed("cosine", _OURS),
     "label_smoothing": assumed(0.1, _OURS), "weights": assumed("imagenet", _OURS),
     "backbone_lr_mult": assumed(0.1, _OURS)},
    derive=lambda v: {"backbone_lr_mult": 1.0} if v.get("weights") == "none" else {}))

STRONG_HEADS = "strong-heads"
_HEADS_BAR = ("docs/heads.md, CIFAR-10 10k images / 15 epochs, ResNet-20 (3 seeds) and MobileNetV1 "
              "(2): head 2 at least as accurate as its sub-network trained alone, head 1 within "
              "one std of plain SiLa or above")
register(Recipe(
    STRONG_HEADS, TRAIN, ("sila",), "ours, not a paper's: the head-module study (docs/heads.md)",
    "heads 2..M with private capacity and head 2 a first-class target, ramped in: the measured "
    "recipe under which the head you ship matched its sub-network trained alone; only for the "
    "backbones where that was measured",
    {**{k: _REGISTRY["silanet-cifar"].settings[k] for k in ("heads", "beta", "lam")},
     "head_module": measured("sep", _HEADS_BAR + " (with the paper's conv, head 2 fell "
                                                 "2.6–5.3 points short of its own)"),
     "ship_head": measured(2, _HEADS_BAR + " (without it, head 2 8.4 points lower on "
                                            "ResNet-20, 3.9 on MobileNetV1)"),
     "ramp_betas": measured(3, _HEADS_BAR + " (without it, one ResNet-20 seed of three started "
                                            "badly)")},
    rows={"resnet20": {}, "mobilenetv1": {}},
    row_key=lambda v: str(v.get("model")), row_names="backbone"))
