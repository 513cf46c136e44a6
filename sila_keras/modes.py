"""Training modes: how the model, loss and metrics are made for ``--mode``.

* ``sila`` (default): SilaNet — a backbone with M−1 auxiliary heads (paper A).
* ``mutual``: two networks (``MODEL`` and ``--peer``, default the same architecture)
  trained with the SiLa loss on their concatenated logits (paper B Eq. 10);
  ``--dml`` adds Deep Mutual Learning; ``--no-sila`` trains the pair with plain CE.
* ``dml``: the Deep Mutual Learning baseline (CE per net + KL terms).
* ``dynamic``: a multi-exit network (``msdnet``) whose exits are trained with
  SiLa (Eq. 11) or, with ``--no-sila``, with the sum of per-exit CE (MSDNet).

See :mod:`sila_keras.mutual` and :mod:`sila_keras.dynamic`. ``train.py`` calls
only the functions here, so a mode is one place to look.
"""

from __future__ import annotations

import sila_keras.augment  # noqa: F401  (registers autoaugment/randaugment for run(config))
import sila_keras.models.msdnet  # noqa: F401  (registers the multi-exit backbone)
from sila_keras import dynamic, mutual  # noqa: F401  (registers MutualLoss for load_model)

PAIR_MODES = ("mutual", "dml")


def validate_for_mode(config) -> None:
    """Check the mode-specific flags before anything is built.

    Raises:
        ValueError: ``--peer``/``--dml``/``--no-sila`` where the mode has no use for
            them, an unknown ``--peer``, or ``--betas`` of the wrong length for a pair.
    """
    mode = config.mode
    if config.peer is not None and mode not in PAIR_MODES:
        raise ValueError(f"--peer only applies to --mode mutual or dml. Received: mode={mode}, "
                         f"peer={config.peer}")
    if config.dml and mode != "mutual":
        hint = " (--mode dml already includes it)" if mode == "dml" else ""
        raise ValueError(f"--dml only applies to --mode mutual{hint}. Received: mode={mode}")
    if config.no_sila and mode not in ("mutual", "dynamic"):
        hint = " Use --heads 1 for a plain model." if mode == "sila" else ""
        raise ValueError(f"--no-sila only applies to --mode mutual or dynamic.{hint} "
                         f"Received: mode={mode}")
    if mode in PAIR_MODES:
        mutual.check_peer(config.peer or config.model)
        if config.betas is not None and len(config.betas) != mutual.NUM_NETS:
            raise ValueError(
                f"--mode {mode} trains {mutual.NUM_NETS} networks, so --betas needs "
                f"{mutual.NUM_NETS} weights (β_1,β_2). Received: betas={list(config.betas)}"
            )


def prepare_data_for_mode(config, data):
    """Mode-specific data split, applied right after loading (before the datasets are made).

    ``--mode dynamic`` sets a class-balanced 10 % of the training images aside in
    ``data.holdout`` (MSDNet holds out 5,000 of CIFAR's 50,000) to choose the
    budgeted-batch thresholds on images the model was not trained on. Other
    modes return ``data`` unchanged.
    """
    if config.mode != "dynamic" or len(data.train_y) < 2 * max(2, data.num_classes):
        return data
    from sila_keras.data import holdout_indices

    # issue 14: data.train is an image set (streamed); split positions, hold-out as arrays
    tr, val = holdout_indices(data.train_y, dynamic.HOLDOUT_FRACTION, config.seed)
    note = (f"{len(val)} training images held out to choose the exit thresholds "
            "(--mode dynamic)")
    out = data.with_train(data.train.take(tr), note)
    out.holdout = (data.train.take(val).to_array(), data.train_y[val])
    return out


def build_for_mode(config, data):
    """The model to train for ``config.mode`` (output ``sila_logits``)."""
    from sila_keras.heads import build_sila_model

    validate_for_mode(config)
    mean, std = data.channel_stats()
    if config.mode in PAIR_MODES:
        return mutual.build_mutual_model(config.model, config.peer, data.num_classes,
                                         data.input_shape, mean, std,
                                         backbone_kwargs=config.backbone_kwargs)
    if config.mode == "dynamic":
        return dynamic.build_dynamic_model(config.model, data.num_classes, data.input_shape,
                                           mean, std, **config.backbone_kwargs)
    return build_sila_model(config.model, data.num_classes, config.heads, data.input_shape,
                            mean=mean, std=std, **config.backbone_kwargs)


def loss_for_mode(config, num_classes: int, num_heads: int):
    """The Keras loss for ``config.mode``.

    Raises:
        ValueError: ``--betas`` whose length is not the number of classifiers.
    """
    from sila_keras.losses import SilaLoss

    if config.mode in PAIR_MODES:
        validate_for_mode(config)
        betas = config.betas or (1.0,) * mutual.NUM_NETS
        sila = config.mode == "mutual" and not config.no_sila
        dml = config.mode == "dml" or config.dml
        return mutual.MutualLoss(num_classes, betas=betas, sila=sila, dml=dml)
    if config.mode == "dynamic":
        return dynamic.dynamic_loss(num_classes, num_heads, config.betas, sila=not config.no_sila)
    return SilaLoss(num_classes, beta=config.beta, lam=config.lam, betas=config.betas)


def metrics_for_mode(config, num_classes: int, num_heads: int):
    """The compiled metrics: ``head_k_acc`` per classifier, ``top5``/``nll`` of head 1, and,
    for two nets or several exits, ``head_M_top5``/``head_M_nll`` of the last one."""
    from sila_keras.metrics import HeadNLL, HeadTopK, sila_metrics

    metrics = sila_metrics(num_heads, num_classes)
    if config.mode != "sila" and num_heads > 1:
        metrics += [HeadTopK(num_heads, num_classes, k=5), HeadNLL(num_heads, num_classes)]
    return metrics


def after_training(config, model, data, run_dir, rows, summary: dict) -> dict:
    """Mode-specific evaluation after training; may add keys to ``summary``.

    * mutual/dml: ``nets`` (per-net Top-1, Top-5, NLL, BEST, params), ``nets.csv``,
      ``curves_net_1.png``, ``curves_net_2.png``;
    * dynamic: ``dynamic`` (anytime + budgeted results), ``anytime.csv/png``,
      ``budgeted.csv/png``.
    """
    if config.mode in PAIR_MODES:
        return mutual.after_mutual_training(config, model, data, run_dir, rows, summary)
    if config.mode == "dynamic":
        return dynamic.after_dynamic_training(config, model, data, run_dir, rows, summary)
    return summary
