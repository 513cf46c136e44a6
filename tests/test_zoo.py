"""The model zoo: every registered backbone builds, trains a step and yields extractable heads;
the six paper models hit SilaNet Table 3's parameter counts exactly."""

import keras
import numpy as np
import pytest
from helpers import small_cnn
from model_checks import check_sila_model, custom_layers, plain_keras

from sila_keras import build_sila_model, trainable_params
from sila_keras.core.attach import attach_heads
from sila_keras.core.head_modules import DEFAULT_MODULE, list_head_modules
from sila_keras.core.heads import (
    assemble,
    aux_head,
    build_backbone,
    extract_head,
    head_name,
    normalizer,
    sila_output,
)
from sila_keras.core.losses import SilaLoss
from sila_keras.core.sizes import float32_mib
from sila_keras.models import get_backbone, list_backbones
from sila_keras.reports.params import TABLE3

N = 10

# The input channels of module C (head 2) and module D (head 3) in the paper's Table 3
# models (their exact counts and printed sizes: TABLE3; InceptionV3's printed train size
# 84.86 MiB: docs/zoo.md).
MODULE_CD = {
    "vgg19": (512, 256),
    "resnet18": (256, 128),
    "wrn40_10": (320, 160),
    "mobilenetv1": (512, 256),
    "densenet121": (512, 256),
    "inceptionv3": (768, 288),
}
PREACT = {"densenet121", "wrn16_8", "wrn28_10", "wrn40_10"}
# The head modules besides the paper's (checked on every backbone by the contract below), and
# the backbone of each family that also checks them: the smallest, at its smallest input.
# (msdnet has no taps: its exits are its own classifiers.)
MODULES = [m for m in list_head_modules() if m != DEFAULT_MODULE]
FAMILY_REPRESENTATIVE = {"resnet_cifar": "resnet8", "resnet": "resnet18", "vgg": "vgg11",
                         "wrn": "wrn16_8", "densenet": "densenet121", "inception": "inceptionv3",
                         "mobilenet": "mobilenetv1"}


def _build(name: str, num_heads: int = 3):
    """Backbone output, SiLa model, input size and M on the smallest input the backbone takes
    (fast)."""
    spec = get_backbone(name)
    size = spec.min_input_size
    inputs = keras.Input((size, size, 3), name="image")
    out = spec.builder(normalizer(3)(inputs), N)
    m = min(num_heads, len(out.taps) + 1)
    return out, assemble(inputs, out.logits, out.taps, m, N, f"sila_{name}"), size, m


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_contract(name):
    keras.utils.set_random_seed(0)
    out, model, size, m = _build(name)

    # Taps: ordered shallow → deep, each a 4-D map whose channels/reduction are declared truly.
    # (A multi-exit network may declare no taps; it must then declare its exits.)
    assert out.taps or out.exits
    depths = [t.depth for t in out.taps]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)
    assert all(0 < d < out.depth for d in depths)
    reductions = [t.reduction for t in out.taps]
    assert reductions == sorted(reductions)
    for t in out.taps:
        assert len(t.tensor.shape) == 4 and t.tensor.shape[-1] == t.channels
        assert size / 2 <= t.tensor.shape[1] * t.reduction <= 1.5 * size  # ≈ size / reduction
        assert t.preact == (name in PREACT)  # pre-activation taps exactly in the pre-act nets
    assert out.logits.shape[-1] == N

    # Every registered model takes one SGD step with the SiLa loss (batch 2; eager: tracing
    # dominates at this size), and the step changes its deepest weights.
    x = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SilaLoss(N), run_eagerly=True)
    watched = model.trainable_weights[-2:]  # the deepest layers' weights
    before = [w.numpy().copy() for w in watched]
    loss = float(model.train_on_batch(x, np.array([1, 7])))
    assert np.isfinite(loss)
    assert all(not np.allclose(w.numpy(), b) for w, b in zip(watched, before, strict=True))

    # The SiLa contract (sila_logits is (B, M·N), heads head_1 … head_M); every head, extracted
    # on its own, reproduces its slice of sila_logits and is built from Keras' own layers only
    # (what the exporter ships loads with plain Keras); the training model's only layer of ours
    # is ``sila_logits`` (SilaLogits, which records the head order).
    heads = check_sila_model(model, num_heads=m, num_classes=N, images=x).heads
    sizes = [trainable_params(head) for head in heads]
    assert sizes == sorted(sizes, reverse=True)  # deeper heads keep more of the network

    first = "bn" if name in PREACT else "conv"  # pre-activation taps: BN + ReLU before the conv
    channels = [model.get_layer(f"head_{k}_{first}").input.shape[-1] for k in range(2, m + 1)]
    assert channels == [t.channels for t in reversed(out.taps)][: m - 1]  # deepest tap first
    if name in TABLE3:  # SilaNet Table 3 (N = 10, M = 3)
        row = TABLE3[name]
        assert sizes[0] == row["base_params"]
        assert trainable_params(model) == row["train_params"]
        assert float32_mib(sizes[1]) == pytest.approx(row["head_2_mib"], abs=0.005)
        assert tuple(channels[:2]) == MODULE_CD[name]
    if name in FAMILY_REPRESENTATIVE.values():  # the other head modules, on the same backbone
        check_head_modules(model.input, out, x)
    keras.backend.clear_session()


def check_head_modules(inputs, out, x):
    """Every non-default head module on a backbone's graph: one head per module (head 2, 3, …)
    at the shallowest taps (small heads to save and reload), the SiLa contract, one SGD step
    that moves each module's weights, each module's layers named ``head_k_*``, and each
    extracted head reloaded with plain Keras giving the same logits."""
    assert len(out.taps) >= len(MODULES)
    heads = [keras.layers.Identity(name=head_name(1))(out.logits)]
    heads += [aux_head(tap, k, N, module, out.last_reduction())
              for k, (tap, module) in enumerate(zip(out.taps, MODULES), start=2)]
    model = keras.Model(inputs, sila_output(heads), name="modules")
    m = len(heads)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SilaLoss(N), run_eagerly=True)
    own = {k: [la for la in extract_head(model, k).layers if la.name.startswith(f"head_{k}")]
           for k in range(2, m + 1)}
    before = {k: [w.numpy().copy() for la in own[k] for w in la.trainable_weights] for k in own}
    assert np.isfinite(float(model.train_on_batch(x, np.array([1, 7]))))
    checked = check_sila_model(model, num_heads=m, num_classes=N, images=x)
    base = {la.name for la in checked.heads[0].layers}
    for k, module in enumerate(MODULES, start=2):
        head = checked.heads[k - 1]
        assert all(la.name.startswith(f"head_{k}") for la in head.layers if la.name not in base)
        after = [w.numpy() for la in own[k] for w in la.trainable_weights]
        assert any(not np.allclose(a, b) for a, b in zip(after, before[k], strict=True)), module
        _reloads_in_plain_keras(head, x, checked.logits[:, (k - 1) * N:k * N])


def _reloads_in_plain_keras(head, x, want):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "head.keras"
        head.save(path)
        with plain_keras():
            loaded = keras.models.load_model(path)
    assert not custom_layers(loaded)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), want,
                               atol=1e-5)


def test_every_family_has_a_head_module_representative():
    families = {get_backbone(name).family for name in list_backbones()} - {"msdnet"}
    assert families == set(FAMILY_REPRESENTATIVE)
    assert MODULES  # at least one module besides the paper's


def test_head_modules_on_keras_applications_and_user_models():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    inputs, out = build_backbone("keras:MobileNet", N, (32, 32, 3), weights="none", alpha=0.25)
    check_head_modules(inputs, out, x)  # keras:<Name>, taps found from its graph
    keras.backend.clear_session()
    for module in MODULES:  # a user's own classifier, heads attached with the module
        model = attach_heads(small_cnn(N), num_heads=3, head_module=module)
        checked = check_sila_model(model, num_heads=3, num_classes=N, images=x)
        _reloads_in_plain_keras(checked.heads[2], x, checked.logits[:, 2 * N:])
        keras.backend.clear_session()


def test_too_many_heads_names_the_maximum():
    with pytest.raises(ValueError, match=r"'resnet18' can place at most 4 heads.*num_heads=5"):
        build_sila_model("resnet18", N, num_heads=5)


def test_too_small_input_is_refused_at_build_time():
    with pytest.raises(ValueError, match=r"'vgg11' needs inputs of at least 32×32.*\(8, 8, 3\)"):
        build_sila_model("vgg11", N, input_shape=(8, 8, 3))
    # The builders check too (for callers that bypass build_sila_model).
    with pytest.raises(ValueError, match=r"'inceptionv3' needs inputs of at least 16×16.*8×8"):
        get_backbone("inceptionv3").builder(keras.Input((8, 8, 3)), N)


def test_unknown_backbone_lists_the_zoo():
    with pytest.raises(ValueError, match=r"Unknown backbone 'wrn40'.*Available: .*wrn40_10"):
        get_backbone("wrn40")


def test_variants_are_registered():
    names = set(list_backbones())
    assert {"vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "resnet8", "resnet20", "resnet32",
            "resnet56", "wrn16_8", "wrn28_10", "wrn40_10", "mobilenetv1", "densenet121",
            "inceptionv3"} <= names
