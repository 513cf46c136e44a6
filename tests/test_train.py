"""End-to-end training CLI: run directory, tfds path, MirroredStrategy, resume (killed runs:
test_reliability; a mirrored CLI run: test_multiworker)."""

import csv
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from sila_keras import extract_head
from sila_keras.training.train import main

FAST = ["--epochs", "1", "--batch-size", "16", "--milestones", ""]


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_run_directory_is_complete(finished_run):
    for name in ("config.json", "metrics.csv", "summary.json", "model.keras", "labels.txt",
                 "curves.png", "checkpoints/epoch-0002.keras", "checkpoints/state.json"):
        assert (finished_run / name).is_file(), name
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["epoch-0002.keras", "state.json"]
    assert json.loads((finished_run / "checkpoints" / "state.json").read_text())["model"] == "epoch-0002.keras"
    assert any((finished_run / "tensorboard").rglob("events.out.tfevents*"))
    config = json.loads((finished_run / "config.json").read_text())
    assert config["net"]["model"] == "resnet8" and config["sila"]["heads"] == 3
    assert config["sila"]["beta"] == 0.1 and config["optim"]["epochs"] == 2
    labels = (finished_run / "labels.txt").read_text().split()
    assert labels == sorted(labels) and len(labels) == 10 and labels[0] == "airplane"


def test_metrics_csv_rows_and_lr_schedule(finished_run):
    rows = read_rows(finished_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in ("lr", "loss", "head_1_acc", "head_2_acc", "head_3_acc", "top5", "nll"):
        assert col in rows[0]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.05])  # milestone 1, gamma 0.5
    for r in rows:
        assert 0.0 <= float(r["head_2_acc"]) <= 1.0 and float(r["top5"]) >= float(r["head_1_acc"])


def test_summary_fields(finished_run):
    s = json.loads((finished_run / "summary.json").read_text())
    assert set(s["heads"]) == {"head_1", "head_2", "head_3"}
    rows = read_rows(finished_run / "metrics.csv")
    for k in (1, 2, 3):
        h = s["heads"][f"head_{k}"]
        assert h["final_acc"] == pytest.approx(float(rows[-1][f"head_{k}_acc"]))
        assert h["best_acc"] == pytest.approx(max(float(r[f"head_{k}_acc"]) for r in rows))
    assert s["heads"]["head_1"]["params"] == 75_290 == s["base_params"]  # ResNet-8, N = 10
    assert s["heads"]["head_2"]["params"] < s["heads"]["head_1"]["params"] < s["total_params"]
    assert s["epochs_done"] == 2 and s["strategy"] == "default" and s["replicas"] == 1
    assert s["wall_time_s"] > 0 and s["data"]["train_examples"] == 80


def test_saved_model_reloads_and_heads_match(finished_run, cifar_folder):
    model = keras.models.load_model(finished_run / "model.keras")
    from sila_keras.data import load_dataset

    x = load_dataset(f"folder:{cifar_folder}", limit_test=8).test_x.astype(np.float32)
    full = model.predict(x, verbose=0)
    assert full.shape == (8, 30)
    for k in (1, 2, 3):
        np.testing.assert_allclose(extract_head(model, k).predict(x, verbose=0),
                                   full[:, (k - 1) * 10:k * 10], atol=1e-5)


def test_existing_run_dir_is_refused_and_untouched(finished_run, capsys):
    before = (finished_run / "metrics.csv").read_bytes()
    rc = main([f"folder:{finished_run}", "resnet8", "--out", str(finished_run.parent), "--name", "e2e"])
    assert rc == 2
    assert "already exists. Add --resume" in capsys.readouterr().err
    assert (finished_run / "metrics.csv").read_bytes() == before


def test_resume_of_finished_run_does_nothing(finished_run, cifar_folder):
    before = (finished_run / "metrics.csv").read_bytes()
    rc = main([f"folder:{cifar_folder}", "resnet8", "--epochs", "2", "--batch-size", "16",
               "--milestones", "1", "--gamma", "0.5", "--out", str(finished_run.parent), "--name", "e2e",
               "--resume"])
    assert rc == 0 and (finished_run / "metrics.csv").read_bytes() == before


def test_tfds_path_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        rc = main(["cifar10", "resnet8", *FAST, "--heads", "2", "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["data"]["source"] == "tfds:cifar10" and s["num_heads"] == 2 and s["num_classes"] == 10


def tiny_bn_free_sila_model():
    """Conv net without BatchNorm (per-replica BN statistics would legitimately differ)."""
    from sila_keras.core.heads import assemble
    from sila_keras.models.registry import Tap

    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, -1)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    tap = Tap("s1", x, 8, 1, 1)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    return assemble(inp, logits, [tap], 2, 10, "tiny")


def test_mirrored_strategy_matches_default_first_steps():
    """2 logical CPUs: per-example loss → identical loss and update as on one device."""
    from sila_keras.devices.distribute import make_strategy
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import compile_model

    assert len(tf.config.list_logical_devices("CPU")) == 2
    cfg = TrainConfig.create("x", "resnet20", milestones=(), lr=0.05, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    keras.utils.set_random_seed(3)
    ref = tiny_bn_free_sila_model()
    results = {}
    for name in ("default", "mirrored"):
        strategy = make_strategy(name)
        with strategy.scope():
            model = tiny_bn_free_sila_model()
            model.set_weights(ref.get_weights())
            compile_model(model, cfg, 10, steps=1)
        hist = model.fit(ds, epochs=3, steps_per_epoch=1, verbose=0)
        results[name] = (hist.history["loss"], model.get_weights(), strategy.num_replicas_in_sync)
    assert results["mirrored"][2] == 2
    np.testing.assert_allclose(results["mirrored"][0], results["default"][0], rtol=1e-5)
    for a, b in zip(results["mirrored"][1], results["default"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_training_step_is_traced_once(monkeypatch):
    """The optimizer is built before fit(): no slot variable is created while tracing, so
    tf.function does not trace the training step a second time (~2 s of every run)."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import compile_model, fit

    traces = []
    step = TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step",
                        lambda self, data: (traces.append(1), step(self, data))[1])
    rng = np.random.default_rng(0)
    ds = tf.data.Dataset.from_tensor_slices((rng.uniform(0, 255, (6, 32, 32, 3)).astype(np.float32),
                                             rng.integers(0, 10, 6).astype(np.int32))).batch(4)
    model = tiny_bn_free_sila_model()
    compile_model(model, TrainConfig.create("x", "resnet20", milestones=()), 10, steps=2)
    assert not model.optimizer.built
    fit(model, ds.repeat(), ds, epochs=2, steps=2, verbose=0)
    assert model.optimizer.built and len(traces) == 1


def test_cli_as_subprocess_help():
    out = subprocess.run([sys.executable, "-m", "sila_keras.train", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    assert "--heads" in out.stdout and "vgg19" in out.stdout and "folder:PATH" in out.stdout
