"""``--mode dynamic``: SiLa on the early exits of a multi-exit network (paper B §3.3, Eq. 11).

The C classifiers of an early-exit network (MSDNet, :mod:`sila_keras.models.msdnet`)
are concatenated into the Siamese Labels ``z̄ = concat(f_1 … f_C)`` and trained with

    L_msd_sila = Σ_c β_c · CE(z̄, y + (c-1)·N)        (Eq. 11, β_c = 1 by default)

``--no-sila`` trains the original MSDNet instead: Σ_c β_c · CE_N(f_c, y).

**Head numbering differs from SilaNet**: here ``head_1`` is the *shallowest*
exit and ``head_C`` the deepest (the full network), in the order a test image
reaches them. (In a SilaNet, ``head_1`` is the base classifier.)

After training, :func:`sila_keras.modes.anytime.evaluate_dynamic` runs MSDNet's test protocols,
chosen by ``--dynamic-eval`` (``TrainConfig.dynamic_eval``, :data:`EVALUATIONS`):

* ``anytime``: anytime prediction only (``anytime.csv/png``); the network trains on **all**
  training images, as in MSDNet's anytime recipe;
* ``budgeted``: budgeted batch classification only (``budgeted.csv/png``);
* ``both`` (the default, one run for both of paper B's figures): both.

Budgeted evaluation chooses exit thresholds on images the network did not train on:
for it, a class-balanced 10 % of the training images is set aside before training
(MSDNet holds out 5,000 of CIFAR's 50,000, ``--use-valid``), kept by the mode as
:attr:`DynamicMode.holdout`; its size is a note of the run's data and
``summary.json``'s ``dynamic.holdout_examples``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sila_keras.modes.base import Mode, last_head_metrics, option, register_mode
from sila_keras.utils.errors import ConfigError, ModelError

HOLDOUT_FRACTION = 0.1
# --dynamic-eval: the test protocols run after training (None in a config means DEFAULT_EVAL).
EVALUATIONS = ("anytime", "budgeted", "both")
DEFAULT_EVAL = "both"


def evaluation_of(config) -> str:
    """The ``--dynamic-eval`` of a ``TrainConfig`` or ``config.json`` dict (older runs: both)."""
    return option(config, "dynamic_eval") or DEFAULT_EVAL


def needs_holdout(config) -> bool:
    """Whether the run sets training images aside: only budgeted evaluation needs them."""
    return evaluation_of(config) != "anytime"


def build_dynamic_model(backbone: str, num_classes: int, input_shape: Sequence[int] = (32, 32, 3),
                        mean=None, std=None, name: str | None = None,
                        **backbone_kwargs) -> keras.Model:  # noqa: F821  (keras is imported inside)
    """A multi-exit backbone with its exits as ``head_1 … head_C`` (shallow → deep).

    Args:
        backbone: a registered backbone whose builder returns ``exits`` (``msdnet``).
        num_classes: N.
        input_shape: ``(H, W, C)``.
        mean: per-channel mean of the training pixels.
        std: per-channel std of the training pixels.
        name: model name (default ``dynamic_<backbone>``).
        **backbone_kwargs: passed to the builder (e.g. ``blocks=5``).

    Returns:
        A functional model, input ``image`` (raw pixels), output ``sila_logits`` ``(B, C·N)``.

    Raises:
        ValueError: unknown backbone, input too small, or a backbone without exits.

    Example:
        >>> m = build_dynamic_model("msdnet", 10, blocks=2, base=1, step=1)
        >>> m.output.shape
        (None, 20)
    """
    import keras
    from keras import layers

    from sila_keras.core.heads import build_backbone, head_name, sila_output

    inputs, out = build_backbone(backbone, num_classes, input_shape, mean, std, **backbone_kwargs)
    if not out.exits:
        raise ModelError(
            f"--mode dynamic needs a multi-exit backbone (one with early-exit classifiers, "
            f"e.g. msdnet); backbone '{backbone}' has none. Received: model={backbone}"
        )
    heads = [layers.Identity(name=head_name(c))(z) for c, z in enumerate(out.exits, start=1)]
    return keras.Model(inputs, sila_output(heads, mode="dynamic"), name=name or f"dynamic_{backbone}")


def holdout_for(data, seed: int = 0, fraction: float = HOLDOUT_FRACTION, holdout=None):
    """``((x, y), source)``: ``holdout`` (set aside before training), else a training slice.

    :meth:`DynamicMode.prepare_data` keeps a truly held-out slice as ``mode.holdout``;
    without it, a class-balanced ``fraction`` of the training images (seen in training,
    so the thresholds are optimistic) is used.
    """
    from sila_keras.data import holdout_split

    if holdout is not None:
        return holdout, "held-out training slice (not trained on)"
    if len(data.train_y) < 2:
        return (data.train_x, data.train_y), "training images (seen in training)"
    _, _, x_val, y_val = holdout_split(data.train_x, data.train_y, fraction, seed)
    return (x_val, y_val), "training slice (seen in training)"


@register_mode
class DynamicMode(Mode):
    """Dynamic SiLa (Eq. 11) or, with ``--no-sila``, MSDNet's sum of per-exit CE.

    Attributes:
        holdout: ``(x, y)`` training images set aside by :meth:`prepare_data` to choose
            the exit thresholds, or ``None`` (before it ran, or too few images).
    """

    name = "dynamic"
    help = "multi-exit network (paper B)"
    options = ("no_sila", "dynamic_eval")

    def __init__(self, config):
        super().__init__(config)
        self.holdout = None

    def prepare_data(self, data):
        """For budgeted evaluation, set a class-balanced :data:`HOLDOUT_FRACTION` of the
        training images aside (kept as :attr:`holdout`); the size, or that all images are
        trained on, is noted in ``data.notes``. Too few images: unchanged."""
        evaluation = evaluation_of(self.config)
        if not needs_holdout(self.config):
            return data.with_train(data.train, f"all {len(data.train_y)} training images are "
                                   f"trained on (--dynamic-eval {evaluation}: no hold-out)")
        if len(data.train_y) < 2 * max(2, data.num_classes):
            return data
        from sila_keras.data import holdout_indices

        # The training split is an image set (possibly streamed): split positions; the
        # hold-out (a tenth) is decoded into arrays for choosing the thresholds.
        tr, val = holdout_indices(data.train_y, HOLDOUT_FRACTION, self.config.run.seed)
        self.holdout = (data.train.take(val).to_array(), data.train_y[val])
        note = (f"{len(val)} of {len(data.train_y)} training images held out to choose the "
                f"exit thresholds (--dynamic-eval {evaluation}); trained on the other {len(tr)}")
        return data.with_train(data.train.take(tr), note)

    def build_model(self, data):
        mean, std = data.channel_stats()
        return build_dynamic_model(self.config.net.model, data.num_classes, data.input_shape, mean, std,
                                   **self.config.net.backbone_kwargs)

    def loss(self, num_classes: int, num_heads: int):
        return exits_loss(num_classes, num_heads, self.config.sila.betas, sila=not self.config.dynamic.no_sila)

    def metrics(self, num_classes: int, num_heads: int) -> list:
        """Also Top-5 and NLL of the last (deepest) exit."""
        return super().metrics(num_classes, num_heads) + last_head_metrics(num_classes, num_heads)

    def evaluate(self, model, data, run_dir, rows: list[dict]) -> dict:
        """``dynamic``: the ``--dynamic-eval`` results (and their CSV/PNG files)."""
        from sila_keras.modes.anytime import evaluate_dynamic

        evaluation = evaluation_of(self.config)
        holdout, source = None, None
        if needs_holdout(self.config):
            holdout, source = holdout_for(data, self.config.run.seed, holdout=self.holdout)
        result = evaluate_dynamic(model, data, run_dir, holdout=holdout,
                                  batch_size=self.config.optim.batch_size, title=self.config.net.model,
                                  threshold_source=source, anytime=evaluation != "budgeted",
                                  budgeted=evaluation != "anytime")
        return {"dynamic": {"evaluation": evaluation, **result}}

    @classmethod
    def label(cls, config) -> str:
        return "MSDNet" if option(config, "no_sila") else "Dynamic SiLa"


def exits_loss(num_classes: int, num_exits: int, betas: Sequence[float] | None = None,
               sila: bool = True):
    """Eq. 11 (``SilaLoss`` with β_c, default all 1) or, with ``sila=False``, Σ_c β_c·CE_N.

    Raises:
        ConfigError: ``len(betas) != num_exits``.
    """
    from sila_keras.core.losses import MutualLoss, SilaLoss

    betas = [1.0] * num_exits if betas is None else [float(b) for b in betas]
    if len(betas) != num_exits:
        raise ConfigError(
            f"--mode dynamic trains {num_exits} classifiers (exits), so --betas needs {num_exits} "
            f"weights. Received: betas={betas}"
        )
    if sila:
        return SilaLoss(num_classes, betas=betas)
    return MutualLoss(num_classes, betas=betas, sila=False, dml=False, name="exits_ce")
