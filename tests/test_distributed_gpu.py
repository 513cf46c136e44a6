"""Multi-replica correctness and GPU-suited defaults, on 2 logical CPU devices.

Regression tests (each caught a real bug): ``--jit`` with 2 replicas, an
inf on one replica only under float16 loss scaling, ``--resume`` with other speed flags.
Plus sync-BN = one device on the same global batch, checkpoint cadence with an exact
resume, one stacked metric reduction, and the resolved defaults.
"""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from sila_keras.devices import replica_jit
from sila_keras.devices.distribute import (
    GPU_STEPS_PER_EXECUTION,
    SpeedSettings,
    make_strategy,
    resolve_speed,
    resolve_steps_per_execution,
    resolve_sync_bn,
    set_sync_bn,
)
from sila_keras.training.config import TrainConfig
from sila_keras.training.precision import SyncLossScaleOptimizer, policy_for, wrap_optimizer
from sila_keras.training.train import main
from sila_keras.utils.errors import ConfigError

TINY = ["resnet8", "--epochs", "1", "--batch-size", "6", "--milestones", "", "--verbose", "0"]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def tiny_bn_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = keras.layers.BatchNormalization(momentum=0.5, name="bn")(x)
    x = keras.layers.ReLU()(x)
    out = keras.layers.Dense(3, name="dense")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def batch(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), (np.arange(n) % 3).astype("int32")


def train_two_steps(strategy, weights, *, sync_bn=False, jit=False):
    """Two SGD steps on the same global batch of 8; returns (losses, all weights)."""
    x, y = batch()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    with strategy.scope():
        model = tiny_bn_model()
        model.set_weights(weights)
        set_sync_bn(model, sync_bn)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        if jit:
            replica_jit.install(model)
    hist = model.fit(ds, epochs=2, steps_per_epoch=1, verbose=0, shuffle=False)
    return hist.history["loss"], [w.numpy() for w in model.weights]


# --------------------------------------------------------------------------- --jit, 2 replicas


def test_jit_with_two_replicas_trains_from_the_cli(tiny_folder, tmp_path, capsys):
    """Regression: failed before ("Trying to access resource …/replica_1 … from device CPU:0").
    Also: the batch is logged as global and per replica, the resolved settings are kept."""
    code = main([f"folder:{tiny_folder}", *TINY, "--heads", "2", "--strategy", "mirrored",
                 "--jit", "--out", str(tmp_path), "--name", "j"])
    assert code == 0
    assert "Batch 6 global = 3 per replica × 2 replica(s)" in capsys.readouterr().out
    assert np.isfinite(float(rows(tmp_path / "j" / "metrics.csv")[0]["loss"]))
    config = json.loads((tmp_path / "j" / "config.json").read_text())
    assert config["run"]["steps_per_execution"] == "auto" and config["run"]["sync_bn"] is None
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())
    assert summary["replicas"] == 2
    # auto sync-BN (3 per replica) stays off with --jit: XLA cannot compile its all-reduce
    assert summary["speed"] == {"global_batch": 6, "per_replica_batch": 3, "replicas": 2,
                                "steps_per_execution": 1, "jit": "per replica",
                                "sync_bn": False, "precision": "float32"}


def test_per_replica_jit_matches_uncompiled_training():
    weights = tiny_bn_model().get_weights()
    mirrored = make_strategy("mirrored")
    ref_loss, ref = train_two_steps(mirrored, weights)
    loss, got = train_two_steps(mirrored, weights, jit=True)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_jit_with_explicit_sync_bn_on_two_replicas_is_refused_before_anything_runs(
        tiny_folder, tmp_path, capsys):
    code = main([f"folder:{tiny_folder}", *TINY, "--strategy", "mirrored", "--jit", "--sync-bn",
                 "--out", str(tmp_path), "--name", "js"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--jit with several replicas cannot compile synchronized BatchNorm" in err
    assert "Drop --sync-bn" in err and "Traceback" not in err
    assert not (tmp_path / "js").exists()


# --------------------------------------------------------------------------- float16 overflow


def overflow_on_replica_1(optimizer_factory):
    """One step where replica 1 alone has an inf gradient; returns (weights, scale)."""
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        w = keras.Variable(np.ones(3, np.float32))
        opt = optimizer_factory(keras.optimizers.SGD(0.1))
        opt.build([w])

    @tf.function
    def step(bad_replica):
        def fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            g = tf.where(tf.equal(rid, bad_replica), tf.constant([np.inf, 1.0, 1.0]), tf.ones(3))
            opt.apply_gradients([(g, w)])
        strategy.run(fn)

    scale0 = float(opt.dynamic_scale.numpy())
    step(tf.constant(1))
    after_bad = (w.numpy().copy(), float(opt.dynamic_scale.numpy()) / scale0)
    step(tf.constant(-1))  # no replica overflows: the update is applied
    return after_bad, w.numpy(), float(opt.dynamic_scale.numpy()) / scale0


def test_inf_on_one_replica_skips_the_step_and_lowers_the_scale():
    """Regression: Keras' LossScaleOptimizer (what float16 training used before) applied it."""
    (w_bad, scale_bad), w_next, _ = overflow_on_replica_1(
        lambda sgd: wrap_optimizer(sgd, "mixed_float16"))
    np.testing.assert_array_equal(w_bad, np.ones(3))  # step skipped on every replica
    assert scale_bad == 0.5
    # next step: 2 replicas × grad 1, loss scale halved → w -= 0.1 * 2 / (scale/2)·(scale/2)
    assert np.all(np.isfinite(w_next)) and np.all(w_next < 1.0)
    np.testing.assert_allclose(w_next, 1.0 - 0.1 * 2 / (32768.0 / 2), rtol=1e-6)


def test_keras_own_loss_scale_optimizer_still_has_the_bug():
    """Documents keras' behaviour: when this fails, Keras fixed it and SyncLossScaleOptimizer
    can go."""
    (w_bad, scale_bad), _, _ = overflow_on_replica_1(keras.optimizers.LossScaleOptimizer)
    assert not np.all(np.isfinite(w_bad)) and scale_bad == 1.0


def test_float16_wraps_the_optimizer_and_it_round_trips():
    sgd = keras.optimizers.SGD(0.1)
    assert wrap_optimizer(sgd, "mixed_bfloat16") is sgd and wrap_optimizer(sgd, "float32") is sgd
    opt = wrap_optimizer(sgd, "mixed_float16")
    assert isinstance(opt, SyncLossScaleOptimizer)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(opt))
    assert type(back) is SyncLossScaleOptimizer
    assert float(back.inner_optimizer.learning_rate) == pytest.approx(0.1)


def test_bfloat16_is_the_default_on_gpus_that_have_it():
    assert policy_for(True, has_gpu=True, gpu_bf16=True) == "mixed_bfloat16"
    assert policy_for(True, has_gpu=True, gpu_bf16=False) == "mixed_float16"
    assert policy_for(True, has_gpu=False) == "mixed_bfloat16"
    assert policy_for(False, has_gpu=True, gpu_bf16=True) == "float32"


def test_resume_under_another_precision_policy_is_refused():
    from sila_keras.training.precision import check_resumed_policy

    model = tiny_bn_model()
    check_resumed_policy(model, "float32")
    with pytest.raises(ConfigError, match=r"trained with the float32 policy.*mixed_float16"):
        check_resumed_policy(model, "mixed_float16")


# --------------------------------------------------------------------------- resume + speed flags


def test_resume_applies_the_current_speed_flags(tiny_folder, tmp_path, monkeypatch):
    """Regression: before, the checkpoint's compile settings (spe 1, no jit) silently won."""
    import sila_keras.training.train as train

    args = [f"folder:{tiny_folder}", *TINY, "--strategy", "default", "--out", str(tmp_path),
            "--name", "r"]
    assert main(args) == 0
    seen = {}

    def spy(model, *a, **kw):  # what fit would train with; stop there (no second training)
        seen.update(spe=model.steps_per_execution, jit=model.jit_compile)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", spy)
    resumed = [a if a != "1" else "2" for a in args]  # --epochs 2
    assert main([*resumed, "--resume", "--jit", "--steps-per-execution", "3"]) == 130
    assert seen == {"spe": 3, "jit": True}


# --------------------------------------------------------------------------- sync-BN


def test_sync_bn_on_two_replicas_equals_one_device_on_the_same_global_batch():
    weights = tiny_bn_model().get_weights()
    one_loss, one = train_two_steps(make_strategy("default"), weights)
    sync_loss, sync = train_two_steps(make_strategy("mirrored"), weights, sync_bn=True)
    np.testing.assert_allclose(sync_loss, one_loss, rtol=1e-5)
    for a, b in zip(sync, one, strict=True):  # moving mean/variance included
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Per-replica statistics (4 images each) differ: the comparison above can fail.
    _, per_replica = train_two_steps(make_strategy("mirrored"), weights, sync_bn=False)
    assert any(not np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(per_replica, one))


def test_sync_bn_default_follows_the_per_replica_batch():
    assert resolve_sync_bn(None, replicas=8, global_batch=128) is True  # 16 per replica
    assert resolve_sync_bn(None, replicas=2, global_batch=128) is False  # 64 per replica
    assert resolve_sync_bn(None, replicas=1, global_batch=8) is False
    assert resolve_sync_bn(False, replicas=8, global_batch=128) is False
    assert resolve_sync_bn(True, replicas=1, global_batch=8) is False  # nothing to synchronize


# --------------------------------------------------------------------------- defaults, logging


def test_steps_per_execution_auto_and_the_resolved_settings(capsys):
    assert resolve_steps_per_execution("auto", gpu=False) == 1
    assert resolve_steps_per_execution("auto", gpu=True) == GPU_STEPS_PER_EXECUTION >= 32
    assert resolve_steps_per_execution(4, gpu=True) == 4
    assert resolve_steps_per_execution("auto", gpu=True, replicas=2) == 1  # keras#19246
    with pytest.raises(ConfigError, match=r"keras#19246.*steps_per_execution=2, replicas=2"):
        resolve_steps_per_execution(2, gpu=True, replicas=2)
    assert TrainConfig.create("d", "m").run.steps_per_execution == "auto"
    with pytest.raises(ConfigError, match=r"'auto' or an integer >= 1.*steps_per_execution='x'"):
        TrainConfig.create("d", "m", steps_per_execution="x")
    speed = resolve_speed(TrainConfig.create("d", "m", batch_size=12), make_strategy("mirrored"))
    assert speed == SpeedSettings(replicas=2, global_batch=12, steps_per_execution=1, jit=False,
                                  sync_bn=True, has_gpu=False)
    assert speed.line().startswith("Batch 12 global = 6 per replica × 2 replica(s); "
                                   "steps per execution 1")
    with pytest.raises(ConfigError, match=r"--batch-size 2 or more.*batch_size=1"):
        resolve_speed(TrainConfig.create("d", "m", batch_size=1), make_strategy("mirrored"))


def test_keras_multi_step_loop_with_two_replicas_still_fails():
    """Why several replicas run one step per call (keras#19246): when this test fails, Keras
    fixed it and resolve_steps_per_execution may allow more."""
    x, y = batch()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    with make_strategy("mirrored").scope():
        model = tiny_bn_model()
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), steps_per_execution=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must feed a value for placeholder"):
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)


# --------------------------------------------------------------------------- checkpoint cadence


def test_checkpoint_every_k_epochs_and_always_the_last():
    from sila_keras.training.callbacks import ResumeCheckpoint

    ck = ResumeCheckpoint("unused", every=3, last_epoch=7)
    assert [e for e in range(1, 8) if ck.due(e)] == [3, 6, 7]
    assert [e for e in range(1, 4) if ResumeCheckpoint("unused").due(e)] == [1, 2, 3]


@pytest.mark.slow
def test_resume_between_checkpoints_redoes_the_lost_epochs_exactly(tiny_folder, tmp_path,
                                                                   monkeypatch):
    """Killed after epoch 3 is logged, with checkpoints every 2 epochs: the resumed run
    restarts from epoch 2 and logs the same epoch 3 as the first attempt."""
    from sila_keras.training.callbacks import EpochLogger

    args = [f"folder:{tiny_folder}", "resnet8", "--epochs", "4", "--batch-size", "6",
            "--milestones", "3", "--verbose", "0", "--strategy", "default", "--deterministic",
            "--checkpoint-every", "2", "--out", str(tmp_path), "--name", "cut"]
    original = EpochLogger.on_epoch_end

    def killed_after_epoch_3(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == 3:
            raise KeyboardInterrupt  # after metrics.csv row 3, before any checkpoint of it

    monkeypatch.setattr(EpochLogger, "on_epoch_end", killed_after_epoch_3)
    assert main(args) == 130
    first = rows(tmp_path / "cut" / "metrics.csv")
    assert [int(r["epoch"]) for r in first] == [1, 2, 3]
    state = json.loads((tmp_path / "cut" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2
    monkeypatch.setattr(EpochLogger, "on_epoch_end", original)
    assert main([*args[:3], "3", *args[4:], "--resume"]) == 0  # --epochs 3
    got = rows(tmp_path / "cut" / "metrics.csv")
    assert [int(r["epoch"]) for r in got] == [1, 2, 3]
    for key in ("loss", "lr", "head_1_acc", "nll", "test_loss"):
        assert float(got[2][key]) == pytest.approx(float(first[2][key]), rel=1e-6, abs=1e-7), key
    assert json.loads((tmp_path / "cut" / "checkpoints" / "state.json").read_text())["epoch"] == 3


# --------------------------------------------------------------------------- metric reduction


def test_scalar_metrics_are_reduced_in_one_stacked_call(monkeypatch):
    from sila_keras.devices.multiworker import reduce_scalars_stacked

    strategy = make_strategy("mirrored")

    @tf.function
    def per_replica():
        def fn():
            r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
            return {"acc": 0.25 + r, "nll": 2.0 * r, "count": tf.cast(r, tf.int32) + 3,
                    "vector": tf.stack([r, r])}
        return strategy.run(fn)

    values = per_replica()
    calls = []
    real_reduce = strategy.reduce
    monkeypatch.setattr(strategy, "reduce",
                        lambda *a, **kw: calls.append(a[0]) or real_reduce(*a, **kw))
    out = reduce_scalars_stacked(values, strategy, other=lambda v: "not a scalar")
    assert len(calls) == 1
    assert float(out["acc"]) == pytest.approx(0.75) and float(out["nll"]) == pytest.approx(1.0)
    assert out["count"].dtype == tf.int32 and int(out["count"]) == 3
    assert out["vector"] == "not a scalar"
