"""Training modes: how the model, loss and metrics are made for ``--mode``.

* ``sila`` (default): SilaNet — a backbone with M−1 auxiliary heads (paper A).
* ``mutual``, ``dml``, ``dynamic``: paper B (SiLa learning) — see
  :mod:`sila_keras.mutual` and :mod:`sila_keras.dynamic`.

``train.py`` calls only the functions here, so a mode is one place to look.
"""

from __future__ import annotations


def build_for_mode(config, data):
    """The model to train for ``config.mode`` (output ``sila_logits``)."""
    from sila_keras.heads import build_sila_model

    if config.mode != "sila":
        raise ValueError(f"--mode {config.mode} is not available in this build. Available: sila")
    mean, std = data.channel_stats()
    return build_sila_model(config.model, data.num_classes, config.heads, data.input_shape,
                            mean=mean, std=std, **config.backbone_kwargs)


def loss_for_mode(config, num_classes: int, num_heads: int):
    """The Keras loss for ``config.mode``."""
    from sila_keras.losses import SilaLoss

    return SilaLoss(num_classes, beta=config.beta, lam=config.lam, betas=config.betas)


def metrics_for_mode(config, num_classes: int, num_heads: int):
    """The compiled metrics for ``config.mode``."""
    from sila_keras.metrics import sila_metrics

    return sila_metrics(num_heads, num_classes)


def after_training(config, model, data, run_dir, rows, summary: dict) -> dict:
    """Mode-specific evaluation after training; may add keys to ``summary``."""
    return summary
