"""Dynamic SiLa (paper B §3.3): MSDNet, per-exit FLOPs, anytime and budgeted evaluation."""

import csv
import json

import keras
import numpy as np
import pytest
from helpers import MSDNET_TINY, run_err
from model_checks import check_sila_model

from sila_keras import trainable_params
from sila_keras.core.losses import MutualLoss, SilaLoss
from sila_keras.core.sizes import count_macs
from sila_keras.data import load_dataset
from sila_keras.models.msdnet import block_layers, scales_at
from sila_keras.modes import make_mode
from sila_keras.modes.anytime import (
    evaluate_dynamic,
    exit_flops,
    fit_thresholds,
    proportions_for_budget,
    route,
)
from sila_keras.modes.dynamic import build_dynamic_model, holdout_for
from sila_keras.training.config import TrainConfig
from sila_keras.training.train import main, run

TINY = MSDNET_TINY


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_default_msdnet_is_the_cifar_anytime_network():
    model = build_dynamic_model("msdnet", 10, (32, 32, 3))
    check_sila_model(model, num_heads=7, num_classes=10)  # 7 exits: head_1 … head_7, (B, 70)
    assert trainable_params(model) == 2_986_690  # documented in models/msdnet.py


def test_block_schedule_and_scale_reduction():
    assert block_layers(7, 2, 4, "even") == [4, 2, 2, 2, 2, 2, 2]
    assert block_layers(5, 1, 1, "lin_grow") == [1, 2, 3, 4, 5]
    outs = [scales_at(layer, 16, 3)[1] for layer in range(1, 17)]
    assert outs == [3] * 6 + [2] * 6 + [1] * 4  # three equal segments, coarsest kept
    assert all(scales_at(layer, 16, 3)[0] >= scales_at(layer, 16, 3)[1] for layer in range(1, 17))


def test_count_macs_of_known_layers():
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)  # 4·4 positions × 3·3·3·4
    y = keras.layers.DepthwiseConv2D(3, padding="same")(y)  # 4·4 × 3·3·4·1
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(5)(y)  # 4·5
    assert count_macs(keras.Model(x, y)) == 16 * 108 + 16 * 36 + 20


def test_every_exit_costs_more_than_the_last():
    model = build_dynamic_model("msdnet", 10, (32, 32, 3), **TINY)
    rows = exit_flops(model)
    assert [r["exit"] for r in rows] == [1, 2, 3]
    flops = [r["flops"] for r in rows]
    cumulative = [r["cumulative_flops"] for r in rows]
    assert all(a < b for a, b in zip(flops, flops[1:]))
    assert all(a < b for a, b in zip(cumulative, cumulative[1:]))
    assert all(c >= f for c, f in zip(cumulative, flops)) and cumulative[0] == flops[0]
    assert cumulative[-1] == count_macs(model)  # all exits together = the whole network


def test_bad_msdnet_arguments():
    with pytest.raises(ValueError, match="Unknown MSDNet stepmode 'linear'"):
        build_dynamic_model("msdnet", 10, stepmode="linear")
    with pytest.raises(ValueError, match="gr_factor.*one positive factor per scale"):
        build_dynamic_model("msdnet", 10, gr_factor=(1, 2))
    with pytest.raises(ValueError, match="at least 16"):  # three scales: 16 → 8 → 4
        build_dynamic_model("msdnet", 10, (8, 8, 3), **{**TINY, "scales": 3, "gr_factor": (1, 2, 4),
                                                       "bn_factor": (1, 2, 4)})


def test_thresholds_route_the_planned_share():
    conf = np.array([[0.9, 0.5], [0.8, 0.6], [0.3, 0.9], [0.2, 0.7]])
    thresholds = fit_thresholds(conf, np.array([0.5, 0.5]))
    assert thresholds[0] == pytest.approx(0.8) and thresholds[1] == -np.inf
    assert route(conf, thresholds).tolist() == [0, 0, 1, 1]
    costs = [10.0, 30.0, 60.0]
    for budget in (10.0, 25.0, 42.0, 60.0):
        assert proportions_for_budget(budget, costs) @ costs == pytest.approx(budget, rel=1e-6)


def test_dynamic_needs_a_multi_exit_backbone(tiny_folder, tmp_path, capsys):
    rc = main([f"folder:{tiny_folder}", "resnet20", "--mode", "dynamic", "--epochs", "1",
               "--milestones", "", "--out", str(tmp_path), "--name", "bad"])
    err = capsys.readouterr().err
    assert rc == 2 and "--mode dynamic needs a multi-exit backbone" in err and "msdnet" in err


def test_betas_must_match_the_number_of_exits(tiny_folder, tmp_path):
    config = TrainConfig.create(dataset=f"folder:{tiny_folder}", model="msdnet", mode="dynamic", epochs=1,
                         milestones=(), heads=2, betas=(1.0, 1.0), out=str(tmp_path), name="b",
                         backbone_kwargs=TINY, verbose=0)
    with pytest.raises(ValueError, match="trains 3 classifiers.*needs 3 weights"):
        run(config)


@pytest.mark.slow
@pytest.mark.parametrize("name, loss_type", [("sila", SilaLoss), ("msdnet", MutualLoss)])
def test_dynamic_run_writes_both_evaluations(dynamic_runs, name, loss_type):
    run_dir = dynamic_runs / name
    for f in ("anytime.csv", "anytime.png", "budgeted.csv", "budgeted.png"):
        assert (run_dir / f).is_file(), f
    anytime = read_csv(run_dir / "anytime.csv")
    last = read_csv(run_dir / "metrics.csv")[-1]
    assert [int(r["exit"]) for r in anytime] == [1, 2, 3]
    assert [float(r["test_top1"]) for r in anytime] == pytest.approx(
        [float(last[f"head_{c}_acc"]) for c in (1, 2, 3)], abs=1e-6)
    flops = [int(r["flops"]) for r in anytime]
    assert flops == sorted(set(flops))
    budgeted = read_csv(run_dir / "budgeted.csv")
    lo, hi = int(anytime[0]["cumulative_flops"]), int(anytime[-1]["cumulative_flops"])
    assert len(budgeted) == 12
    assert float(budgeted[0]["budget_flops"]) == lo and float(budgeted[-1]["budget_flops"]) == hi
    for r in budgeted:
        assert lo <= float(r["test_avg_flops"]) <= hi and 0 <= float(r["test_top1"]) <= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["dynamic"]["exits"]) == 3 and summary["num_heads"] == 3
    model = keras.models.load_model(run_dir / "model.keras")
    assert isinstance(model.loss, loss_type)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    check_sila_model(model, num_heads=3, num_classes=3, images=x, atol=1e-4)  # the tiny folder's 3


@pytest.mark.slow
def test_budgets_outside_the_flops_range_are_rejected(dynamic_runs, tiny_folder, tmp_path):
    model = keras.models.load_model(dynamic_runs / "sila" / "model.keras")
    data = load_dataset(f"folder:{tiny_folder}")
    hi = exit_flops(model)[-1]["cumulative_flops"]
    holdout = (data.train_x[:6], data.train_y[:6])
    with pytest.raises(ValueError, match="FLOPs range per image"):
        evaluate_dynamic(model, data, tmp_path, holdout=holdout, budgets=[2 * hi])
    with pytest.raises(ValueError, match="needs held-out images"):
        evaluate_dynamic(model, data, tmp_path, holdout=None)
    assert not (tmp_path / "budgeted.csv").exists()


def test_holdout_is_set_aside_before_training(tiny_folder):
    data = load_dataset(f"folder:{tiny_folder}")
    config = TrainConfig.create(dataset="x", model="msdnet", mode="dynamic")
    mode = make_mode(config)
    split = mode.prepare_data(data)
    (hx, hy), source = holdout_for(split, holdout=mode.holdout)
    assert len(hy) == 2 and len(split.train_y) == len(data.train_y) - 2
    assert "not trained on" in source
    assert make_mode(config.replace(mode="sila")).prepare_data(data) is data
    (_, hy2), source2 = holdout_for(data)
    assert len(hy2) == 2 and "seen in training" in source2



# ----------------------------------------------------------------- --dynamic-eval


def test_anytime_only_trains_on_every_training_image(tiny_folder, tmp_path, capsys):
    full = len(load_dataset(f"folder:{tiny_folder}").train_y)
    run(TrainConfig.create(dataset=f"folder:{tiny_folder}", model="msdnet", mode="dynamic",
                    dynamic_eval="anytime", epochs=1, batch_size=8, steps_per_epoch=1,
                    milestones=(), out=str(tmp_path), name="any", backbone_kwargs=TINY, verbose=0))
    run_dir = tmp_path / "any"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["train_examples"] == full  # no hold-out
    assert summary["dynamic"]["evaluation"] == "anytime"
    assert summary["dynamic"]["holdout_examples"] == 0 and "budgeted" not in summary["dynamic"]
    assert any(f"all {full} training images are trained on" in n for n in summary["data"]["notes"])
    assert json.loads((run_dir / "config.json").read_text())["dynamic"]["dynamic_eval"] == "anytime"
    assert (run_dir / "anytime.csv").is_file() and not (run_dir / "budgeted.csv").exists()
    assert f"{full} train / " in capsys.readouterr().out


@pytest.mark.slow
def test_budgeted_evaluation_holds_out_and_says_how_many(dynamic_runs, tiny_folder):
    full = len(load_dataset(f"folder:{tiny_folder}").train_y)
    summary = json.loads((dynamic_runs / "sila" / "summary.json").read_text())
    held = summary["dynamic"]["holdout_examples"]
    assert summary["dynamic"]["evaluation"] == "both" and held == 2  # 10 % of 18, class-balanced
    assert summary["data"]["train_examples"] == full - held
    assert any(f"{held} of {full} training images held out" in n for n in summary["data"]["notes"])
    assert summary["dynamic"]["threshold_source"].startswith("held-out training slice")


def test_dynamic_eval_choices_and_where_they_apply(tiny_folder):
    config = TrainConfig.create(dataset="x", model="msdnet", mode="dynamic")
    data = load_dataset(f"folder:{tiny_folder}")
    for evaluation, held in (("budgeted", 2), ("both", 2), (None, 2), ("anytime", 0)):
        mode = make_mode(config.replace(dynamic_eval=evaluation))
        split = mode.prepare_data(data)
        assert len(split.train_y) == len(data.train_y) - held, evaluation
        assert (mode.holdout is None) == (held == 0)
    with pytest.raises(ValueError, match=r"Unknown `--dynamic-eval` 'fast'\. Available: anytime, "
                                         r"budgeted, both"):
        config.replace(dynamic_eval="fast")
    with pytest.raises(ValueError, match=r"--dynamic-eval only applies to --mode dynamic"):
        make_mode(config.replace(mode="sila", model="resnet20", dynamic_eval="anytime"))


def test_bad_dynamic_eval_is_one_line(capsys, tmp_path):
    err = run_err(capsys, ["folder:nowhere", "msdnet", "--mode", "dynamic", "--dynamic-eval",
                           "fast", "--out", str(tmp_path)])
    assert "Unknown `--dynamic-eval` 'fast'" in err and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_budgeted_only_writes_only_the_budgeted_files(dynamic_runs, tiny_folder, tmp_path):
    model = keras.models.load_model(dynamic_runs / "sila" / "model.keras")
    data = load_dataset(f"folder:{tiny_folder}")
    holdout = (data.train_x[:6], data.train_y[:6])
    result = evaluate_dynamic(model, data, tmp_path, holdout=holdout, anytime=False, num_budgets=3)
    assert result["holdout_examples"] == 6 and len(result["budgeted"]) == 3
    assert len(result["exits"]) == 3  # per-exit accuracies are returned either way
    assert (tmp_path / "budgeted.csv").is_file() and not (tmp_path / "anytime.csv").exists()
