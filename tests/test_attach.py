"""attach_heads on users' own functional classifiers (keras.applications topologies)."""

import keras
import numpy as np
import pytest
from helpers import small_cnn
from model_checks import check_sila_model

from sila_keras import trainable_params
from sila_keras.core.attach import attach_heads, find_taps, load_and_attach
from sila_keras.core.losses import SilaLoss
from sila_keras.utils.errors import ModelError

N = 10
X = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")


def _np(t):
    return keras.ops.convert_to_numpy(t)


@pytest.fixture(scope="module")
def resnet50():
    """Residual topology, softmax classifier."""
    return keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=N)


@pytest.fixture(scope="module")
def mobilenetv2():
    """Depthwise / inverted-residual topology, logits output."""
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=N,
                                          alpha=0.35, classifier_activation=None)


def test_resnet50_taps_are_stage_ends(resnet50):
    taps = find_taps(resnet50)
    # 32 → 16 (conv1) → 8 (pool) → 4 → 2 → 1: the block outputs ending each stage but the last.
    assert [t.name for t in taps] == ["conv1_relu", "conv2_block3_out", "conv3_block4_out",
                                      "conv4_block6_out"]
    assert [t.reduction for t in taps] == [2, 4, 8, 16]
    assert [t.channels for t in taps] == [64, 256, 512, 1024]
    assert [t.depth for t in taps] == sorted(t.depth for t in taps)


def test_resnet50_softmax_head1_and_training(resnet50):
    with pytest.warns(UserWarning, match="pre-softmax"):
        sila = attach_heads(resnet50, num_heads=3)
    assert sila.get_layer("head_2_conv").input.shape[1:] == (2, 2, 1024)  # deepest tap
    assert sila.get_layer("head_3_conv").input.shape[1:] == (4, 4, 512)
    checked = check_sila_model(sila, num_heads=3, num_classes=N, images=X)
    # head_1 is the model's own classifier, before the softmax.
    np.testing.assert_allclose(_np(keras.ops.softmax(checked.logits[:, :N])),
                               _np(resnet50(X, training=False)), atol=1e-5)
    assert trainable_params(checked.heads[0]) == trainable_params(resnet50)

    # One SiLa step trains the copy, not the user's model.
    original = resnet50.get_layer("conv1_conv").get_weights()[0].copy()
    sila.compile(optimizer=keras.optimizers.SGD(0.01), loss=SilaLoss(N), run_eagerly=True)
    assert np.isfinite(float(sila.train_on_batch(X, np.array([2, 5]))))
    assert not np.allclose(sila.get_layer("conv1_conv").get_weights()[0], original)
    np.testing.assert_array_equal(resnet50.get_layer("conv1_conv").get_weights()[0], original)


def test_mobilenetv2_depthwise(mobilenetv2):
    taps = find_taps(mobilenetv2)
    assert [t.reduction for t in taps] == [2, 4, 8, 16]
    assert all(t.tensor.shape[1] == 32 // t.reduction for t in taps)
    sila = attach_heads(mobilenetv2, num_heads=4)
    head_1 = check_sila_model(sila, num_heads=4, num_classes=N, images=X).heads[0]
    assert [sila.get_layer(f"head_{k}_conv").input.shape[1] for k in (2, 3, 4)] == [2, 4, 8]
    # Logits output: no twin layer, head_1 is the model's own output.
    np.testing.assert_allclose(_np(head_1(X, training=False)),
                               _np(mobilenetv2(X, training=False)), atol=1e-5)


def test_taps_by_hand(mobilenetv2):
    sila = attach_heads(mobilenetv2, num_heads=3, taps=["block_2_add", "block_5_add"])
    assert sila.get_layer("head_2_conv").input.shape[1:] == (4, 4, 16)   # block_5_add (deeper)
    assert sila.get_layer("head_3_conv").input.shape[1:] == (8, 8, 8)    # block_2_add
    assert "head_2_bn" in [la.name for la in sila.layers]  # a residual sum: BN + ReLU first


def test_bad_taps_and_head_counts(mobilenetv2):
    with pytest.raises(ValueError, match=r"Received: taps entry 'nope'.*Automatic candidates"):
        attach_heads(mobilenetv2, taps=["nope", "block_2_add"])
    with pytest.raises(ValueError, match=r"must be a 4-D feature map"):
        attach_heads(mobilenetv2, num_heads=2, taps=[mobilenetv2.layers[-2].name])
    with pytest.raises(ValueError, match=r"each layer once"):
        attach_heads(mobilenetv2, taps=["block_2_add", "block_2_add"])
    with pytest.raises(ValueError, match=r"at most 5 heads .*Received: num_heads=6"):
        attach_heads(mobilenetv2, num_heads=6)


def _small_cnn(softmax_layer=False):
    return small_cnn(N, softmax_layer)


def test_own_model_with_softmax_layer():
    model = _small_cnn(softmax_layer=True)
    assert [t.name for t in find_taps(model)] == ["c1", "c2"]
    with pytest.warns(UserWarning, match="softmax layer 'probs'"):
        sila = attach_heads(model, num_heads=3, copy=False)
    assert sila.get_layer("head_2_conv").input.shape[1:] == (16, 16, 16)
    check_sila_model(sila, num_heads=3, num_classes=N, images=X)
    assert "probs" not in [la.name for la in sila.layers]


def test_not_a_functional_classifier():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="functional model"):
        attach_heads(Sub())
    with pytest.raises(TypeError, match="needs a keras.Model"):
        attach_heads("resnet50")
    inputs = keras.Input((32, 32, 3))
    seg = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match=r"one classifier output \(B, N\)"):
        attach_heads(seg)


def test_load_and_attach(tmp_path):
    path = tmp_path / "mine.keras"
    _small_cnn().save(path)
    sila = load_and_attach(path, num_heads=2, num_classes=N)
    # The attached model saves and reloads; its heads load with plain Keras.
    check_sila_model(sila, num_heads=2, num_classes=N, images=X, save_dir=tmp_path / "round_trip")
    with pytest.raises(ValueError, match=r"outputs 10 classes but the dataset has 5"):
        load_and_attach(path, num_heads=2, num_classes=5)
    with pytest.raises(ModelError, match="Model file not found"):
        load_and_attach(tmp_path / "missing.keras")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"'\.keras'"):
        load_and_attach(tmp_path / "notes.txt")
    sila.save(tmp_path / "sila.keras")
    with pytest.raises(ValueError, match="already a SiLa model"):
        load_and_attach(tmp_path / "sila.keras")


def test_train_cli_on_a_user_model_file(user_model_run):
    """`python -m sila_keras.train DATASET path/to/model.keras` attaches heads and trains it."""
    import json

    s = json.loads((user_model_run / "summary.json").read_text())
    assert s["num_heads"] == 2 and s["heads"]["head_2"]["params"] < s["heads"]["head_1"]["params"]
