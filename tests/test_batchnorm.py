"""BatchNorm statistics: precise BN against a NumPy reference (nested models, several
replicas, SyncBN, mixed precision)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sila_keras.core.batchnorm import (
    BatchNormRecalibrator,
    batchnorm_layers,
    recompute_bn_statistics,
    set_bn_momentum,
)
from sila_keras.utils.errors import ConfigError


def nested_bn_model(seed=0):
    """conv 1×1 → BN1 → ReLU → [nested: conv 1×1 → BN2] → GAP → Dense → BN3 → Dropout, with
    random γ/β (so the chain of training-mode normalisations matters)."""
    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((4, 4, 5))
    y = keras.layers.Conv2D(6, 1, use_bias=False, name="c2")(inner_in)
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn2")(y), name="inner")
    x_in = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(5, 1, name="c1")(x_in)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.GlobalAveragePooling2D()(inner(x))
    x = keras.layers.BatchNormalization(name="bn3")(keras.layers.Dense(3, name="d")(x))
    model = keras.Model(x_in, keras.layers.Dropout(0.5)(x))
    rng = np.random.default_rng(seed)
    for layer in batchnorm_layers(model):
        layer.gamma.assign(rng.uniform(0.5, 2, layer.gamma.shape))
        layer.beta.assign(rng.normal(0, 1, layer.beta.shape))
    return model


def bn_of(model):
    return [model.get_layer("bn1"), model.get_layer("inner").get_layer("bn2"), model.get_layer("bn3")]


def numpy_reference(model, x, batch):
    """Per BN layer: (mean, variance) of its input over all images, the input computed in
    NumPy by training-mode passes of ``batch`` images (each BN normalising with its batch)."""
    w1, b1 = model.get_layer("c1").get_weights()
    w2 = model.get_layer("inner").get_layer("c2").get_weights()[0]
    wd, bd = model.get_layer("d").get_weights()

    def bn(f, layer):
        axes = tuple(range(f.ndim - 1))
        return ((f - f.mean(axes)) / np.sqrt(f.var(axes) + layer.epsilon) * layer.gamma.numpy()
                + layer.beta.numpy())

    bn1, bn2, _ = bn_of(model)
    feats = [[], [], []]
    for s in range(0, len(x), batch):
        f1 = x[s:s + batch].astype(np.float64) @ w1[0, 0] + b1
        f2 = np.maximum(bn(f1, bn1), 0) @ w2[0, 0]
        f3 = bn(f2, bn2).mean((1, 2)) @ wd + bd
        for k, f in enumerate((f1, f2, f3)):
            feats[k].append(f.reshape(-1, f.shape[-1]))
    return [(np.concatenate(f).mean(0), np.concatenate(f).var(0)) for f in feats]


def assert_matches(model, x, batch, rtol=1e-5):
    for layer, (mean, var) in zip(bn_of(model), numpy_reference(model, x, batch), strict=True):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=rtol, atol=rtol)


X = np.random.default_rng(1).normal(3, 2, (23, 4, 4, 3)).astype(np.float32)  # 8 + 8 + 7


def test_precise_bn_equals_numpy_reference_and_leaves_everything_else():
    model = nested_bn_model()
    trainable = [v.numpy().copy() for v in model.trainable_variables]
    others = {v.path: v.numpy().copy() for v in model.non_trainable_variables
              if "moving_" not in v.path}  # the dropout layer's seed state, among others
    assert others, "the Dropout seed state should be a non-trainable variable"
    r = recompute_bn_statistics(model, X, batch_size=8)
    assert (r.layers, r.images, r.frozen, r.unreached) == (3, 23, 0, 0)
    assert_matches(model, X, 8)
    for v, before in zip(model.trainable_variables, trainable, strict=True):
        np.testing.assert_array_equal(v.numpy(), before, err_msg=v.path)  # bit-identical
    for v in model.non_trainable_variables:
        if v.path in others:
            np.testing.assert_array_equal(v.numpy(), others[v.path], err_msg=v.path)
    assert all(type(la).call is la.call.__func__ for la in batchnorm_layers(model))  # unpatched
    # a dataset of (x, y) batches cut to its first 16 images: the first two batches only
    ds = tf.data.Dataset.from_tensor_slices((X, np.zeros(23))).batch(5)
    assert recompute_bn_statistics(model, ds, num_images=16, batch_size=8).images == 16
    assert_matches(model, X[:16], 8)


def test_precise_bn_over_replicas_and_with_sync_bn():
    """2 logical CPUs: per-replica BN normalises each half-batch; SyncBN the whole batch —
    either way the statistics are those of all 23 images."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = nested_bn_model()
        recalibrator = BatchNormRecalibrator(model, strategy)
        r = recalibrator.run(X, batch_size=8)
    assert r.images == 23
    assert_matches(model, X, 4)  # batches of 8 split 4 + 4 (the last one 4 + 3)
    with strategy.scope():
        for layer in batchnorm_layers(model):
            layer.synchronized = True
        recalibrator.run(X, batch_size=8)
    assert_matches(model, X, 8)


def test_precise_bn_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = nested_bn_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    recompute_bn_statistics(model, X, batch_size=8)
    assert model.get_layer("bn1").moving_mean.dtype == "float32"
    assert_matches(model, X, 8, rtol=0.05)  # bfloat16 activations: ~3 significant digits


def test_frozen_layers_are_kept_and_momentum_reaches_nested_models():
    model = nested_bn_model()
    inner = model.get_layer("inner")
    inner.trainable = False  # a frozen backbone: BN runs in inference mode, as in training
    before = [v.numpy().copy() for v in inner.get_layer("bn2").non_trainable_variables]
    r = recompute_bn_statistics(model, X, batch_size=8)
    assert (r.layers, r.frozen) == (2, 1)
    for v, b in zip(inner.get_layer("bn2").non_trainable_variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)
    assert set_bn_momentum(model, 0.95) == 3
    assert {la.momentum for la in bn_of(model)} == {0.95}
    with pytest.raises(ConfigError, match=r"`--bn-momentum` must be in \(0, 1\).*Received: bn_momentum=1"):
        set_bn_momentum(model, 1)
    with pytest.raises(ConfigError, match="`num_images` must be an integer >= 0"):
        recompute_bn_statistics(model, X, num_images=-1)
