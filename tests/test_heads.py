"""SilaNet heads: names, shapes, placement, extraction."""

import keras
import numpy as np
import pytest

from sila_keras import build_sila_model, extract_head, num_heads_of, trainable_params
from sila_keras.core.heads import place_heads
from sila_keras.core.sizes import float32_mib
from sila_keras.models import get_backbone, list_backbones
from sila_keras.reports.params import TABLE3


@pytest.fixture(scope="module")
def resnet20_m3():
    return build_sila_model("resnet20", num_classes=10, num_heads=3)


def test_output_is_named_concatenation(resnet20_m3):
    layer = resnet20_m3.get_layer("sila_logits")
    assert isinstance(layer, keras.layers.Concatenate)
    assert resnet20_m3.output.shape == (None, 30)
    heads = [resnet20_m3.get_layer(f"head_{k}").output for k in (1, 2, 3)]
    assert all(a is b for a, b in zip(layer.input, heads))


def test_head_layers_carry_prefix(resnet20_m3):
    names = [lyr.name for lyr in resnet20_m3.layers]
    for k in (2, 3):
        assert f"head_{k}_conv" in names and f"head_{k}" in names
        conv = resnet20_m3.get_layer(f"head_{k}_conv")
        assert conv.kernel_size == (3, 3) and conv.filters == 10
        assert isinstance(resnet20_m3.get_layer(f"head_{k}"), keras.layers.GlobalAveragePooling2D)


def test_placement_deepest_first(resnet20_m3):
    # resnet20 stages: 16 ch @32×32, 32 ch @16×16, 64 ch @8×8; head 2 at the end of stage 2.
    assert resnet20_m3.get_layer("head_2_conv").input.shape[1:] == (16, 16, 32)
    assert resnet20_m3.get_layer("head_3_conv").input.shape[1:] == (32, 32, 16)


def test_vgg19_reproduces_table3_sizes():
    m, paper = build_sila_model("vgg19", 10, 3), TABLE3["vgg19"]
    assert trainable_params(extract_head(m, 1)) == paper["base_params"]
    assert float32_mib(trainable_params(m)) == pytest.approx(paper["train_mib"], abs=0.005)
    assert float32_mib(trainable_params(extract_head(m, 2))) == pytest.approx(paper["head_2_mib"],
                                                                              abs=0.005)
    assert m.get_layer("head_2_conv").input.shape[-1] == 512
    assert m.get_layer("head_3_conv").input.shape[-1] == 256


@pytest.mark.parametrize("backbone", ["resnet20", "vgg19"])
def test_extracted_heads_equal_slices(backbone):
    model = build_sila_model(backbone, 10, 3, mean=[120, 115, 100], std=[60, 60, 65])
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    full = model.predict(x, verbose=0)
    for k in (1, 2, 3):
        head = extract_head(model, k)
        np.testing.assert_allclose(head.predict(x, verbose=0), full[:, (k - 1) * 10:k * 10], atol=1e-5)
        assert "sila_logits" not in [lyr.name for lyr in head.layers]
    assert trainable_params(extract_head(model, 3)) < trainable_params(extract_head(model, 2)) \
        < trainable_params(extract_head(model, 1))


def test_one_head_is_the_base_model():
    m = build_sila_model("resnet20", 10, 1)
    assert m.output.shape == (None, 10) and num_heads_of(m) == 1
    assert trainable_params(m) == trainable_params(extract_head(m, 1)) == 269_722


def test_model_takes_raw_pixels_and_normalizes_inside():
    m = build_sila_model("resnet20", 10, 2, mean=[10, 20, 30], std=[2, 4, 8])
    norm = m.get_layer("normalize")
    y = norm(np.array([[[[10.0, 24.0, 14.0]]]], np.float32)).numpy().ravel()
    np.testing.assert_allclose(y, [0.0, 1.0, -2.0], atol=1e-5)


def test_saved_and_reloaded_model_keeps_heads(tmp_path):
    m = build_sila_model("resnet20", 5, 3)
    m.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(again.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(extract_head(again, 2).predict(x, verbose=0),
                               m.predict(x, verbose=0)[:, 5:10], atol=1e-5)


def test_too_many_heads_names_the_maximum():
    with pytest.raises(ValueError, match="at most 3 heads.*num_heads=4"):
        build_sila_model("resnet20", 10, 4)


def test_zero_heads_rejected():
    with pytest.raises(ValueError, match="num_heads.*>= 1"):
        place_heads([], 0)


def test_input_too_small_for_backbone():
    with pytest.raises(ValueError, match="at least 32×32.*input_shape=\\(8, 8, 3\\)"):
        build_sila_model("vgg19", 10, 3, input_shape=(8, 8, 3))


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="Unknown backbone 'vgg91'.*Did you mean.*Available: .*resnet20"):
        get_backbone("vgg91")


def test_head_index_out_of_range(resnet20_m3):
    with pytest.raises(ValueError, match="heads 1..3.*head=4"):
        extract_head(resnet20_m3, 4)


def test_extract_from_non_sila_model():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not a SiLa model.*sila_logits"):
        extract_head(plain, 1)


def test_registry_lists_foundation_backbones():
    assert {"vgg19", "resnet20"} <= set(list_backbones())
