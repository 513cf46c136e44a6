"""``--mode mutual`` / ``--mode dml``: two networks trained together through Siamese Labels (paper B, §3.2, Fig. 1).

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

Model layout (the naming contract of :mod:`sila_keras.core.heads`):

* ``net_1`` / ``net_2``: each net as a nested, self-contained 1-head SiLa model
  (``image`` → its own ``normalize`` → backbone); every backbone layer lives inside
  its net, so two copies of one architecture never clash;
* ``head_1`` = Net 1 logits, ``head_2`` = Net 2 logits (Identity layers);
* ``sila_logits`` = Concatenate of ``head_1``, ``head_2``.

``extract_head(model, 2)`` is Net 2 alone, so the exporter's ``--head 2`` exports it.
The losses are :class:`sila_keras.core.losses.MutualLoss`; after training, :meth:`MutualMode.evaluate`
writes ``nets.csv`` (paper B Tables 1–2) and ``curves_net_k.png`` (Fig. 3).
"""

from __future__ import annotations

from collections.abc import Sequence

from sila_keras.modes.base import Mode, last_head_metrics, option, register_mode
from sila_keras.utils.errors import ConfigError

NUM_NETS = 2


def check_peer(peer: str) -> None:
    """Raise a ``--peer``-specific ``ConfigError`` if ``peer`` is not a registered backbone."""
    from sila_keras.models import get_backbone

    try:
        get_backbone(peer)
    except ValueError as e:
        raise ConfigError(f"Unknown --peer backbone '{peer}'. {str(e).split('. ', 1)[-1]}") from None


def build_mutual_model(model_name: str, peer_name: str | None, num_classes: int,
                       input_shape: Sequence[int] = (32, 32, 3), mean=None, std=None, *,
                       backbone_kwargs: dict | None = None, peer_kwargs: dict | None = None,
                       name: str | None = None, mode: str = "mutual") -> keras.Model:  # noqa: F821  (keras is imported inside)
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
        mode: the training mode recorded in ``sila_logits`` (``mutual`` or ``dml``).

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
    import keras
    from keras import layers

    from sila_keras.core.heads import build_sila_model, head_name, sila_output
    from sila_keras.models import get_backbone

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
    heads = [layers.Identity(name=head_name(k))(net(image)) for k, net in enumerate(nets, start=1)]
    return keras.Model(image, sila_output(heads, mode=mode),
                       name=name or f"mutual_{model_name}_{peer_name}")


# --------------------------------------------------------------------------- evaluation


def net_summary(model, data, rows: list[dict], batch_size: int = 256,
                names: Sequence[str] = ()) -> dict:
    """Per-net Top-1, Top-5, NLL (test, final weights), BEST (max Top-1 over epochs) and params.

    The columns of paper B Tables 1–2. Top-1/Top-5/NLL come from one evaluation of
    the trained model on the test split (reusing the compiled test step and its
    ``head_k_acc``, ``top5``/``nll`` and ``head_2_top5``/``head_2_nll`` metrics when
    present, else from a prediction); BEST from the ``head_k_acc`` column of
    ``rows`` (the per-epoch test accuracies in ``metrics.csv``).
    """
    from sila_keras.core.heads import extract_head, head_name, num_heads_of, trainable_params
    from sila_keras.data.pipeline import eval_dataset

    m = num_heads_of(model)
    ds = eval_dataset(data.test_x, data.test_y, batch_size)
    logs = {}
    if len(data.test_y) and getattr(model, "compiled", False):
        logs = model.evaluate(ds, return_dict=True, verbose=0)
    keys = {k: (f"{head_name(k)}_acc", "top5" if k == 1 else f"{head_name(k)}_top5",
                "nll" if k == 1 else f"{head_name(k)}_nll") for k in range(1, m + 1)}
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


@register_mode
class MutualMode(Mode):
    """Two networks trained together: SiLa (Eq. 10), ``--dml`` SiLa+DML, ``--no-sila`` an
    independently trained pair (IND pair; with ``--dml`` the DML baseline)."""

    name = "mutual"
    help = "two networks (paper B)"
    options = ("peer", "dml", "no_sila")

    def validate(self) -> None:
        """Also: ``--peer`` is a registered backbone and ``--betas`` has one weight per net.

        Raises:
            ConfigError: an unknown ``--peer`` or ``--betas`` of the wrong length.
        """
        super().validate()
        config = self.config
        check_peer(config.mutual.peer or config.net.model)
        if config.sila.betas is not None and len(config.sila.betas) != NUM_NETS:
            raise ConfigError(
                f"--mode {self.name} trains {NUM_NETS} networks, so --betas needs "
                f"{NUM_NETS} weights (β_1,β_2). Received: betas={list(config.sila.betas)}"
            )

    def build_model(self, data):
        config = self.config
        mean, std = data.channel_stats()
        return build_mutual_model(config.net.model, config.mutual.peer, data.num_classes, data.input_shape,
                                  mean, std, backbone_kwargs=config.net.backbone_kwargs, mode=self.name)

    @property
    def sila(self) -> bool:
        """SiLa loss over both nets' logits (else one N-way CE per net)."""
        return not self.config.dynamic.no_sila

    @property
    def dml(self) -> bool:
        """Deep Mutual Learning KL terms."""
        return bool(self.config.mutual.dml)

    def loss(self, num_classes: int, num_heads: int):
        from sila_keras.core.losses import MutualLoss

        betas = self.config.sila.betas or (1.0,) * NUM_NETS
        return MutualLoss(num_classes, betas=betas, sila=self.sila, dml=self.dml)

    def metrics(self, num_classes: int, num_heads: int) -> list:
        """Also ``head_2_top5``/``head_2_nll``: Top-5 and NLL of Net 2."""
        return super().metrics(num_classes, num_heads) + last_head_metrics(num_classes, num_heads)

    def evaluate(self, model, data, run_dir, rows: list[dict]) -> dict:
        """``nets`` (per-net Top-1, Top-5, NLL, BEST, params), ``nets.csv``,
        ``curves_net_1.png``, ``curves_net_2.png``."""
        from sila_keras.utils import files
        from sila_keras.utils.plots import plot_net_curves
        from sila_keras.utils.rundir import RunDir

        config = self.config
        names = [config.net.model, config.mutual.peer or config.net.model]
        nets = net_summary(model, data, rows, batch_size=config.optim.batch_size, names=names)
        files.write_csv(RunDir(run_dir) / RunDir.NETS, [{"net": k, **v} for k, v in nets.items()],
                     ["net", "model", "top1", "top5", "nll", "best", "params"])
        kind = self.label(config)
        if rows:
            for k, name in enumerate(names, start=1):
                plot_net_curves(rows, k, RunDir(run_dir) / RunDir.net_curves(k),
                                title=f"Net {k} ({name}), {kind}")
        return {"nets": nets}

    @classmethod
    def label(cls, config) -> str:
        """SiLa, SiLa+DML, IND pair or DML: the row label of paper B Tables 1–3."""
        if option(config, "no_sila"):
            return "DML" if option(config, "dml") else "IND pair"
        return "SiLa+DML" if option(config, "dml") else "SiLa"


@register_mode
class DmlMode(MutualMode):
    """The Deep Mutual Learning baseline: N-way CE per net + the KL terms."""

    name = "dml"
    help = "Deep Mutual Learning baseline, two networks (paper B)"
    options = ("peer",)
    option_hints = {"dml": " --mode dml already includes it."}

    sila = False
    dml = True

    @classmethod
    def label(cls, config) -> str:
        return "DML"
