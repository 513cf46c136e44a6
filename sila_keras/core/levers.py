"""Training levers for the shallow heads that leave head 1's objective alone.

Levers, each a ``sila-train`` flag (``--mode sila``, ``--heads`` >= 2; docs/heads.md):

* ``--ramp-betas E`` — the set weights of heads 2..M grow linearly from 0 over the first E
  epochs (× :func:`ramp` ``(e, 0, E)`` in epoch e, 0-based); head 1's weight stays 1. A
  ramp-up of an added loss's weight, as the consistency-weight ramp-up of Laine & Aila
  (ICLR 2017, Temporal Ensembling) — here so that the auxiliary heads do not pull on the
  shared layers while they are random (docs/heads.md: ``--ship-head`` runs that started
  badly).
* ``--distill-start S`` / ``--distill-ramp R`` — the self-distillation term of ``--distill W``
  is off for the first S epochs, then grows linearly to W over R epochs (× ``ramp(e, S,
  R)``): the teacher (head 1) is trained first. A distillation term from a random teacher
  diverged at lr 0.1 in our runs (docs/heads.md); self-distillation itself: Zhang et al.
  2019 ("Be Your Own Teacher"), Hinton et al. 2015.
* ``--grad-equilibrium`` — gradient equilibrium (Li et al., ICCV 2019, "Improved Techniques
  for Training Adaptive Deep Networks", §3.2): at the tap of each exit i of n (0-based,
  shallow → deep), the gradient into the trunk from the exit's branch is scaled by
  1/(n−i) and that from the deeper trunk by (n−i−1)/(n−i) (the ``gradient_rescale`` of
  their code). Compounded down the trunk, the two factors give every trunk variable the
  sum of the gradients that reach it divided by the number of heads that depend on it —
  so the optimizer applies it per variable (:func:`equilibrium_scales`, before weight
  decay), and the model keeps only Keras layers (what the exporter ships).

The per-epoch factors live in :class:`~sila_keras.core.losses.SilaLoss` (``set_epoch``),
which a callback of the training loop calls at the start of every epoch: the value is a
function of the epoch only, so ``--resume`` continues exactly and every replica of a
``MirroredStrategy`` reads the same value.

Example:
    >>> [ramp(e, 0, 4) for e in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    >>> [ramp(e, 2, 0) for e in range(4)]
    [0.0, 0.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections import Counter

from sila_keras.utils.errors import ConfigError


def ramp(epoch: int, start: int = 0, length: int = 0) -> float:
    """0 before epoch ``start`` (0-based), then ``(epoch − start) / length`` up to 1; a step
    to 1 at ``start`` when ``length`` is 0.

    Args:
        epoch: the epoch, 0-based (Keras' ``on_epoch_begin`` index).
        start: the first epoch of the ramp.
        length: the epochs it takes from 0 to 1.
    """
    epoch, start, length = int(epoch), int(start), int(length)
    if length <= 0:
        return 1.0 if epoch >= start else 0.0
    return min(1.0, max(0.0, (epoch - start) / length))


def check_epochs(name: str, value) -> int:
    """An epoch count of a lever (``--ramp-betas``, …): an integer >= 0.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"`--{name.replace('_', '-')}` must be an integer >= 0 (epochs; 0 = "
                          f"off). Received: {name}={value!r}")
    return int(value)


def equilibrium_scales(model) -> dict[str, float]:
    """Gradient equilibrium per variable: ``{variable path: 1 / heads that use it}`` for the
    trainable variables shared by two or more heads (the others keep their gradient).

    With M heads on a chain of taps, the stem and the first stage (used by all M heads) get
    1/M, the trunk between the two deepest taps 1/2, the last stage, the classifier and
    every head's own module 1.

    Args:
        model: a SiLa model (output ``sila_logits``).

    Example:
        >>> from sila_keras.core.heads import build_sila_model
        >>> scales = equilibrium_scales(build_sila_model("resnet8", 10, 3))
        >>> scales["stem_conv/kernel"], scales["stage2_block1_1_conv/kernel"]
        (0.3333333333333333, 0.5)
    """
    from sila_keras.core.heads import extract_head, num_heads_of

    uses = Counter(v.path for k in range(1, num_heads_of(model) + 1)
                   for v in extract_head(model, k).trainable_weights)
    return {path: 1.0 / n for path, n in uses.items() if n > 1}
