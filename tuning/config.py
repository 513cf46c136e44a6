"""Search configuration: a frozen, validated dataclass (argparse lives in ``cli.py``).

A search wraps one :class:`sila_keras.training.config.TrainConfig` (everything a single
trial trains with: data, model, optimiser, epochs per trial) and adds what is
searched and how. β and λ of the SiLa loss (SilaNet, Gan et al., Eq. 2: weights
``[1, β, λβ, λ²β, …]`` of the label sets) are drawn per trial; the papers set
them by hand ("β = 0.3, λ = 0.5 is a set of good choices").
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from dataclasses import dataclass

from sila_keras.training.config import TrainConfig
from sila_keras.utils.errors import ConfigError, DependencyError

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE_RE = re.compile(r"(?:val_)?head_(\d+)_acc")

# Fields that may differ between a search and its --resume continuation.
# ``out`` may differ: a search folder can be moved and resumed elsewhere.
RESUME_MUTABLE = ("resume", "max_trials", "final_epochs", "out")
# Train fields that may differ on --resume (they do not change what a trial means).
TRAIN_RESUME_MUTABLE = ("resume", "verbose", "debug", "strategy", "out")


def parse_range(text: str, flag: str) -> tuple[float, float]:
    """``"LO,HI"`` → ``(LO, HI)``.

    Raises:
        ValueError: not two numbers.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(
            f"`{flag}` must be two comma-separated numbers LO,HI (e.g. {flag} 0.01,1.0). "
            f"Received: {flag}={text!r}"
        ) from None
    return lo, hi


def valid_objectives(min_heads: int) -> list[str]:
    """Objectives every trial logs: ``head_k_acc`` for k ≤ the smallest M searched."""
    return [f"head_{k}_acc" for k in range(1, min_heads + 1)]


def normalize_objective(name: str, min_heads: int) -> str:
    """``head_k_acc`` or ``val_head_k_acc`` → ``val_head_k_acc`` (measured on validation data).

    Raises:
        ValueError: not a per-head accuracy, or a head some trials do not have.
    """
    m = OBJECTIVE_RE.fullmatch(str(name).strip())
    if not m or not 1 <= int(m.group(1)) <= min_heads:
        heads = f"{min_heads} head{'s' if min_heads > 1 else ''}"
        raise ConfigError(
            f"Unknown objective '{name}'. Valid objectives for this search (every trial has at "
            f"least {heads}): {', '.join(valid_objectives(min_heads))} (a 'val_' prefix is "
            f"accepted too; the value is always measured on the validation split). "
            f"Received: objective={name!r}"
        )
    return f"val_head_{m.group(1)}_acc"


def _unimportable(*modules: str) -> list[str]:
    """``"name: error"`` for each module that fails to import."""
    out = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            out.append(f"{name}: {e}")
    return out


@dataclass(frozen=True)
class SearchConfig:
    """Everything a β/λ search depends on. Validated on construction.

    Args:
        train: the per-trial training config (its ``beta``/``lam`` are replaced per
            trial; its ``heads`` is M, or the largest M with ``tune_heads``; its
            ``epochs`` are the epochs per trial, Hyperband's ``max_epochs``).
        out: the search folder (results + keras-tuner project ``tuner/``).
        tuner: ``random``, ``bayesian`` or ``hyperband``.
        max_trials: trials to run at most (for Hyperband a cap on top of its
            own schedule).
        objective: ``head_k_acc`` (or ``val_head_k_acc``); maximised on the
            validation split.
        beta_range: (lo, hi) of β, sampled log-uniformly (lo > 0).
        lam_range: (lo, hi) of λ, sampled uniformly (lo ≥ 0).
        tune_heads: also search M in ``2 … train.sila.heads``.
        val_split: fraction of the *training* images held out for the objective.
        resume: continue the search in ``out``.
        final_epochs: if set, retrain the best config for this many epochs on
            the full training data and evaluate once on the test split.
        hyperband_factor: Hyperband's reduction factor.

    Example:
        >>> cfg = SearchConfig(TrainConfig.create("folder:data", "resnet20", epochs=1), out="search")
        >>> cfg.objective
        'val_head_1_acc'
    """

    train: TrainConfig
    out: str
    tuner: str = "random"
    max_trials: int = 10
    objective: str = "head_1_acc"
    beta_range: tuple[float, float] = (0.01, 1.0)
    lam_range: tuple[float, float] = (0.1, 1.0)
    tune_heads: bool = False
    val_split: float = 0.1
    resume: bool = False
    final_epochs: int | None = None
    hyperband_factor: int = 3

    def __post_init__(self):
        if self.tuner not in TUNERS:
            raise ConfigError(f"Unknown tuner '{self.tuner}'. Available: {', '.join(TUNERS)}. "
                             f"Received: tuner={self.tuner!r}")
        if int(self.max_trials) < 1:
            raise ConfigError(f"`--max-trials` must be >= 1 (the number of configurations to try). "
                             f"Received: max_trials={self.max_trials}")
        mode = self.train.sila.mode
        if mode != "sila":
            raise ConfigError("sila-tune searches β/λ of the SilaNet heads, so it needs --mode sila. "
                             f"Received: mode={mode!r}")
        heads = self.train.sila.heads
        if heads < 2:
            raise ConfigError("β and λ weight the auxiliary heads, so the search needs `--heads` >= 2. "
                             f"Received: heads={heads}")
        if self.tune_heads and heads < 3:
            raise ConfigError("`--tune-heads` searches M in 2..--heads, so `--heads` must be >= 3. "
                             f"Received: heads={heads}")
        object.__setattr__(self, "beta_range", self._check_range("--beta-range", self.beta_range, log=True))
        object.__setattr__(self, "lam_range", self._check_range("--lam-range", self.lam_range, log=False))
        object.__setattr__(self, "objective", normalize_objective(self.objective, self.min_heads))
        ship = self.train.sila.ship_head  # the head the search tunes for
        if ship is not None and ship > self.min_heads:
            raise ConfigError(f"`--ship-head {ship}` needs every trial to have head {ship}, but "
                              f"--tune-heads tries M = {self.min_heads}. Drop --tune-heads or ship "
                              f"a head <= {self.min_heads}. Received: ship_head={ship}")
        if not 0.0 < self.val_split < 1.0:
            raise ConfigError("`--val-split` is the fraction of training images held out for the "
                             f"objective and must be in (0, 1). Received: val_split={self.val_split}")
        if self.final_epochs is not None and int(self.final_epochs) < 1:
            raise ConfigError("`--final-epochs` must be >= 1 (leave it out to skip the final run). "
                             f"Received: final_epochs={self.final_epochs}")
        if int(self.hyperband_factor) < 2:
            raise ConfigError(f"`--hyperband-factor` must be >= 2. Received: hyperband_factor={self.hyperband_factor}")
        if not self.out:
            raise ConfigError(f"`--out` must name a folder. Received: out={self.out!r}")
        if self.tuner == "bayesian":
            missing = _unimportable("scipy", "sklearn")
            if missing:
                raise DependencyError(
                    f"`--tuner bayesian` needs scipy and scikit-learn, which cannot be imported "
                    f"({'; '.join(missing)}). Install with: pip install 'keras-tuner[bayesian]' "
                    "(or pip install scipy scikit-learn), or use --tuner random/hyperband."
                )

    @staticmethod
    def _check_range(flag: str, rng, log: bool) -> tuple[float, float]:
        lo, hi = (float(v) for v in rng)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(f"`{flag}` bounds must be finite numbers. Received: {flag}={lo},{hi}")
        if lo >= hi:
            raise ConfigError(f"`{flag}` needs min < max. Received: {flag}={lo},{hi}")
        if log and lo <= 0:
            raise ConfigError(f"`{flag}` is sampled log-uniformly, so both bounds must be > 0. "
                             f"Received: {flag}={lo},{hi}")
        if lo < 0:
            raise ConfigError(f"`{flag}` bounds must be >= 0 (SiLa set weights are non-negative). "
                             f"Received: {flag}={lo},{hi}")
        return lo, hi

    @property
    def min_heads(self) -> int:
        """The smallest M any trial uses."""
        return 2 if self.tune_heads else self.train.sila.heads

    @property
    def max_heads(self) -> int:
        """The largest M any trial uses."""
        return self.train.sila.heads

    @property
    def searches_lam(self) -> bool:
        """λ only matters with M ≥ 3 (it scales the third and later label sets)."""
        return self.max_heads >= 3

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["train"] = self.train.to_dict()
        d["beta_range"], d["lam_range"] = list(self.beta_range), list(self.lam_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["train"] = TrainConfig.from_dict(d["train"])
        for k in ("beta_range", "lam_range"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **changes) -> SearchConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: SearchConfig) -> dict:
        """Settings (outside the resumable ones) that differ: name → (self, other)."""
        a, b = self.to_dict(), other.to_dict()
        out = {k: (a[k], b[k]) for k in a if k not in (*RESUME_MUTABLE, "train") and a[k] != b[k]}
        diff = self.train.differences(other.train, ignore=TRAIN_RESUME_MUTABLE)
        out.update({f"train.{k}": v for k, v in diff.items()})
        return out
