"""The four digit-pair networks of Deng & Li (project 1, §2, Table 1), as Keras functional models.

All take ``pair``: float32 ``(B, 14, 14, 2)`` (channels-last; raw 0–255 scale). A
weightless ``Rescaling`` layer, ``normalize``, computes ``(x − mean) / std``; the
defaults (0, 1) leave the raw pixels, which is what the paper's code fed its networks
and what its learning rates were tuned for (``--normalize`` standardizes instead).

========  ===========================================================  ==========  =========
arch      layers                                                       paper       here
========  ===========================================================  ==========  =========
fc        flatten → 5 × [Dense → ReLU → BatchNorm] (512-256-128-64-32)  377,826     377,826
          → Dense(2)
conv      4 × [Conv → ReLU → BatchNorm] (8@5×5, 16@3×3, 32@4×4,        37,005      37,005
          32@4×4, valid) → Dense(81) → ReLU → Dense(2)
parallel  two digit nets (conv stack without BatchNorm, 1 input        69,886      69,886
          channel → Dense(64) → ReLU → Dense(10)), no sharing;
          comparison = Dense(2) on [ReLU(digit_1), ReLU(digit_2)]
siamese   the same with ONE digit net applied to both digits           34,964      34,964
========  ===========================================================  ==========  =========

Counts are *trainable* parameters (as PyTorch's ``p.numel()`` sum: BatchNorm's
moving statistics are not counted). The paper's text says the CNN has "3 linear
layers", but its count 37,005 is met exactly by two (128→81→2); the layer sizes
above reproduce all four counts of Table 1 and follow the authors' public code.
Weights are initialised as PyTorch does (uniform ±1/√fan_in for kernels and biases).

Outputs (a dict; also layer names): ``comparison`` (2 logits; class 1 = first ≤
second) for every arch, plus ``digit_1``/``digit_2`` (10 logits each) for
parallel/siamese. With ``sila=True`` (SiLa, beyond the paper) a second comparison
head ``comparison_2`` is computed, without weights, from the two digit posteriors
(:class:`DigitComparison`) and ``sila_logits`` = concat(comparison, comparison_2)
is trained with :class:`sila_keras.core.losses.SilaLoss` (N = 2 classes, M = 2 sets).
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from sila_keras.core.heads import SILA_OUTPUT, sila_output
from sila_keras.utils.errors import ModelError

ARCHS = ("fc", "conv", "parallel", "siamese")
PAIR_INPUT = (14, 14, 2)  # channels-last: [..., 0] first digit, [..., 1] second
TWO_BRANCH = ("parallel", "siamese")
PAPER_PARAMS = {"fc": 377_826, "conv": 37_005, "parallel": 69_886, "siamese": 34_964}
# Table 1: the best (lr, batch size) of the paper's grid and its mean test accuracy (10 rounds).
PAPER_TABLE1 = {
    "fc": {"lr": 0.1, "batch_size": 100, "accuracy": 0.8065},
    "conv": {"lr": 0.05, "batch_size": 25, "accuracy": 0.8087},
    "parallel": {"lr": 0.01, "batch_size": 100, "accuracy": 0.8836},
    "siamese": {"lr": 0.005, "batch_size": 50, "accuracy": 0.9114},
}
# Table 2 (20 rounds, all four at lr 0.005, batch 50): (share, aux) → (accuracy, std).
PAPER_TABLE2 = {
    (True, True): (0.9070, 0.0162),
    (True, False): (0.8390, 0.0109),
    (False, True): (0.8842, 0.0124),
    (False, False): (0.7941, 0.0122),
}
TABLE2_HPARAMS = {"lr": 0.005, "batch_size": 50}


def check_arch(arch: str) -> str:
    """Return ``arch`` or raise the lookup error listing the valid names."""
    if arch not in ARCHS:
        raise ModelError(f"Unknown architecture '{arch}'. Available: {', '.join(ARCHS)}")
    return arch


def _torch_init(fan_in: int) -> dict:
    """Kernel and bias initializers of PyTorch's Linear/Conv2d: U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return {"kernel_initializer": keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"),
            "bias_initializer": keras.initializers.RandomUniform(-bound, bound)}


def _dense(units: int, fan_in: int, name: str) -> layers.Dense:
    return layers.Dense(units, name=name, **_torch_init(fan_in))


def _conv(filters: int, kernel: int, in_channels: int, name: str) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel, name=name, **_torch_init(in_channels * kernel * kernel))


def _bn(name: str) -> layers.BatchNormalization:
    # PyTorch BatchNorm defaults: momentum 0.1 (Keras 0.9), eps 1e-5.
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


CONV_STACK = ((8, 5), (16, 3), (32, 4), (32, 4))  # 14 → 10 → 8 → 5 → 2


def _conv_stack(x, in_channels: int, batch_norm: bool, prefix: str):
    c = in_channels
    for i, (filters, kernel) in enumerate(CONV_STACK, start=1):
        x = layers.ReLU(name=f"{prefix}conv{i}_relu")(_conv(filters, kernel, c, f"{prefix}conv{i}")(x))
        if batch_norm:
            x = _bn(f"{prefix}conv{i}_bn")(x)
        c = filters
    return layers.Flatten(name=f"{prefix}flatten")(x)


def _normalize(inputs, mean: float, std: float):
    return layers.Rescaling(1.0 / std, offset=-mean / std, name="normalize")(inputs)


def build_fc(mean: float = 0.0, std: float = 1.0) -> keras.Model:
    """FconnNet (§2.1): 377,826 trainable parameters."""
    inputs = keras.Input(PAIR_INPUT, name="pair")
    x = layers.Flatten(name="flatten")(_normalize(inputs, mean, std))
    fan_in = math.prod(PAIR_INPUT)
    for i, units in enumerate((512, 256, 128, 64, 32), start=1):
        x = layers.ReLU(name=f"fc{i}_relu")(_dense(units, fan_in, f"fc{i}")(x))
        x = _bn(f"fc{i}_bn")(x)
        fan_in = units
    out = _dense(2, fan_in, "comparison")(x)
    return keras.Model(inputs, {"comparison": out}, name="fc")


def build_conv(mean: float = 0.0, std: float = 1.0) -> keras.Model:
    """ConvNet (§2.2): 37,005 trainable parameters."""
    inputs = keras.Input(PAIR_INPUT, name="pair")
    x = _conv_stack(_normalize(inputs, mean, std), 2, batch_norm=True, prefix="")
    x = layers.ReLU(name="fc1_relu")(_dense(81, 32 * 2 * 2, "fc1")(x))
    out = _dense(2, 81, "comparison")(x)
    return keras.Model(inputs, {"comparison": out}, name="conv")


def build_digit_net(name: str = "digit_net") -> keras.Model:
    """The digit sub-network of parallelConv/Siamese (§2.3): 14×14×1 → 10 logits, 34,922 params."""
    inputs = keras.Input((14, 14, 1), name=f"{name}_image")
    x = _conv_stack(inputs, 1, batch_norm=False, prefix="")
    x = layers.ReLU(name="fc1_relu")(_dense(64, 32 * 2 * 2, "fc1")(x))
    return keras.Model(inputs, _dense(10, 64, "logits")(x), name=name)


@keras.saving.register_keras_serializable(package="sila_keras")
class DigitComparison(layers.Layer):
    """Comparison logits from two digit posteriors, with no weights (the ``--sila`` head).

    ``P(first ≤ second) = Σ_{i ≤ j} p₁(i)·p₂(j)`` with ``p_k = softmax(digit_k)``;
    the layer returns ``[log(1 − P), log P]`` (class 1 = first ≤ second, as the
    ``comparison`` head), so that its softmax is exactly ``(1 − P, P)``.

    Example:
        >>> import numpy as np
        >>> d = np.full((1, 10), -30.0, "float32")
        >>> a, b = d.copy(), d.copy(); a[0, 3] = b[0, 7] = 30.0
        >>> bool(np.argmax(DigitComparison()([a, b])[0]) == 1)
        True
    """

    def __init__(self, eps: float = 1e-7, **kwargs):
        super().__init__(**kwargs)
        self.eps = float(eps)

    def call(self, inputs):
        d1, d2 = inputs
        p1 = ops.softmax(ops.cast(d1, "float32"), axis=-1)
        p2 = ops.softmax(ops.cast(d2, "float32"), axis=-1)
        n = d1.shape[-1]
        upper = ops.triu(ops.ones((n, n), "float32"))  # upper[i, j] = 1 if i <= j
        p_le = ops.sum(ops.matmul(p1, upper) * p2, axis=-1, keepdims=True)
        p_le = ops.clip(p_le, self.eps, 1.0 - self.eps)
        return ops.concatenate([ops.log(1.0 - p_le), ops.log(p_le)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


def build_two_branch(share: bool, sila: bool = False, mean: float = 0.0,
                     std: float = 255.0) -> keras.Model:
    """parallelConv (``share=False``, §2.3) or Siamese (``share=True``, §2.4).

    With ``share=True`` ONE ``digit_net`` model (one set of variables) is called on
    both digits; otherwise two independent ones, ``digit_net_1`` and ``digit_net_2``.
    """
    inputs = keras.Input(PAIR_INPUT, name="pair")
    x = _normalize(inputs, mean, std)
    first, second = x[..., 0:1], x[..., 1:2]
    if share:
        net = build_digit_net("digit_net")
        nets = (net, net)
    else:
        nets = (build_digit_net("digit_net_1"), build_digit_net("digit_net_2"))
    d1 = layers.Identity(name="digit_1")(nets[0](first))
    d2 = layers.Identity(name="digit_2")(nets[1](second))
    both = layers.Concatenate(name="digits")([layers.ReLU(name="digit_1_relu")(d1),
                                              layers.ReLU(name="digit_2_relu")(d2)])
    comparison = _dense(2, 20, "comparison")(both)
    outputs = {"comparison": comparison, "digit_1": d1, "digit_2": d2}
    if sila:
        comparison_2 = DigitComparison(name="comparison_2")([d1, d2])
        outputs["comparison_2"] = comparison_2
        outputs[SILA_OUTPUT] = sila_output([comparison, comparison_2], mode="pairs",
                                           names=["comparison", "comparison_2"])
    name = "siamese" if share else "parallel"
    return keras.Model(inputs, outputs, name=name + ("_sila" if sila else ""))



def build_pair_model(arch: str, share: bool | None = None, sila: bool = False,
                     mean: float = 0.0, std: float = 1.0) -> keras.Model:
    """One of the four networks by name.

    Args:
        arch: ``fc``, ``conv``, ``parallel`` or ``siamese``.
        share: weight sharing between the two digit nets; None = the arch's own
            (siamese True, parallel False). ``False`` turns siamese into parallel.
        sila: add the ``comparison_2`` head and ``sila_logits`` (parallel/siamese only).
        mean: subtracted from the input pixels by the ``normalize`` layer (0: raw, as the paper).
        std: the input pixels are divided by it (1: raw).

    Example:
        >>> build_pair_model("siamese").count_params()
        34964
    """
    check_arch(arch)
    if arch in TWO_BRANCH:
        return build_two_branch(arch == "siamese" if share is None else share, sila, mean, std)
    if share is not None:
        raise ModelError("Weight sharing applies only to parallel/siamese. "
                         f"Received: arch={arch}, share={share}")
    if sila:
        raise ModelError(f"--sila needs the digit heads of parallel/siamese. Received: arch={arch}")
    return (build_fc if arch == "fc" else build_conv)(mean, std)


def trainable_count(model: keras.Model) -> int:
    """Trainable parameters, each shared variable counted once."""
    return int(sum(math.prod(v.shape) for v in model.trainable_weights))
