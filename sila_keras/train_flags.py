"""``sila-train``'s flags: the argument parser and flags → :class:`TrainConfig`.

Parsing imports no TensorFlow (``--help`` and argument errors return at once); the
names offered (backbones, augmentations, ``keras:`` applications, modes) come from static
lists that tests keep equal to the registries. Each issue's flags sit in one small block
(``_add_speed_flags``, ``_add_finetune_flags``, ``add_data_flags``).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from sila_keras.cli import HelpFormatter
from sila_keras.config import (
    AUGMENT_NAMES,
    BACKBONE_NAMES,
    DOWNLOAD_MODES,
    KERAS_APPLICATIONS,
    OPTIMIZERS,
    PAPER_MILESTONES,
    SCHEDULES,
    STRATEGIES,
    TrainConfig,
)
from sila_keras.errors import ConfigError

# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``sila-train`` parser (imports nothing heavy: ``--help`` never loads TensorFlow)."""
    from sila_keras.modes import get_mode, list_modes

    d = TrainConfig("", "")
    p = argparse.ArgumentParser(
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
    g.add_argument("--heads", type=int, default=d.heads, help="M label sets / heads (1 = base model)")
    g.add_argument("--beta", type=float, default=d.beta, help="β: weight of the first Siamese set")
    g.add_argument("--lam", type=float, default=d.lam, help="λ: decay of β per further set")
    g.add_argument("--betas", type=_floats, default=None,
                   help="explicit weight per set β_1,…,β_M (paper B Eq. 10); overrides β/λ")
    g.add_argument("--mode", default=d.mode, choices=list_modes(),
                   help="; ".join(f"{m}: {get_mode(m).help}" for m in list_modes()))
    g.add_argument("--peer", default=None, help="--mode mutual/dml: the second network's backbone")
    g.add_argument("--dml", action="store_true", help="--mode mutual: add Deep Mutual Learning KL terms")
    g.add_argument("--no-sila", action="store_true",
                   help="--mode dynamic: train the original MSDNet (sum of per-exit CE) instead of SiLa")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs,
                   help="training epochs (the papers' 260; try 1-5 for a first look)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (all replicas)")
    g.add_argument("--lr", type=float, default=d.lr, help="initial SGD learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="coupled L2 as in PyTorch SGD (g += wd·w)")
    g.add_argument("--milestones", type=_ints, default=",".join(map(str, PAPER_MILESTONES)),
                   help="epochs at which lr *= gamma (comma-separated; '' for none)")
    g.add_argument("--gamma", type=float, default=d.gamma, help="lr decay factor at each milestone")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--augment", default=d.augment, choices=AUGMENT_NAMES,
                   help="training augmentation (standard = pad 4 + crop + flip)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="tfds data_dir with pre-downloaded data")
    g.add_argument("--download", default=d.download, choices=DOWNLOAD_MODES,
                   help="tfds: download when missing and online (auto) or never")
    g.add_argument("--limit-train", type=int, default=None, help="use N training images (class-balanced)")
    g.add_argument("--limit-test", type=int, default=None, help="use N test images (class-balanced)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="folder datasets: skip and count undecodable image files instead of failing")
    add_data_flags(g, d)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seed of weights, data order, augmentation and --limit-* subsets")
    g.add_argument("--deterministic", action="store_true",
                   help="TF op determinism + seeds: identical metrics for identical CPU runs")
    g.add_argument("--out", default=d.out, help="parent folder of run directories")
    g.add_argument("--name", default=None, help="run folder name (default <dataset>-<model>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in <out>/<name>")
    g.add_argument("--strategy", default=d.strategy, choices=STRATEGIES,
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
    _add_finetune_flags(p)  # #15
    _add_ship_flags(p)  # ship19: #19
    return p


def _add_ship_flags(p: argparse.ArgumentParser) -> None:
    """ship19 (#19): make the head you will ship strong (docs/heads.md)."""
    d = TrainConfig("", "")
    g = p.add_argument_group("shipping a head (#19, --mode sila; docs/heads.md)")
    g.add_argument("--ship-head", type=int, default=None, metavar="K",
                   help="train head K as a first-class target: its set weight becomes 1 (like "
                        "head 1), the others follow --beta/--lam (printed, and written to "
                        "summary.json); not with --betas; K=1 changes nothing")
    g.add_argument("--distill", type=float, default=d.distill, metavar="W",
                   help="add W × T²·KL(head 1 ‖ head k) for every shallower head k: "
                        "self-distillation from the deepest head (held constant); 0 = off")
    g.add_argument("--distill-t", type=float, default=d.distill_t, metavar="T",
                   help="temperature of --distill")


def _ship_fields(args: argparse.Namespace) -> dict:
    """ship19 (#19): the TrainConfig fields of :func:`_add_ship_flags`."""
    d = TrainConfig("", "")
    return {"ship_head": getattr(args, "ship_head", None),
            "distill": getattr(args, "distill", d.distill),
            "distill_t": getattr(args, "distill_t", d.distill_t)}


def _add_speed_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Issue 18: devices, speed and checkpoint cadence (resolved per machine, see
    :func:`sila_keras.distribute.resolve_speed`; a ``--resume`` applies the new values)."""
    g = p.add_argument_group("devices and speed")
    g.add_argument("--jit", action="store_true",
                   help="XLA-compile the train step (per replica when there are several)")
    g.add_argument("--steps-per-execution", type=_steps, default=d.steps_per_execution,
                   help="train steps per tf.function call: auto = 32 on one GPU, 1 on CPUs "
                        "and with several replicas (keras#19246)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=d.sync_bn,
                   help="BatchNorm statistics over the global batch (all replicas); default: "
                        "on when replicas > 1 and the per-replica batch < 32")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="K",
                   help="checkpoint for --resume every K epochs (and after the last one)")


def _steps(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {s!r}") from None


# --------------------------------------------------------------------------- #15 fine-tuning flags

# The fine-tuning recipe, the CLI default for keras:<Name> backbones (the paper's CIFAR recipe
# stays the default for the registry backbones and .keras files).
FINETUNE_RECIPE = {"lr": 1e-3, "weight_decay": 0.01, "optimizer": "adamw", "schedule": "cosine",
                   "label_smoothing": 0.1, "weights": "imagenet"}


def _add_finetune_flags(p: argparse.ArgumentParser) -> None:
    """Flags of issue #15: keras:<Name> backbones and the fine-tuning recipe."""
    d = TrainConfig("", "")
    g = p.add_argument_group(
        "pretrained backbones (MODEL = keras:<Name>)",
        f"keras.applications models: {', '.join('keras:' + n for n in KERAS_APPLICATIONS)}. Built with "
        "include_top=False + global pooling + a Dense classifier (head_1); the application's "
        "own preprocessing is inside the model (it takes raw 0–255 pixels). Unset options "
        "follow the model: paper recipe (SGD lr 0.1, wd 5e-4, step) for the zoo, fine-tuning "
        "recipe (AdamW lr 1e-3, wd 0.01, cosine, label smoothing 0.1, imagenet weights, "
        "backbone lr × 0.1 when pretrained) for keras: models.")
    g.add_argument("--weights", default=None,
                   help="none | imagenet (Keras cache ~/.keras/models) | PATH of a .weights.h5 "
                        "saved from the same application, include_top=False (default: imagenet "
                        "for keras: models, else none)")
    g.add_argument("--taps", type=_names, default=None,
                   help="layer names where heads may attach (default: the stage ends)")
    g.add_argument("--freeze-epochs", type=int, default=0,
                   help="train only the classifier and the SiLa heads for the first K epochs "
                        "(backbone BatchNorm in inference mode), then unfreeze")
    g.add_argument("--backbone-lr-mult", type=float, default=None,
                   help="lr multiplier of the pretrained backbone once unfrozen (default: 0.1 "
                        "with pretrained keras: weights, else 1)")
    g.add_argument("--optimizer", default=None, choices=OPTIMIZERS,
                   help="sgd: momentum + coupled L2; adamw: decoupled weight decay "
                        "(default: adamw for keras: models, else sgd)")
    g.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="step: ×gamma at --milestones; cosine: to 0 at --epochs (default: "
                        "cosine for keras: models, else step)")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear lr warmup epochs")
    g.add_argument("--label-smoothing", type=float, default=None,
                   help="ε of each head's target, --mode sila (default: 0.1 for keras: models, "
                        "else 0)")
    # Shown as the paper's values; a value the user did not type is resolved per model.
    p.set_defaults(lr=_ModelDefault(d.lr), weight_decay=_ModelDefault(d.weight_decay))


class _ModelDefault(float):
    """#15: a flag default that the model's recipe may replace (the user did not type it)."""


def _names(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(",") if v.strip())


def _finetune_defaults(args: argparse.Namespace) -> dict:
    """#15: the TrainConfig fields of the fine-tuning flags, unset ones (and ``args.lr``,
    ``args.weight_decay``) from the model's recipe."""
    d = TrainConfig("", "")
    keras_model = str(args.model).startswith("keras:")
    recipe = FINETUNE_RECIPE if keras_model else {
        "lr": d.lr, "weight_decay": d.weight_decay, "optimizer": d.optimizer,
        "schedule": d.schedule, "label_smoothing": d.label_smoothing, "weights": d.weights}
    def given(k):
        v = getattr(args, k, None)
        return None if isinstance(v, _ModelDefault) else v

    out = {k: (recipe[k] if given(k) is None else given(k)) for k in recipe}
    args.lr, args.weight_decay = float(out.pop("lr")), float(out.pop("weight_decay"))
    pretrained = out["weights"] != "none"
    mult = getattr(args, "backbone_lr_mult", None)
    out["backbone_lr_mult"] = (0.1 if keras_model and pretrained else 1.0) if mult is None else mult
    out.update(taps=getattr(args, "taps", None), freeze_epochs=getattr(args, "freeze_epochs", 0),
               warmup_epochs=getattr(args, "warmup_epochs", 0))
    return out


def add_data_flags(g, d: TrainConfig) -> None:
    """Issue 14: image size, resize policy, splits, cache, steps per epoch."""
    g.add_argument("--image-size", default=None, metavar="H[,W]",
                   help="train at this size (default: the images' one size; required when "
                        "they differ, 224 for variable-size tfds datasets)")
    g.add_argument("--resize", default=d.resize, choices=("squash", "crop", "pad"),
                   help="how images of another size are resized: squash (ignore aspect), "
                        "crop (centred crop to aspect) or pad (fit inside, zero padding)")
    g.add_argument("--val-split", type=float, default=None, metavar="F",
                   help="fraction held out (class-stratified, by --seed) when the dataset has "
                        "no held-out split: a folder of <class>/* or a train-only tfds "
                        "dataset (default 0.2)")
    g.add_argument("--train-split", default=None, help="tfds: training split (e.g. 'train[:90%%]')")
    g.add_argument("--test-split", default=None,
                   help="tfds: held-out split (default: test, else validation, else --val-split)")
    g.add_argument("--cache", default=d.cache, metavar="MODE",
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
    finetune = _finetune_defaults(args)  # #15: sets args.lr/weight_decay; the new fields
    return TrainConfig(
        dataset=args.dataset, model=args.model, heads=args.heads, beta=args.beta, lam=args.lam,
        betas=args.betas, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, milestones=args.milestones,
        gamma=args.gamma, nesterov=args.nesterov, augment=args.augment, seed=args.seed,
        out=args.out, name=name, resume=args.resume, strategy=args.strategy,
        limit_train=args.limit_train, limit_test=args.limit_test, data_dir=args.data_dir,
        download=args.download, verbose=args.verbose, debug=args.debug, mode=args.mode,
        peer=args.peer, dml=args.dml, no_sila=args.no_sila, mixed_precision=args.mixed_precision,
        jit=args.jit, steps_per_execution=args.steps_per_execution,
        deterministic=args.deterministic, skip_bad_images=args.skip_bad_images,
        sync_bn=args.sync_bn, checkpoint_every=args.checkpoint_every,
        **finetune,
        image_size=args.image_size, resize=args.resize, val_split=args.val_split,
        train_split=args.train_split, test_split=args.test_split, cache=args.cache,
        steps_per_epoch=args.steps_per_epoch,
        **_ship_fields(args),  # ship19
    )


def default_run_name(dataset: str, model: str) -> str:
    ds = dataset.split(":", 1)[-1].rstrip("/")
    ds = Path(ds).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        ds = ds.removesuffix(suffix)
    ds = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds) or "data"
    model = Path(model).stem.replace("keras:", "")  # #15: keras:<Name> → <Name>
    return f"{ds}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
