"""The keras-tuner HyperModel of a SiLa β/λ search.

``build(hp)`` draws β (log-uniform), λ (uniform) and optionally M from ``hp``
and builds + compiles the SiLa model exactly as ``sila_keras.training.train`` does;
``fit(hp, model, …)`` runs ``sila_keras.training.train.fit``, the one training loop,
with the *validation* split (carved from the training images) as
``validation_data``. The test split never reaches this module: a
:class:`SearchData` holds only the two halves of the training split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import keras_tuner as kt
import numpy as np

from sila_keras.data import ImageData, holdout_split
from sila_keras.data.pipeline import steps_per_epoch
from sila_keras.training import train as sk_train
from sila_keras.training.batchnorm import precise_bn_callback
from sila_keras.training.callbacks import NonFiniteGuard
from sila_keras.training.config import TrainConfig
from sila_keras.utils.errors import ConfigError

EPOCHS_RUN = "epochs_run"  # extra per-trial value recorded with the metrics


@dataclass
class SearchData:
    """The images a search may see: training and validation parts of the *training* split.

    Quacks like :class:`sila_keras.data.ImageData` for ``sila_keras.training.train.build_model``
    (``num_classes``, ``input_shape``, ``channel_stats`` of the training part).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    class_names: list[str]
    source: str

    @classmethod
    def from_training_split(cls, data: ImageData, fraction: float, seed: int = 0) -> SearchData:
        """Hold out ``fraction`` of ``data.train_*`` (stratified); ``data.test_*`` is not read.

        Raises:
            ValueError: too few training images to leave both parts non-empty.
        """
        if len(data.train_y) < 2:
            raise ConfigError("A search needs at least 2 training images (train + validation). "
                             f"Received: {len(data.train_y)} training images from {data.source}")
        x_tr, y_tr, x_val, y_val = holdout_split(data.train_x, data.train_y, fraction, seed)
        if len(y_tr) == 0:
            raise ConfigError(f"`--val-split` {fraction} leaves no training images "
                             f"({len(data.train_y)} in total). Lower it or use more data.")
        return cls(x_tr, y_tr, x_val, y_val, list(data.class_names), data.source)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train_x.shape[1:])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the search's training part (same formula as ImageData)."""
        return ImageData.channel_stats(self)


class SilaHyperModel(kt.HyperModel):
    """SiLa model + loss with β, λ (and optionally M) drawn from ``hp``.

    Hyperparameters: ``beta`` (Float, log sampling), ``lam`` (Float, linear;
    ``Fixed`` when M = 2, where λ has no effect), ``heads`` (Int 2..M, only
    with ``tune_heads``). Every trial starts from the same random seed, so
    trials of the same architecture differ only by their hyperparameters.

    Args:
        config: the per-trial training config (β/λ/M replaced per trial).
        data: the search's training/validation images.
        beta_range: (lo, hi) of β, lo > 0.
        lam_range: (lo, hi) of λ.
        tune_heads: search M in ``2 … config.sila.heads``.

    Example:
        >>> cfg = TrainConfig.create("folder:data", "resnet20", epochs=1)
        >>> data = SearchData.from_training_split(  # doctest: +SKIP
        ...     sila_keras.training.train.load_data(cfg), 0.1)
        >>> hm = SilaHyperModel(cfg, data,  # doctest: +SKIP
        ...                     beta_range=(0.01, 1.0), lam_range=(0.1, 1.0))
        >>> tuner = kt.RandomSearch(hm,  # doctest: +SKIP
        ...                         objective=kt.Objective("val_head_1_acc", "max"),
        ...                         max_trials=5, directory="runs", project_name="tune")
        >>> tuner.search(epochs=1)  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, data: SearchData, beta_range=(0.01, 1.0),
                 lam_range=(0.1, 1.0), tune_heads: bool = False, name: str = "sila"):
        super().__init__(name=name)
        self.config = config
        self.data = data
        self.beta_range = tuple(float(v) for v in beta_range)
        self.lam_range = tuple(float(v) for v in lam_range)
        self.tune_heads = bool(tune_heads)
        self.steps = steps_per_epoch(len(data.train_y), config.optim.batch_size)

    # ----------------------------------------------------------------- hyperparameters

    def trial_config(self, hp: kt.HyperParameters) -> TrainConfig:
        """The TrainConfig of the trial whose values are in ``hp`` (declaring them if new)."""
        heads = (hp.Int("heads", 2, self.config.sila.heads, default=self.config.sila.heads)
                 if self.tune_heads else self.config.sila.heads)
        beta = hp.Float("beta", *self.beta_range, sampling="log",
                        default=_clip(self.config.sila.beta, *self.beta_range))
        if self.config.sila.heads >= 3:
            lam = hp.Float("lam", *self.lam_range, default=_clip(self.config.sila.lam, *self.lam_range))
        else:
            lam = hp.Fixed("lam", self.config.sila.lam)
        return self.config.replace(beta=float(beta), lam=float(lam), heads=int(heads), betas=None)

    # ----------------------------------------------------------------- keras-tuner API

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """Build and compile the SiLa model of this trial (``sila_keras.training.train`` chain)."""
        config = self.trial_config(hp)
        keras.utils.set_random_seed(config.run.seed)
        model = sk_train.build_model(config, self.data)
        return sk_train.compile_model(model, config, self.data.num_classes, self.steps)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, callbacks=(), epochs=None,
            initial_epoch: int = 0, verbose=None, **kwargs):
        """Train with ``sila_keras.training.train.fit`` on the training part; validate on the held-out part.

        ``epochs``/``initial_epoch`` come from the tuner (Hyperband sets them per
        trial). The returned History carries ``val_head_k_acc`` per epoch (the
        objective) and ``epochs_run``.

        Raises:
            keras_tuner.errors.FailedTrialError: the loss became NaN/Inf (the
                trial is recorded as FAILED and the search goes on).
            TypeError: data or other fit arguments were passed to ``search()``.
        """
        if args or kwargs:
            raise TypeError(
                "SilaHyperModel trains on its own SearchData; call tuner.search() with at most "
                f"epochs=, callbacks=, verbose=. Received: {len(args)} positional argument(s), "
                f"keywords={sorted(kwargs)}"
            )
        config = self.trial_config(hp)
        epochs = int(epochs or config.optim.epochs)
        config = config.with_epochs(epochs)  # the freeze and warmup phases fit in the trial
        d = self.data
        train_ds, val_ds, steps = sk_train.make_datasets(config, d.train_x, d.train_y, d.val_x,
                                                         d.val_y, initial_epoch)
        guard = NonFiniteGuard()
        precise = precise_bn_callback(model, config, d, None, steps, print_fn=None)  # keras: models
        extra = [precise] if precise is not None else []
        history = sk_train.fit(model, train_ds, val_ds, epochs=epochs, steps=steps,
                               initial_epoch=initial_epoch, callbacks=[guard, *extra, *callbacks],
                               verbose=config.run.verbose if verbose is None else verbose,
                               freeze_epochs=config.optim.freeze_epochs)
        if guard.failure:
            raise kt.errors.FailedTrialError(guard.failure)
        n = len(history.epoch)
        history.history[EPOCHS_RUN] = [float(n)] * n
        return history

    # ----------------------------------------------------------------- checks

    def logged_metrics(self, heads: int | None = None) -> list[str]:
        """The validation metric names a trial with M = ``heads`` logs (``val_head_1_acc``, …).

        Builds that model and evaluates it (eagerly, so nothing is traced) on two
        validation images, so the names are the ones Keras really logs (a wrong
        objective name would otherwise fail every trial with a KeyError,
        keras-tuner #464/#567).
        """
        hp = kt.HyperParameters()
        if self.tune_heads:
            hp.values["heads"] = int(heads or 2)
        model = self.build(hp)
        model.run_eagerly = True
        n = min(2, len(self.data.val_y))
        logs = model.evaluate(self.data.val_x[:n].astype("float32"), self.data.val_y[:n],
                              batch_size=n, verbose=0, return_dict=True)
        keras.backend.clear_session()
        return [f"val_{k}" for k in logs]

    def check_objective(self, objective: str, min_heads: int) -> None:
        """Fail before the search if ``objective`` is not logged by the smallest model searched.

        Raises:
            ValueError: naming the valid objectives.
        """
        names = self.logged_metrics(min_heads)
        if objective not in names:
            valid = [n.removeprefix("val_") for n in names if re.fullmatch(r"val_head_\d+_acc", n)]
            raise ConfigError(f"Unknown objective '{objective}': the model logs no such metric. "
                             f"Valid objectives: {', '.join(valid)}. Received: objective={objective!r}")


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(float(v), lo), hi)
