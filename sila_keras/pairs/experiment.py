"""Rounds of training and testing one digit-pair configuration.

A *round* (the paper's "evaluation iteration") takes the training and test pairs (the
same in every round with ``pair_draw="once"``, the authors' protocol; fresh ones with
``"per-round"``), builds a freshly initialised model, trains it for ``epochs`` with the shared
training loop :func:`sila_keras.training.train.fit`, and records the test accuracy of the
``comparison`` head after every epoch. The round's accuracy is the one after the
last epoch; a configuration reports the mean and (sample) std over rounds, as the
paper's Tables 1 and 2 do.

Optimizer: SGD with momentum 0.9, constant learning rate, no weight decay. The
report does not name its optimizer; this is what the authors' public code uses.
Loss: cross-entropy on ``comparison`` + ``aux_weight`` × (cross-entropy on
``digit_1`` + on ``digit_2``) (the paper weighs all three terms 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from sila_keras.pairs import data as pdata
from sila_keras.pairs import models as pmodels
from sila_keras.utils.errors import ConfigError


@dataclass(frozen=True)
class PairConfig:
    """One digit-pair configuration. Validated on construction.

    Args:
        arch: ``fc``, ``conv``, ``parallel`` or ``siamese``.
        aux: train the digit heads with the auxiliary loss (parallel/siamese).
        share: weight sharing; None = the arch's own. False with siamese = parallel.
        sila: add the SiLa comparison head (parallel/siamese; beyond the paper).
        rounds: independent rounds (fresh initialisation and shuffling each; fresh pairs
            too with ``pair_draw="per-round"``).
        epochs: epochs per round (paper: 25).
        lr: SGD learning rate.
        batch_size: minibatch size.
        pairs: training pairs and test pairs per round (paper: 1000 each).
        val_split: hold out this fraction of the training pairs for validation.
        aux_weight: weight of each digit cross-entropy (paper: 1).
        beta: SiLa weight of the second comparison set (``--sila``).
        momentum: SGD momentum.
        normalize: standardize the input pixels with the training pool's mean/std
            (the paper feeds raw 0–255 values; its learning rates are tuned for those).
        seed: base seed of the pair draws and initialisations.
        pair_draw: ``once`` (default, the authors' code: pairs drawn once, before all
            rounds) or ``per-round`` (fresh pairs every round).

    Example:
        >>> PairConfig("siamese", lr=0.005, batch_size=50).label
        'siamese (weight sharing, auxiliary loss)'
    """

    arch: str
    aux: bool = True
    share: bool | None = None
    sila: bool = False
    rounds: int = 10
    epochs: int = 25
    lr: float = 0.005
    batch_size: int = 50
    pairs: int = 1000
    val_split: float | None = None
    aux_weight: float = 1.0
    beta: float = 1.0
    momentum: float = 0.9
    normalize: bool = False
    seed: int = 0
    pair_draw: str = "once"  # once | per-round: when the training pairs are drawn

    def __post_init__(self):
        pmodels.check_arch(self.arch)
        if self.pair_draw not in pdata.PAIR_DRAWS:
            raise ConfigError(f"Unknown --pair-draw '{self.pair_draw}'. Available: "
                              f"{', '.join(pdata.PAIR_DRAWS)}. Received: pair_draw={self.pair_draw!r}")
        if self.arch not in pmodels.TWO_BRANCH:
            if self.share is not None:
                raise ConfigError(
                    f"--no-share is meaningless for '{self.arch}': it has no sub-networks whose "
                    f"weights could be shared. Use it with --arch siamese (giving parallel). "
                    f"Received: arch={self.arch}, share={self.share}"
                )
            if not self.aux:
                raise ConfigError(
                    f"--no-aux is meaningless for '{self.arch}': it has no digit heads, so it never "
                    f"has an auxiliary loss. Use it with parallel/siamese. Received: arch={self.arch}"
                )
            if self.sila:
                raise ConfigError(
                    f"--sila needs the digit heads of parallel/siamese (its second comparison head "
                    f"is computed from them). Received: arch={self.arch}"
                )
        if self.arch == "parallel" and self.share:
            raise ConfigError("parallel never shares weights; use --arch siamese for sharing. "
                             "Received: arch=parallel, share=True")
        for name, low in (("rounds", 1), ("epochs", 1), ("batch_size", 1), ("pairs", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}. "
                                 f"Received: {name}={value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number. Received: lr={self.lr}")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise ConfigError("--val-split must be in (0, 1), e.g. 0.2. "
                             f"Received: val_split={self.val_split}")
        if self.aux_weight < 0 or self.beta < 0 or not 0 <= self.momentum < 1:
            raise ConfigError(
                "--aux-weight and --beta must be >= 0 and --momentum in [0, 1). Received: "
                f"aux_weight={self.aux_weight}, beta={self.beta}, momentum={self.momentum}"
            )

    @property
    def shares(self) -> bool:
        """Whether the two digit nets share weights (False for fc/conv too)."""
        if self.arch not in pmodels.TWO_BRANCH:
            return False
        return self.arch == "siamese" if self.share is None else bool(self.share)

    @property
    def has_aux(self) -> bool:
        return self.arch in pmodels.TWO_BRANCH and self.aux

    @property
    def effective_arch(self) -> str:
        """``parallel`` for siamese without sharing, else ``arch``."""
        if self.arch in pmodels.TWO_BRANCH:
            return "siamese" if self.shares else "parallel"
        return self.arch

    @property
    def label(self) -> str:
        """A human-readable name, e.g. ``siamese (weight sharing, auxiliary loss)``."""
        if self.arch not in pmodels.TWO_BRANCH:
            return self.arch
        parts = [p for p, on in (("weight sharing", self.shares), ("auxiliary loss", self.aux),
                                 ("SiLa", self.sila)) if on]
        return f"{self.effective_arch} ({', '.join(parts) or 'none'})"

    def to_dict(self) -> dict:
        return asdict(self)


def output_names(model) -> list[str]:
    """The names of the model's (dict) outputs."""
    return list(model.output.keys()) if isinstance(model.output, dict) else list(model.output_names)


def compile_pair_model(model, config: PairConfig, steps: int):
    """Compile with SGD and the losses of ``config`` (comparison CE or SiLa, digit CEs)."""
    import keras

    from sila_keras.core.losses import SilaLoss
    from sila_keras.training.optim import make_optimizer

    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    losses, weights = {}, {}
    if config.sila:
        losses["sila_logits"] = SilaLoss(2, betas=[1.0, config.beta])
        weights["sila_logits"] = 1.0
    else:
        losses["comparison"] = ce
        weights["comparison"] = 1.0
    if config.has_aux:
        for name in ("digit_1", "digit_2"):
            losses[name] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            weights[name] = config.aux_weight
    names = output_names(model)
    metrics = {n: [keras.metrics.SparseCategoricalAccuracy(name="acc")]
               for n in ("comparison", "comparison_2", "digit_1", "digit_2") if n in names}
    model.compile(optimizer=make_optimizer(config.lr, config.momentum, 0.0, (), 1.0, steps),
                  loss=losses, loss_weights=weights, metrics=metrics)
    return model


def logged(logs: dict, output: str, prefix: str = "val_"):
    """A logged accuracy of ``output`` (Keras drops the output prefix on one-output models)."""
    key = f"{prefix}{output}_acc"
    if key in logs:
        return logs[key]
    return logs.get(f"{prefix}acc") if output == "comparison" else None


def _std(values) -> float:
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def digit_rule_accuracy(model, pairs: pdata.PairSet) -> float:
    """Accuracy of "first ≤ second" read off the two digit heads: P(≤) ≥ ½ under the
    digit posteriors (the rule of :class:`~sila_keras.pairs.models.DigitComparison`).

    A diagnostic for any parallel/siamese model, trained with ``--sila`` or not.
    """
    pred = model.predict(pairs.x, batch_size=500, verbose=0)
    logits = pmodels.DigitComparison()([pred["digit_1"], pred["digit_2"]])
    guess = np.argmax(np.asarray(logits), axis=-1)
    return float(np.mean(guess == pairs.comparison))


def run_round(config: PairConfig, pools: pdata.DigitPools, round_index: int,
              callbacks=()) -> dict:
    """Train and test one round; returns its accuracies and per-epoch curves."""
    import keras

    from sila_keras.training.train import fit

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed * 1000 + round_index)
    train, test = pdata.round_pairs(pools, config.pairs, config.seed, round_index, config.pair_draw)
    val = None
    if config.val_split:
        train, val = pdata.split_validation(train, config.val_split)
    mean, std = pools.pixel_stats() if config.normalize else (0.0, 1.0)
    model = pmodels.build_pair_model(config.arch, config.share, config.sila, mean, std)
    names = output_names(model)
    steps = math.ceil(len(train) / config.batch_size)
    compile_pair_model(model, config, steps)
    train_ds = pdata.pair_dataset(train, names, config.batch_size,
                                  shuffle_seed=config.seed * 1000 + round_index)
    test_ds = pdata.pair_dataset(test, names, 500)
    hist = fit(model, train_ds, test_ds, epochs=config.epochs, steps=steps,
               callbacks=callbacks, verbose=0).history
    test_curve = [float(v) for v in logged(hist, "comparison")]
    out = {
        "round": round_index,
        "accuracy": test_curve[-1],
        "test_curve": test_curve,
        "train_curve": [float(v) for v in logged(hist, "comparison", prefix="")],
        "loss_curve": [float(v) for v in hist["loss"]],
    }
    if "val_digit_1_acc" in hist:
        out["digit_accuracy"] = 0.5 * float(hist["val_digit_1_acc"][-1] + hist["val_digit_2_acc"][-1])
    if "val_comparison_2_acc" in hist:
        out["head_2_accuracy"] = float(hist["val_comparison_2_acc"][-1])
    if "digit_1" in names:
        out["digit_rule_accuracy"] = digit_rule_accuracy(model, test)
    if val is not None:
        res = model.evaluate(pdata.pair_dataset(val, names, 500), verbose=0, return_dict=True)
        out["val_accuracy"] = float(logged(res, "comparison", prefix=""))
    out["params"] = pmodels.trainable_count(model)
    if not all(math.isfinite(v) for v in out["loss_curve"]):
        out["diverged"] = True
    return out


def run_config(config: PairConfig, pools: pdata.DigitPools,
               on_epoch: Callable[[int, int, dict], None] | None = None) -> dict:
    """All rounds of one configuration → the ``results.json`` dict.

    Args:
        config: the configuration.
        pools: the image pools (see :func:`sila_keras.pairs.data.load_pools`).
        on_epoch: called as ``on_epoch(round_index, epoch, logs)`` after every epoch
            (drives the progress bar).
    """
    import keras

    class _Hook(keras.callbacks.Callback):
        def __init__(self, r):
            super().__init__()
            self.r = r

        def on_epoch_end(self, epoch, logs=None):
            if on_epoch is not None:
                on_epoch(self.r, epoch, logs or {})

    t0 = time.time()
    rounds = [run_round(config, pools, r, callbacks=[_Hook(r)]) for r in range(config.rounds)]
    acc = [r["accuracy"] for r in rounds]
    paper = pmodels.PAPER_TABLE1[config.effective_arch]
    result = {
        "arch": config.effective_arch,
        "label": config.label,
        "options": {"aux": config.has_aux, "share": config.shares, "sila": config.sila,
                    "aux_weight": config.aux_weight if config.has_aux else None,
                    "beta": config.beta if config.sila else None, "momentum": config.momentum,
                    "normalize": config.normalize, "epochs": config.epochs, "pairs": config.pairs,
                    "val_split": config.val_split, "seed": config.seed,
                    "pair_draw": config.pair_draw,
                    "optimizer": "SGD (momentum, constant lr)"},
        "rounds": config.rounds,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "mean_accuracy": float(np.mean(acc)),
        "std_accuracy": _std(acc),
        "accuracies": acc,
        "params": rounds[0]["params"],
        "paper_params": pmodels.PAPER_PARAMS[config.effective_arch],
        "paper_table1": paper,
        "data": pools.describe(),
        "wall_time_s": round(time.time() - t0, 1),
        "config": config.to_dict(),
    }
    if config.arch in pmodels.TWO_BRANCH:
        acc, std = pmodels.PAPER_TABLE2[(config.shares, config.aux)]
        result["paper_table2"] = {"accuracy": acc, "std": std}
    for key in ("val_accuracy", "digit_accuracy", "digit_rule_accuracy", "head_2_accuracy"):
        if key in rounds[0]:
            vals = [r[key] for r in rounds]
            result[f"mean_{key}"] = float(np.mean(vals))
            result[f"std_{key}"] = _std(vals)
            result[f"{key.removesuffix('_accuracy')}_accuracies"] = vals
    result["curves"] = {"test_accuracy": [r["test_curve"] for r in rounds],
                        "train_accuracy": [r["train_curve"] for r in rounds],
                        "loss": [r["loss_curve"] for r in rounds]}
    diverged = [r["round"] for r in rounds if r.get("diverged")]
    if diverged:
        result["diverged_rounds"] = diverged
    return result
