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


# ----------------------------------------------------------------- head modules (--head-module)


def _paper_module(tap, k, n):
    """SilaNet's module as it was written before modules were registered (the reference)."""
    x = tap.tensor
    if tap.preact:
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"head_{k}_bn")(x)
        x = keras.layers.ReLU(name=f"head_{k}_relu")(x)
    x = keras.layers.Conv2D(n, 3, padding="same", name=f"head_{k}_conv")(x)
    return keras.layers.GlobalAveragePooling2D(name=f"head_{k}")(x)


@pytest.mark.parametrize("backbone", ["resnet8", "wrn16_8"])  # post- and pre-activation taps
def test_default_module_is_the_papers_bit_for_bit(backbone):
    from sila_keras.core.heads import build_backbone, head_name, sila_output

    keras.utils.set_random_seed(3)
    model = build_sila_model(backbone, 10, 3, (8, 8, 3))
    keras.utils.set_random_seed(3)
    inputs, out = build_backbone(backbone, 10, (8, 8, 3))
    heads = [keras.layers.Identity(name=head_name(1))(out.logits)]
    heads += [_paper_module(t, k, 10) for k, t in enumerate(reversed(out.taps), start=2)]
    ref = keras.Model(inputs, sila_output(heads))
    assert [la.name for la in model.layers] == [la.name for la in ref.layers]
    for a, b in zip(model.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_head_modules_sizes_and_macs_on_resnet20():
    """Known answers: ResNet-20, N = 10; head 3 sits on stage 1 (16 ch, 32×32, reduction 1),
    the last stage has reduction 4, so ``sep`` halves twice (16 → 32 → 64 channels)."""
    from sila_keras.core.sizes import count_macs

    conv = build_sila_model("resnet20", 10, 3)
    bn = build_sila_model("resnet20", 10, 3, head_module="bn_conv")
    sep = build_sila_model("resnet20", 10, 3, head_module="sep")
    p = {name: trainable_params(extract_head(m, 3)) for name, m in
         (("conv", conv), ("bn_conv", bn), ("sep", sep))}
    module = 9 * 16 * 10 + 10  # the paper's 3×3 conv 16 → N, with bias
    assert p["conv"] == 15_930 and p["bn_conv"] == p["conv"] + 2 * 16  # + BN γ, β
    sep_module = (9 * 16 + 2 * 16 + 16 * 32 + 2 * 32  # stride-2 block 1 (dw, BN, pw, BN)
                  + 9 * 32 + 2 * 32 + 32 * 64 + 2 * 64  # stride-2 block 2
                  + 64 * 10 + 10)  # dense to N
    assert p["sep"] == p["conv"] - module + sep_module
    macs = {name: count_macs(extract_head(m, 3)) for name, m in (("conv", conv), ("sep", sep))}
    conv_macs = 32 * 32 * 9 * 16 * 10
    sep_macs = 16 * 16 * (9 * 16 + 16 * 32) + 8 * 8 * (9 * 32 + 32 * 64) + 64 * 10
    assert macs["sep"] == macs["conv"] - conv_macs + sep_macs
    names = [la.name for la in extract_head(sep, 3).layers if la.name.startswith("head_3")]
    assert names[0] == "head_3_dw1" and names[-2:] == ["head_3_pool", "head_3"]
    assert isinstance(sep.get_layer("head_3"), keras.layers.Dense)
    assert sep.get_layer("head_3_dw2").strides == (2, 2) and sep.get_layer("head_2_pw1").filters == 64


def test_unknown_head_module_lists_the_modules():
    with pytest.raises(ValueError, match=r"Unknown head module 'sepp'\. Did you mean 'sep'\? "
                                         r"Available: conv, bn_conv, sep"):
        build_sila_model("resnet20", 10, 3, head_module="sepp")


def test_module_that_cannot_halve_its_tap_is_refused_in_one_line():
    from sila_keras.core.head_modules import check_fit, get_head_module, halvings, min_side
    from sila_keras.models.registry import Tap

    tap = Tap("block11", keras.Input((1, 1, 512)), 512, 16, 20)  # a 1×1 map, one halving to go
    assert halvings(tap, 32) == 1 and min_side(1) == 2
    check_fit(get_head_module("conv"), tap, "head_2", 32)  # no halving: fits
    with pytest.raises(ValueError, match=r"^Head module 'sep' does not fit head_2: it halves the "
                                         r"tap 'block11' \(1×1×512, reduction 16\) 1 time\(s\) "
                                         r"to the backbone's last resolution \(reduction 32\), "
                                         r"which needs at least 2×2 positions\. Modules that fit "
                                         r"this tap: conv, bn_conv; .*Received: head_module='sep'"
                                         r", tap shape \(1, 1, 512\)$"):
        check_fit(get_head_module("sep"), tap, "head_2", 32)
