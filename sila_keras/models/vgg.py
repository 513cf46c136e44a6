"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2014), as in the common CIFAR zoos.

Every 3×3 conv has a bias and is followed by BN + ReLU; 2×2 max-pool ends each of
the five stages; the classifier is 512 → 4096 → 4096 → N with dropout. With N=10,
``vgg19`` has 38,958,922 trainable parameters (SilaNet Table 3: 148.62 MiB).
"""

from __future__ import annotations

from keras import layers

from sila_keras.models.registry import BackboneOutput, Tap, register_backbone

# Filters per conv, one list per stage (variants are data, as in keras.applications).
VGG_STAGES = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def vgg(x, num_classes: int, stages: list[list[int]], *, dropout: float = 0.5,
        hidden: int = 4096) -> BackboneOutput:
    """Build a CIFAR VGG on ``x`` from its stage table.

    Args:
        x: normalized input tensor ``(B, H, W, C)``; H, W ≥ 32.
        num_classes: N.
        stages: filters of every conv, one list per stage.
        dropout: dropout rate in the classifier.
        hidden: width of the two hidden dense layers.

    Returns:
        BackboneOutput with a tap at the end of every stage but the last.
    """
    taps, depth = [], 0
    for s, filters in enumerate(stages, start=1):
        for i, f in enumerate(filters, start=1):
            x = layers.Conv2D(f, 3, padding="same", name=f"block{s}_conv{i}")(x)
            x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"block{s}_bn{i}")(x)
            x = layers.ReLU(name=f"block{s}_relu{i}")(x)
            depth += 1
        if s < len(stages):
            taps.append(Tap(f"stage{s}", x, filters[-1], 2 ** (s - 1), depth))
        x = layers.MaxPooling2D(2, name=f"block{s}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)  # = flatten at 32×32 input (1×1×512)
    for j in (1, 2):
        x = layers.Dense(hidden, activation="relu", name=f"fc{j}")(x)
        x = layers.Dropout(dropout, name=f"fc{j}_dropout")(x)
    logits = layers.Dense(num_classes, name="classifier")(x)
    return BackboneOutput(logits, taps, depth + 3)


def _register(name: str):
    @register_backbone(name, min_input_size=32, family="vgg",
                       description=f"CIFAR {name.upper()} with BatchNorm, 512→4096→4096→N classifier")
    def builder(x, num_classes, **kwargs):
        return vgg(x, num_classes, VGG_STAGES[name], **kwargs)

    builder.__name__ = name
    return builder


for _name in VGG_STAGES:
    _register(_name)
