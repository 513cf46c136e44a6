"""Mutual SiLa: two networks trained together through Siamese Labels (paper B, §3.2, Fig. 1).

Net 1 (``MODEL``) and Net 2 (``--peer``) are independent, independently initialised
classifiers on the same input. Their logits are concatenated into the Siamese
Labels (paper B Eq. 9)::

    z̄ = concat([F_1(x), F_2(x)])                    # sila_logits, (B, 2N)

and trained with the SiLa loss (Eq. 10, β = [1, 1] by default)::

    L_sila = Σ_c β_c · CE(z̄, y + (c-1)·N)           # one 2N-way softmax

Deep Mutual Learning (Zhang et al. 2018) adds, for every net, the KL divergence
from the other net's prediction, held constant (``stop_gradient``)::

    L_DML = Σ_c KL(p_other ‖ p_c),  p = N-way softmax of one net's own logits

``--mode mutual`` is SiLa, ``--mode mutual --dml`` SiLa+DML, ``--mode dml`` the
DML baseline (plain N-way CE per net + KL). At test time either net serves alone.

Model layout (the naming contract of :mod:`sila_keras.heads`):

* ``net_1`` / ``net_2``: each net as a nested, self-contained 1-head SiLa model
  (``image`` → its own ``normalize`` → backbone); every backbone layer lives inside
  its net, so two copies of one architecture never clash;
* ``head_1`` = Net 1 logits, ``head_2`` = Net 2 logits (Identity layers);
* ``sila_logits`` = Concatenate of ``head_1``, ``head_2``.

``extract_head(model, 2)`` is Net 2 alone, so the exporter's ``--head 2`` exports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
from keras import layers, ops

from sila_keras.losses import set_weights, sila_loss
from sila_keras.models.registry import get_backbone

NUM_NETS = 2


def check_peer(peer: str) -> None:
    """Raise a ``--peer``-specific ``ValueError`` if ``peer`` is not a registered backbone."""
    try:
        get_backbone(peer)
    except ValueError as e:
        raise ValueError(f"Unknown --peer backbone '{peer}'. {str(e).split('. ', 1)[-1]}") from None


def build_mutual_model(model_name: str, peer_name: str | None, num_classes: int,
                       input_shape: Sequence[int] = (32, 32, 3), mean=None, std=None, *,
                       backbone_kwargs: dict | None = None, peer_kwargs: dict | None = None,
                       name: str | None = None) -> keras.Model:
    """Two independently initialised networks on one ``image`` input (paper B Fig. 1).

    Args:
        model_name: backbone of Net 1.
        peer_name: backbone of Net 2 (``None``: the same as Net 1).
        num_classes: N.
        input_shape: ``(H, W, C)`` of the raw images.
        mean: per-channel mean of the training pixels (each net normalizes inside).
        std: per-channel std of the training pixels.
        backbone_kwargs: keyword arguments for Net 1's backbone builder.
        peer_kwargs: keyword arguments for Net 2's builder (default: ``backbone_kwargs``
            when both nets share an architecture, else none).
        name: model name (default ``mutual_<model>_<peer>``).

    Returns:
        A functional model with outputs ``sila_logits`` ``(B, 2N)``; layers ``net_1``,
        ``net_2`` (nested models), ``head_1``, ``head_2``.

    Raises:
        ValueError: unknown backbone or peer, or an input too small for either.

    Example:
        >>> m = build_mutual_model("resnet20", "resnet20", num_classes=10)
        >>> m.output.shape
        (None, 20)
    """
    from sila_keras.heads import build_sila_model

    get_backbone(model_name)
    peer_name = peer_name or model_name
    check_peer(peer_name)
    backbone_kwargs = dict(backbone_kwargs or {})
    if peer_kwargs is None:
        peer_kwargs = backbone_kwargs if peer_name == model_name else {}
    input_shape = tuple(int(d) for d in input_shape)
    nets = [build_sila_model(model_name, num_classes, 1, input_shape, mean, std, name="net_1",
                             **backbone_kwargs),
            build_sila_model(peer_name, num_classes, 1, input_shape, mean, std, name="net_2",
                             **dict(peer_kwargs))]
    image = keras.Input(input_shape, name="image")
    heads = [layers.Identity(name=f"head_{k}")(net(image)) for k, net in enumerate(nets, start=1)]
    sila_logits = layers.Concatenate(axis=-1, name="sila_logits", dtype="float32")(heads)
    return keras.Model(image, sila_logits, name=name or f"mutual_{model_name}_{peer_name}")


# --------------------------------------------------------------------------- loss


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
        raise ValueError(
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
            raise ValueError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.betas = set_weights(len(list(betas)), betas=list(betas))  # validates
        self.sila = bool(sila)
        self.dml = bool(dml)

    def call(self, y_true, y_pred):
        return mutual_loss(y_true, y_pred, self.num_classes, self.betas, self.sila, self.dml)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "betas": self.betas,
                "sila": self.sila, "dml": self.dml}


# --------------------------------------------------------------------------- after training


def net_summary(model, data, rows: list[dict], batch_size: int = 256,
                names: Sequence[str] = ()) -> dict:
    """Per-net Top-1, Top-5, NLL (test, final weights), BEST (max Top-1 over epochs) and params.

    The columns of paper B Tables 1–2. Top-1/Top-5/NLL come from one evaluation of
    the trained model on the test split (reusing the compiled test step and its
    ``head_k_acc``, ``top5``/``nll`` and ``head_2_top5``/``head_2_nll`` metrics when
    present, else from a prediction); BEST from the ``head_k_acc`` column of
    ``rows`` (the per-epoch test accuracies in ``metrics.csv``).
    """
    from sila_keras.heads import extract_head, num_heads_of, trainable_params
    from sila_keras.pipeline import eval_dataset

    m = num_heads_of(model)
    ds = eval_dataset(data.test_x, data.test_y, batch_size)
    logs = {}
    if len(data.test_y) and getattr(model, "compiled", False):
        logs = model.evaluate(ds, return_dict=True, verbose=0)
    keys = {k: (f"head_{k}_acc", "top5" if k == 1 else f"head_{k}_top5",
                "nll" if k == 1 else f"head_{k}_nll") for k in range(1, m + 1)}
    if len(data.test_y) and not all(key in logs for ks in keys.values() for key in ks):
        logs = predicted_metrics(model.predict(ds, verbose=0), data.test_y, data.num_classes, m)
    out = {}
    for k in range(1, m + 1):
        acc, top5, nll = (float(logs[key]) if key in logs else None for key in keys[k])
        accs = [float(r[f"head_{k}_acc"]) for r in rows if r.get(f"head_{k}_acc") not in (None, "")]
        out[f"net_{k}"] = {"model": names[k - 1] if k - 1 < len(names) else None,
                           "top1": acc, "top5": top5, "nll": nll,
                           "best": max(accs) if accs else acc,
                           "params": trainable_params(extract_head(model, k))}
    return out


def predicted_metrics(logits, labels, num_classes: int, num_sets: int) -> dict:
    """``head_k_acc``, ``top5``/``head_k_top5``, ``nll``/``head_k_nll`` from predicted logits."""
    import numpy as np

    y = np.asarray(labels).reshape(-1)
    out = {}
    for k in range(1, num_sets + 1):
        z = np.asarray(logits[:, (k - 1) * num_classes:k * num_classes], np.float64)
        log_p = z - z.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        rank = (z > z[np.arange(len(y)), y][:, None]).sum(axis=1)
        out[f"head_{k}_acc"] = float(np.mean(rank == 0))
        out["top5" if k == 1 else f"head_{k}_top5"] = float(np.mean(rank < min(5, num_classes)))
        out["nll" if k == 1 else f"head_{k}_nll"] = float(-np.mean(log_p[np.arange(len(y)), y]))
    return out


def method_name(config) -> str:
    """The row label of paper B Tables 1–3 for a pair run: SiLa, SiLa+DML, DML or IND pair."""
    if config.mode == "dml":
        return "DML"
    if config.no_sila:
        return "DML" if config.dml else "IND pair"
    return "SiLa+DML" if config.dml else "SiLa"


def plot_net_curves(rows: list[dict], net: int, path, title: str = "") -> None:
    """Test Top-1 (and NLL, when logged) of one net vs epoch (paper B Fig. 3), as PNG."""
    from sila_keras import io
    from sila_keras.plots import plt

    key_acc = f"head_{net}_acc"
    key_nll = "nll" if net == 1 else f"head_{net}_nll"
    epochs = [int(r["epoch"]) for r in rows]
    acc = [100 * float(r[key_acc]) for r in rows]
    nll = [float(r[key_nll]) for r in rows if r.get(key_nll) not in (None, "")]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    marker = "o" if len(epochs) < 30 else None
    ax.plot(epochs, acc, marker=marker, ms=3, color="C0", label=f"Net {net} test Top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test Top-1 (%)")
    ax.grid(alpha=0.3)
    if len(nll) == len(epochs) and nll:
        ax2 = ax.twinx()
        ax2.plot(epochs, nll, marker=marker, ms=3, color="C1", ls="--", label=f"Net {net} test NLL")
        ax2.set_ylabel("test NLL")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"Net {net}")
    fig.tight_layout()
    with io.atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def after_mutual_training(config, model, data, run_dir: Path, rows: list[dict], summary: dict) -> dict:
    """Add ``nets`` to the summary, write ``nets.csv`` and ``curves_net_k.png``."""
    from sila_keras import io

    names = [config.model, config.peer or config.model]
    nets = net_summary(model, data, rows, batch_size=config.batch_size, names=names)
    kind = method_name(config)
    summary = {**summary, "method": kind, "nets": nets}
    io.write_csv(Path(run_dir) / "nets.csv",
                 [{"net": k, **v} for k, v in nets.items()],
                 ["net", "model", "top1", "top5", "nll", "best", "params"])
    if rows:
        for k, name in enumerate(names, start=1):
            plot_net_curves(rows, k, Path(run_dir) / f"curves_net_{k}.png",
                            title=f"Net {k} ({name}), {kind}")
    return summary
