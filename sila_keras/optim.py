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

from sila_keras.errors import ConfigError


@keras.saving.register_keras_serializable(package="sila_keras")
class SGDL2(keras.optimizers.SGD):
    """SGD whose weight decay is coupled L2: ``g ← g + l2·w`` before momentum.

    Args:
        l2: the decay coefficient (PyTorch's ``weight_decay``), applied to every
            trainable variable.
        **kwargs: ``keras.optimizers.SGD`` arguments (learning_rate, momentum, …).

    Example:
        >>> opt = SGDL2(l2=5e-4, learning_rate=0.1, momentum=0.9)
    """

    def __init__(self, l2: float = 5e-4, **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(**kwargs)
        if l2 < 0:
            raise ConfigError(f"Weight decay must be >= 0. Received: l2={l2}")
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = gradient + ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


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
                   gamma: float, steps_per_epoch: int, nesterov: bool = False) -> SGDL2:
    """The papers' SGD: momentum, coupled weight decay, multi-step lr schedule."""
    return SGDL2(l2=weight_decay, learning_rate=step_schedule(lr, milestones, gamma, steps_per_epoch),
                 momentum=momentum, nesterov=nesterov)


def current_lr(optimizer) -> float:
    """The learning rate the optimizer applies at its current iteration."""
    lr = optimizer.learning_rate
    return float(ops.convert_to_numpy(lr))
