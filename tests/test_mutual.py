"""Mutual SiLa (paper B §3.2): the Eq. 10 loss, the DML term, the two-net model, tiny runs."""

import csv
import functools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import PEER
from model_checks import check_sila_model

from sila_keras import trainable_params
from sila_keras.core.heads import build_sila_model
from sila_keras.core.losses import MutualLoss, dml_kl
from sila_keras.modes import make_mode, method_label
from sila_keras.modes.mutual import build_mutual_model
from sila_keras.training.config import TrainConfig
from sila_keras.training.train import main

N = 5
FAST = ["--epochs", "1", "--batch-size", "8", "--milestones", ""]


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return rng.normal(0, 2, (6, 2 * N)).astype(np.float32), rng.integers(0, N, 6)


def test_sila_loss_equals_eq10(logits):
    z, y = logits
    betas = (1.0, 0.5)
    log_p = np_log_softmax(z.astype(np.float64))  # one 2N-way softmax over [F1(x), F2(x)]
    expected = -(betas[0] * log_p[np.arange(6), y] + betas[1] * log_p[np.arange(6), y + N])
    got = MutualLoss(N, betas=betas, sila=True, reduction=None)(y, z)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.shape == (6,)


def test_plain_ce_without_sila(logits):
    z, y = logits
    expected = sum(-np_log_softmax(z[:, c * N:(c + 1) * N].astype(np.float64))[np.arange(6), y]
                   for c in range(2))
    got = MutualLoss(N, sila=False, reduction=None)(y, z)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def np_kl(p_target_logits, self_logits):
    lp_t, lp_s = np_log_softmax(p_target_logits), np_log_softmax(self_logits)
    return (np.exp(lp_t) * (lp_t - lp_s)).sum(axis=-1)


def test_dml_term_matches_numpy(logits):
    z, y = logits
    z1, z2 = z[:, :N].astype(np.float64), z[:, N:].astype(np.float64)
    np.testing.assert_allclose(dml_kl(z[:, :N], z[:, N:]), np_kl(z2, z1), rtol=1e-5, atol=1e-6)
    for sila in (False, True):
        with_dml = MutualLoss(N, sila=sila, dml=True, reduction=None)(y, z)
        without = MutualLoss(N, sila=sila, dml=False, reduction=None)(y, z)
        np.testing.assert_allclose(np.asarray(with_dml) - np.asarray(without),
                                   np_kl(z2, z1) + np_kl(z1, z2), rtol=1e-4, atol=1e-5)


def test_dml_target_carries_no_gradient(logits):
    z, y = logits
    z1, z2 = tf.constant(z[:, :N]), tf.constant(z[:, N:])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z1, z2])
        kl = tf.reduce_sum(dml_kl(z1, z2))  # trains net 1 towards net 2's prediction
    g2 = tape.gradient(kl, z2)  # None: stop_gradient cuts the target out of the graph
    assert g2 is None or not np.any(g2.numpy())
    p1, p2 = tf.nn.softmax(z1).numpy(), tf.nn.softmax(z2).numpy()
    np.testing.assert_allclose(tape.gradient(kl, z1), p1 - p2, atol=1e-6)

    # The whole DML loss: each net's gradient is its CE gradient plus its own KL term only.
    zz = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zz)
        loss = tf.reduce_sum(MutualLoss(N, sila=False, dml=True, reduction=None)(y, zz))
    grad = tape.gradient(loss, zz).numpy()
    onehot = np.eye(N)[y]
    np.testing.assert_allclose(grad[:, :N], (p1 - onehot) + (p1 - p2), atol=1e-5)
    np.testing.assert_allclose(grad[:, N:], (p2 - onehot) + (p2 - p1), atol=1e-5)


def test_loss_serializes_and_validates():
    loss = MutualLoss(10, betas=(1.0, 0.5), sila=False, dml=True)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, MutualLoss)
    assert (again.betas, again.sila, again.dml, again.num_classes) == ([1.0, 0.5], False, True, 10)
    with pytest.raises(ValueError, match="width 20"):
        MutualLoss(10)(np.array([1]), np.zeros((1, 30), np.float32))
    with pytest.raises(ValueError, match="must be >= 0"):
        MutualLoss(10, betas=(1.0, -1.0))


def test_mutual_model_layout_and_independent_init():
    model = build_mutual_model("resnet20", None, N, (32, 32, 3))
    net1, net2 = model.get_layer("net_1"), model.get_layer("net_2")
    w1, w2 = net1.get_layer("stem_conv").kernel, net2.get_layer("stem_conv").kernel
    assert not np.allclose(w1, w2), "the two nets must be initialised independently"
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    # Net k is head k of a 2-head SiLa model and reproduces its slice of sila_logits (each net
    # nests a one-head SiLa model of its own; its extracted head leaves that model's SilaLogits
    # out, so it holds only built-in layers and exports).
    heads = check_sila_model(model, num_heads=2, num_classes=N, images=x).heads
    single = standalone_params("resnet20", N)
    assert trainable_params(heads[0]) == trainable_params(heads[1]) == single
    assert trainable_params(model) == 2 * single


def test_unknown_peer_is_rejected():
    with pytest.raises(ValueError, match="Unknown --peer backbone 'resnet21'.*Available"):
        build_mutual_model("resnet20", "resnet21", N)


@pytest.mark.parametrize("argv, message", [
    (["--mode", "mutual", "--peer", "nonet"], "Unknown --peer backbone 'nonet'"),
    (["--mode", "mutual", "--heads", "3", "--betas", "1,1,1"], "needs 2 weights"),
    (["--mode", "dml", "--heads", "1", "--betas", "1"], "needs 2 weights"),
    (["--peer", "resnet20"], "--peer only applies to --mode mutual or dml"),
    (["--mode", "dml", "--dml"], "--dml only applies to --mode mutual"),
    (["--mode", "sila", "--no-sila"], "--no-sila only applies"),
])
def test_bad_mutual_flags_exit_2(tiny_folder, tmp_path, capsys, argv, message):
    rc = main([f"folder:{tiny_folder}", "resnet20", *argv, *FAST, "--out", str(tmp_path),
               "--name", "bad"])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.startswith("sila-train: error:")
    assert "Traceback" not in err


@pytest.mark.parametrize("mode, flags, sila, dml, method", [
    ("mutual", {}, True, False, "SiLa"),
    ("mutual", {"dml": True}, True, True, "SiLa+DML"),
    ("mutual", {"no_sila": True}, False, False, "IND pair"),
    ("dml", {}, False, True, "DML"),
])
def test_loss_and_method_per_mode(mode, flags, sila, dml, method):
    config = TrainConfig.create(dataset="x", model="resnet20", mode=mode, heads=2, betas=(1.0, 0.5),
                         **flags)
    mode = make_mode(config)
    loss = mode.loss(10, 2)
    assert isinstance(loss, MutualLoss) and (loss.sila, loss.dml) == (sila, dml)
    assert loss.betas == [1.0, 0.5]
    assert method_label(config) == method == method_label(config.to_dict())
    names = [m.name for m in mode.metrics(10, 2)]
    assert {"head_1_acc", "head_2_acc", "top5", "nll", "head_2_top5", "head_2_nll"} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.slow
@pytest.mark.parametrize("name, peer, method", [
    ("homo", "resnet8", "SiLa"), ("hetero_dml", PEER, "SiLa+DML"), ("dml", "resnet8", "DML")])
def test_mutual_run_writes_per_net_metrics(mutual_runs, name, peer, method):
    run = mutual_runs / name
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert summary["method"] == method
    assert set(summary["nets"]) == {"net_1", "net_2"}
    for k, backbone in ((1, "resnet8"), (2, peer)):
        net = summary["nets"][f"net_{k}"]
        assert set(net) >= {"top1", "top5", "nll", "best", "params"}
        assert net["model"] == backbone
        assert net["top1"] == pytest.approx(float(last[f"head_{k}_acc"]), abs=1e-6)
        assert 0 <= net["top1"] <= net["top5"] <= 1 and net["nll"] > 0
        assert net["best"] >= net["top1"] - 1e-9
        assert net["params"] == standalone_params(backbone, 3)
        png = (run / f"curves_net_{k}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["nets"]["net_1"]["nll"] == pytest.approx(float(last["nll"]), rel=1e-5)
    assert (run / "nets.csv").read_text().splitlines()[0] == "net,model,top1,top5,nll,best,params"
    assert json.loads((run / "config.json").read_text())["sila"]["mode"] == ("dml" if name == "dml" else "mutual")


@functools.cache
def standalone_params(backbone, num_classes):
    """Trainable parameters of the backbone built alone (1 head)."""
    return trainable_params(build_sila_model(backbone, num_classes, 1))


@pytest.mark.slow
def test_saved_mutual_model_exports_net_2_alone(mutual_runs):
    model = keras.models.load_model(mutual_runs / "hetero_dml" / "model.keras")
    assert isinstance(model.loss, MutualLoss) and model.loss.dml and model.loss.sila
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    heads = check_sila_model(model, num_heads=2, num_classes=3, images=x, atol=1e-4).heads  # 3 classes: the tiny folder's
    assert {layer.name for layer in heads[1].layers} == {"image", "net_2", "head_2"}
