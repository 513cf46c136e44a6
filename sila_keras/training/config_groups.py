"""The groups of a training configuration: :class:`DataConfig`, :class:`NetConfig`,
:class:`SilaConfig`, :class:`OptimConfig`, :class:`RunConfig` and one per mode with flags
(:class:`MutualConfig`, :class:`DynamicConfig`), each a frozen dataclass that validates its own
fields, and the name lists their fields take. :class:`~sila_keras.training.config.TrainConfig`
holds one of each and checks what spans two groups; the flags live in ``flags.py``, the named
paper recipes in ``recipes.py``.

Defaults are SilaNet's recipe (§3.1, the ``silanet-cifar`` recipe): SGD lr 0.1, momentum 0.9, weight decay
5e-4, 260 epochs, lr milestones 30,55,80,105,135,160,180,200,220,240, M = 3
heads, β = 0.1, λ = 0.5. The papers do not state the lr decay factor; we use
``gamma = 0.5``, which takes 0.1 to ≈1e-4 after the ten milestones (0.1 would
end at 1e-11).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sila_keras.utils.errors import ConfigError

PAPER_MILESTONES = (30, 55, 80, 105, 135, 160, 180, 200, 220, 240)
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
DOWNLOAD_MODES = ("auto", "never")
# Names of the built-in backbones and augmentations, for the CLI parsers: importing the
# registries loads TensorFlow, which ``--help`` must not (tests check these equal the registries).
BACKBONE_NAMES = ("densenet121", "inceptionv3", "mobilenetv1", "msdnet", "resnet18", "resnet20",
                  "resnet32", "resnet34", "resnet56", "resnet8", "vgg11", "vgg13", "vgg16", "vgg19",
                  "wrn16_8", "wrn28_10", "wrn40_10")
AUGMENT_NAMES = ("autoaugment", "crop", "none", "randaugment", "standard")
# The keras:<Name> backbones (sila_keras/models/applications.py; a test checks they agree).
KERAS_APPLICATIONS = ("MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large",
                      "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
                      "EfficientNetV2B0", "ResNet50")
OPTIMIZERS = ("sgd", "adamw")  # built by sila_keras.training.optim
SCHEDULES = ("step", "cosine")  # built by sila_keras.training.optim
# AutoAugment magnitude semantics (sila_keras.data.augment_ops; default first).
AUTOAUGMENT_SEMANTICS = ("official", "torchvision")  # augment_ops.SEMANTICS
DYNAMIC_EVALUATIONS = ("anytime", "budgeted", "both")  # modes.dynamic.EVALUATIONS

# Images for precise BN by default: what the per-channel statistics of a BN layer need to
# settle (pycls uses 8192 on ImageNet, fvcore 200 batches); see docs/zoo.md for the cost.
PRECISE_BN_IMAGES = 2048


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"`{name}` must be {'>= 0' if allow_zero else '> 0'}. Received: {name}={value}")


def _image_count(value) -> int | None:
    """``--precise-bn`` as an int (the flag arrives as text, so a bad value is one line)."""
    if value is None:
        return None
    n = value
    if isinstance(value, str):
        try:
            n = int(value.strip())
        except ValueError:
            n = None
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError("`--precise-bn` must be an integer >= 0: the number of training images "
                          "whose statistics replace the BatchNorm moving averages (0 = off). "
                          f"Received: precise_bn={value!r}")
    return n


def stale_statistics_possible(model: str) -> bool:
    """Whether BatchNorm statistics may go stale in a run of ``model`` by default: models we
    did not build — ``keras:<Name>`` (keras.applications builds MobileNetV2/V3 with momentum
    0.999, which a run of a few hundred steps never averages out) and the user's own
    ``.keras`` file. The registered backbones (momentum 0.9, PyTorch's 0.1) are not.

    For those models an unset ``--bn-momentum`` is fitted to the run's length
    (:func:`sila_keras.training.batchnorm.apply_bn_momentum`) and ``--precise-bn`` defaults
    to :data:`PRECISE_BN_IMAGES`; for the registered backbones both stay off, so the papers'
    recipes and earlier results are unchanged.
    """
    model = str(model)
    return model.startswith("keras:") or model.endswith((".keras", ".h5"))


def _set(obj, name: str, value) -> None:
    """Normalise a field of a frozen group (tuples from lists, parsed sizes)."""
    object.__setattr__(obj, name, value)


# ----------------------------------------------------------------------------- the groups
# Each group owns its fields and their validation; checks that need two groups live in
# TrainConfig.__post_init__. Field names are unique across groups (the "flat" names the CLI
# flags, recipes, tuning and resume messages use).


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they reach the model."""

    dataset: str = ""
    augment: str = "standard"
    data_dir: str | None = None
    download: str = "auto"
    limit_train: int | None = None
    limit_test: int | None = None
    skip_bad_images: bool = False
    image_size: tuple[int, int] | None = None  # (H, W); None: the images' one size
    resize: str = "squash"  # squash | crop | pad
    val_split: float | None = None  # held out when the source has no held-out split
    train_split: str | None = None  # tfds split syntax, e.g. "train[:90%]"
    test_split: str | None = None
    cache: str = "auto"  # auto | none | memory | disk[:DIR]
    cutout: int = 0  # side of the Cutout square (px) after --augment; 0 = off
    autoaugment_semantics: str = AUTOAUGMENT_SEMANTICS[0]  # official | torchvision

    def __post_init__(self):
        from sila_keras.data.dataset import parse_cache
        from sila_keras.data.images import RESIZE_POLICIES, parse_image_size

        _positive("limit_train", self.limit_train)
        _positive("limit_test", self.limit_test)
        if self.download not in DOWNLOAD_MODES:
            raise ConfigError(f"Unknown download mode '{self.download}'. "
                              f"Available: {', '.join(DOWNLOAD_MODES)}")
        if self.image_size is not None:
            _set(self, "image_size", parse_image_size(self.image_size))
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"`--resize` must be one of {', '.join(RESIZE_POLICIES)}. "
                              f"Received: resize={self.resize!r}")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise ConfigError(f"`--val-split` must be in (0, 1). Received: val_split={self.val_split}")
        parse_cache(self.cache)
        cutout = self.cutout
        if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
            raise ConfigError("`--cutout` must be an integer >= 0 (the square's side in pixels; "
                              f"0 = off). Received: cutout={cutout!r}")
        if cutout and self.image_size is not None and cutout >= min(self.image_size):
            raise ConfigError("`--cutout` must be smaller than the image side "
                              f"({self.image_size[0]}x{self.image_size[1]} px). "
                              f"Received: cutout={cutout}")
        if self.autoaugment_semantics not in AUTOAUGMENT_SEMANTICS:
            raise ConfigError(f"Unknown --autoaugment-semantics '{self.autoaugment_semantics}'. "
                              f"Available: {', '.join(AUTOAUGMENT_SEMANTICS)}")


@dataclass(frozen=True)
class NetConfig:
    """The network: a backbone name, ``keras:<Name>`` or a ``.keras`` file, and its
    BatchNorm statistics (``sila_keras.core.batchnorm``; None: :func:`stale_statistics_possible`)."""

    model: str = ""
    backbone_kwargs: dict = field(default_factory=dict)
    weights: str = "none"
    taps: tuple[str, ...] | None = None
    bn_momentum: float | None = None  # every BN layer's; None: own (fitted: keras:, .keras)
    precise_bn: int | None = None  # training images for precise BN (0 = off)

    def __post_init__(self):
        if self.taps is not None:
            _set(self, "taps", tuple(str(t) for t in self.taps))
        from sila_keras.core.batchnorm import check_momentum

        check_momentum(self.bn_momentum)
        _set(self, "precise_bn", _image_count(self.precise_bn))


@dataclass(frozen=True)
class SilaConfig:
    """The training method (``--mode``) and SiLa's sets: M heads, weights 1, β, λβ, … or β_c."""

    mode: str = "sila"
    heads: int = 3
    beta: float = 0.1
    lam: float = 0.5
    betas: tuple[float, ...] | None = None
    head_module: str = "conv"  # the module of heads 2..M (sila_keras.core.head_modules)
    # Shipping a shallow head (docs/heads.md):
    ship_head: int | None = None  # head k trained as a first-class target (weight 1)
    distill: float = 0.0  # W of the self-distillation term (deepest head → shallower ones)
    distill_t: float = 1.0  # its temperature T (1: the KL of --mode dml)
    # Levers for the auxiliary heads (sila_keras.core.levers):
    ramp_betas: int = 0  # epochs over which the weights of sets 2..M grow from 0 (0 = off)
    distill_start: int = 0  # epochs before the distillation term starts
    distill_ramp: int = 0  # epochs over which it then grows to --distill W (0: at once)
    grad_equilibrium: bool = False  # trunk gradients ÷ the heads that share them (Li et al.)

    def __post_init__(self):
        from sila_keras.modes import get_mode

        if self.heads < 1:
            raise ConfigError(f"`--heads` must be >= 1 (1 = the base model). Received: heads={self.heads}")
        if self.beta < 0:
            raise ConfigError(f"`--beta` must be >= 0. Received: beta={self.beta}")
        if self.lam < 0:
            raise ConfigError(f"`--lam` must be >= 0. Received: lam={self.lam}")
        if self.betas is not None:
            _set(self, "betas", tuple(float(b) for b in self.betas))
            if any(b < 0 for b in self.betas):
                raise ConfigError(f"Every `--betas` entry must be >= 0. Received: betas={list(self.betas)}")
        get_mode(self.mode)  # an unknown mode raises, listing the registered ones
        self._check_head_module()
        self._check_ship_head()
        self._check_levers()

    def _check_levers(self) -> None:  # --ramp-betas, --grad-equilibrium, … (no TF import)
        from sila_keras.core.levers import check_epochs

        ramp = check_epochs("ramp_betas", self.ramp_betas)
        if ramp and self.heads < 2:
            raise ConfigError("`--ramp-betas` ramps the set weights of heads 2..M, so it needs "
                              f"`--heads` >= 2. Received: heads={self.heads}, ramp_betas={ramp}")
        if self.grad_equilibrium and self.heads < 2:
            raise ConfigError("`--grad-equilibrium` balances the gradients the heads send into "
                              "the shared layers, so it needs `--heads` >= 2. Received: "
                              f"heads={self.heads}, grad_equilibrium=True")
        for name in ("distill_start", "distill_ramp"):
            value = check_epochs(name, getattr(self, name))
            if value and not self.distill:
                raise ConfigError(f"`--{name.replace('_', '-')}` schedules the self-distillation "
                                  "term, so it needs `--distill W` > 0. Received: "
                                  f"distill={self.distill}, {name}={value}")

    def _check_head_module(self) -> None:  # --head-module (no TF import)
        from sila_keras.core.head_modules import DEFAULT_MODULE, get_head_module

        get_head_module(self.head_module)  # an unknown name raises, listing the modules
        if self.head_module != DEFAULT_MODULE and self.heads < 2:
            raise ConfigError(f"`--head-module` shapes the auxiliary heads 2..M, so it needs "
                              f"`--heads` >= 2. Received: heads={self.heads}, "
                              f"head_module={self.head_module!r}")

    def _check_ship_head(self) -> None:  # --ship-head, --distill (no TF import)
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


@dataclass(frozen=True)
class MutualConfig:
    """``--mode mutual`` (paper B §3.2): the peer network and the DML term."""

    peer: str | None = None
    dml: bool = False


@dataclass(frozen=True)
class DynamicConfig:
    """``--mode dynamic`` (paper B §3.3): MSDNet early exits."""

    no_sila: bool = False
    # The test protocols: anytime | budgeted | both (None: both, and "not given" for the
    # other modes' check). The training hold-out exists only for budgeted evaluation.
    dynamic_eval: str | None = None

    def __post_init__(self):
        if self.dynamic_eval is not None and self.dynamic_eval not in DYNAMIC_EVALUATIONS:
            raise ConfigError(f"Unknown `--dynamic-eval` '{self.dynamic_eval}'. Available: "
                              f"{', '.join(DYNAMIC_EVALUATIONS)}. "
                              f"Received: dynamic_eval={self.dynamic_eval!r}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and the length of training."""

    epochs: int = 260
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = PAPER_MILESTONES
    gamma: float = 0.5
    nesterov: bool = False
    optimizer: str = "sgd"  # sgd | adamw (sila_keras.training.optim)
    schedule: str = "step"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    freeze_epochs: int = 0  # epochs with a frozen pretrained backbone
    backbone_lr_mult: float = 1.0
    steps_per_epoch: int | None = None  # None: one pass over the training images

    def __post_init__(self):
        for name in ("epochs", "batch_size", "lr"):
            _positive(name, getattr(self, name))
        for name in ("momentum", "weight_decay", "gamma"):
            _positive(name, getattr(self, name), allow_zero=True)
        ms = tuple(int(m) for m in self.milestones)
        _set(self, "milestones", ms)
        if any(m <= 0 for m in ms) or list(ms) != sorted(set(ms)):
            raise ConfigError(
                f"`--milestones` must be increasing positive epochs. Received: milestones={list(ms)}")
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
        if self.backbone_lr_mult < 0:
            raise ConfigError("`--backbone-lr-mult` must be >= 0. Received: "
                              f"backbone_lr_mult={self.backbone_lr_mult}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"`--steps-per-epoch` must be >= 1. "
                              f"Received: steps_per_epoch={self.steps_per_epoch}")


@dataclass(frozen=True)
class RunConfig:
    """Where the run is written, seeding, devices and speed."""

    seed: int = 0
    out: str = "runs"
    name: str | None = None
    resume: bool = False
    strategy: str = "auto"
    verbose: int | None = None
    debug: bool = False
    deterministic: bool = False
    mixed_precision: bool = False
    jit: bool = False
    steps_per_execution: int | str = "auto"
    sync_bn: bool | None = None  # None: on when replicas > 1 and the per-replica batch < 32
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always)
    # The --recipe applied (sila_keras.training.recipes) and each field's origin: "flag" | "default" |
    # "recipe:<name>" (recorded in config.json; --resume compares values, not these).
    recipe: str | None = None
    origins: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"Unknown strategy '{self.strategy}'. Available: {', '.join(STRATEGIES)}")
        if self.steps_per_execution != "auto":
            spe = self.steps_per_execution
            if isinstance(spe, bool) or not isinstance(spe, int):
                raise ConfigError("`--steps-per-execution` must be 'auto' or an integer >= 1. "
                                  f"Received: steps_per_execution={self.steps_per_execution!r}")
            _positive("steps_per_execution", self.steps_per_execution)
        _positive("checkpoint_every", self.checkpoint_every)
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ConfigError(f"`--name` must be a plain folder name. Received: name={self.name!r}")
        # The recipe name is checked where it is resolved: a stored run whose recipe was
        # renamed since must still load.
        bad = {k: v for k, v in self.origins.items()
               if not (v in ("flag", "default") or str(v).startswith("recipe:"))}
        if bad:
            raise ConfigError("`origins` values must be 'flag', 'default' or 'recipe:<name>'. "
                              f"Received: {bad}")

