"""BatchNorm statistics: precise BN against a NumPy reference (nested models, several
replicas, SyncBN, mixed precision), the stale-statistics guard, and the flags
(``--bn-momentum``, ``--precise-bn``: recorded, kept on ``--resume``, bad input)."""

import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_err

from sila_keras.core.batchnorm import (
    BatchNormRecalibrator,
    batchnorm_layers,
    cap_bn_momentum,
    collapsed_heads,
    fitted_momentum,
    recompute_bn_statistics,
    set_bn_momentum,
)
from sila_keras.training.config import TrainConfig
from sila_keras.training.train import main
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
    from sila_keras.devices.distribute import make_strategy

    strategy = make_strategy("mirrored")  # the process's one: a second over the same devices
    # would clash with it in the collective ops ("Shape mismatch in the collective instance")
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
    set_bn_momentum(model, 0.999)  # as keras.applications' MobileNetV2/V3
    bn_of(model)[0].momentum = 0.9
    assert cap_bn_momentum(model, fitted_momentum(100)) == 2  # faster layers keep theirs
    assert [la.momentum for la in bn_of(model)] == [0.9, 0.01 ** (1 / 100), 0.01 ** (1 / 100)]
    assert fitted_momentum(459) == 0.99 and fitted_momentum(1) == 0.01
    with pytest.raises(ConfigError, match=r"`--bn-momentum` must be in \(0, 1\).*Received: bn_momentum=1"):
        set_bn_momentum(model, 1)
    with pytest.raises(ConfigError, match="`num_images` must be an integer >= 0"):
        recompute_bn_statistics(model, X, num_images=-1)


# --------------------------------------------------------------------------- the guard


def separable(n=60, classes=3, seed=0):
    """Features whose largest entry is the class (channel c gets +4 for class c)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0, 1, (n, classes)).astype(np.float32) + 4 * np.eye(classes, dtype=np.float32)[y]
    return x, y


def guarded_model():
    """BN → identity Dense: a 1-head SiLa model that predicts the largest (normalised) feature."""
    from sila_keras.core.heads import sila_output

    inp = keras.Input((3,))
    x = keras.layers.BatchNormalization(name="bn")(inp)
    x = keras.layers.Dense(3, kernel_initializer="identity", name="d")(x)
    return keras.Model(inp, sila_output([keras.layers.Identity(name="head_1")(x)]))


def test_guard_fires_on_stale_statistics_and_not_on_healthy_ones(capsys):
    from sila_keras.training.batchnorm import collapse_warnings

    x, y = separable()
    model = guarded_model()
    data = SimpleNamespace(test_y=y, num_classes=3, class_names=["a", "b", "c"])
    logger = SimpleNamespace(train_accuracy={"head_1": 0.9}, rows=[])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    bn = model.get_layer("bn")
    bn.moving_mean.assign([0.0, 0.0, -50.0])  # deliberately stale: channel c looks huge
    found = collapse_warnings(model, ds, data, logger)
    assert [(w["head"], w["top_class_name"], w["top_class_share"]) for w in found] == [("head_1", "c", 1.0)]
    assert found[0]["kind"] == "collapsed_predictions" and found[0]["train_accuracy"] == 0.9
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Warning: head_1 (class 'c', 100%) predicts one class for the test images while " \
           "training at 90.0% accuracy: stale BatchNorm statistics" in err
    assert "--precise-bn" in err
    recompute_bn_statistics(model, x, batch_size=16)  # the cure
    assert collapse_warnings(model, ds, data, logger) == []
    assert capsys.readouterr().err == ""
    # the rule's edges: ≥ 90 % on one class, and training at ≥ twice chance
    ninety = np.array([0] * 9 + [1])
    assert collapsed_heads({"h": ninety}, {"h": 2 / 3}, 3) != []
    assert collapsed_heads({"h": ninety}, {"h": 0.66}, 3) == []  # not learning: no verdict
    assert collapsed_heads({"h": np.array([0] * 8 + [1, 2])}, {"h": 1.0}, 3) == []
    assert collapsed_heads({"h": ninety}, {}, 3) == []  # no training accuracy known


# --------------------------------------------------------------------------- the flags


@pytest.mark.slow
def test_flags_are_recorded_and_kept_on_resume(tiny_folder, tmp_path, capsys):
    common = [f"folder:{tiny_folder}", "resnet8", "--heads", "2", "--batch-size", "8",
              "--milestones", "", "--out", str(tmp_path), "--name", "r",
              "--bn-momentum", "0.95", "--precise-bn", "100"]
    assert main([*common, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: --precise-bn 100 is more than the 18 training images; all 18 are used" in out
    assert "Precise BN: " in out and "recomputed from 18 training images" in out
    run = tmp_path / "r"
    config = json.loads((run / "config.json").read_text())
    assert (config["net"]["bn_momentum"], config["net"]["precise_bn"]) == (0.95, 100)
    model = keras.models.load_model(run / "model.keras")
    assert {la.momentum for la in batchnorm_layers(model)} == {0.95}
    # a changed flag is refused, listing it; the same flags continue
    err = run_err(capsys, [*common[:-1], "50", "--epochs", "2", "--resume"])
    assert "precise_bn: 100 → 50" in err
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    bn = summary["batchnorm"]
    assert (bn["bn_momentum"], bn["precise_bn"], bn["momentum"]) == (0.95, 100, [0.95])
    assert [u["epoch"] for u in bn["recalibration"]["per_use"]] == [2]
    assert isinstance(summary["warnings"], list)
    assert json.loads((run / "config.json").read_text())["net"]["precise_bn"] == 100


@pytest.mark.slow
def test_keras_models_get_the_defaults(tiny_folder, tmp_path, capsys):
    """keras:MobileNet α = 0.25 (the cheapest application with BatchNorm), flags not typed:
    momentum 0.99 and precise BN are recorded and applied, and --resume compares them."""
    from sila_keras.training.train import run
    from sila_keras.utils.errors import RunDirError

    config = TrainConfig.create(f"folder:{tiny_folder}", "keras:MobileNet", weights="none",
                                backbone_kwargs={"alpha": 0.25}, epochs=1, batch_size=6,
                                milestones=(), out=str(tmp_path), name="k", verbose=0)
    summary = run(config)
    out = capsys.readouterr().out
    assert "BatchNorm layer(s) recomputed from 18 training images" in out, out
    saved = json.loads((tmp_path / "k" / "config.json").read_text())["net"]
    assert (saved["bn_momentum"], saved["precise_bn"]) == (None, 2048)  # recorded resolved
    # 3 steps: MobileNet's 0.99 is lowered to 0.01 ** (1 / 3), fitted to the run
    assert ("momentum 0.2154 (at most min(0.99, 0.01^(1/3)) = 0.2154: the initial statistics "
            "weigh < 1% after the run's 3 steps); precise BN from 2048 training images") in out
    model = keras.models.load_model(tmp_path / "k" / "model.keras")
    assert [la.momentum for la in batchnorm_layers(model)] == pytest.approx(
        [0.01 ** (1 / 3)] * len(batchnorm_layers(model)))
    assert summary["batchnorm"]["layers"] == len(batchnorm_layers(model)) > 10
    assert [u["epoch"] for u in summary["batchnorm"]["recalibration"]["per_use"]] == [1]
    with pytest.raises(RunDirError, match="precise_bn: 2048 → 0"):
        run(config.replace(resume=True, epochs=2, precise_bn=0))


def test_older_config_without_the_fields_resumes_with_the_defaults():
    keras_old = TrainConfig.create("d", "keras:MobileNetV2").to_dict()
    for field in ("bn_momentum", "precise_bn"):
        del keras_old["net"][field]
    old = TrainConfig.from_dict(keras_old)
    assert old.differences(TrainConfig.create("d", "keras:MobileNetV2")) == {}
    resolved = TrainConfig.create("d", "keras:MobileNetV2").resolved().net
    assert (resolved.bn_momentum, resolved.precise_bn) == (None, 2048)
    paper = TrainConfig.create("d", "resnet20").resolved().net
    assert (paper.bn_momentum, paper.precise_bn) == (None, 0)  # the papers' backbones unchanged
    own = TrainConfig.create("d", "mine.keras").resolved().net
    assert (own.bn_momentum, own.precise_bn) == (None, 2048)


@pytest.mark.parametrize("flags, message", [
    (["--bn-momentum", "1.5"], r"`--bn-momentum` must be in \(0, 1\).*Received: bn_momentum=1.5"),
    (["--bn-momentum", "0"], r"`--bn-momentum` must be in \(0, 1\).*Received: bn_momentum=0.0"),
    (["--precise-bn", "-1"], r"`--precise-bn` must be an integer >= 0.*Received: precise_bn='-1'"),
    (["--precise-bn", "1.5"], r"`--precise-bn` must be an integer >= 0.*Received: precise_bn='1.5'"),
])
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    import re

    err = run_err(capsys, ["folder:nowhere", "resnet8", *flags, "--out", str(tmp_path / "o")])
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_precise_bn_on_a_model_without_batchnorm_is_a_note(capsys):
    from helpers import small_cnn

    from sila_keras.training.batchnorm import precise_bn_callback

    config = TrainConfig.create("d", "mine.keras", precise_bn=64, origins={"precise_bn": "flag"})
    assert precise_bn_callback(small_cnn(3), config, None, None, steps=1) is None
    assert capsys.readouterr().out == ("  note: --precise-bn 64: the model has no "
                                       "BatchNormalization layer; nothing to recompute\n")
