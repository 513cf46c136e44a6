"""``--mode sila`` (default): SilaNet — a backbone with M−1 auxiliary heads (paper A).

``MODEL`` is a registered backbone (:func:`sila_keras.core.heads.build_sila_model`) or the
user's own ``.keras`` classifier, to which the heads are attached
(:func:`sila_keras.core.attach.load_and_attach`; it receives raw 0–255 pixels).

Shipping a shallow head: ``--ship-head k`` raises head k's set weight to 1
(:func:`sila_keras.core.losses.ship_head_weights`) and ``--distill W`` adds self-distillation
from head 1 into the shallower heads (:func:`sila_keras.core.losses.distill_loss`); the weights
used are printed and written to ``summary.json`` (``set_weights``). See docs/heads.md.
"""

from __future__ import annotations

from sila_keras.core.head_modules import DEFAULT_MODULE
from sila_keras.models.registry import is_model_file
from sila_keras.modes.base import Mode, option, register_mode
from sila_keras.utils.errors import ConfigError


@register_mode
class SilaMode(Mode):
    """SilaNet heads trained with the SiLa loss (paper A Eq. 4, or β_1..β_M with ``--betas``)."""

    name = "sila"
    help = "SilaNet heads (paper A)"
    # the heads' module, shipping a head, levers for heads 2..M (sila_keras.core.levers)
    options = ("head_module", "ship_head", "distill", "ramp_betas", "distill_start",
               "distill_ramp", "grad_equilibrium")
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
        """``--heads`` and ``--head-module`` fit the backbone (built symbolically at
        ``--image-size``, or at 32 px when the images' size is not known yet; no data, ~1 s;
        a ``.keras`` MODEL is loaded for it when the module is not the default).

        Raises:
            ModelError: more heads than the backbone has attach points (+1), or a head
                module that does not fit its tap.
        """
        c = self.config
        if c.sila.heads > 1 and not is_model_file(c.net.model):
            from sila_keras.core.heads import check_heads_fit
            from sila_keras.models.registry import is_application

            extra = {"taps": c.net.taps} if is_application(c.net.model) and c.net.taps else {}
            check_heads_fit(c.net.model, c.sila.heads, c.sila.head_module, c.data.image_size,
                            **c.net.backbone_kwargs, **extra)
        elif c.sila.heads > 1 and c.sila.head_module != DEFAULT_MODULE:
            from sila_keras.core.attach import load_and_attach

            load_and_attach(c.net.model, c.sila.heads, head_module=c.sila.head_module)
        if c.sila.ship_head is not None or c.sila.distill or levers(c):  # say what it trains with
            print(ship_line(c), flush=True)

    def build_model(self, data):
        config = self.config
        if is_model_file(config.net.model):
            from sila_keras.core.attach import load_and_attach

            return load_and_attach(config.net.model, config.sila.heads, data.num_classes,
                                   head_module=config.sila.head_module)
        from sila_keras.core.heads import build_sila_model

        mean, std = data.channel_stats()
        return build_sila_model(config.net.model, data.num_classes, config.sila.heads, data.input_shape,
                                mean=mean, std=std, head_module=config.sila.head_module,
                                **config.net.backbone_kwargs)

    def loss(self, num_classes: int, num_heads: int):
        from sila_keras.core.losses import SilaLoss

        c = self.config
        s = c.sila
        return SilaLoss(num_classes, beta=s.beta, lam=s.lam, betas=loss_betas(c, num_heads),
                        distill=s.distill, distill_t=s.distill_t, ramp_betas=s.ramp_betas,
                        distill_start=s.distill_start, distill_ramp=s.distill_ramp)

    def evaluate(self, model, data, run_dir, rows: list[dict]) -> dict:
        """The set weights the run trained with (and ``--ship-head``/``--distill``), the
        heads' module and the levers used."""
        from sila_keras.core.heads import num_heads_of
        from sila_keras.core.losses import set_weights

        c, m = self.config, num_heads_of(model)
        weights = loss_betas(c, m) or set_weights(m, c.sila.beta, c.sila.lam)
        s = c.sila
        return {"set_weights": weights, "ship_head": s.ship_head,
                "distill": {"weight": s.distill, "temperature": s.distill_t} if s.distill else None,
                "head_module": s.head_module, "levers": levers(c)}

    @classmethod
    def label(cls, config) -> str:
        heads = int(option(config, "heads", 1) or 1)
        return "IND" if heads == 1 else f"SiLa (M={heads})"


def loss_betas(config, num_heads: int) -> list[float] | None:
    """Explicit set weights of a run: ``--betas``, or ``--ship-head``'s; None = β/λ."""
    s = config.sila
    if s.ship_head is None:
        return None if s.betas is None else list(s.betas)
    from sila_keras.core.losses import ship_head_weights

    return ship_head_weights(num_heads, s.ship_head, s.beta, s.lam)


def levers(config) -> dict:
    """The levers a run uses (flat name → value; empty when none; sila_keras.core.levers)."""
    s = config.sila
    used = {"ramp_betas": s.ramp_betas, "distill_start": s.distill_start,
            "distill_ramp": s.distill_ramp, "grad_equilibrium": s.grad_equilibrium}
    return {k: v for k, v in used.items() if v}


def ship_line(config) -> str:
    """The line that says which set weights ``--ship-head``/``--distill`` chose, and the
    levers."""
    from sila_keras.core.losses import set_weights

    s = config.sila
    weights = loss_betas(config, s.heads) or set_weights(s.heads, s.beta, s.lam)
    text = ", ".join(f"head_{k} {w:g}" for k, w in enumerate(weights, start=1))
    if s.ship_head == 1:
        why = "--ship-head 1: head 1 (the base model) already has weight 1; weights unchanged"
    elif s.ship_head is not None:
        why = (f"--ship-head {s.ship_head}: head {s.ship_head} weighs 1 like head 1, "
               f"the others follow β={s.beta:g}, λ={s.lam:g}")
    else:
        why = f"β={s.beta:g}, λ={s.lam:g}" if s.betas is None else "--betas"
    line = f"Set weights: {text} ({why})"
    if s.distill:
        line += (f"; self-distillation head_1 → heads 2..{s.heads}: "
                 f"W={s.distill:g}, T={s.distill_t:g}")
        start, length = s.distill_start, s.distill_ramp
        if start:
            line += f", off in epoch{'s 1..' if start > 1 else ' '}{start}"
        if length:
            shift = f"(e−{start})" if start else "e"
            line += f", W × {shift}/{length} in epoch e+1"
        if start or length:
            line += f", full W from epoch {start + length + 1}"
    if s.ramp_betas:
        line += (f"; --ramp-betas {s.ramp_betas}: heads 2..{s.heads}'s weights × e/{s.ramp_betas} "
                 f"in epoch e+1, full from epoch {s.ramp_betas + 1}")
    if s.grad_equilibrium:
        line += "; gradient equilibrium: each shared layer's gradient ÷ the heads that use it"
    return line
