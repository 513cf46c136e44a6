"""Levers for heads 2..M (sila_keras.core.levers): each against a NumPy reference with a known
answer, its flag's validation, and its per-epoch value under MirroredStrategy and on resume."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from sila_keras.core.levers import ramp
from sila_keras.core.losses import SilaLoss
from sila_keras.training.config import TrainConfig
from sila_keras.utils.errors import ConfigError

N, M = 5, 3


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def sila_reference(y, z, weights):
    """Paper A's loss in NumPy: −Σ_k w_k log softmax(z)[y + (k−1)N], mean over the batch."""
    lp = _log_softmax(z)
    return float(np.mean([-sum(w * lp[i, y[i] + k * N] for k, w in enumerate(weights))
                          for i in range(len(y))]))


def batch(seed=0, b=4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, N, b), (rng.normal(size=(b, M * N)) * 2).astype(np.float32)


# ----------------------------------------------------------------- --ramp-betas


def test_ramp_is_zero_then_linear_then_one():
    assert [ramp(e, 0, 4) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [ramp(e, 3, 2) for e in range(7)] == [0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert [ramp(e, 2, 0) for e in range(4)] == [0.0, 0.0, 1.0, 1.0]  # a step at the start
    assert ramp(5) == 1.0  # no lever: always 1


@pytest.mark.parametrize("epoch", [0, 1, 3, 4, 9])
def test_ramped_set_weights_match_numpy_at_every_epoch(epoch):
    y, z = batch()
    loss = SilaLoss(N, beta=0.4, lam=0.5, ramp_betas=4)
    loss.set_epoch(epoch)
    f = min(1.0, epoch / 4)  # the aux weights × e/E, head 1 × 1
    want = sila_reference(y, z, [1.0, 0.4 * f, 0.2 * f])
    assert float(loss(y, z)) == pytest.approx(want, rel=1e-5)
    assert loss.factors(epoch)["aux"] == f and loss.scheduled


def test_ramped_loss_round_trips_and_the_paper_loss_is_untouched():
    loss = SilaLoss(N, ramp_betas=3)
    back = SilaLoss.from_config(loss.get_config())
    assert back.ramp_betas == 3 and back.scheduled
    back.set_epoch(1)  # the value comes from the epoch, not from the saved loss
    y, z = batch(1)
    assert float(back(y, z)) == pytest.approx(sila_reference(y, z, [1, 0.1 / 3, 0.05 / 3]),
                                              rel=1e-5)
    plain = SilaLoss(N)
    assert "ramp_betas" not in plain.get_config() and not plain.scheduled


@pytest.mark.parametrize("fields, match", [
    ({"ramp_betas": 2, "heads": 1}, r"`--ramp-betas` ramps the set weights of heads 2\.\.M, so "
                                    r"it needs `--heads` >= 2\. Received: heads=1, ramp_betas=2"),
    ({"ramp_betas": -1}, r"`--ramp-betas` must be an integer >= 0 \(epochs; 0 = off\)\. "
                         r"Received: ramp_betas=-1"),
])
def test_bad_ramp_is_refused(fields, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.create("folder:x", "resnet20", **fields)


def _toy_model():
    """A 2-head SiLa model on 4 features (head 2 on the trunk's first layer)."""
    from sila_keras.core.heads import sila_output

    x = keras.Input((4,))
    h = keras.layers.Dense(3, name="trunk_1")(x)
    z2 = keras.layers.Dense(N, name="head_2")(h)
    z1 = keras.layers.Dense(N, name="classifier")(keras.layers.Dense(3, name="trunk_2")(h))
    return keras.Model(x, sila_output([keras.layers.Identity(name="head_1")(z1), z2]))


# ----------------------------------------------------------------- --distill-start / --distill-ramp


def _kl_reference(z, m, t=1.0):
    """Σ_{k≥2} T²·KL(p_1^T ‖ p_k^T) per example (the distillation term of --distill)."""
    blocks = z.reshape(len(z), m, N) / t
    lp1 = _log_softmax(blocks[:, 0])
    return sum(t * t * (np.exp(lp1) * (lp1 - _log_softmax(blocks[:, k]))).sum(-1)
               for k in range(1, m))


@pytest.mark.parametrize("epoch, factor", [(0, 0.0), (2, 0.0), (3, 0.0), (4, 0.5), (5, 1.0),
                                           (8, 1.0)])
def test_delayed_distillation_matches_numpy(epoch, factor):
    """--distill 0.7 --distill-start 3 --distill-ramp 2: off in epochs 0..3 (0-based; the
    ramp starts from 0 at epoch 3), W/2 at epoch 4, W from epoch 5."""
    y, z = batch(2)
    loss = SilaLoss(N, distill=0.7, distill_t=2.0, distill_start=3, distill_ramp=2)
    loss.set_epoch(epoch)
    want = sila_reference(y, z, [1.0, 0.1, 0.05]) + float(
        np.mean(0.7 * factor * _kl_reference(z, M, 2.0)))
    assert float(loss(y, z)) == pytest.approx(want, rel=1e-5)
    assert loss.factors(epoch)["distill"] == factor
    back = SilaLoss.from_config(loss.get_config())
    assert (back.distill_start, back.distill_ramp) == (3, 2) and back.scheduled


def test_distillation_from_the_start_needs_no_schedule():
    loss = SilaLoss(N, distill=0.5)
    assert not loss.scheduled and "distill_start" not in loss.get_config()
    step = SilaLoss(N, distill=0.5, distill_start=1)  # a step: off in epoch 0, W from epoch 1
    assert [step.factors(e)["distill"] for e in range(3)] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("fields, match", [
    ({"distill_start": 2}, r"`--distill-start` schedules the self-distillation term, so it "
                           r"needs `--distill W` > 0\. Received: distill=0\.0, distill_start=2"),
    ({"distill": 0.1, "distill_ramp": -2}, r"`--distill-ramp` must be an integer >= 0"),
    ({"distill": 0.1, "distill_start": 1, "heads": 1}, r"`--distill` .*needs `--heads` >= 2"),
])
def test_bad_distillation_schedule_is_refused(fields, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.create("folder:x", "resnet20", **fields)


def test_the_run_says_when_distillation_starts(capsys):
    from sila_keras.modes import make_mode

    make_mode(TrainConfig.create("folder:x", "resnet8", distill=0.5, distill_start=5,
                                 distill_ramp=4, ramp_betas=3)).check_before_data()
    out = capsys.readouterr().out
    assert "W=0.5, T=1, off in epochs 1..5, W × (e−5)/4 in epoch e+1, full W from epoch 10" in out
    assert "--ramp-betas 3: heads 2..3's weights × e/3 in epoch e+1, full from epoch 4" in out


# ----------------------------------------------------------------- --grad-equilibrium


def _equilibrium_step_numpy(weights, x, y, betas, lr, l2):
    """One SGD step on the toy model with Li et al.'s gradient equilibrium written as their
    code does it, on tensors: at the tap h of exit 0 of n = 2, everything flowing back into h
    × 1/(n−0), the deeper trunk's part first × (n−0−1) = 1 (``gradient_rescale``)."""
    (w1, b1), (w2, b2), (wh, bh), (wc, bc) = weights
    h = x @ w1 + b1
    h2 = h @ w2 + b2
    z = np.concatenate([h2 @ wc + bc, h @ wh + bh], axis=-1)  # [head_1, head_2]
    p = np.exp(_log_softmax(z))
    dz = sum(betas) * p
    for k, b in enumerate(betas):
        dz[np.arange(len(y)), y + k * N] -= b
    dz /= len(y)  # the batch mean
    g1, g2 = dz[:, :N], dz[:, N:]
    g_h2 = g1 @ wc.T
    g_h = (1 / 2) * (g2 @ wh.T + 1 * (g_h2 @ w2.T))  # the rescaled gradient into the tap
    grads = [(x.T @ g_h, g_h.sum(0)), (h.T @ g_h2, g_h2.sum(0)), (h.T @ g2, g2.sum(0)),
             (h2.T @ g1, g1.sum(0))]
    return [tuple(w - lr * (g + l2 * w) for w, g in zip(layer, grad, strict=True))
            for layer, grad in zip(weights, grads, strict=True)]


def _toy_weights(model):
    return [tuple(model.get_layer(n).get_weights()) for n in ("trunk_1", "trunk_2", "head_2",
                                                             "classifier")]


def test_gradient_equilibrium_matches_the_tensor_rescaling_of_li_et_al():
    from sila_keras.core.levers import equilibrium_scales
    from sila_keras.training.optim import SGDL2

    keras.utils.set_random_seed(1)
    model = _toy_model()
    scales = equilibrium_scales(model)
    assert scales == {"trunk_1/kernel": 0.5, "trunk_1/bias": 0.5}  # the trunk under both heads
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 4)).astype(np.float32), rng.integers(0, N, 6)
    want = _equilibrium_step_numpy(_toy_weights(model), x.astype(np.float64), y, [1.0, 0.6],
                                   lr=0.1, l2=0.01)
    model.compile(optimizer=SGDL2(l2=0.01, learning_rate=0.1, momentum=0.0, grad_scales=scales),
                  loss=SilaLoss(N, betas=[1.0, 0.6]))
    model.train_on_batch(x, y)
    for got, ref in zip(_toy_weights(model), want, strict=True):
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    back = SGDL2.from_config(model.optimizer.get_config())  # restored on --resume
    assert back.grad_scales == scales
    assert "grad_scales" not in SGDL2().get_config()  # the paper's optimizer is unchanged


def test_gradient_equilibrium_needs_two_heads():
    with pytest.raises(ConfigError, match=r"`--grad-equilibrium` balances the gradients .* needs "
                                          r"`--heads` >= 2\. Received: heads=1"):
        TrainConfig.create("folder:x", "resnet20", heads=1, grad_equilibrium=True)


# ----------------------------------------------------------------- MirroredStrategy and resume


def test_levers_under_mirrored_strategy_resuming_at_epoch_two():
    """Two CPU replicas, the training chain's compile_model and fit, a run resumed at epoch 2
    (0-based) of --ramp-betas 4 with --grad-equilibrium: the epoch's loss is the NumPy loss
    with head 2's weight × 2/4 (the value comes from the epoch Keras passes, not from earlier
    epochs), and the step is the NumPy equilibrium step with that weight."""
    from sila_keras.training.train import compile_model, fit

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, N, 8)
    config = TrainConfig.create("folder:x", "resnet8", heads=2, betas=(1.0, 0.6), lr=0.1,
                                momentum=0.0, milestones=(), ramp_betas=4, grad_equilibrium=True)
    from sila_keras.devices.distribute import make_strategy

    strategy = make_strategy("mirrored")  # the process's one: a second over the same devices
    # would clash with it in the collective ops ("Shape mismatch in the collective instance")
    with strategy.scope():
        keras.utils.set_random_seed(4)
        model = compile_model(_toy_model(), config, N, steps=1)
    start, z = _toy_weights(model), model.predict(x, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    history = fit(model, ds, None, epochs=3, steps=1, initial_epoch=2, verbose=0)
    betas = [1.0, 0.6 * 2 / 4]
    assert history.history["loss"][0] == pytest.approx(sila_reference(y, z, betas), rel=1e-5)
    want = _equilibrium_step_numpy(start, x.astype(np.float64), y, betas, lr=0.1, l2=5e-4)
    for got, ref in zip(_toy_weights(model), want, strict=True):
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert model.optimizer.grad_scales == {"trunk_1/kernel": 0.5, "trunk_1/bias": 0.5}
    assert float(model.loss._aux_scale.numpy()) == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--heads", "1", "--grad-equilibrium"], "`--grad-equilibrium` balances the gradients"),
    (["--heads", "1", "--ramp-betas", "3"], "`--ramp-betas` ramps the set weights"),
    (["--distill-ramp", "3"], "`--distill-ramp` schedules the self-distillation term"),
    (["--mode", "dml", "--ramp-betas", "3"], "--ramp-betas only applies to --mode sila"),
])
def test_bad_levers_exit_2_on_the_command_line_and_write_nothing(capsys, tmp_path, argv, message):
    from helpers import run_err

    err = run_err(capsys, ["folder:x", "resnet8", *argv, "--out", str(tmp_path)])
    assert message in err and not any(tmp_path.iterdir())
