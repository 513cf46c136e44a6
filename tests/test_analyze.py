"""Weight-noise analysis (paper B §4.3, Fig. 7b): ``python -m sila_keras.analyze noise``."""

import csv
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import train_once

from sila_keras import extract_head
from sila_keras.reports.analyze import (
    load_run,
    main,
    mean_nll,
    noise_curve,
    run_label,
    training_images,
)
from sila_keras.training.train import main as train_main


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ind_run(tiny_folder, tmp_path_factory):
    """Two real tiny runs on the same images, for overlays: IND (one head) and SiLa (3 heads)."""
    def train(out):
        for name, heads in (("ind", "1"), ("sila", "3")):
            rc = train_main([f"folder:{tiny_folder}", "resnet8", "--heads", heads, "--epochs", "1",
                             "--batch-size", "8", "--milestones", "", "--verbose", "0",
                             "--out", str(out), "--name", name])
            assert rc == 0, name

    return train_once(tmp_path_factory, "noise_runs", train)  # once for all xdist workers


@pytest.mark.slow
def test_noise_cli_writes_csv_and_overlay_png(ind_run, tmp_path, capsys):
    rc = main(["noise", str(ind_run / "ind"), str(ind_run / "sila"), "--sigmas", "0,0.01,0.05",
               "--trials", "2", "--limit", "9", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    rows = read_csv(tmp_path / "noise.csv")
    assert [r["label"] for r in rows] == ["ind (IND)"] * 3 + ["sila (SiLa (M=3))"] * 3
    assert [float(r["sigma"]) for r in rows] == [0, 0.01, 0.05] * 2
    for r in rows:
        assert int(r["trials"]) == 2 and int(r["examples"]) == 9 and float(r["delta_nll_std"]) >= 0
        assert np.isfinite(float(r["base_nll"])) and float(r["base_nll"]) > 0
    for curve in (rows[:3], rows[3:]):
        assert float(curve[0]["delta_nll_mean"]) == 0 and float(curve[0]["delta_nll_std"]) == 0
        assert float(curve[2]["delta_nll_std"]) > 0  # two different noise draws
        assert len({r["base_nll"] for r in curve}) == 1  # one base NLL per run
    # Each curve is its own run's: the two trainings give different weights, so different NLLs.
    assert rows[0]["base_nll"] != rows[3]["base_nll"]
    for label, run in (("ind", ind_run / "ind"), ("sila", ind_run / "sila")):
        model, config = load_run(run)
        x, y = training_images(config, limit=9)
        assert float(rows[0 if label == "ind" else 3]["base_nll"]) == pytest.approx(
            mean_nll(extract_head(model, 1), x, y), rel=1e-4)
    assert (tmp_path / "noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_noise_curve_restores_weights_and_is_reproducible(ind_run):
    model, config = load_run(ind_run / "ind")
    x, y = training_images(config, limit=6)
    before = [w.copy() for w in model.get_weights()]
    base = mean_nll(extract_head(model, 1), x, y)
    a = noise_curve(model, x, y, [0.02], trials=2, seed=3)
    b = noise_curve(model, x, y, [0.02], trials=2, seed=3)
    c = noise_curve(model, x, y, [0.02], trials=2, seed=4)
    assert a == b and a != c
    assert a[0]["base_nll"] == pytest.approx(base)
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


def test_run_labels():
    assert run_label({"mode": "sila", "heads": 1}) == "IND"
    assert run_label({"mode": "mutual", "dml": True}) == "SiLa+DML"
    assert run_label({"mode": "mutual"}) == "SiLa"
    assert run_label({"mode": "dml"}) == "DML"
    assert run_label({"mode": "dynamic", "no_sila": True}) == "MSDNet"


@pytest.mark.parametrize("argv, message", [
    (["noise", "{missing}"], "Run directory not found"),
    (["noise", "{empty}"], "is not a run directory (missing config.json, model.keras)"),
    (["noise", "{run}", "--sigmas", "0,-0.1"], "`--sigmas` must be non-negative"),
    (["noise", "{run}", "--trials", "0"], "`--trials` must be >= 1"),
    (["noise", "{run}", "--labels", "a,b"], "one label per run (1)"),
    (["noise", "{run}", "--head", "2", "--trials", "1", "--limit", "3"], "Head index out of range"),
])
def test_bad_input_exits_2(ind_run, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "run": ind_run / "ind"}
    rc = main([a.format(**paths) for a in argv] + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("sila-analyze: error:") and message in err
    assert not (tmp_path / "o" / "noise.csv").exists()


def test_cli_help_as_subprocess():
    proc = subprocess.run([sys.executable, "-m", "sila_keras.analyze", "noise", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--sigmas" in proc.stdout and "Fig. 7b" in proc.stdout


def test_model_loads_without_optimizer(ind_run):
    model, config = load_run(ind_run / "ind")
    assert isinstance(model, keras.Model) and config["heads"] == 1
