"""A run's BatchNorm statistics: ``--bn-momentum``, ``--precise-bn`` and the guard.

The mechanism lives in :mod:`sila_keras.core.batchnorm`; this module wires it into the
training chain (:mod:`sila_keras.training.train`):

* :func:`apply_bn_momentum` — after the model is built (``build_model``): ``--bn-momentum``,
  or, unset, a momentum fitted to the run's length for models we did not build;
* :class:`PreciseBN` — a callback of the one training loop that recomputes the moving
  statistics right before Keras' test evaluation of an epoch (``on_test_begin``), so the
  epoch's test metrics, the checkpoint written after it and ``model.keras`` all carry them;
* :func:`collapse_warnings` — after training, the share of the test images each head gives
  to its most frequent class, against the head's training accuracy.

The recalibration images are a fixed, class-balanced subset of the training split (by
``--seed``) through the *test-time* pipeline: no augmentation, because the statistics must
be those of the inputs the model sees at test time; the same images at every use, so the
result depends only on the weights. They are fed in batches of ``--batch-size`` (the batch
statistics each BN layer normalises with in a training-mode pass are those of training).
"""

from __future__ import annotations

import sys
import time

import keras
import numpy as np

from sila_keras.core.batchnorm import (
    MOMENTUM_CAP,
    BatchNormRecalibrator,
    batchnorm_layers,
    bn_momenta,
    cap_bn_momentum,
    collapsed_heads,
    fitted_momentum,
    set_bn_momentum,
    warning_line,
)

# Precise BN runs before every epoch's test evaluation when its images number at most this
# share of the images an epoch trains on; otherwise only before the last epoch's. A
# training-mode forward pass costs about a third of a training step (no backward pass), so
# 0.5 keeps it near or under a sixth of an epoch (measured: docs/zoo.md). A rule of counts,
# not of timings, so metrics.csv does not depend on the machine's speed.
EVERY_EPOCH_RATIO = 0.5


def run_steps(config, data) -> int:
    """The optimizer steps of the whole run: steps per epoch × ``--epochs``."""
    from sila_keras.data.pipeline import steps_per_epoch

    per_epoch = config.optim.steps_per_epoch or steps_per_epoch(len(data.train_y),
                                                                 config.optim.batch_size)
    return int(per_epoch) * int(config.optim.epochs)


def apply_bn_momentum(model, config, data) -> int:
    """Set the momentum of ``model``'s BN layers for this run (after it is built):
    ``--bn-momentum`` on every layer; unset, for models whose statistics may go stale
    (:func:`~sila_keras.training.config_groups.stale_statistics_possible`), every layer above
    :func:`~sila_keras.core.batchnorm.fitted_momentum` of the run's steps is lowered to it
    (faster layers keep theirs); otherwise the model's own. Returns the layers changed."""
    from sila_keras.training.config_groups import stale_statistics_possible

    if config.net.bn_momentum is not None:
        return set_bn_momentum(model, config.net.bn_momentum)
    if not stale_statistics_possible(config.net.model):
        return 0
    return cap_bn_momentum(model, fitted_momentum(run_steps(config, data)))


def batchnorm_line(model, config, data) -> str | None:
    """The run's one line about its BatchNorm layers: their momenta, how they were chosen,
    and precise BN (None for a model without BatchNorm)."""
    from sila_keras.training.config_groups import stale_statistics_possible

    layers = batchnorm_layers(model)
    if not layers:
        return None
    how = ""
    if config.net.bn_momentum is not None:
        how = " (--bn-momentum)"
    elif stale_statistics_possible(config.net.model):
        steps = run_steps(config, data)
        how = (f" (at most min({MOMENTUM_CAP}, 0.01^(1/{steps})) = {fitted_momentum(steps):.4g}:"
               f" the initial statistics weigh < 1% after the run's {steps} steps)")
    momenta = ", ".join(f"{m:.4g}" for m in bn_momenta(model))
    n = config.resolved().net.precise_bn
    precise = f"precise BN from {n} training images" if n else "precise BN off"
    return f"BatchNorm: {len(layers)} layer(s), momentum {momenta}{how}; {precise}"


def recalibration_images(config, data, strategy=None):
    """``(images, count, note)``: the un-augmented training images precise BN uses —
    ``--precise-bn`` of them, class-balanced by ``--seed``, or all of them (and a note
    saying so) when the training split is smaller. ``data``: an
    :class:`~sila_keras.data.ImageData` (a dataset through the test-time pipeline), or
    anything with ``train_x``/``train_y`` arrays (tuning's ``SearchData``: an array)."""
    from sila_keras.data.sets import balanced_subset

    wanted = int(config.resolved().net.precise_bn)
    train = getattr(data, "train", None)
    labels = train.labels if train is not None else np.asarray(data.train_y)
    note = None
    if wanted > len(labels):
        note = (f"--precise-bn {wanted} is more than the {len(labels)} training images; "
                f"all {len(labels)} are used")
    positions = balanced_subset(labels, wanted, config.run.seed)
    if train is None:
        return np.asarray(data.train_x)[positions], len(positions), note
    from sila_keras.data.pipeline import eval_dataset
    from sila_keras.devices.distribute import dataset_options

    options = dataset_options(strategy) if strategy is not None else None
    subset = train.take(positions)
    return eval_dataset(subset, None, config.optim.batch_size, options=options), len(subset), note


class PreciseBN(keras.callbacks.Callback):
    """Recompute the BN moving statistics before an epoch's test evaluation.

    Runs before every epoch's evaluation (``every_epoch``) or only before the last one's;
    in a ``fit`` without test data, once when it ends.
    Training never reads the moving statistics (a training-mode pass normalises with the
    batch's), so the weights, and the model saved at the end, are the same either way, also
    across ``--resume``; only the per-epoch test figures before the last differ.

    Args:
        recalibrator: the model's :class:`~sila_keras.core.batchnorm.BatchNormRecalibrator`.
        images: the recalibration dataset (:func:`recalibration_images`).
        last_epoch: the run's ``--epochs``.
        every_epoch: before every epoch's evaluation, or the last one's only.
        print_fn: where the one line after the first use goes (None: silent).
        batch_size: the batch size for images given as an array.

    Example:
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
        >>> cb = PreciseBN(BatchNormRecalibrator(m), np.ones((8, 2), "float32"), last_epoch=3)
        >>> cb.due(2), cb.due(3)
        (True, True)
    """

    def __init__(self, recalibrator: BatchNormRecalibrator, images, last_epoch: int,
                 every_epoch: bool = True, print_fn=print, batch_size: int = 64):
        super().__init__()
        self.recalibrator = recalibrator
        self.images = images
        self.batch_size = int(batch_size)
        self.last_epoch = int(last_epoch)
        self.every_epoch = bool(every_epoch)
        self.print_fn = print_fn
        self.uses: list[dict] = []
        self._epoch = 0
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._t0 = epoch + 1, time.perf_counter()

    def on_test_begin(self, logs=None):
        if self.due(self._epoch):
            self._recompute()

    def on_train_end(self, logs=None):
        # fit without test data (tuning's final run): recompute once, at the end
        done = self.uses and self.uses[-1]["epoch"] == self._epoch
        if not done and not self.model.stop_training and self._epoch:
            self._recompute()

    def _recompute(self) -> None:
        train_s = time.perf_counter() - self._t0
        r = self.recalibrator.run(self.images, batch_size=self.batch_size)
        cost = r.steady_seconds if r.steady_seconds is not None else r.seconds
        share = cost / train_s if train_s > 0 else None
        self.uses.append({"epoch": self._epoch, **r.to_dict(), "train_s": round(train_s, 3),
                          "share_of_epoch": None if share is None else round(share, 4)})
        if len(self.uses) == 1 and self.print_fn:
            self.print_fn(self.first_line(r, share))

    def due(self, epoch: int) -> bool:
        """Whether the statistics are recomputed before epoch ``epoch``'s evaluation."""
        return self.every_epoch or epoch == self.last_epoch

    def first_line(self, r, share) -> str:
        when = ("before every test evaluation" if self.every_epoch else
                "before the last epoch's test evaluation (the per-epoch test figures before "
                "it use the moving averages)")
        steady = "" if r.steady_seconds is None else f", {r.steady_seconds:.1f}s without tracing"
        cost = "" if share is None else f" = {100 * share:.0f}% of the epoch's training time"
        frozen = f"; {r.frozen} frozen layer(s) kept" if r.frozen else ""
        return (f"Precise BN: {r.layers} BatchNorm layer(s) recomputed from {r.images} training "
                f"images in {r.seconds:.1f}s (first use{steady}{cost}){frozen}; {when}")

    def summary(self) -> dict:
        """What ``summary.json`` records (``batchnorm.recalibration``): every use, and the
        median seconds per use and share of the epoch's training time (the first use's
        cost without its tracing when it is the only one)."""
        later = self.uses[1:]
        seconds = ([u["seconds"] for u in later] if later else
                   [u["steady_seconds"] for u in self.uses[:1]])
        return {"uses": len(self.uses), "every_epoch": self.every_epoch,
                "seconds_per_use": _median(seconds),
                "share_of_epoch": _median([u["share_of_epoch"] for u in later or self.uses]),
                "per_use": self.uses}


def _median(values):
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 4) if values else None


def precise_bn_callback(model, config, data, strategy, steps: int,
                        print_fn=print) -> PreciseBN | None:
    """The run's :class:`PreciseBN`, or None when ``--precise-bn`` is 0 or the model has no
    BatchNormalization layer (one note says so when the flag asked for it). ``steps``: the
    training steps per epoch (with the batch size, the images an epoch trains on)."""
    n = int(config.resolved().net.precise_bn)
    if n == 0:
        return None
    if not batchnorm_layers(model):
        if print_fn and config.run.origins.get("precise_bn") == "flag":
            print_fn(f"  note: --precise-bn {n}: the model has no BatchNormalization layer; "
                     "nothing to recompute")
        return None
    images, count, note = recalibration_images(config, data, strategy)
    if note and print_fn:
        print_fn(f"  note: {note}")
    every = count <= EVERY_EPOCH_RATIO * steps * config.optim.batch_size
    return PreciseBN(BatchNormRecalibrator(model, strategy), images, config.optim.epochs,
                     every, print_fn, config.optim.batch_size)


# --------------------------------------------------------------------------- the guard


def head_predictions(model, eval_ds, num_test: int, num_classes: int) -> dict[str, np.ndarray]:
    """Head name → predicted class of every test image (padding images dropped)."""
    from sila_keras.core.heads import head_names_of

    logits = model.predict(eval_ds, verbose=0)[:num_test]
    names = head_names_of(model)
    return {name: logits[:, k * num_classes:(k + 1) * num_classes].argmax(-1)
            for k, name in enumerate(names)}


def train_accuracy(logger, num_heads: int) -> dict[str, float]:
    """Head name → training accuracy of the last epoch (what the logger kept; else head 1's
    from ``metrics.csv``)."""
    acc = dict(getattr(logger, "train_accuracy", {}) or {})
    if not acc and logger.rows:
        v = logger.rows[-1].get("train_head_1_acc")
        if v not in (None, ""):
            acc["head_1"] = float(v)
    return {k: v for k, v in acc.items() if v is not None}


def collapse_warnings(model, eval_ds, data, logger, print_fn=None) -> list[dict]:
    """The guard: a warning per head that predicts one class for ≥ 90 % of the test images
    while it trains at ≥ twice chance (:func:`sila_keras.core.batchnorm.collapsed_heads`),
    printed as one line (stderr) for all of them."""
    from sila_keras.core.heads import num_heads_of

    preds = head_predictions(model, eval_ds, len(data.test_y), data.num_classes)
    found = collapsed_heads(preds, train_accuracy(logger, num_heads_of(model)), data.num_classes,
                            data.class_names)
    out = print_fn or (lambda line: print(line, file=sys.stderr, flush=True))
    if found:
        out(f"Warning: {warning_line(found)}")
    return found
