"""CIFAR MSDNet: Multi-Scale Dense Networks (Huang et al., ICLR 2018).

A 2-D grid of feature maps: ``scales`` resolutions (CIFAR: 32, 16, 8) kept side by
side along the depth, dense connectivity within each scale, and a classifier
(*exit*) after each of the ``blocks`` blocks, always reading the coarsest scale.

* **First layer**: 3×3 conv-BN-ReLU at full resolution with ``channels·gr[0]``
  maps, then a stride-2 3×3 conv-BN-ReLU down to each coarser scale
  (``channels·gr[s]`` maps).
* **MSD layer**: at scale s it concatenates to its input ``growth·gr[s]`` new
  maps — half from a *regular* conv of scale s, half from a *strided* conv of the
  finer scale s−1 (all new maps from the regular conv at the finest scale present).
  Each conv is [1×1 bottleneck to ``min(C_in, bn[s]·C_out)``-BN-ReLU] → 3×3
  conv-BN-ReLU, without biases.
* **Scale reduction** ("max" pruning, MSDNet §4): the L layers are cut into
  ``scales`` equal segments (``ceil(L / scales)`` layers); segment i keeps only
  the coarsest ``scales − i + 1`` scales. The first layer that drops a scale still
  feeds the dropped scale's last maps down once, and is followed by a *transition*
  (1×1 conv-BN-ReLU per scale) that compresses the channels by ``reduction``.
* **Exit** (CIFAR classifier): two 3×3 stride-2 conv-BN-ReLU with
  ``classifier_channels`` maps, average pooling to 1×1 (the paper's 2×2 pool on
  CIFAR, global pooling here so other input sizes work) and a dense layer.
* **Blocks**: block 1 has ``base`` layers; block i>1 has ``step`` layers
  (``stepmode="even"``) or ``step·(i−1) + 1`` layers (``"lin_grow"``).

Defaults are MSDNet's CIFAR *anytime prediction* network: 7 blocks, even steps of
2 after a base of 4 (16 MSD layers), 16 base channels, growth 6, scale factors
1-2-4 — 3,067,960 trainable parameters with N=100 (2,986,690 with N=10). The
CIFAR *budgeted batch* network is ``blocks=5, stepmode="lin_grow", step=1, base=1``
(15 layers): 2,078,924 (N=100) / 2,020,874 (N=10). These are the settings of the
MSDNet authors' CIFAR recipes; the papers plot FLOPs rather than tabulate CIFAR
parameter counts, so the counts are our own (see ``docs/paper_b.md``).

The builder returns ``BackboneOutput(logits=last exit, taps=[], exits=[exit
logits, shallow → deep])``; use it with ``--mode dynamic`` (paper B §3.3, Fig. 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import layers

from sila_keras.models.layers import conv_bn_relu
from sila_keras.models.registry import BackboneOutput, register_backbone
from sila_keras.utils.errors import ModelError

STEPMODES = ("even", "lin_grow")


def block_layers(blocks: int, step: int, base: int, stepmode: str = "even") -> list[int]:
    """MSD layers in each block: ``[base, step, step, …]`` or ``[base, step+1, 2·step+1, …]``."""
    return [base] + [step if stepmode == "even" else step * i + 1 for i in range(1, blocks)]


def scales_at(layer: int, total: int, scales: int) -> tuple[int, int]:
    """(input scales, output scales) of MSD layer ``layer`` (1-based) under "max" pruning."""
    interval = math.ceil(total / scales)
    n_in = scales - max(0, layer - 2) // interval
    n_out = scales - (layer - 1) // interval
    return n_in, n_out


def _check(blocks, step, base, stepmode, channels, growth, scales, gr_factor, bn_factor,
           reduction, classifier_channels):
    for name, value in (("blocks", blocks), ("step", step), ("base", base), ("channels", channels),
                        ("growth", growth), ("scales", scales),
                        ("classifier_channels", classifier_channels)):
        if int(value) < 1:
            raise ModelError(f"MSDNet `{name}` must be >= 1. Received: {name}={value}")
    if stepmode not in STEPMODES:
        raise ModelError(f"Unknown MSDNet stepmode '{stepmode}'. Available: {', '.join(STEPMODES)}")
    for name, value in (("gr_factor", gr_factor), ("bn_factor", bn_factor)):
        if len(value) != scales or any(int(v) < 1 for v in value):
            raise ModelError(
                f"MSDNet `{name}` needs one positive factor per scale ({scales}). "
                f"Received: {name}={list(value)}"
            )
    if any(growth * g % 2 for g in gr_factor[1:]):
        raise ModelError(
            "MSDNet `growth`·gr_factor must be even at every coarser scale (half of the new maps "
            f"come from each neighbouring scale). Received: growth={growth}, gr_factor={list(gr_factor)}"
        )
    if not 0 <= reduction <= 1:
        raise ModelError(f"MSDNet `reduction` must be in [0, 1]. Received: reduction={reduction}")


def msd_conv(x, filters: int, strides: int, bn_width: int, bottleneck: bool, *, name: str):
    """[1×1 bottleneck-BN-ReLU] → 3×3 conv-BN-ReLU (layers ``{name}_bottleneck_*``, ``{name}_*``)."""
    if bottleneck:
        inner = min(int(x.shape[-1]), bn_width * filters)
        x = conv_bn_relu(x, inner, 1, name=f"{name}_bottleneck")
    return conv_bn_relu(x, filters, 3, strides, name=name)


def exit_classifier(x, num_classes: int, channels: int, *, name: str):
    """MSDNet's CIFAR classifier: two stride-2 3×3 conv-BN-ReLU, average pool, dense."""
    x = conv_bn_relu(x, channels, 3, 2, name=f"{name}_conv1")
    x = conv_bn_relu(x, channels, 3, 2, name=f"{name}_conv2")
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return layers.Dense(num_classes, name=f"{name}_logits")(x)


def msdnet(x, num_classes: int, *, blocks: int = 7, step: int = 2, base: int = 4,
           stepmode: str = "even", channels: int = 16, growth: int = 6, scales: int = 3,
           gr_factor: Sequence[int] = (1, 2, 4), bn_factor: Sequence[int] = (1, 2, 4),
           reduction: float = 0.5, bottleneck: bool = True,
           classifier_channels: int = 128) -> BackboneOutput:
    """Build a CIFAR MSDNet on ``x`` (see the module docstring for the layout).

    Args:
        x: normalized input ``(B, H, W, C)``; H, W ≥ 16 for three scales.
        num_classes: N.
        blocks: number of blocks = number of exits C.
        step: layers per block after the first (``even``), or the growth of the
            block length (``lin_grow``).
        base: layers of the first block.
        stepmode: ``"even"`` or ``"lin_grow"``.
        channels: maps of the first layer at the finest scale (before ``gr_factor``).
        growth: new maps per MSD layer at the finest scale (× ``gr_factor[s]``).
        scales: number of resolutions (each coarser one halves H and W).
        gr_factor: per-scale channel multipliers.
        bn_factor: per-scale bottleneck widths (× the conv's output maps).
        reduction: transition compression when a scale is dropped (0: none).
        bottleneck: use the 1×1 bottleneck convs.
        classifier_channels: maps of the exits' two convs.

    Returns:
        ``BackboneOutput(logits=last exit, taps=[], depth, exits=[C exit logits])``.

    Raises:
        ValueError: a non-positive size, a bad ``stepmode``, or per-scale factor
            lists of the wrong length.
    """
    gr, bn = [int(g) for g in gr_factor], [int(b) for b in bn_factor]
    _check(blocks, step, base, stepmode, channels, growth, scales, gr, bn, reduction,
           classifier_channels)
    per_block = block_layers(blocks, step, base, stepmode)
    total = sum(per_block)

    feats = [conv_bn_relu(x, channels * gr[0], 3, 1, name="stem_s1")]
    for s in range(1, scales):
        feats.append(conv_bn_relu(feats[-1], channels * gr[s], 3, 2, name=f"stem_s{s + 1}"))
    units, layer, exits = channels, 0, []
    for b, n_layers in enumerate(per_block, start=1):
        for _ in range(n_layers):
            layer += 1
            n_in, n_out = scales_at(layer, total, scales)
            feats = msd_layer(feats, scales, n_in, n_out, growth, gr, bn, bottleneck,
                              name=f"msd{layer}")
            units += growth
            if n_in > n_out and reduction > 0:
                units = int(math.floor(reduction * units))
                first = scales - n_out
                feats = [feats[s] if s < first else
                         conv_bn_relu(feats[s], units * gr[s], 1, name=f"msd{layer}_transition_s{s + 1}")
                         for s in range(scales)]
        exits.append(exit_classifier(feats[-1], num_classes, classifier_channels, name=f"exit{b}"))
    return BackboneOutput(exits[-1], [], depth=1 + total * 2 + 3, exits=exits)


def msd_layer(feats: list, scales: int, n_in: int, n_out: int, growth: int, gr: list[int],
              bn: list[int], bottleneck: bool, *, name: str) -> list:
    """One MSD layer: for every kept scale, concatenate the input with its new maps.

    ``feats`` holds one tensor per scale (finest first); scales below
    ``scales − n_in`` are already dropped (``None`` is fine there). Returns the
    list with the ``scales − n_out`` finest entries set to ``None``.
    """
    first_in, first_out = scales - n_in, scales - n_out
    out = [None] * scales
    for s in range(first_out, scales):
        new_maps = growth * gr[s]
        parts = [feats[s]]
        if s - 1 >= first_in:  # the finer scale is present: half the maps come from it
            parts.append(msd_conv(feats[s - 1], new_maps // 2, 2, bn[s - 1], bottleneck,
                                  name=f"{name}_s{s + 1}_down"))
            parts.append(msd_conv(feats[s], new_maps // 2, 1, bn[s], bottleneck,
                                  name=f"{name}_s{s + 1}_regular"))
        else:
            parts.append(msd_conv(feats[s], new_maps, 1, bn[s], bottleneck,
                                  name=f"{name}_s{s + 1}_regular"))
        out[s] = layers.Concatenate(name=f"{name}_s{s + 1}_concat")(parts)
    return out


@register_backbone("msdnet", min_input_size=16, family="msdnet",
                   description="CIFAR MSDNet (Huang et al. 2018), one exit per block; --mode dynamic")
def msdnet_builder(x, num_classes, **kwargs):
    return msdnet(x, num_classes, **kwargs)
