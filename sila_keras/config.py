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

PAPER_MILESTONES = (30, 55, 80, 105, 135, 160, 180, 200, 220, 240)
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
MODES = ("sila", "mutual", "dml", "dynamic")
DOWNLOAD_MODES = ("auto", "never")

# Fields that may differ between a run and its --resume continuation.
RESUME_MUTABLE = ("resume", "epochs", "verbose", "debug", "steps_per_execution", "jit")


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
    steps_per_execution: int = 1
    mode: str = "sila"
    peer: str | None = None
    dml: bool = False
    no_sila: bool = False
    backbone_kwargs: dict = field(default_factory=dict)
    # --- issue 14: data sources, image size, streaming ---
    image_size: tuple[int, int] | None = None  # (H, W); None: the images' one size
    resize: str = "squash"  # squash | crop | pad
    val_split: float | None = None  # held out when the source has no held-out split
    train_split: str | None = None  # tfds split syntax, e.g. "train[:90%]"
    test_split: str | None = None
    cache: str = "auto"  # auto | none | memory | disk[:DIR]
    steps_per_epoch: int | None = None  # None: one pass over the training images

    def __post_init__(self):
        def positive(name, value, allow_zero=False):
            if value is None:
                return
            if value < 0 or (value == 0 and not allow_zero):
                raise ValueError(
                    f"`{name}` must be {'>= 0' if allow_zero else '> 0'}. Received: {name}={value}"
                )

        if self.heads < 1:
            raise ValueError(f"`--heads` must be >= 1 (1 = the base model). Received: heads={self.heads}")
        if self.beta < 0:
            raise ValueError(f"`--beta` must be >= 0. Received: beta={self.beta}")
        if self.lam < 0:
            raise ValueError(f"`--lam` must be >= 0. Received: lam={self.lam}")
        if self.betas is not None:
            object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
            if self.mode == "sila" and len(self.betas) != self.heads:
                raise ValueError(
                    f"`--betas` needs one weight per head ({self.heads}). Received: betas={list(self.betas)}"
                )
            if any(b < 0 for b in self.betas):
                raise ValueError(f"Every `--betas` entry must be >= 0. Received: betas={list(self.betas)}")
        for name in ("epochs", "batch_size", "lr"):
            positive(name, getattr(self, name))
        for name in ("momentum", "weight_decay", "gamma"):
            positive(name, getattr(self, name), allow_zero=True)
        positive("steps_per_execution", self.steps_per_execution)
        positive("limit_train", self.limit_train)
        positive("limit_test", self.limit_test)
        ms = tuple(int(m) for m in self.milestones)
        object.__setattr__(self, "milestones", ms)
        if any(m <= 0 for m in ms) or list(ms) != sorted(set(ms)):
            raise ValueError(
                f"`--milestones` must be increasing positive epochs. Received: milestones={list(ms)}"
            )
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode '{self.mode}'. Available: {', '.join(MODES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy '{self.strategy}'. Available: {', '.join(STRATEGIES)}")
        if self.download not in DOWNLOAD_MODES:
            raise ValueError(f"Unknown download mode '{self.download}'. Available: {', '.join(DOWNLOAD_MODES)}")
        self._validate_data_fields()
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"`--name` must be a plain folder name. Received: name={self.name!r}")

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
