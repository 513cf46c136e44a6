"""keras:<Name> backbones: keras.applications models with SiLa heads, their weights,
the freeze → unfreeze fine-tuning recipe, export of a head, and bad input.

Everything runs at the smallest input the applications allow (32 px), batch 2, one step per
epoch, eagerly where only one step runs (tracing a train step costs more than running it).
"""

import json

import keras
import numpy as np
import pytest
from keras import layers

from sila_keras import extract_head, num_heads_of
from sila_keras.core.heads import build_sila_model
from sila_keras.core.losses import SilaLoss
from sila_keras.models import applications, get_backbone
from sila_keras.training.config import TrainConfig
from sila_keras.training.config_groups import KERAS_APPLICATIONS
from sila_keras.training.finetune import backbone_layers, is_new_layer
from sila_keras.training.train import compile_model, fit, main
from sila_keras.utils.errors import ConfigError, ModelError

SIZE, N = 32, 3
REQUIRED = ("MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0",
            "EfficientNetB1", "EfficientNetB2", "EfficientNetB3", "EfficientNetV2B0", "ResNet50")


def images(n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def small_mobilenet(weights="none", **kw):
    """The cheapest application with BatchNorm: MobileNet α = 0.25 at 32 px, 3 heads."""
    return build_sila_model("keras:MobileNet", N, 3, (SIZE, SIZE, 3), weights=weights, alpha=0.25,
                            **kw)


# --------------------------------------------------------------------------- the registry


def test_keras_names_resolve_through_the_one_registry():
    names = applications.application_names()
    assert all(f"keras:{n}" in names for n in REQUIRED)
    assert tuple(applications.APPLICATIONS) == KERAS_APPLICATIONS  # the TF-free list for --help
    spec = get_backbone("keras:MobileNetV2")
    assert spec.raw_input and spec.min_input_size == 32 and spec.name == "keras:MobileNetV2"
    with pytest.raises(ModelError, match=r"Unknown keras.applications model 'MobileNetv2'\. "
                                         r"Did you mean keras:MobileNetV2"):
        get_backbone("keras:MobileNetv2")


@pytest.mark.parametrize("name", list(applications.APPLICATIONS))
def test_each_application_builds_with_heads_and_trains_one_step(name):
    model = build_sila_model(f"keras:{name}", N, 3, (SIZE, SIZE, 3), weights="none")
    assert model.output.shape == (None, 3 * N) and num_heads_of(model) == 3
    # Heads at stage ends, head 2 deeper (smaller map) than head 3; raw pixels go in.
    h2, h3 = (model.get_layer(f"head_{k}_conv").input.shape[1] for k in (2, 3))
    assert h2 < h3 < SIZE
    first = model.layers[1]
    assert isinstance(first, layers.Rescaling), f"{name}: preprocessing is not inside the model"
    assert model.get_layer("classifier").units == N
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SilaLoss(N), run_eagerly=True)
    before = model.get_layer("head_2_conv").get_weights()[0].copy()
    loss = model.train_on_batch(images(), np.array([0, 2]))
    assert np.isfinite(loss)
    assert not np.allclose(before, model.get_layer("head_2_conv").get_weights()[0])
    keras.backend.clear_session()


# --------------------------------------------------------------------------- weights


def test_weights_from_a_local_file(tmp_path):
    plain = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                         input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "mobilenet.weights.h5"
    plain.save_weights(path)
    model = small_mobilenet(weights=str(path))
    for layer in (la for la in plain.layers if la.weights):
        for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # Another architecture's file: the message names the first layer that does not fit.
    with pytest.raises(ModelError, match=r"does not match keras:MobileNetV2 .*layer 'Conv1' has "
                                         r"weights of shape \(3, 3, 3, 32\) but the file has"):
        build_sila_model("keras:MobileNetV2", N, 3, (SIZE, SIZE, 3), weights=str(path))
    with pytest.raises(ModelError, match="Weights file not found"):
        small_mobilenet(weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ModelError, match=r"none, imagenet or the path of a '\.weights\.h5'"):
        small_mobilenet(weights=str(tmp_path / "model.keras"))
    keras.backend.clear_session()


def test_imagenet_offline_fails_at_once_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(applications, "_online", lambda url, timeout=3.0: False)
    with pytest.raises(ModelError, match=r"Fetch https://storage\.googleapis\.com/\S+mobilenet_2_5_"
                                         rf"224_tf_no_top\.h5 and put it at {tmp_path}/models/"):
        small_mobilenet(weights="imagenet")
    with pytest.raises(ModelError, match=r"at least 32×32 pixels \(include_top=False is used, so "
                                         r"any class count works\)"):
        applications.check_weights("keras:MobileNetV2", "imagenet", (24, 24, 3))
    keras.backend.clear_session()


# --------------------------------------------------------------------------- fine-tuning


def trainable_names(model):
    return {w.path for w in model.trainable_weights}


def bn_stats(model):
    bn = next(la for la in backbone_layers(model) if isinstance(la, layers.BatchNormalization))
    return [v.copy() for v in bn.get_weights()]


class Spy(keras.callbacks.Callback):
    """What the model looks like while each epoch trains."""

    def __init__(self):
        super().__init__()
        self.trainable, self.bn = {}, {}

    def on_train_batch_end(self, batch, logs=None):
        self.trainable[self._epoch] = trainable_names(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.bn[epoch] = bn_stats(self.model)


@pytest.fixture(scope="module")
def finetune_setup(tmp_path_factory):
    """One compiled MobileNet α=0.25 SiLa model saved untrained, and its data."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    keras.utils.set_random_seed(0)
    was_deterministic = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    config = TrainConfig.create("folder:x", "keras:MobileNet", epochs=2, freeze_epochs=1, batch_size=2,
                         optimizer="adamw", schedule="cosine", lr=1e-3, weight_decay=0.01,
                         backbone_lr_mult=0.5, label_smoothing=0.1)
    model = compile_model(small_mobilenet(), config, N, steps=1)
    model.optimizer.build(model.trainable_variables)  # saved with its (zero) slots
    path = tmp_path_factory.mktemp("ft") / "init.keras"
    model.save(path)
    ds = tf.data.Dataset.from_tensor_slices((images(2), np.array([0, 1]))).batch(2).repeat()
    yield path, ds
    if not was_deterministic:
        tf_config.disable_op_determinism()
    keras.backend.clear_session()


def load(path):
    model = keras.models.load_model(path)
    model.run_eagerly = True
    return model


def test_freeze_then_unfreeze_trains_the_right_set_and_keeps_bn_frozen(finetune_setup):
    path, ds = finetune_setup
    model, spy = load(path), Spy()
    everything = trainable_names(model)
    fit(model, ds, None, epochs=2, steps=1, callbacks=[spy], verbose=0, freeze_epochs=1)
    new = {p for p in everything if is_new_layer(p)}
    assert spy.trainable[0] == new and {p.split("/")[0] for p in new} >= {
        "classifier", "head_2_conv", "head_3_conv"}
    assert spy.trainable[1] == everything  # unfrozen: exactly the full set again
    # BN statistics did not move while frozen (inference mode), and did once unfrozen.
    for a, b in zip(spy.bn[0], spy.bn[1]):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(spy.bn[1], bn_stats(model)))
    assert trainable_names(model) == everything  # left unfrozen (as saved)
    assert type(model.optimizer).__name__ == "FineTuneAdamW"
    assert int(model.optimizer.iterations) == 2


def test_resume_across_the_freeze_boundary_is_exact(finetune_setup, tmp_path):
    path, ds = finetune_setup
    straight = load(path)
    fit(straight, ds, None, epochs=2, steps=1, verbose=0, freeze_epochs=1)
    first = load(path)
    fit(first, ds, None, epochs=1, steps=1, verbose=0, freeze_epochs=1)  # the frozen epoch only
    first.save(tmp_path / "epoch-1.keras")
    resumed = load(tmp_path / "epoch-1.keras")
    fit(resumed, ds, None, epochs=2, steps=1, initial_epoch=1, verbose=0, freeze_epochs=1)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(first.get_layer("conv1").get_weights()[0],
                           resumed.get_layer("conv1").get_weights()[0])


# --------------------------------------------------------------------------- export


def test_extracted_head_exports_and_matches(finetune_setup, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    import export

    model = load(finetune_setup[0])
    x = images(4, seed=1)
    options = export.ExportOptions(formats="tflite", quantize="none", latency_runs=1,
                                   tflite_outputs="logits")
    m = export.export_head(model, 2, tmp_path, options=options, sample_images=x, verbose=0)
    assert m["ok"], m["failed"]
    interpreter = Interpreter(model_path=str(tmp_path / "model.tflite"))
    runner = interpreter.get_signature_runner(interpreter.get_signature_list().popitem()[0])
    got = np.concatenate([runner(image=x[i:i + 1])["logits"] for i in range(len(x))])
    ref = extract_head(model, 2).predict(x, verbose=0)  # raw pixels in, preprocessing inside
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["keras:EfficientNetb0"], "Did you mean keras:EfficientNetB0"),
    (["keras:MobileNetV2", "--freeze-epochs", "2", "--epochs", "2"],
     r"`--freeze-epochs` must be >= 0 and < `--epochs`"),
    (["resnet20", "--weights", "imagenet"], "`--weights` applies to keras:<Name> backbones only"),
    (["keras:MobileNetV2", "--weights", "nope.weights.h5"], "Weights file not found"),
    (["keras:MobileNetV2", "--optimizer", "adamw", "--mode", "dml", "--weights", "none"],
     r"`--label-smoothing` applies to --mode sila"),
])
def test_bad_input_exits_2_and_writes_nothing(tiny_folder, tmp_path, capsys, argv, message):
    rc = main([f"folder:{tiny_folder}", *argv, "--out", str(tmp_path / "runs"), "--name", "x"])
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_cli_defaults_follow_the_model(tiny_folder, tmp_path):
    from sila_keras.training.train import build_parser, config_from_args

    def config(*argv):
        return config_from_args(build_parser().parse_args([f"folder:{tiny_folder}", *argv]))

    paper, tuned = config("resnet20"), config("keras:MobileNetV2")
    assert (paper.optim.optimizer, paper.optim.schedule, paper.optim.lr, paper.optim.weight_decay, paper.net.weights) == (
        "sgd", "step", 0.1, 5e-4, "none")
    assert (tuned.optim.optimizer, tuned.optim.schedule, tuned.optim.lr, tuned.net.weights, tuned.optim.backbone_lr_mult,
            tuned.optim.label_smoothing) == ("adamw", "cosine", 1e-3, "imagenet", 0.1, 0.1)
    scratch = config("keras:MobileNetV2", "--weights", "none", "--lr", "0.05")
    assert scratch.optim.backbone_lr_mult == 1.0 and scratch.optim.lr == 0.05
    assert config("keras:MobileNetV2", "--lr", "0.1").optim.lr == 0.1  # typed: kept, even if paper's
    assert json.loads(json.dumps(scratch.to_dict()))["net"]["taps"] is None


def test_config_checks():
    with pytest.raises(ConfigError, match="`--taps` applies to keras:<Name> backbones only"):
        TrainConfig.create("d", "resnet20", taps=("stage2",))
    with pytest.raises(ConfigError, match=r"`--warmup-epochs` must be >= 0 and < `--epochs`"):
        TrainConfig.create("d", "keras:MobileNetV2", epochs=2, warmup_epochs=2)
    with pytest.raises(ModelError, match="Unknown keras.applications model"):
        TrainConfig.create("d", "keras:Nope")


def test_params_table_of_a_keras_model(capsys):
    from sila_keras.reports.params import main as params_main

    assert params_main(["--model", "keras:MobileNet", "--image-size", "64", "--dataset", "3"]) == 0
    out = capsys.readouterr().out
    assert "N=3, M=3 heads" in out and "keras:MobileNet " in out and "head_3 MiB" in out
