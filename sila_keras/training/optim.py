"""Optimizer and learning-rate schedule of the papers' recipe.

SGD with momentum, PyTorch-style *coupled* weight decay (the gradient gets
``wd·w`` added before the momentum update, as ``torch.optim.SGD(weight_decay=…)``
does and as the papers' code used), and a step schedule that multiplies the lr
by ``gamma`` at each milestone epoch. Keras' own ``weight_decay`` argument is
decoupled (AdamW-style), which is a different regulariser under momentum.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from sila_keras.training.config_groups import OPTIMIZERS, SCHEDULES
from sila_keras.utils.errors import ConfigError


class _GradientScales:
    """Mixin: a fixed factor per variable on the loss's gradient (``grad_scales``: variable
    path → factor, 1 for the others), applied by the subclass's ``update_step`` before weight
    decay — gradient equilibrium (:func:`sila_keras.core.levers.equilibrium_scales`).

    The factors are looked up by the optimizer's own variable index (as its slots are), so
    they apply to the replicas of a distributed variable too; they are part of the config,
    so a resumed run restores them with the optimizer.
    """

    def _init_grad_scales(self, grad_scales) -> None:
        scales = {str(k): float(v) for k, v in dict(grad_scales or {}).items()}
        bad = {k: v for k, v in scales.items() if not v > 0}
        if bad:
            raise ConfigError(f"Every gradient scale must be > 0. Received: {bad}")
        self.grad_scales = scales
        self._scale_of: list[float] = []

    def build(self, variables):
        super().build(variables)
        self._scale_of = [self.grad_scales.get(v.path, 1.0) for v in variables]

    def scaled_gradient(self, gradient, variable):
        """``gradient`` × the variable's factor (unchanged without ``grad_scales``)."""
        if not self.grad_scales:
            return gradient
        scale = self._scale_of[self._get_variable_index(variable)]
        return gradient if scale == 1.0 else gradient * ops.cast(scale, gradient.dtype)

    def _grad_scales_config(self) -> dict:
        return {"grad_scales": dict(self.grad_scales)} if self.grad_scales else {}


@keras.saving.register_keras_serializable(package="sila_keras")
class SGDL2(_GradientScales, keras.optimizers.SGD):
    """SGD whose weight decay is coupled L2: ``g ← g + l2·w`` before momentum.

    Args:
        l2: the decay coefficient (PyTorch's ``weight_decay``), applied to every
            trainable variable.
        grad_scales: variable path → factor on the loss's gradient, applied before the
            decay (``--grad-equilibrium``; default none).
        **kwargs: ``keras.optimizers.SGD`` arguments (learning_rate, momentum, …).

    Example:
        >>> opt = SGDL2(l2=5e-4, learning_rate=0.1, momentum=0.9)
    """

    def __init__(self, l2: float = 5e-4, grad_scales: dict | None = None, **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(**kwargs)
        if l2 < 0:
            raise ConfigError(f"Weight decay must be >= 0. Received: l2={l2}")
        self.l2 = float(l2)
        self._init_grad_scales(grad_scales)

    def update_step(self, gradient, variable, learning_rate):
        gradient = self.scaled_gradient(gradient, variable)  # the loss's gradient, not the decay
        if self.l2:
            gradient = gradient + ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2, **self._grad_scales_config()}


def step_schedule(lr: float, milestones: Sequence[int], gamma: float, steps_per_epoch: int):
    """lr × gamma^k after the k-th milestone epoch, as a step-based Keras schedule.

    Being a function of ``optimizer.iterations``, it continues exactly where it
    was when a run resumes from a checkpoint.
    """
    if not milestones:
        return float(lr)
    # PiecewiseConstantDecay switches when iterations > boundary; the first step of
    # epoch m (0-based iteration m·steps) must already use the decayed value.
    boundaries = [int(m) * int(steps_per_epoch) - 1 for m in milestones]
    values = [float(lr) * float(gamma) ** k for k in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def make_optimizer(lr: float, momentum: float, weight_decay: float, milestones: Sequence[int],
                   gamma: float, steps_per_epoch: int, nesterov: bool = False,
                   grad_scales: dict | None = None) -> SGDL2:
    """The papers' SGD: momentum, coupled weight decay, multi-step lr schedule (and the
    per-variable gradient factors of ``--grad-equilibrium``)."""
    return SGDL2(l2=weight_decay, learning_rate=step_schedule(lr, milestones, gamma, steps_per_epoch),
                 momentum=momentum, nesterov=nesterov, grad_scales=grad_scales)


def current_lr(optimizer) -> float:
    """The learning rate the optimizer applies at its current iteration."""
    lr = optimizer.learning_rate
    return float(ops.convert_to_numpy(lr))


# --------------------------------------------------------------------------- fine-tuning
# The recipe users expect when fine-tuning a pretrained backbone: AdamW or SGD, a step or
# cosine schedule with linear warmup, and a smaller lr on the pretrained backbone than on the
# new layers (classifier + SiLa heads). The paper's recipe (SGDL2 + step) is unchanged.



@keras.saving.register_keras_serializable(package="sila_keras")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step) × min(1, (step + 1) / warmup_steps)``: a linear ramp into any schedule.

    Example:
        >>> s = LinearWarmup(0.1, warmup_steps=10)
        >>> round(float(s(0)), 3)
        0.01
    """

    def __init__(self, schedule, warmup_steps: int):
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        base = self.schedule(step) if callable(self.schedule) else self.schedule
        ramp = ops.minimum(1.0, (ops.cast(step, "float32") + 1.0) / float(max(1, self.warmup_steps)))
        return ops.cast(base, "float32") * ramp

    def get_config(self):
        s = self.schedule
        return {"schedule": keras.saving.serialize_keras_object(s) if callable(s) else float(s),
                "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        s = config["schedule"]
        s = keras.saving.deserialize_keras_object(s) if isinstance(s, dict) else s
        return cls(s, config["warmup_steps"])


def make_schedule(kind: str, lr: float, *, steps_per_epoch: int, epochs: int,
                  milestones: Sequence[int] = (), gamma: float = 0.5, warmup_epochs: int = 0):
    """The lr schedule, a function of ``optimizer.iterations`` (so resume continues exactly).

    Args:
        kind: ``"step"`` (× gamma at each milestone epoch) or ``"cosine"`` (cosine decay to 0
            at ``epochs``).
        lr: the peak learning rate.
        steps_per_epoch: optimizer steps per epoch.
        epochs: the run's epochs (cosine's end).
        milestones: step schedule epochs.
        gamma: step schedule factor.
        warmup_epochs: linear warmup from ~0 to ``lr`` over this many epochs.

    Raises:
        ConfigError: unknown ``kind``.
    """
    warmup = int(warmup_epochs) * int(steps_per_epoch)
    if kind == "cosine":
        decay = max(1, (int(epochs) - int(warmup_epochs)) * int(steps_per_epoch))
        if warmup:
            return keras.optimizers.schedules.CosineDecay(0.0, decay, warmup_target=float(lr),
                                                          warmup_steps=warmup)
        return keras.optimizers.schedules.CosineDecay(float(lr), decay)
    if kind != "step":
        raise ConfigError(f"Unknown schedule '{kind}'. Available: {', '.join(SCHEDULES)}")
    base = step_schedule(lr, milestones, gamma, steps_per_epoch)
    return LinearWarmup(base, warmup) if warmup else base


class _BackboneLR:
    """Mixin: variables outside the new layers (the pretrained backbone) get
    ``learning_rate × backbone_lr_mult``; variables whose path starts with one of
    ``new_prefixes`` get the full learning rate."""

    def _init_backbone_lr(self, backbone_lr_mult: float, new_prefixes: Sequence[str]):
        if backbone_lr_mult < 0:
            raise ConfigError(f"`backbone_lr_mult` must be >= 0. Received: {backbone_lr_mult}")
        self.backbone_lr_mult = float(backbone_lr_mult)
        self.new_prefixes = tuple(new_prefixes)

    def update_step(self, gradient, variable, learning_rate):
        # The TF backend hands over the tf.Variable ("classifier/kernel:0"), others the Keras one.
        path = getattr(variable, "path", None) or variable.name
        if self.backbone_lr_mult != 1.0 and not path.startswith(self.new_prefixes):
            learning_rate = learning_rate * ops.cast(self.backbone_lr_mult, learning_rate.dtype)
        super().update_step(gradient, variable, learning_rate)

    def _backbone_lr_config(self) -> dict:
        return {"backbone_lr_mult": self.backbone_lr_mult, "new_prefixes": list(self.new_prefixes)}


@keras.saving.register_keras_serializable(package="sila_keras")
class FineTuneSGD(_BackboneLR, SGDL2):
    """:class:`SGDL2` with a separate lr multiplier for the pretrained backbone.

    Example:
        >>> opt = FineTuneSGD(backbone_lr_mult=0.1, new_prefixes=("head_", "classifier"))
    """

    def __init__(self, backbone_lr_mult: float = 1.0, new_prefixes: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self._init_backbone_lr(backbone_lr_mult, new_prefixes)

    def get_config(self):
        return {**super().get_config(), **self._backbone_lr_config()}


@keras.saving.register_keras_serializable(package="sila_keras")
class FineTuneAdamW(_BackboneLR, _GradientScales, keras.optimizers.AdamW):
    """Keras ``AdamW`` (decoupled weight decay) with a separate lr multiplier for the
    pretrained backbone (and the gradient factors of ``--grad-equilibrium``).

    Example:
        >>> opt = FineTuneAdamW(backbone_lr_mult=0.1, new_prefixes=("head_", "classifier"))
    """

    def __init__(self, backbone_lr_mult: float = 1.0, new_prefixes: Sequence[str] = (),
                 grad_scales: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self._init_backbone_lr(backbone_lr_mult, new_prefixes)
        self._init_grad_scales(grad_scales)

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(self.scaled_gradient(gradient, variable), variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), **self._backbone_lr_config(), **self._grad_scales_config()}


def optimizer_for(config, steps_per_epoch: int, grad_scales: dict | None = None):
    """The optimizer a :class:`~sila_keras.training.config.TrainConfig` asks for.

    The paper's recipe (``sgd`` + ``step``, no warmup, backbone lr × 1) is exactly
    :func:`make_optimizer`; anything else is the fine-tuning recipe. ``grad_scales``: the
    per-variable gradient factors of ``--grad-equilibrium``
    (:func:`sila_keras.core.levers.equilibrium_scales`).
    """
    from sila_keras.training.finetune import NEW_LAYER_PREFIXES

    o = config.optim
    opt, schedule, warmup, mult = o.optimizer, o.schedule, o.warmup_epochs, o.backbone_lr_mult
    if opt == "sgd" and schedule == "step" and not warmup and mult == 1.0:
        return make_optimizer(o.lr, o.momentum, o.weight_decay, o.milestones, o.gamma,
                              steps_per_epoch, o.nesterov, grad_scales)
    lr = make_schedule(schedule, o.lr, steps_per_epoch=steps_per_epoch, epochs=o.epochs,
                       milestones=o.milestones, gamma=o.gamma, warmup_epochs=warmup)
    common = {"backbone_lr_mult": mult, "new_prefixes": NEW_LAYER_PREFIXES, "learning_rate": lr,
              "grad_scales": grad_scales}
    if opt == "adamw":
        return FineTuneAdamW(weight_decay=o.weight_decay, **common)
    if opt != "sgd":
        raise ConfigError(f"Unknown optimizer '{opt}'. Available: {', '.join(OPTIMIZERS)}")
    return FineTuneSGD(l2=o.weight_decay, momentum=o.momentum, nesterov=o.nesterov, **common)
