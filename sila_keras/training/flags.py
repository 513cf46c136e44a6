"""``sila-train``'s flags: the argument parser and flags → :class:`TrainConfig`.

Parsing imports no TensorFlow (``--help`` and argument errors return at once); the
names offered (backbones, augmentations, ``keras:`` applications, modes) come from static
lists that tests keep equal to the registries. Each feature's flags sit in one small block
(``_add_speed_flags``, ``_add_finetune_flags``, ``add_data_flags``).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sila_keras.models.registry import APPLICATION_PREFIX, is_application
from sila_keras.training.config import FIELD_GROUP, RECORD_ONLY, TrainConfig
from sila_keras.training.config_groups import (
    AUGMENT_NAMES,
    AUTOAUGMENT_SEMANTICS,
    BACKBONE_NAMES,
    DOWNLOAD_MODES,
    KERAS_APPLICATIONS,
    OPTIMIZERS,
    PAPER_MILESTONES,
    PRECISE_BN_IMAGES,
    SCHEDULES,
    STRATEGIES,
)
from sila_keras.training.recipes import FINETUNE, get_recipe, resolve
from sila_keras.utils.cli import HelpFormatter
from sila_keras.utils.errors import ConfigError

# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``sila-train`` parser (imports nothing heavy: ``--help`` never loads TensorFlow)."""
    from sila_keras.modes import get_mode, list_modes

    d = TrainConfig()
    p = FlagParser(
        prog="sila-train",
        description="Train a classifier with Siamese Labels (SiLa) auxiliary heads "
                    "(SilaNet, Gan et al.). Defaults follow the paper's CIFAR recipe.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dataset", help="tfds name (cifar10, tf_flowers, imagenette, …) or folder:PATH: "
                                   "PATH/<class>/* (split by --val-split), or with train/ + test/ "
                                   "or val/ class folders (PATH may be a .tar.gz or .zip)")
    p.add_argument("model", help=f"backbone: {', '.join(BACKBONE_NAMES)}; keras:<Name> (a "
                                 "keras.applications model, see below); or a saved Keras "
                                 "classifier (.keras) to attach heads to")
    g = p.add_argument_group("SiLa")
    g.add_argument("--heads", type=int, default=d.sila.heads, help="M label sets / heads (1 = base model)")
    g.add_argument("--beta", type=float, default=d.sila.beta, help="β: weight of the first Siamese set")
    g.add_argument("--lam", type=float, default=d.sila.lam, help="λ: decay of β per further set")
    g.add_argument("--betas", type=_floats, default=None,
                   help="explicit weight per set β_1,…,β_M (paper B Eq. 10); overrides β/λ")
    g.add_argument("--mode", default=d.sila.mode, choices=list_modes(),
                   help="; ".join(f"{m}: {get_mode(m).help}" for m in list_modes()))
    g.add_argument("--peer", default=None, help="--mode mutual/dml: the second network's backbone")
    g.add_argument("--dml", action="store_true", help="--mode mutual: add Deep Mutual Learning KL terms")
    g.add_argument("--no-sila", action="store_true",
                   help="--mode dynamic: train the original MSDNet (sum of per-exit CE) instead of SiLa")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.optim.epochs,
                   help="training epochs (the papers' 260; try 1-5 for a first look)")
    g.add_argument("--batch-size", type=int, default=d.optim.batch_size, help="global batch size (all replicas)")
    g.add_argument("--lr", type=float, default=d.optim.lr, help="initial SGD learning rate")
    g.add_argument("--momentum", type=float, default=d.optim.momentum, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=d.optim.weight_decay,
                   help="coupled L2 as in PyTorch SGD (g += wd·w)")
    g.add_argument("--milestones", type=_ints, default=",".join(map(str, PAPER_MILESTONES)),
                   help="epochs at which lr *= gamma (comma-separated; '' for none)")
    g.add_argument("--gamma", type=float, default=d.optim.gamma, help="lr decay factor at each milestone")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--augment", default=d.data.augment, choices=AUGMENT_NAMES,
                   help="training augmentation (standard = pad 4 + crop + flip)")
    _add_augment_flags(g, d)  # --cutout, --autoaugment-semantics
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="tfds data_dir with pre-downloaded data")
    g.add_argument("--download", default=d.data.download, choices=DOWNLOAD_MODES,
                   help="tfds: download when missing and online (auto) or never")
    g.add_argument("--limit-train", type=int, default=None, help="use N training images (class-balanced)")
    g.add_argument("--limit-test", type=int, default=None, help="use N test images (class-balanced)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="folder datasets: skip and count undecodable image files instead of failing")
    add_data_flags(g, d)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.run.seed,
                   help="seed of weights, data order, augmentation and --limit-* subsets")
    g.add_argument("--deterministic", action="store_true",
                   help="TF op determinism + seeds: identical metrics for identical CPU runs")
    g.add_argument("--out", default=d.run.out, help="parent folder of run directories")
    g.add_argument("--name", default=None, help="run folder name (default <dataset>-<model>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in <out>/<name>")
    g.add_argument("--strategy", default=d.run.strategy, choices=STRATEGIES,
                   help="auto = MirroredStrategy when >1 GPU is visible")
    g.add_argument("--mixed-precision", action="store_true",
                   help="mixed_bfloat16 on CPUs and GPUs of compute capability >= 8.0, "
                        "mixed_float16 (synchronized loss scaling) on older GPUs; loss and "
                        "softmax stay float32")
    g.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N logical devices (to try --strategy mirrored without GPUs)")
    g.add_argument("--verbose", type=int, default=None, choices=(0, 1, 2),
                   help="0: one line per epoch; 1: also a progress bar over the batches "
                        "(default: 1 on a terminal, else 0); 2: also TensorFlow's start-up log")
    g.add_argument("--debug", action="store_true",
                   help="show tracebacks and TensorFlow's start-up log")
    _add_speed_flags(p, d)
    _add_finetune_flags(p)  # keras:<Name> backbones and their fine-tuning recipe
    add_recipe_flag(p, "sila-train")  # one published experiment's settings
    _add_dynamic_flags(p)  # --mode dynamic's test protocols
    _add_ship_flags(p)  # --head-module, --ship-head, --distill
    _add_batchnorm_flags(p)  # --bn-momentum, --precise-bn
    return p


def _add_batchnorm_flags(p: argparse.ArgumentParser) -> None:
    """BatchNorm statistics: momentum and precise BN (sila_keras.core.batchnorm)."""
    g = p.add_argument_group(
        "BatchNorm statistics (docs/zoo.md)",
        "A BN layer tests with moving averages of its batch statistics. keras.applications' "
        "MobileNetV2/V3 average with momentum 0.999, too slow for a short run: the model "
        "then predicts one class at test time (a warning says so).")
    # no argparse types: a bad value is TrainConfig's one-line error (exit 2)
    g.add_argument("--bn-momentum", type=float, default=None, metavar="M",
                   help="momentum of every BatchNormalization layer, in (0, 1) (moving = "
                        "M·moving + (1−M)·batch). Default: the model's own; for keras:<Name> "
                        "and .keras models at most min(0.99, 0.01^(1/S)) for a run of S steps "
                        "(the initial statistics then weigh under 1%% at its end)")
    g.add_argument("--precise-bn", default=None, metavar="N",
                   help="recompute every BN layer's moving mean/variance from N un-augmented "
                        "training images (training-mode passes; weights untouched) before the "
                        "test evaluation of every epoch (of the last one when N is more than "
                        "half the images an epoch trains on) and so before model.keras is "
                        "saved; 0 = off. "
                        f"Default: {PRECISE_BN_IMAGES} for keras:<Name> and .keras models, "
                        "0 for the registered backbones")


def _add_dynamic_flags(p: argparse.ArgumentParser) -> None:
    """--mode dynamic's test protocols (docs/modes.md, "Dynamic evaluation")."""
    g = p.add_argument_group("dynamic (--mode dynamic)")
    g.add_argument("--dynamic-eval", default=None, metavar="{anytime,budgeted,both}",
                   help="test protocols after training: anytime prediction (trains on every "
                        "training image), budgeted batch classification (holds 10%% of the "
                        "training images out to choose the exit thresholds), or both "
                        "(default: both, one run for paper B's Figs. 4 and 5)")


def _add_ship_flags(p: argparse.ArgumentParser) -> None:
    """Make the head you will ship strong (docs/heads.md)."""
    d = TrainConfig().sila
    from sila_keras.core.head_modules import get_head_module, list_head_modules

    g = p.add_argument_group("shipping a head (--mode sila; docs/heads.md)")
    # no argparse choices: an unknown name is TrainConfig's one-line error (exit 2)
    g.add_argument("--head-module", default=d.head_module,
                   metavar="{" + ",".join(list_head_modules()) + "}",
                   help="the module of heads 2..M (recorded in config.json): "
                        + "; ".join(f"{m}: {get_head_module(m).summary}"
                                    for m in list_head_modules()))
    g.add_argument("--ship-head", type=int, default=None, metavar="K",
                   help="train head K as a first-class target: its set weight becomes 1 (like "
                        "head 1), the others follow --beta/--lam (printed, and written to "
                        "summary.json); not with --betas; K=1 changes nothing")
    g.add_argument("--distill", type=float, default=d.distill, metavar="W",
                   help="add W × T²·KL(head 1 ‖ head k) for every shallower head k: "
                        "self-distillation from the deepest head (held constant); 0 = off")
    g.add_argument("--distill-t", type=float, default=d.distill_t, metavar="T",
                   help="temperature of --distill")
    g = p.add_argument_group(
        "levers for heads 2..M (--mode sila, --heads >= 2; docs/heads.md)",
        "Training levers meant to help the auxiliary heads without changing head 1's "
        "objective; each is recorded in config.json and printed at the start.")
    g.add_argument("--ramp-betas", type=int, default=d.ramp_betas, metavar="E",
                   help="the set weights of heads 2..M grow linearly from 0 over the first E "
                        "epochs (× e/E in epoch e+1, full from epoch E+1); head 1's stays 1. "
                        "A ramp-up of an added loss's weight, as in Laine & Aila 2017 "
                        "(Temporal Ensembling); 0 = off")
    g.add_argument("--grad-equilibrium", action="store_true",
                   help="gradient equilibrium (Li et al. 2019, Improved Techniques for Training "
                        "Adaptive Deep Networks): the gradient of every shared layer is divided "
                        "by the number of heads that use it (the stem and stage 1 by M, …, "
                        "head 1's last stage and every head's own module by 1), before weight "
                        "decay; what their per-exit gradient rescaling amounts to")
    g.add_argument("--distill-start", type=int, default=d.distill_start, metavar="S",
                   help="--distill: no distillation in the first S epochs, so that the teacher "
                        "(head 1) trains first; a KL term from a random teacher diverged at lr "
                        "0.1 in our runs (docs/heads.md)")
    g.add_argument("--distill-ramp", type=int, default=d.distill_ramp, metavar="R",
                   help="--distill: from epoch S+1 the weight grows linearly from 0 to W over "
                        "R epochs (W × (e−S)/R in epoch e+1, full from epoch S+R+1; 0: W at "
                        "once)")


def _add_speed_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Devices, speed and checkpoint cadence (resolved per machine, see
    :func:`sila_keras.devices.distribute.resolve_speed`; a ``--resume`` applies the new values)."""
    g = p.add_argument_group("devices and speed")
    g.add_argument("--jit", action="store_true",
                   help="XLA-compile the train step (per replica when there are several)")
    g.add_argument("--steps-per-execution", type=_steps, default=d.run.steps_per_execution,
                   help="train steps per tf.function call: auto = 32 on one GPU, 1 on CPUs "
                        "and with several replicas (keras#19246)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=d.run.sync_bn,
                   help="BatchNorm statistics over the global batch (all replicas); default: "
                        "on when replicas > 1 and the per-replica batch < 32")
    g.add_argument("--checkpoint-every", type=int, default=d.run.checkpoint_every, metavar="K",
                   help="checkpoint for --resume every K epochs (and after the last one)")


# --------------------------------------------------------------------------- augmentation options


def _add_augment_flags(g, d: TrainConfig) -> None:
    """Cutout as its own option; AutoAugment's magnitude semantics."""
    g.add_argument("--cutout", type=int, default=d.data.cutout, metavar="N",
                   help="after --augment, grey out an NxN square at a random centre (Cutout, "
                        "DeVries & Taylor 2017; clipped at the borders); 0 = off. The "
                        "AutoAugment paper's CIFAR recipe uses 16; SiLa paper B does not")
    # no argparse choices: an unknown name is TrainConfig's one-line error (exit 2)
    g.add_argument("--autoaugment-semantics", default=None,
                   metavar="{" + ",".join(AUTOAUGMENT_SEMANTICS) + "}",
                   help="--augment autoaugment: how magnitudes 0-9 map to operation values. "
                        "official (default): the AutoAugment authors' code (tensorflow/models "
                        "research/autoaugment; paper B only cites the AutoAugment paper); "
                        "torchvision: "
                        "torchvision.transforms.AutoAugment. --augment randaugment always "
                        "uses torchvision's (its M=9 of 31 bins is torchvision's scale); "
                        "with other --augment values this flag is ignored, with a warning. "
                        "Table: docs/augment.md")


def _augment_options(args: argparse.Namespace) -> dict:
    """``--autoaugment-semantics`` resolved (None: the default); warns (stderr, one line) when
    --autoaugment-semantics is given for an augmentation that does not use it."""
    import sys

    semantics = getattr(args, "autoaugment_semantics", None)
    if semantics in AUTOAUGMENT_SEMANTICS and args.augment != "autoaugment":
        print(f"sila-train: warning: --autoaugment-semantics applies to --augment autoaugment "
              f"only; ignored with --augment {args.augment}.", file=sys.stderr)
    return {"autoaugment_semantics": semantics or AUTOAUGMENT_SEMANTICS[0]}


def _steps(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {s!r}") from None


# --------------------------------------------------------------------------- fine-tuning flags

def _add_finetune_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the keras:<Name> backbones and the fine-tuning recipe."""
    d = TrainConfig()
    g = p.add_argument_group(
        "pretrained backbones (MODEL = keras:<Name>)",
        f"keras.applications models: {', '.join(APPLICATION_PREFIX + n for n in KERAS_APPLICATIONS)}. Built with "
        "include_top=False + global pooling + a Dense classifier (head_1); the application's "
        "own preprocessing is inside the model (it takes raw 0–255 pixels). Without --recipe, "
        "keras: models use the keras-finetune recipe for the options you do not type (AdamW "
        "lr 1e-3, wd 0.01, cosine, label smoothing 0.1, imagenet weights, backbone lr × 0.1 "
        "when pretrained); the defaults shown are the paper's, for the zoo.")
    g.add_argument("--weights", default=d.net.weights,
                   help="none | imagenet (Keras cache ~/.keras/models) | PATH of a .weights.h5 "
                        "saved from the same application, include_top=False")
    g.add_argument("--taps", type=_names, default=None,
                   help="layer names where heads may attach (default: the stage ends)")
    g.add_argument("--freeze-epochs", type=int, default=0,
                   help="train only the classifier and the SiLa heads for the first K epochs "
                        "(backbone BatchNorm in inference mode), then unfreeze")
    g.add_argument("--backbone-lr-mult", type=float, default=d.optim.backbone_lr_mult,
                   help="lr multiplier of the pretrained backbone once unfrozen")
    g.add_argument("--optimizer", default=d.optim.optimizer, choices=OPTIMIZERS,
                   help="sgd: momentum + coupled L2; adamw: decoupled weight decay")
    g.add_argument("--schedule", default=d.optim.schedule, choices=SCHEDULES,
                   help="step: ×gamma at --milestones; cosine: to 0 at --epochs")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear lr warmup epochs")
    g.add_argument("--label-smoothing", type=float, default=d.optim.label_smoothing,
                   help="ε of each head's target, --mode sila")


def _names(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(",") if v.strip())


def add_data_flags(g, d: TrainConfig) -> None:
    """Data flags: image size, resize policy, splits, cache, steps per epoch."""
    g.add_argument("--image-size", default=None, metavar="H[,W]",
                   help="train at this size (default: the images' one size; required when "
                        "they differ, 224 for variable-size tfds datasets)")
    g.add_argument("--resize", default=d.data.resize, choices=("squash", "crop", "pad"),
                   help="how images of another size are resized: squash (ignore aspect), "
                        "crop (centred crop to aspect) or pad (fit inside, zero padding)")
    g.add_argument("--val-split", type=float, default=None, metavar="F",
                   help="fraction held out (class-stratified, by --seed) when the dataset has "
                        "no held-out split: a folder of <class>/* or a train-only tfds "
                        "dataset (default 0.2)")
    g.add_argument("--train-split", default=None, help="tfds: training split (e.g. 'train[:90%%]')")
    g.add_argument("--test-split", default=None,
                   help="tfds: held-out split (default: test, else validation, else --val-split)")
    g.add_argument("--cache", default=d.data.cache, metavar="MODE",
                   help="decoded images: none (stream every epoch), memory, disk[:DIR]; auto = "
                        "memory when they fit in 1 GiB, else none")
    g.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="train N batches per epoch (default: one pass over the training images)")


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a validated :class:`TrainConfig` (name resolved)."""
    name = args.name
    if name is None:
        if args.resume:
            raise ConfigError("--resume needs --name NAME: the run folder under --out to continue.")
        name = default_run_name(args.dataset, args.model)
    # Every flag whose dest is a TrainConfig field (a new flag named like its field needs no
    # line here).
    flat = {k: v for k, v in vars(args).items() if k in FIELD_GROUP and k not in RECORD_ONLY}
    flat["name"] = name
    flat.update(_augment_options(args))  # the semantics warning and its default
    return config_with_recipe(flat, given_flags(args, _parser_defaults()) | {"dataset", "model"},
                              getattr(args, "recipe", None))


def config_with_recipe(flat: dict, given: set[str], recipe_name: str | None) -> TrainConfig:
    """Flat field values (flags and defaults) → a :class:`TrainConfig` with the
    recipe (``--recipe``; without one, ``keras-finetune`` for keras:<Name> backbones) applied
    under the flags in ``given``, and every field's origin recorded."""
    if recipe_name is None and is_application(flat.get("model", "")):
        recipe_name = FINETUNE  # the fine-tuning recipe is the keras: models' default
    recipe = get_recipe(recipe_name) if recipe_name is not None else None
    explicit = {k: v for k, v in flat.items() if k in given}
    defaults = {k: v for k, v in flat.items() if k not in given}
    values, origins = resolve(recipe, explicit, defaults)
    return TrainConfig.create(**values, recipe=recipe_name, origins=origins)


def _parser_defaults() -> dict:
    """The flags' parsed defaults (for a namespace whose typed flags were not recorded)."""
    args = build_parser().parse_args(["dataset", "model"])
    return {k: v for k, v in vars(args).items() if k not in ("dataset", "model")}


def default_run_name(dataset: str, model: str) -> str:
    ds = dataset.split(":", 1)[-1].rstrip("/")
    ds = Path(ds).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        ds = ds.removesuffix(suffix)
    ds = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds) or "data"
    model = Path(model).stem.replace(APPLICATION_PREFIX, "")  # keras:<Name> → <Name>
    return f"{ds}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------- typed flags

GIVEN_ATTR = "_given_flags"  # the Namespace attribute FlagParser sets: the dests typed


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that records which flags the user typed (``args._given_flags``,
    a set of dests), so a recipe can tell them from defaults while ``--help`` still shows
    the real defaults: after the normal parse, the same arguments are parsed once more with
    every default suppressed, which leaves exactly the typed dests in the namespace."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        setattr(ns, GIVEN_ATTR, frozenset(self._typed(args)))
        return ns, extras

    def _typed(self, args) -> set[str]:
        saved = [(a, a.default) for a in self._actions]
        saved_defaults = dict(self._defaults)
        try:
            for a in self._actions:
                a.default = argparse.SUPPRESS
            self._defaults.clear()
            probe, _ = argparse.ArgumentParser.parse_known_args(self, args, argparse.Namespace())
        finally:
            for a, d in saved:
                a.default = d
            self._defaults.update(saved_defaults)
        return set(vars(probe))


def given_flags(args: argparse.Namespace, parser_defaults: Mapping[str, Any]) -> set[str]:
    """The dests the user typed: recorded by :class:`FlagParser`; for a namespace from
    another parser (``sila-tune`` builds on ``sila-train``'s flags), the values that differ
    from ``parser_defaults``."""
    given = getattr(args, GIVEN_ATTR, None)
    if given is not None:
        return set(given)
    return {k for k, v in vars(args).items() if k in parser_defaults and v != parser_defaults[k]}


class ListRecipes(argparse.Action):
    """``--recipe NAME``; ``--recipe list`` prints the registry and exits (like ``--help``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values == "list":
            from sila_keras.training.recipe_text import describe

            print(describe(), end="", flush=True)  # to stdout, as --help
            parser.exit(0)
        setattr(namespace, self.dest, values)


def add_recipe_flag(p: argparse.ArgumentParser, command: str) -> None:
    """``--recipe NAME`` (``--recipe list`` prints them; see sila_keras.training.recipes)."""
    from sila_keras.training.recipes import list_recipes

    p.add_argument("--recipe", default=None, action=ListRecipes, metavar="NAME",
                   help=f"set every training setting of one published experiment: "
                        f"{', '.join(list_recipes(command))}; flags you type still win. "
                        "'--recipe list' shows each value, its source and which are assumptions")
    if command == "sila-train":
        p.add_argument("--no-nesterov", dest="nesterov", action="store_false",
                       help="plain momentum (overrides a recipe's Nesterov momentum)")
