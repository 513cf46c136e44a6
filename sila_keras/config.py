"""Training configuration: a frozen, validated dataclass (argparse lives in ``train.py``).

Defaults are SilaNet's recipe (§3.1): SGD lr 0.1, momentum 0.9, weight decay
5e-4, 260 epochs, lr milestones 30,55,80,105,135,160,180,200,220,240, M = 3
heads, β = 0.1, λ = 0.5. The papers do not state the lr decay factor; we use
``gamma = 0.5``, which takes 0.1 to ≈1e-4 after the ten milestones (0.1 would
end at 1e-11).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sila_keras.errors import ConfigError

PAPER_MILESTONES = (30, 55, 80, 105, 135, 160, 180, 200, 220, 240)
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
DOWNLOAD_MODES = ("auto", "never")
# Names of the built-in backbones and augmentations, for the CLI parsers: importing the
# registries loads TensorFlow, which ``--help`` must not (tests check these equal the registries).
BACKBONE_NAMES = ("densenet121", "inceptionv3", "mobilenetv1", "msdnet", "resnet18", "resnet20",
                  "resnet32", "resnet34", "resnet56", "vgg11", "vgg13", "vgg16", "vgg19", "wrn16_8",
                  "wrn28_10", "wrn40_10")
AUGMENT_NAMES = ("autoaugment", "crop", "none", "randaugment", "standard")
# #15: the keras:<Name> backbones (sila_keras/models/applications.py; a test checks they agree).
KERAS_APPLICATIONS = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large",
                      "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
                      "EfficientNetV2B0", "ResNet50")
OPTIMIZERS = ("sgd", "adamw")  # #15 (sila_keras.optim)
SCHEDULES = ("step", "cosine")  # #15

# Fields that may differ between a run and its --resume continuation.
RESUME_MUTABLE = ("resume", "epochs", "verbose", "debug", "steps_per_execution", "jit",
                  "sync_bn", "checkpoint_every")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Validated on construction.

    Example:
        >>> cfg = TrainConfig(dataset="folder:data", model="resnet20", epochs=1)
        >>> cfg.heads
        3
    """

    dataset: str
    model: str
    heads: int = 3
    beta: float = 0.1
    lam: float = 0.5
    betas: tuple[float, ...] | None = None
    epochs: int = 260
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = PAPER_MILESTONES
    gamma: float = 0.5
    nesterov: bool = False
    augment: str = "standard"
    seed: int = 0
    out: str = "runs"
    name: str | None = None
    resume: bool = False
    strategy: str = "auto"
    limit_train: int | None = None
    limit_test: int | None = None
    data_dir: str | None = None
    download: str = "auto"
    verbose: int | None = None
    debug: bool = False
    deterministic: bool = False
    skip_bad_images: bool = False
    mixed_precision: bool = False
    jit: bool = False
    steps_per_execution: int | str = "auto"
    mode: str = "sila"
    peer: str | None = None
    dml: bool = False
    no_sila: bool = False
    backbone_kwargs: dict = field(default_factory=dict)
    # issue 18: GPU-suited defaults (resolved per machine by sila_keras.distribute.resolve_speed)
    sync_bn: bool | None = None  # None: on when replicas > 1 and the per-replica batch < 32
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always)
    # #15: keras:<Name> backbones and the fine-tuning recipe (train.py resolves the CLI's
    # per-model defaults; here the paper's recipe is the default).
    weights: str = "none"
    taps: tuple[str, ...] | None = None
    freeze_epochs: int = 0
    backbone_lr_mult: float = 1.0
    optimizer: str = "sgd"
    schedule: str = "step"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    # --- issue 14: data sources, image size, streaming ---
    image_size: tuple[int, int] | None = None  # (H, W); None: the images' one size
    resize: str = "squash"  # squash | crop | pad
    val_split: float | None = None  # held out when the source has no held-out split
    train_split: str | None = None  # tfds split syntax, e.g. "train[:90%]"
    test_split: str | None = None
    cache: str = "auto"  # auto | none | memory | disk[:DIR]
    steps_per_epoch: int | None = None  # None: one pass over the training images
    # ship19: #19 — ship a shallow head (see docs/heads.md)
    ship_head: int | None = None  # head k trained as a first-class target (weight 1)
    distill: float = 0.0  # W of the self-distillation term (deepest head → shallower ones)
    distill_t: float = 1.0  # its temperature T (1: the KL of --mode dml)

    def __post_init__(self):
        def positive(name, value, allow_zero=False):
            if value is None:
                return
            if value < 0 or (value == 0 and not allow_zero):
                raise ConfigError(
                    f"`{name}` must be {'>= 0' if allow_zero else '> 0'}. Received: {name}={value}"
                )

        if self.heads < 1:
            raise ConfigError(f"`--heads` must be >= 1 (1 = the base model). Received: heads={self.heads}")
        if self.beta < 0:
            raise ConfigError(f"`--beta` must be >= 0. Received: beta={self.beta}")
        if self.lam < 0:
            raise ConfigError(f"`--lam` must be >= 0. Received: lam={self.lam}")
        if self.betas is not None:
            object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
            if any(b < 0 for b in self.betas):
                raise ConfigError(f"Every `--betas` entry must be >= 0. Received: betas={list(self.betas)}")
        for name in ("epochs", "batch_size", "lr"):
            positive(name, getattr(self, name))
        for name in ("momentum", "weight_decay", "gamma"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.steps_per_execution != "auto":
            spe = self.steps_per_execution
            if isinstance(spe, bool) or not isinstance(spe, int):
                raise ConfigError("`--steps-per-execution` must be 'auto' or an integer >= 1. "
                                 f"Received: steps_per_execution={self.steps_per_execution!r}")
            positive("steps_per_execution", self.steps_per_execution)
        positive("checkpoint_every", self.checkpoint_every)
        positive("limit_train", self.limit_train)
        positive("limit_test", self.limit_test)
        ms = tuple(int(m) for m in self.milestones)
        object.__setattr__(self, "milestones", ms)
        if any(m <= 0 for m in ms) or list(ms) != sorted(set(ms)):
            raise ConfigError(
                f"`--milestones` must be increasing positive epochs. Received: milestones={list(ms)}"
            )
        from sila_keras.modes import get_mode

        get_mode(self.mode)  # an unknown mode raises, listing the registered ones
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"Unknown strategy '{self.strategy}'. Available: {', '.join(STRATEGIES)}")
        if self.download not in DOWNLOAD_MODES:
            raise ConfigError(f"Unknown download mode '{self.download}'. Available: {', '.join(DOWNLOAD_MODES)}")
        self._validate_data_fields()
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ConfigError(f"`--name` must be a plain folder name. Received: name={self.name!r}")
        self._check_finetune()
        self._check_ship19()

    def _check_finetune(self) -> None:  # #15
        if self.taps is not None:
            object.__setattr__(self, "taps", tuple(str(t) for t in self.taps))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer '{self.optimizer}'. Available: "
                              f"{', '.join(OPTIMIZERS)}. Received: optimizer={self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"Unknown schedule '{self.schedule}'. Available: "
                              f"{', '.join(SCHEDULES)}. Received: schedule={self.schedule!r}")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise ConfigError(
                "`--freeze-epochs` must be >= 0 and < `--epochs` (the backbone has to be "
                f"unfrozen for at least one epoch). Received: freeze_epochs={self.freeze_epochs}, "
                f"epochs={self.epochs}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError("`--warmup-epochs` must be >= 0 and < `--epochs`. Received: "
                              f"warmup_epochs={self.warmup_epochs}, epochs={self.epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("`--label-smoothing` must be in [0, 1). Received: "
                              f"label_smoothing={self.label_smoothing}")
        if self.label_smoothing and self.mode != "sila":
            raise ConfigError("`--label-smoothing` applies to --mode sila. Received: "
                              f"mode={self.mode}, label_smoothing={self.label_smoothing}")
        if self.backbone_lr_mult < 0:
            raise ConfigError("`--backbone-lr-mult` must be >= 0. Received: "
                              f"backbone_lr_mult={self.backbone_lr_mult}")
        keras_model = self.model.startswith("keras:")
        only_keras = {"weights": self.weights != "none", "taps": self.taps is not None,
                      "freeze_epochs": self.freeze_epochs > 0,
                      "backbone_lr_mult": self.backbone_lr_mult != 1.0}
        used = [k for k, v in only_keras.items() if v]
        if used and not keras_model and self.model:
            raise ConfigError(
                f"`--{used[0].replace('_', '-')}` applies to keras:<Name> backbones only "
                "(a pretrained keras.applications model). Received: "
                f"model={self.model!r}, {used[0]}={getattr(self, used[0])!r}")
        if keras_model:
            from sila_keras.models.applications import check_weights, get_application

            get_application(self.model)
            check_weights(self.model, self.weights, check_file=False)

    def _check_ship19(self) -> None:  # ship19 (#19): --ship-head, --distill (no TF import)
        if not self.distill >= 0:
            raise ConfigError("`--distill` (the weight W of the self-distillation term) must be "
                              f">= 0. Received: distill={self.distill}")
        if not self.distill_t > 0:
            raise ConfigError("`--distill-t` (the distillation temperature T) must be > 0. "
                              f"Received: distill_t={self.distill_t}")
        if self.distill and self.heads < 2:
            raise ConfigError("`--distill` distils head 1 into heads 2..M, so it needs `--heads` "
                              f">= 2. Received: heads={self.heads}, distill={self.distill}")
        ship = self.ship_head
        if ship is None:
            return
        if self.betas is not None:
            raise ConfigError(
                "`--ship-head` chooses the set weights itself (head k gets 1, like head 1; the "
                "others follow --beta/--lam), so it cannot be combined with `--betas`. Give "
                "the weights in --betas alone (e.g. --betas 1,0.1,1 ships head 3 of 3). "
                f"Received: ship_head={ship}, betas={list(self.betas)}")
        if isinstance(ship, bool) or not isinstance(ship, int) or not 1 <= ship <= self.heads:
            raise ConfigError(f"`--ship-head` must name a head in 1..{self.heads} (1 = the base "
                              f"model, {self.heads} = the shallowest; see --heads). "
                              f"Received: ship_head={ship}")

    def with_epochs(self, epochs: int) -> TrainConfig:
        """#15: this config for a run of ``epochs`` epochs (a tuning trial, a final run): the
        freeze and warmup phases are cut to leave at least one epoch after them."""
        epochs = int(epochs)
        return self.replace(epochs=epochs,
                            freeze_epochs=max(0, min(self.freeze_epochs, epochs - 1)),
                            warmup_epochs=max(0, min(self.warmup_epochs, epochs - 1)))

    def _validate_data_fields(self) -> None:
        """Issue 14's fields: image size, resize policy, split fraction, cache, steps."""
        from sila_keras.data.dataset import parse_cache
        from sila_keras.data.images import RESIZE_POLICIES, parse_image_size
        from sila_keras.errors import ConfigError

        if self.image_size is not None:
            object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"`--resize` must be one of {', '.join(RESIZE_POLICIES)}. "
                              f"Received: resize={self.resize!r}")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise ConfigError(f"`--val-split` must be in (0, 1). Received: val_split={self.val_split}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"`--steps-per-epoch` must be >= 1. "
                              f"Received: steps_per_epoch={self.steps_per_epoch}")
        parse_cache(self.cache)

    @property
    def run_dir(self) -> Path:
        """``<out>/<name>`` (name resolved by :func:`with_defaults`)."""
        return Path(self.out) / (self.name or "unnamed")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("betas", "milestones", "image_size"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: TrainConfig, ignore=RESUME_MUTABLE) -> dict:
        """Fields (outside ``ignore``) whose values differ: name → (self, other)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}
