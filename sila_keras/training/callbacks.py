"""Training callbacks: the per-epoch log (metrics.csv + one summary line),
crash-safe checkpoints for ``--resume``, and a non-finite loss guard.

Order of writes at the end of epoch e: ``metrics.csv`` (atomic), then the
checkpoint ``checkpoints/epoch-<e>.keras`` (atomic), then ``checkpoints/state.json``
(atomic; names the completed epoch *and* its model file), then the previous epoch's
model file is deleted. ``state.json`` is the commit point: a process killed anywhere
in between leaves a ``state.json`` whose model file exists and matches it. A resumed
run trusts ``state.json`` and drops any ``metrics.csv`` row beyond it, so no epoch is
lost or logged twice.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from sila_keras.training.optim import current_lr
from sila_keras.utils import files
from sila_keras.utils.errors import ConfigError
from sila_keras.utils.rundir import RunDir, read_checkpoint, write_checkpoint


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss and records where."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.failure: str | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failure = (
                f"Training loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}. "
                "Likely causes: learning rate too high (--lr) or SiLa weights too large "
                "(--beta/--betas). The last good checkpoint is kept; lower them and rerun."
            )
            self.model.stop_training = True


class EpochLogger(keras.callbacks.Callback):
    """Writes one ``metrics.csv`` row per epoch and prints a one-line summary.

    Row columns: ``epoch, lr, loss, head_1_acc … head_M_acc, top5, nll`` (test
    split), then ``test_loss``, ``train_head_1_acc`` and ``time_s``.

    Args:
        path: the CSV path.
        num_heads: M.
        rows: rows of earlier epochs (when resuming).
        print_fn: where the summary line goes (``None`` to stay silent).
    """

    def __init__(self, path, num_heads: int, rows: list[dict] | None = None, print_fn=print,
                 total_epochs: int | None = None, guard: NonFiniteGuard | None = None):
        super().__init__()
        self.guard = guard
        self.path = Path(path)
        self.num_heads = num_heads
        self.rows = list(rows or [])
        self.print_fn = print_fn
        self.total_epochs = total_epochs
        self._t0 = 0.0
        self._lr = float("nan")
        self.train_accuracy: dict[str, float] = {}  # head → last epoch's (for the guard)

    @property
    def columns(self) -> list[str]:
        heads = [f"head_{k}_acc" for k in range(1, self.num_heads + 1)]
        return ["epoch", "lr", "loss", *heads, "top5", "nll", "test_loss", "train_head_1_acc",
                "top2", "top3", "top4", "time_s"]

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()
        self._lr = current_lr(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.failure:
            return  # the epoch did not complete
        logs = logs or {}
        row = {"epoch": epoch + 1, "lr": self._lr, "loss": logs.get("loss")}
        for k in range(1, self.num_heads + 1):
            row[f"head_{k}_acc"] = logs.get(f"val_head_{k}_acc")
        row.update(top5=logs.get("val_top5"), nll=logs.get("val_nll"), test_loss=logs.get("val_loss"),
                   train_head_1_acc=logs.get("head_1_acc"), top2=logs.get("val_top2"),
                   top3=logs.get("val_top3"), top4=logs.get("val_top4"),
                   time_s=round(time.time() - self._t0, 3))
        row = {k: (float(v) if v is not None and k != "epoch" else v) for k, v in row.items()}
        self.train_accuracy = {f"head_{k}": float(logs[f"head_{k}_acc"])
                               for k in range(1, self.num_heads + 1) if f"head_{k}_acc" in logs}
        self.rows = [r for r in self.rows if int(r["epoch"]) < row["epoch"]] + [row]
        files.write_csv(self.path, self.rows, self.columns)
        if self.print_fn:
            self.print_fn(self.summary_line(row))

    def summary_line(self, row: dict) -> str:
        total = f"/{self.total_epochs}" if self.total_epochs else ""
        heads = "  ".join(f"h{k} {_pct(row.get(f'head_{k}_acc'))}" for k in range(1, self.num_heads + 1))
        return (f"epoch {row['epoch']}{total}  loss {_num(row['loss'])}  lr {row['lr']:.3g}  "
                f"test: {heads}  top5 {_pct(row['top5'])}  nll {_num(row['nll'])}  ({row['time_s']:.1f}s)")

    def best(self) -> dict[str, float]:
        """BEST per head: the maximum test accuracy over the logged epochs."""
        out = {}
        for k in range(1, self.num_heads + 1):
            vals = [float(r[f"head_{k}_acc"]) for r in self.rows if r.get(f"head_{k}_acc") not in (None, "")]
            out[f"head_{k}"] = max(vals) if vals else None
        return out


class LossSchedule(keras.callbacks.Callback):
    """Sets the per-epoch factors of the compiled loss at the start of every epoch
    (``--ramp-betas``, …; :meth:`sila_keras.core.losses.SilaLoss.set_epoch`).

    The factors are a function of the epoch Keras passes (absolute, also when a run
    resumes at ``initial_epoch``), never of stored state. :func:`sila_keras.training.train.fit`
    adds it when the model's loss is ``scheduled``.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.model.loss.set_epoch(epoch)


def schedules_loss(model) -> bool:
    """Whether ``model``'s compiled loss has per-epoch factors (needs :class:`LossSchedule`)."""
    return bool(getattr(getattr(model, "loss", None), "scheduled", False))


class ProgressBar(keras.callbacks.Callback):
    """A per-batch progress bar of the training loss, finished with a newline at the end of
    each epoch, so the epoch line that follows (:class:`EpochLogger`) starts on its own line.

    Replaces Keras' own bar, which also shows the evaluation split's metrics as ``val_*``
    (ours are test metrics, printed by :class:`EpochLogger`). Put it before the logger.
    """

    def __init__(self, steps: int | None = None):
        super().__init__()
        self.steps = steps
        self._bar = None
        self._seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._bar = keras.utils.Progbar(self.steps or self.params.get("steps"), unit_name="step")
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self._seen = batch + 1
        loss = (logs or {}).get("loss")
        self._bar.update(self._seen, [] if loss is None else [("loss", float(loss))])

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None:
            target = self._bar.target
            if target is None or self._seen < target:  # at the target Keras already finished it
                self._bar.update(self._seen, finalize=True)
            self._bar = None


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights + optimizer state) every ``every`` epochs, crash-safe.

    Files: ``<dir>/epoch-<e>.keras`` (the newest only) and ``<dir>/state.json``
    (``{"epoch": e, "model": "epoch-<e>.keras", ...}``), written in that order, each
    atomically; ``state.json`` commits the checkpoint (see the module docstring).

    With ``every`` = K > 1 (``--checkpoint-every K``) it saves after epochs K, 2K, … and
    after ``last_epoch`` (and when training stops early); a run killed in between resumes
    from the last saved epoch and redoes the later ones exactly (the data order and
    augmentation are a function of (seed, epoch), the lr of the optimizer's step count).
    """

    STATE = RunDir.STATE

    def __init__(self, directory, extra_state=None, guard: NonFiniteGuard | None = None,
                 every: int = 1, last_epoch: int | None = None):
        super().__init__()
        if every < 1:
            raise ConfigError(f"`every` must be >= 1 epoch. Received: every={every}")
        self.guard = guard
        self.dir = Path(directory)
        self.extra_state = extra_state or (lambda: {})
        self.every = int(every)
        self.last_epoch = last_epoch

    def due(self, epoch: int) -> bool:
        """Whether the checkpoint is written after (1-based) ``epoch``."""
        return epoch % self.every == 0 or epoch == self.last_epoch or (
            self.model is not None and bool(self.model.stop_training))

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.failure:
            return  # keep the last good checkpoint
        if not self.due(epoch + 1):
            return
        write_checkpoint(self.dir, self.model, epoch + 1, self.extra_state())

    @classmethod
    def load_state(cls, directory) -> dict | None:
        """The committed state (``epoch``, ``model``: the model file's path), or None."""
        return read_checkpoint(directory)


def _pct(v) -> str:
    return "  n/a" if v is None or v == "" else f"{100 * float(v):5.2f}%"


def _num(v) -> str:
    return "n/a" if v is None or v == "" else f"{float(v):.4f}"
