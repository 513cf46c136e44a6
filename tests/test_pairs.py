"""Digit-pair comparison (sila_keras.pairs): data, models, losses, CLI, bad input."""

from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import helpers as testing
import numpy as np
import pytest

from sila_keras.pairs import cli, data, experiment, models
from sila_keras.pairs.cli import main
from sila_keras.utils.errors import DataError


def write_idx(directory, prefix="t10k", n=200, seed=0, image_magic=2051, label_magic=2049):
    """Synthetic MNIST IDX files whose images encode (label, index): pixel [0,0] = label·20,
    pixels [2,2], [2,3] = index (two bytes), all 2×2 blocks constant so pooling keeps them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    small = np.zeros((n, 14, 14), np.uint8)
    small[:, 0, 0] = labels * 20
    small[:, 1, 1] = np.arange(n) // 256
    small[:, 1, 2] = np.arange(n) % 256
    small[:, 5:9, 5:9] = 100 + labels[:, None, None] * 10  # something learnable
    images = small.repeat(2, axis=1).repeat(2, axis=2)
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", image_magic, n, 28, 28) + images.tobytes())
    with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", label_magic, n) + labels.tobytes())
    return directory, images, labels.astype(np.int64)


def index_of(img14):
    """Recover the synthetic image index from a pooled 14×14 image."""
    return int(round(img14[1, 1])) * 256 + int(round(img14[1, 2]))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("mnist"))[0]


# --------------------------------------------------------------------------- data


def test_idx_reader_roundtrip(tmp_path):
    d, images, labels = write_idx(tmp_path, n=30)
    x = data.read_idx_images(d / "t10k-images-idx3-ubyte.gz")
    y = data.read_idx_labels(d / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (30, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_real_mnist_idx_files():
    d = testing.MNIST_DIR
    if not (d / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST IDX files not found in {d}")
    x, y = data.read_mnist_split(d, data.TEST_FILES)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.bincount(y).tolist()[:2] == [980, 1135]  # the canonical class counts


def test_downsample_is_2x2_average():
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251
    y = data.downsample(x)
    assert y.shape == (2, 14, 14) and y.dtype == np.float32
    np.testing.assert_allclose(y[1, 3, 4], x[1, 6:8, 8:10].astype(np.float64).mean(), rtol=1e-6)
    np.testing.assert_allclose(data.downsample(x[..., None]), y)


def test_pairs_shapes_and_labels_consistent(idx_dir):
    pools = data.pools_from_idx(idx_dir, seed=0)
    train, test = data.round_pairs(pools, 40, seed=3, round_index=1, draw="per-round")
    assert train.x.shape == (40, 14, 14, 2) and train.x.dtype == np.float32
    for p in (train, test):
        # the label of each channel's image is encoded in its pixel [0, 0]
        np.testing.assert_array_equal(np.round(p.x[:, 0, 0, 0] / 20), p.digit_1)
        np.testing.assert_array_equal(np.round(p.x[:, 0, 0, 1] / 20), p.digit_2)
        np.testing.assert_array_equal(p.comparison, (p.digit_1 <= p.digit_2).astype(int))
        ids = [index_of(p.x[i, ..., c]) for i in range(len(p)) for c in (0, 1)]
        assert len(set(ids)) == 2 * len(p)  # 2n distinct images per set
    assert {0, 1} <= set(train.comparison.tolist())
    again, _ = data.round_pairs(pools, 40, seed=3, round_index=1, draw="per-round")
    other, _ = data.round_pairs(pools, 40, seed=3, round_index=2, draw="per-round")
    np.testing.assert_array_equal(again.x, train.x)  # seeded
    assert not np.array_equal(other.x, train.x)  # fresh pairs per round


def test_offline_halves_are_disjoint(idx_dir):
    pools = data.pools_from_idx(idx_dir, seed=5)
    assert len(pools.train_y) == len(pools.test_y) == 100 and pools.disjoint
    train_ids = {index_of(img) for img in pools.train_x}
    test_ids = {index_of(img) for img in pools.test_x}
    assert len(train_ids) == 100 and not train_ids & test_ids
    assert train_ids | test_ids == set(range(200))
    assert "disjoint" in pools.notes[0] and "half" in pools.notes[0]
    with pytest.raises(ValueError, match="need 202 distinct images"):
        data.make_pairs(pools.train_x, pools.train_y, 101, np.random.default_rng(0))


def test_train_files_are_used_when_present(tmp_path):
    d, _, _ = write_idx(tmp_path, "t10k", n=40)
    write_idx(tmp_path, "train", n=60, seed=1)
    pools = data.pools_from_idx(d)
    assert (len(pools.train_y), len(pools.test_y)) == (60, 40)
    assert "training set" in pools.notes[0]


def test_tfds_path_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=64):
        pools = data.load_pools(None, None)
        assert pools.source == "tfds:mnist"
        assert pools.train_x.shape[1:] == (14, 14)
        rc = main(["--arch", "siamese", "--rounds", "1", "--epochs", "1", "--pairs", "6",
                   "--out", str(tmp_path / "t")])
    assert rc == 0
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert res["data"]["source"] == "tfds:mnist"


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("arch", models.ARCHS)
def test_parameter_counts_match_paper(arch):
    m = models.build_pair_model(arch)
    assert models.trainable_count(m) == models.PAPER_PARAMS[arch]
    assert m.output["comparison"].shape[-1] == 2


def test_weight_sharing_really_shares():
    siamese = models.build_pair_model("siamese")
    parallel = models.build_pair_model("siamese", share=False)
    sub = len(models.build_digit_net().trainable_weights)
    assert len(siamese.trainable_weights) == sub + 2  # one digit net + the comparison layer
    assert len(parallel.trainable_weights) == 2 * sub + 2
    assert len({id(v) for v in siamese.trainable_weights}) == len(siamese.trainable_weights)
    assert models.trainable_count(parallel) == 2 * models.trainable_count(siamese) - 42
    # the same digit in both channels gives identical digit logits only when shared
    x = np.random.default_rng(0).uniform(0, 255, (3, 14, 14, 1)).astype("float32")
    pair = np.concatenate([x, x], axis=-1)
    out_s, out_p = siamese(pair), parallel(pair)
    np.testing.assert_allclose(out_s["digit_1"], out_s["digit_2"], rtol=1e-6)
    assert not np.allclose(out_p["digit_1"], out_p["digit_2"])
    assert siamese.get_layer("digit_net") is not None
    assert {"digit_net_1", "digit_net_2"} <= {layer.name for layer in parallel.layers}


def _loss(config, model, pairs):
    experiment.compile_pair_model(model, config, steps=1)
    ds = data.pair_dataset(pairs, experiment.output_names(model), 64)
    return model.evaluate(ds, verbose=0, return_dict=True)


def test_inputs_are_raw_unless_normalized():
    x = np.full((1, 14, 14, 2), 200.0, "float32")
    raw = models.build_pair_model("conv")
    std = models.build_pair_model("conv", mean=100.0, std=50.0)
    probe = lambda m: np.asarray(m.get_layer("normalize")(x))  # noqa: E731
    np.testing.assert_allclose(probe(raw), 200.0)
    np.testing.assert_allclose(probe(std), 2.0, rtol=1e-6)


def _ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_aux_on_off_changes_the_loss(idx_dir):
    pools = data.pools_from_idx(idx_dir)
    pairs, _ = data.round_pairs(pools, 32, 0, 0)
    model = models.build_pair_model("siamese")
    out = model.predict(pairs.x, verbose=0)
    comp = _ce(out["comparison"], pairs.comparison)
    digits = _ce(out["digit_1"], pairs.digit_1) + _ce(out["digit_2"], pairs.digit_2)
    with_aux = _loss(experiment.PairConfig("siamese", aux=True, aux_weight=0.5), model, pairs)
    without = _loss(experiment.PairConfig("siamese", aux=False), model, pairs)
    assert without["loss"] == pytest.approx(comp, rel=1e-4)
    assert with_aux["loss"] == pytest.approx(comp + 0.5 * digits, rel=1e-4)
    assert with_aux["loss"] > without["loss"] + 1.0  # two untrained 10-way CEs (≈2.3 each)


def test_digit_comparison_head_is_exact():
    rng = np.random.default_rng(1)
    d1, d2 = rng.normal(size=(5, 10)).astype("float32"), rng.normal(size=(5, 10)).astype("float32")
    out = np.asarray(models.DigitComparison()([d1, d2]))
    p1 = np.exp(d1) / np.exp(d1).sum(1, keepdims=True)
    p2 = np.exp(d2) / np.exp(d2).sum(1, keepdims=True)
    p_le = np.array([sum(p1[b, i] * p2[b, j] for i in range(10) for j in range(i, 10))
                     for b in range(5)])
    np.testing.assert_allclose(np.exp(out[:, 1]), p_le, rtol=1e-5)
    np.testing.assert_allclose(np.exp(out).sum(1), 1.0, rtol=1e-5)


def test_sila_trains_both_comparison_heads(idx_dir):
    from sila_keras.core.heads import head_names_of, mode_of
    from sila_keras.core.losses import SilaLoss

    pools = data.pools_from_idx(idx_dir)
    pairs, _ = data.round_pairs(pools, 32, 0, 0)
    model = models.build_pair_model("siamese", sila=True)
    assert models.trainable_count(model) == models.PAPER_PARAMS["siamese"]  # the head has no weights
    assert head_names_of(model) == ["comparison", "comparison_2"] and mode_of(model) == "pairs"
    res = _loss(experiment.PairConfig("siamese", aux=False, sila=True, beta=0.5), model, pairs)
    z = model.predict(pairs.x, verbose=0)["sila_logits"]
    expected = float(np.mean(SilaLoss(2, betas=[1.0, 0.5]).call(pairs.comparison, z)))
    assert res["loss"] == pytest.approx(expected, rel=1e-4)
    # comparison_2 is the digit rule: its accuracy equals the rule read off the digit heads
    assert res["comparison_2_acc"] == pytest.approx(experiment.digit_rule_accuracy(model, pairs))


# --------------------------------------------------------------------------- CLI


def test_one_round_writes_all_outputs(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--arch", "siamese", "--rounds", "1", "--epochs", "2", "--pairs", "40", "--lr", "0.01",
               "--batch-size", "20", "--mnist-dir", str(idx_dir), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("arch", "options", "rounds", "mean_accuracy", "std_accuracy", "accuracies", "params",
                "lr", "batch_size", "data"):
        assert key in res
    assert res["arch"] == "siamese" and res["rounds"] == 1 and len(res["accuracies"]) == 1
    assert res["params"] == res["paper_params"] == 34_964
    assert (res["lr"], res["batch_size"]) == (0.01, 20)
    assert len(res["curves"]["test_accuracy"][0]) == 2
    assert 0.0 <= res["mean_digit_rule_accuracy"] <= 1.0 and "mean_digit_accuracy" in res
    assert res["data"]["disjoint"] and "half" in res["data"]["notes"][0]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| number of params (paper) | 34,964 |" in (out / "table.md").read_text()
    printed = capsys.readouterr().out
    assert "params: 34,964 (paper: 34,964)" in printed and "disjoint: yes" in printed
    assert main(["--arch", "fc", "--rounds", "1", "--epochs", "1", "--mnist-dir", str(idx_dir),
                 "--pairs", "20", "--out", str(out)]) == 2  # refuses to overwrite
    assert "already holds results.json" in capsys.readouterr().err


def test_table_runs_four_configurations(idx_dir, tmp_path, capsys):
    out = tmp_path / "table"
    rc = main(["--table", "--rounds", "1", "--epochs", "1", "--pairs", "20",
               "--mnist-dir", str(idx_dir), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "table.json").read_text())
    techniques = [(r["options"]["share"], r["options"]["aux"]) for r in summary["rows"]]
    assert techniques == [(True, True), (True, False), (False, True), (False, False)]
    assert all(r["rounds"] == 1 and (r["lr"], r["batch_size"]) == (0.005, 50) for r in summary["rows"])
    assert isinstance(summary["ordering"]["holds"], bool)
    table = (out / "table.md").read_text()
    assert "| weight sharing, auxiliary loss |" in table and "90.70%" in table
    assert (out / "curves.png").exists() and (out / "parallel-noaux" / "results.json").exists()
    assert "Paper's ordering" in capsys.readouterr().out


def test_ordering_verdict():
    def r(share, aux, acc):
        return {"options": {"share": share, "aux": aux}, "mean_accuracy": acc}

    good = [r(True, True, 0.9), r(True, False, 0.84), r(False, True, 0.88), r(False, False, 0.79)]
    assert cli.ordering_verdict(good)["holds"]
    bad = [r(True, True, 0.9), r(True, False, 0.89), r(False, True, 0.88), r(False, False, 0.79)]
    verdict = cli.ordering_verdict(bad)
    assert not verdict["holds"] and not verdict["checks"]["aux only > sharing only"]


def test_grid_selects_and_says_how(idx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "GRID_LRS", (0.001, 0.05))
    monkeypatch.setattr(cli, "GRID_BATCHES", (20,))
    out = tmp_path / "grid"
    rc = main(["--arch", "conv", "--grid", "--rounds", "1", "--epochs", "1", "--pairs", "40",
               "--val-split", "0.25", "--mnist-dir", str(idx_dir), "--out", str(out)])
    assert rc == 0
    grid = json.loads((out / "grid.json").read_text())
    assert grid["complete"] and grid["selected_by"] == "mean_val_accuracy" and len(grid["grid"]) == 2
    best = max(grid["grid"], key=lambda g: g["mean_val_accuracy"])
    res = json.loads((out / "results.json").read_text())
    assert (res["lr"], res["batch_size"]) == (best["lr"], best["batch_size"])
    assert "VALIDATION" in res["selection"]["note"]
    assert "| lr \\ batch | 20 |" in (out / "grid.md").read_text()
    monkeypatch.setattr(cli, "GRID_LRS", (0.01,))
    assert main(["--arch", "fc", "--grid", "--rounds", "1", "--epochs", "1", "--pairs", "20",
                 "--mnist-dir", str(idx_dir), "--out", str(tmp_path / "g2")]) == 0
    assert "selected on mean TEST accuracy, which is what the paper did" in capsys.readouterr().out


def test_killed_grid_resumes_finished_configurations(idx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "GRID_LRS", (0.001, 0.05))
    monkeypatch.setattr(cli, "GRID_BATCHES", (20,))
    out = tmp_path / "grid"
    argv = ["--arch", "fc", "--grid", "--rounds", "1", "--epochs", "1", "--pairs", "20",
            "--mnist-dir", str(idx_dir), "--out", str(out)]
    real, calls = cli._run_one, []

    def interrupted_second(config, pools, position=""):
        calls.append(config.lr)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second configuration
        return real(config, pools, position)

    monkeypatch.setattr(cli, "_run_one", interrupted_second)
    assert main(argv) == 130
    first = json.loads((out / "grid.json").read_text())
    assert not first["complete"] and len(first["grid"]) == 1 and len(list((out / "done").iterdir())) == 1
    assert main(argv) == 2 and "Add --resume" in capsys.readouterr().err  # never overwritten

    calls.clear()
    monkeypatch.setattr(cli, "_run_one", lambda c, p, pos="": calls.append(c.lr) or real(c, p, pos))
    assert main([*argv, "--resume"]) == 0
    assert calls == [0.05]  # only the unfinished configuration ran again
    grid = json.loads((out / "grid.json").read_text())
    assert grid["complete"] and [g["lr"] for g in grid["grid"]] == [0.001, 0.05]
    assert grid["grid"][0]["accuracies"] == first["grid"][0]["accuracies"]
    assert "finished earlier, loaded from" in capsys.readouterr().out


def test_resume_needs_an_earlier_run(idx_dir, tmp_path, capsys):
    assert main(["--arch", "fc", "--resume", "--mnist-dir", str(idx_dir)]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert main(["--arch", "fc", "--resume", "--mnist-dir", str(idx_dir), "--out", str(tmp_path / "x")]) == 2
    assert "Cannot resume" in capsys.readouterr().err and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- --pair-draw


def test_pair_draw_once_repeats_the_pairs_per_round_redraws(idx_dir):
    pools = data.pools_from_idx(idx_dir, seed=0)
    once = [data.round_pairs(pools, 30, 3, r) for r in range(3)]
    fresh = [data.round_pairs(pools, 30, 3, r, draw="per-round") for r in range(3)]
    for train, test in once[1:]:
        np.testing.assert_array_equal(train.x, once[0][0].x)
        np.testing.assert_array_equal(test.x, once[0][1].x)
    np.testing.assert_array_equal(once[0][0].x, fresh[0][0].x)  # once = round 0's draw
    for a, b in zip(fresh, fresh[1:]):
        assert not np.array_equal(a[0].x, b[0].x) and not np.array_equal(a[1].x, b[1].x)


@pytest.mark.parametrize("draw", ["once", "per-round"])
def test_rounds_of_a_run_follow_pair_draw(idx_dir, monkeypatch, draw):
    pools = data.pools_from_idx(idx_dir, seed=0)
    drawn, initial = [], []
    real_pairs, real_build = data.round_pairs, models.build_pair_model

    def spy_pairs(*args, **kwargs):
        drawn.append(real_pairs(*args, **kwargs))
        return drawn[-1]

    def spy_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        initial.append(np.concatenate([w.ravel() for w in model.get_weights()]))
        return model

    monkeypatch.setattr(data, "round_pairs", spy_pairs)
    monkeypatch.setattr(models, "build_pair_model", spy_build)
    config = experiment.PairConfig("fc", rounds=2, epochs=1, pairs=20, batch_size=10, pair_draw=draw)
    result = experiment.run_config(config, pools)
    (train_1, test_1), (train_2, test_2) = drawn
    same = np.array_equal(train_1.x, train_2.x) and np.array_equal(test_1.x, test_2.x)
    assert same == (draw == "once")
    assert not np.array_equal(initial[0], initial[1])  # a fresh network every round
    assert result["options"]["pair_draw"] == result["config"]["pair_draw"] == draw


def test_resume_with_another_pair_draw_is_refused(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--arch", "fc", "--rounds", "1", "--epochs", "1", "--pairs", "20",
            "--mnist-dir", str(idx_dir), "--out", str(out)]
    assert main([*argv, "--pair-draw", "per-round"]) == 0
    saved = json.loads(next((out / "done").iterdir()).read_text())
    assert "pair_draw" not in saved["config"]  # keyed as before the option: old runs resume
    assert "| pairs drawn (--pair-draw) | per-round |" in (out / "table.md").read_text()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2  # the default is once
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Cannot resume" in err
    assert "pair_draw: 'per-round' → 'once'" in err and "Add --pair-draw per-round" in err
    assert main([*argv, "--resume", "--pair-draw", "per-round"]) == 0
    assert "finished earlier, loaded from" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["--arch", "siamese", "--rounds", "0"], r"--rounds must be an integer >= 1\. Received: rounds=0"),
    (["--arch", "lenet"], r"Unknown architecture 'lenet'\. Available: fc, conv, parallel, siamese"),
    (["--arch", "fc", "--no-share"], r"--no-share is meaningless for 'fc'"),
    (["--arch", "conv", "--no-share"], r"--no-share is meaningless for 'conv'"),
    (["--arch", "conv", "--no-aux"], r"--no-aux is meaningless for 'conv'"),
    (["--arch", "fc", "--sila"], r"--sila needs the digit heads"),
    (["--table", "--grid"], r"--grid and --table are separate"),
    (["--arch", "siamese", "--val-split", "1.5"], r"--val-split must be in \(0, 1\)"),
    (["--rounds", "2"], r"--arch is required"),
    (["--arch", "fc", "--pair-draw", "twice"], r"Unknown --pair-draw 'twice'\. Available: once, per-round"),
])
def test_bad_flags(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sila-pairs: error: ")
    assert re.search(message, err), err


def test_missing_idx_files_are_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--arch", "siamese", "--mnist-dir", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte.gz" in err and "t10k-labels-idx1-ubyte.gz" in err
    with pytest.raises(DataError, match="MNIST folder not found"):
        data.pools_from_idx(tmp_path / "nowhere")


@pytest.mark.parametrize("which, kwargs, match", [
    ("images", {"image_magic": 2049}, r"not an IDX image file: magic number 2049, expected 2051"),
    ("labels", {"label_magic": 2051}, r"not an IDX label file: magic number 2051, expected 2049"),
])
def test_corrupt_magic_numbers(tmp_path, which, kwargs, match):
    d, _, _ = write_idx(tmp_path, n=10, **kwargs)
    with pytest.raises(ValueError, match=match):
        data.pools_from_idx(d)


def test_truncated_and_garbled_files(tmp_path, capsys):
    d, _, _ = write_idx(tmp_path, n=10)
    path = d / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:500]))
    with pytest.raises(ValueError, match="is truncated: its header announces 10 images"):
        data.read_idx_images(path)
    path.write_bytes(b"not gzip at all")
    assert main(["--arch", "siamese", "--mnist-dir", str(d), "--out", str(tmp_path / "o")]) == 2
    assert f"Cannot read IDX file '{path}'" in capsys.readouterr().err


def test_cli_subprocess_reports_error():
    proc = subprocess.run([sys.executable, "-m", "sila_keras.pairs", "--arch", "fc", "--no-share"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert "sila-pairs: error: --no-share is meaningless for 'fc'" in proc.stderr
    assert "Traceback" not in proc.stderr
