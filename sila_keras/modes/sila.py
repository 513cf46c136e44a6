"""``--mode sila`` (default): SilaNet — a backbone with M−1 auxiliary heads (paper A).

``MODEL`` is a registered backbone (:func:`sila_keras.heads.build_sila_model`) or the
user's own ``.keras`` classifier, to which the heads are attached
(:func:`sila_keras.attach.load_and_attach`; it receives raw 0–255 pixels).
"""

from __future__ import annotations

from sila_keras.errors import ConfigError
from sila_keras.modes.base import Mode, is_model_file, option, register_mode


@register_mode
class SilaMode(Mode):
    """SilaNet heads trained with the SiLa loss (paper A Eq. 4, or β_1..β_M with ``--betas``)."""

    name = "sila"
    help = "SilaNet heads (paper A)"
    option_hints = {"no_sila": " Use --heads 1 for a plain model."}
    model_files = True

    def validate(self) -> None:
        """Also: ``--betas`` has one weight per head.

        Raises:
            ConfigError: ``len(--betas) != --heads``.
        """
        super().validate()
        c = self.config
        if c.sila.betas is not None and len(c.sila.betas) != c.sila.heads:
            raise ConfigError(f"`--betas` needs one weight per head ({c.sila.heads}). "
                              f"Received: betas={list(c.sila.betas)}")

    def check_before_data(self) -> None:
        """``--heads`` fits the backbone (built symbolically, no data, ~1 s).

        Raises:
            ModelError: more heads than the backbone has attach points (+1).
        """
        c = self.config
        if c.sila.heads > 1 and not is_model_file(c.net.model):
            from sila_keras.heads import check_heads_fit

            check_heads_fit(c.net.model, c.sila.heads)

    def build_model(self, data):
        config = self.config
        if is_model_file(config.net.model):
            from sila_keras.attach import load_and_attach

            return load_and_attach(config.net.model, config.sila.heads, data.num_classes)
        from sila_keras.heads import build_sila_model

        mean, std = data.channel_stats()
        return build_sila_model(config.net.model, data.num_classes, config.sila.heads, data.input_shape,
                                mean=mean, std=std, **config.net.backbone_kwargs)

    def loss(self, num_classes: int, num_heads: int):
        from sila_keras.losses import SilaLoss

        c = self.config
        return SilaLoss(num_classes, beta=c.sila.beta, lam=c.sila.lam, betas=c.sila.betas)

    @classmethod
    def label(cls, config) -> str:
        heads = int(option(config, "heads", 1) or 1)
        return "IND" if heads == 1 else f"SiLa (M={heads})"
