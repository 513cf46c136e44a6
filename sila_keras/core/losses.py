"""The Siamese Labels (SiLa) loss.

A SiLa classifier emits M "sets" of N logits, concatenated into one M·N vector
(`sila_logits`). Every set is trained against the *same* class, shifted by its
set offset, under a single M·N-way softmax:

* Paper A (SilaNet, Gan et al., Eq. 4 and Fig. 1)::

      L = CE(z, y) + Σ_{i=1}^{M-1} λ^(i-1)·β · CE(z, y + i·N)

* Paper B (SiLa learning, Eq. 10/11), an explicit weight per set::

      L = Σ_{c=1}^{M} β_c · CE(z, y + (c-1)·N)

Here CE(z, t) = -log softmax(z)[t] over all M·N logits. One log-softmax is
computed and M entries are gathered from it. With M = 1 both reduce to plain
sparse categorical cross-entropy (the base model).

:class:`MutualLoss` generalises the loss to C jointly trained classifiers (two
networks in ``--mode mutual``/``dml``, the exits of ``--mode dynamic --no-sila``):
the SiLa loss or one N-way CE per classifier, optionally with the Deep Mutual
Learning KL terms (Zhang et al. 2018)::

    L_DML = Σ_c KL(p_other ‖ p_c),  p = N-way softmax of one classifier's own logits

Shipping a shallow head: :func:`ship_head_weights` gives head k the weight 1 of
head 1, and :func:`distill_loss` adds self-distillation from the deepest head (the teacher,
held constant) into the shallower ones, with the same KL term as DML at a temperature T::

    L_KD = W · Σ_{k=2}^{M} T² · KL(p_1^T ‖ p_k^T),  p^T = softmax(z / T) of one head's block

Per-epoch levers (:mod:`sila_keras.core.levers`): ``ramp_betas`` multiplies the weights of
sets 2..M by a factor that grows from 0 to 1 over the first epochs, ``distill_start`` /
``distill_ramp`` the distillation weight W by one that is 0 before its start epoch; each is
held in a variable that :meth:`SilaLoss.set_epoch` sets at the start of every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from sila_keras.core.levers import check_epochs, ramp
from sila_keras.utils.errors import ConfigError


def set_weights(num_sets: int, beta: float = 0.1, lam: float = 0.5,
                betas: Sequence[float] | None = None) -> list[float]:
    """The weight of each label set in the SiLa loss.

    Args:
        num_sets: M, the number of label sets (heads).
        beta: β, weight of the first Siamese set (paper A).
        lam: λ, decay of β for each further set (paper A).
        betas: explicit per-set weights β_1..β_M (paper B); overrides beta/lam.

    Returns:
        A list of M floats: ``[1, β, λβ, λ²β, …]`` or ``betas``.

    Raises:
        ValueError: negative weights, or ``len(betas) != num_sets``.
    """
    if num_sets < 1:
        raise ConfigError(f"The number of label sets must be >= 1. Received: num_sets={num_sets}")
    if betas is not None:
        betas = [float(b) for b in betas]
        if len(betas) != num_sets:
            raise ConfigError(
                "`betas` needs one weight per label set (head). "
                f"Received: len(betas)={len(betas)} for {num_sets} sets (betas={betas})"
            )
        if any(b < 0 for b in betas):
            raise ConfigError(f"Every entry of `betas` must be >= 0. Received: betas={betas}")
        return betas
    if beta < 0:
        raise ConfigError(f"`beta` must be >= 0 (it weights the Siamese label sets). Received: beta={beta}")
    if lam < 0:
        raise ConfigError(f"`lam` must be >= 0 (it is the decay of beta per set). Received: lam={lam}")
    return [1.0] + [float(lam) ** (i - 1) * float(beta) for i in range(1, num_sets)]


def ship_head_weights(num_sets: int, head: int, beta: float = 0.1,
                      lam: float = 0.5) -> list[float]:
    """The set weights of ``--ship-head k``: paper A's ``[1, β, λβ, …]`` with head k's
    weight raised to 1, the weight of head 1 (head k becomes a first-class target).

    Args:
        num_sets: M.
        head: k in 1..M; k = 1 leaves the weights unchanged (head 1 already weighs 1).
        beta: β of paper A.
        lam: λ of paper A.

    Returns:
        The M weights, e.g. ``[1, 0.1, 1]`` for M = 3, k = 3, β = 0.1, λ = 0.5.

    Raises:
        ConfigError: k outside 1..M, or a negative β/λ.

    Example:
        >>> ship_head_weights(3, 3)
        [1.0, 0.1, 1.0]
    """
    weights = set_weights(num_sets, beta, lam)
    if not 1 <= int(head) <= num_sets:
        raise ConfigError(f"`--ship-head` must name a head in 1..{num_sets} (1 = the base "
                          f"model, {num_sets} = the shallowest). Received: ship_head={head}")
    weights[int(head) - 1] = 1.0
    return weights


def distill_loss(y_pred, num_sets: int, num_classes: int, temperature: float = 1.0):
    """Per-example self-distillation, Σ_{k≥2} T²·KL(p_1^T ‖ p_k^T).

    The teacher is head 1 (the deepest classifier; its distribution is a constant target,
    :func:`dml_kl`'s ``stop_gradient``), the students are heads 2..M; each distribution is
    the N-way softmax of one head's own logit block at temperature T, and T² keeps the
    gradient scale independent of T (Hinton et al. 2015; self-distillation as in Zhang et
    al. 2019, "Be Your Own Teacher").

    Returns:
        ``(B,)`` float32 (zeros when M = 1).
    """
    blocks = split_logits(y_pred, num_sets, num_classes)
    t = float(temperature)
    terms = [dml_kl(z / t, blocks[0] / t) for z in blocks[1:]]
    if not terms:
        return ops.zeros_like(blocks[0][:, 0])
    return (t * t) * sum(terms)


def sila_loss(y_true, y_pred, num_classes: int, weights: Sequence[float],
              label_smoothing: float = 0.0, aux_scale=None):
    """Per-example SiLa loss.

    Args:
        y_true: integer class labels, shape ``(B,)`` or ``(B, 1)``.
        y_pred: logits, shape ``(B, M·N)``.
        num_classes: N.
        weights: the M set weights (see :func:`set_weights`).
        label_smoothing: ε; each set's target puts 1 − ε on its class and ε spread evenly
            over that set's N entries (the same M·N softmax). 0 = the papers' loss.
        aux_scale: a scalar (a tensor or variable) multiplying the weights of sets 2..M
            (``--ramp-betas``); None = 1.

    Returns:
        A float tensor of shape ``(B,)``: the loss of each example.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    width = y_pred.shape[-1]
    num_sets = len(weights)
    if width is not None and width != num_sets * num_classes:
        raise ConfigError(
            f"SiLa logits must have width M·N = {num_sets}·{num_classes} = "
            f"{num_sets * num_classes} for {num_sets} label sets of {num_classes} classes. "
            f"Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    logits = ops.cast(y_pred, "float32")
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    log_probs = ops.log_softmax(logits, axis=-1)
    offsets = ops.arange(num_sets, dtype="int32") * num_classes
    targets = labels[:, None] + offsets[None, :]  # (B, M)
    picked = ops.take_along_axis(log_probs, targets, axis=-1)  # (B, M)
    if label_smoothing:  # ε spread over each set's own N entries
        per_set = ops.mean(ops.reshape(log_probs, (-1, num_sets, num_classes)), axis=-1)
        picked = (1.0 - float(label_smoothing)) * picked + float(label_smoothing) * per_set
    w = ops.convert_to_tensor(list(weights), dtype="float32")
    if aux_scale is not None:  # sets 2..M × aux_scale, set 1 as it is
        aux = ops.convert_to_tensor([0.0] + [1.0] * (num_sets - 1), dtype="float32")
        w = w * (1.0 - aux + aux * ops.cast(aux_scale, "float32"))
    return -ops.sum(picked * w[None, :], axis=-1)


@keras.saving.register_keras_serializable(package="sila_keras")
class SilaLoss(keras.losses.Loss):
    """SiLa loss as a Keras ``Loss`` (paper A Eq. 4, or paper B Eq. 10 with ``betas``).

    ``call`` returns one value per example so that Keras scales it correctly
    under ``tf.distribute`` strategies.

    Args:
        num_classes: N, the number of real classes.
        beta: β, weight of the first Siamese set (paper A). Default 0.1.
        lam: λ, decay of β per further set (paper A). Default 0.5.
        betas: explicit weights β_1..β_M, one per set (paper B). When given,
            ``beta``/``lam`` are ignored and M must equal ``len(betas)``.
        label_smoothing: ε in [0, 1) (see :func:`sila_loss`). Default 0.
        distill: W, weight of the self-distillation term (:func:`distill_loss`).
            Default 0 (off).
        distill_t: T, its temperature. Default 1 (the KL of DML).
        ramp_betas: E; the weights of sets 2..M are multiplied by
            :func:`~sila_keras.core.levers.ramp` ``(epoch, 0, E)`` (``--ramp-betas``; the
            epoch is set by :meth:`set_epoch`). Default 0 (off).
        distill_start: S; the distillation term is off before epoch S (0-based) …
        distill_ramp: R; … and grows linearly to W over R epochs from there: W ×
            ``ramp(epoch, S, R)`` (``--distill-start``/``--distill-ramp``). Default 0, 0
            (W from the first epoch).
        name: loss name.

    Example:
        >>> import numpy as np
        >>> loss = SilaLoss(num_classes=10, beta=0.1, lam=0.5)
        >>> float(loss(np.array([3]), np.zeros((1, 30)))) > 0
        True
    """

    def __init__(self, num_classes: int, beta: float = 0.1, lam: float = 0.5,
                 betas: Sequence[float] | None = None, name: str = "sila_loss",
                 label_smoothing: float = 0.0, distill: float = 0.0, distill_t: float = 1.0,
                 ramp_betas: int = 0, distill_start: int = 0, distill_ramp: int = 0,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if int(num_classes) < 1:
            raise ConfigError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
        check_distill(distill, distill_t)
        self.distill, self.distill_t = float(distill), float(distill_t)
        self.ramp_betas = check_epochs("ramp_betas", ramp_betas)
        self.distill_start = check_epochs("distill_start", distill_start)
        self.distill_ramp = check_epochs("distill_ramp", distill_ramp)
        # Per-epoch factors (--ramp-betas, --distill-start/--distill-ramp): variables the
        # training loop sets at the start of every epoch (set_epoch); created only when used,
        # so the paper's loss is unchanged.
        first = self.factors(0)
        self._aux_scale = _factor("aux_scale", first["aux"]) if self.ramp_betas else None
        delayed = self.distill and (self.distill_start or self.distill_ramp)
        self._distill_scale = _factor("distill_scale", first["distill"]) if delayed else None
        self.num_classes = int(num_classes)
        self.beta = float(beta)
        self.lam = float(lam)
        self.betas = None if betas is None else [float(b) for b in betas]
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"`label_smoothing` must be in [0, 1). Received: {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if self.betas is not None:
            set_weights(len(self.betas), betas=self.betas)  # validates entries
        else:
            set_weights(2, beta=self.beta, lam=self.lam)  # validates beta / lam

    def num_sets_for(self, width: int) -> int:
        """M for a logits width, checking that the width is a multiple of N."""
        if width % self.num_classes:
            raise ConfigError(
                f"SiLa logits width must be a multiple of num_classes={self.num_classes}. "
                f"Received: width={width}"
            )
        return width // self.num_classes

    def weights_for(self, width: int) -> list[float]:
        """The M set weights for a logits width."""
        m = self.num_sets_for(width)
        return set_weights(m, self.beta, self.lam, self.betas)

    @property
    def scheduled(self) -> bool:
        """Whether a factor changes with the epoch: the training loop then calls
        :meth:`set_epoch` at the start of every epoch."""
        return self._aux_scale is not None or self._distill_scale is not None

    def factors(self, epoch: int) -> dict:
        """The per-epoch factors at ``epoch`` (0-based): ``aux`` multiplies the weights of
        sets 2..M, ``distill`` the distillation weight W."""
        return {"aux": ramp(epoch, 0, self.ramp_betas),
                "distill": ramp(epoch, self.distill_start, self.distill_ramp)}

    def set_epoch(self, epoch: int) -> None:
        """Set the factors of ``epoch`` (0-based); a function of the epoch only, so a resumed
        run continues exactly."""
        now = self.factors(epoch)
        if self._aux_scale is not None:
            self._aux_scale.assign(now["aux"])
        if self._distill_scale is not None:
            self._distill_scale.assign(now["distill"])

    def call(self, y_true, y_pred):
        width = y_pred.shape[-1]
        if width is None:
            raise ConfigError("SilaLoss needs a static logits width. Received: y_pred.shape[-1]=None")
        loss = sila_loss(y_true, y_pred, self.num_classes, self.weights_for(int(width)),
                         self.label_smoothing, self._aux_scale)
        if self.distill:  # self-distillation into the shallower heads
            m = self.num_sets_for(int(width))
            weight = self.distill if self._distill_scale is None else (
                self.distill * self._distill_scale)  # W × ramp(epoch, S, R)
            loss = loss + weight * distill_loss(y_pred, m, self.num_classes, self.distill_t)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, beta=self.beta, lam=self.lam, betas=self.betas,
                      label_smoothing=self.label_smoothing)
        if self.distill:  # absent when off: saved losses without it stay identical
            config.update(distill=self.distill, distill_t=self.distill_t)
        if self.ramp_betas:  # the same
            config.update(ramp_betas=self.ramp_betas)
        if self._distill_scale is not None:
            config.update(distill_start=self.distill_start, distill_ramp=self.distill_ramp)
        return config


def _factor(name: str, value: float):
    """A float32 scalar variable the training loop sets each epoch (not trained). Made in the
    loss's construction, so under a distribution strategy's scope every replica reads it."""
    return keras.Variable(float(value), trainable=False, dtype="float32", autocast=False,
                          name=name)



def check_distill(weight: float, temperature: float) -> None:
    """W >= 0 and T > 0 for :func:`distill_loss`.

    Raises:
        ConfigError: a negative weight or a non-positive temperature.
    """
    if not float(weight) >= 0:
        raise ConfigError(f"`--distill` (the weight W of the self-distillation term) must be "
                          f">= 0. Received: distill={weight}")
    if not float(temperature) > 0:
        raise ConfigError(f"`--distill-t` (the distillation temperature T) must be > 0. "
                          f"Received: distill_t={temperature}")


# --------------------------------------------------------------------------- C classifiers


def split_logits(y_pred, num_sets: int, num_classes: int) -> list:
    """The ``num_sets`` logit blocks ``(B, N)`` of ``sila_logits`` (float32)."""
    y_pred = ops.cast(y_pred, "float32")
    return [y_pred[:, c * num_classes:(c + 1) * num_classes] for c in range(num_sets)]


def cross_entropy(logits, labels):
    """Per-example N-way cross-entropy of integer ``labels`` under ``logits``."""
    log_probs = ops.log_softmax(logits, axis=-1)
    return -ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def dml_kl(self_logits, other_logits):
    """KL(p_other ‖ p_self) per example, with ``p_other`` a constant target.

    ``stop_gradient`` on the other net's distribution: this term trains only the
    net that owns ``self_logits`` (Deep Mutual Learning, Zhang et al. 2018, Eq. 2).
    """
    log_p_other = ops.stop_gradient(ops.log_softmax(other_logits, axis=-1))
    log_p_self = ops.log_softmax(self_logits, axis=-1)
    return ops.sum(ops.exp(log_p_other) * (log_p_other - log_p_self), axis=-1)


def mutual_loss(y_true, y_pred, num_classes: int, betas: Sequence[float], sila: bool = True,
                dml: bool = False):
    """Per-example loss of C jointly trained classifiers on ``sila_logits`` ``(B, C·N)``.

    Args:
        y_true: integer labels ``(B,)`` or ``(B, 1)``.
        y_pred: the concatenated logits of the C classifiers.
        num_classes: N.
        betas: the C weights β_c.
        sila: True: the SiLa loss (paper B Eq. 10/11) over one C·N-way softmax;
            False: Σ_c β_c · CE_N(z_c, y), each classifier with its own N-way softmax.
        dml: add, for each classifier c, the mean over the others d of KL(p_d ‖ p_c)
            with p_d held constant (for C = 2: exactly the two DML terms).

    Returns:
        ``(B,)`` float32 losses.
    """
    num_sets = len(betas)
    width = y_pred.shape[-1]
    if width is not None and width != num_sets * num_classes:
        raise ConfigError(
            f"The logits of {num_sets} classifiers with {num_classes} classes need width "
            f"{num_sets * num_classes}. Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    blocks = split_logits(y_pred, num_sets, num_classes)
    if sila:
        loss = sila_loss(labels, y_pred, num_classes, betas)
    else:
        loss = sum(float(b) * cross_entropy(z, labels) for b, z in zip(betas, blocks))
    if dml and num_sets > 1:
        for c, z in enumerate(blocks):
            others = [dml_kl(z, blocks[d]) for d in range(num_sets) if d != c]
            loss = loss + sum(others) / float(len(others))
    return loss


@keras.saving.register_keras_serializable(package="sila_keras")
class MutualLoss(keras.losses.Loss):
    """Loss of jointly trained classifiers: SiLa (Eq. 10), plain CE, and/or DML.

    ``call`` returns one value per example (correct under ``tf.distribute``).

    Args:
        num_classes: N.
        betas: one weight β_c per classifier (default ``(1, 1)``: two nets).
        sila: SiLa loss over the concatenated logits (True) or one N-way CE per
            classifier (False, the IND / DML baseline / original MSDNet loss).
        dml: add the Deep Mutual Learning KL terms.
        name: loss name.

    Example:
        >>> import numpy as np
        >>> loss = MutualLoss(10, betas=(1, 1), sila=True, dml=True)
        >>> loss(np.array([3]), np.zeros((1, 20))).shape
        TensorShape([])
    """

    def __init__(self, num_classes: int, betas: Sequence[float] = (1.0, 1.0), sila: bool = True,
                 dml: bool = False, name: str = "mutual_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if int(num_classes) < 1:
            raise ConfigError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.betas = set_weights(len(list(betas)), betas=list(betas))  # validates
        self.sila = bool(sila)
        self.dml = bool(dml)

    def call(self, y_true, y_pred):
        return mutual_loss(y_true, y_pred, self.num_classes, self.betas, self.sila, self.dml)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "betas": self.betas,
                "sila": self.sila, "dml": self.dml}
