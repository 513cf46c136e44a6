"""Every bad input: one clear message naming problem and fix, exit 2, nothing written or lost."""

import shutil

import pytest
from helpers import run_err

FAST = ["--epochs", "1", "--batch-size", "8", "--milestones", ""]


@pytest.fixture
def folder_copy(tiny_folder, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_folder, dst)
    return dst


def test_unknown_model(capsys, tiny_folder, tmp_path):
    err = run_err(capsys, [f"folder:{tiny_folder}", "vgg91", "--out", str(tmp_path)])
    assert "Unknown backbone 'vgg91'" in err and "resnet20" in err
    assert not any(tmp_path.iterdir())


def test_unknown_dataset(capsys, tmp_path):
    err = run_err(capsys, ["cifar1000", "resnet20", "--out", str(tmp_path)])
    assert "Unknown dataset 'cifar1000'" in err and "folder:PATH" in err


def test_tfds_not_downloaded_offline_fails_fast(capsys, tmp_path, monkeypatch):
    import sila_keras.data.tfds_source as tfds_source

    monkeypatch.setattr(tfds_source, "network_available", lambda *a, **k: False)
    err = run_err(capsys, ["cifar10", "vgg19", "--data-dir", str(tmp_path / "tfds"), "--out", str(tmp_path)])
    assert "not downloaded" in err and "no network" in err and "--data-dir" in err and "folder:" in err


def test_download_never(capsys, tmp_path):
    err = run_err(capsys, ["mnist", "resnet20", "--download", "never", "--data-dir", str(tmp_path),
                           "--out", str(tmp_path)])
    assert "downloading is off" in err


@pytest.mark.parametrize("missing", ["train", "test"])
def test_folder_without_split(capsys, folder_copy, tmp_path, missing):
    shutil.rmtree(folder_copy / missing)
    err = run_err(capsys, [f"folder:{folder_copy}", "resnet20", "--out", str(tmp_path / "o")])
    assert "subfolder" in err and ("no 'train/'" in err if missing == "train" else "no 'test/' or 'val/'" in err)


def test_missing_folder(capsys, tmp_path):
    err = run_err(capsys, [f"folder:{tmp_path}/nope", "resnet20", "--out", str(tmp_path)])
    assert "Dataset folder not found" in err


def test_empty_class(capsys, folder_copy, tmp_path):
    (folder_copy / "train" / "zzz").mkdir()
    err = run_err(capsys, [f"folder:{folder_copy}", "resnet20", "--out", str(tmp_path / "o")])
    assert "hold no images" in err and "zzz" in err


def test_test_class_not_in_train(capsys, folder_copy, tmp_path):
    shutil.copytree(folder_copy / "test" / "a", folder_copy / "test" / "extra")
    err = run_err(capsys, [f"folder:{folder_copy}", "resnet20", "--out", str(tmp_path / "o")])
    assert "'extra'" in err and "exists in" in err and "test" in err


def test_corrupt_image_is_named(capsys, folder_copy, tmp_path):
    bad = folder_copy / "train" / "b" / "0002.png"
    bad.write_bytes(b"not an image at all")
    err = run_err(capsys, [f"folder:{folder_copy}", "resnet20", *FAST, "--out", str(tmp_path / "o")])
    assert str(bad) in err and "Cannot" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value,match", [
    ("--heads", "0", "--heads` must be >= 1"),
    ("--beta", "-0.1", "--beta` must be >= 0"),
    ("--lam", "-1", "--lam` must be >= 0"),
    ("--epochs", "0", "epochs` must be > 0"),
    ("--milestones", "5,3", "increasing"),
])
def test_bad_numbers(capsys, tiny_folder, tmp_path, flag, value, match):
    err = run_err(capsys, [f"folder:{tiny_folder}", "resnet20", flag, value, "--out", str(tmp_path)])
    assert match in err
    assert not any(tmp_path.iterdir())


def test_betas_length(capsys, tiny_folder, tmp_path):
    err = run_err(capsys, [f"folder:{tiny_folder}", "resnet20", "--betas", "1,1", "--out", str(tmp_path)])
    assert "one weight per head (3)" in err


def test_too_many_heads(capsys, tiny_folder, tmp_path):
    err = run_err(capsys, [f"folder:{tiny_folder}", "resnet20", "--heads", "5", *FAST,
                           "--out", str(tmp_path)])
    assert "at most 3 heads" in err
    assert not any(tmp_path.iterdir())  # nothing written for bad input


def test_resume_needs_name(capsys, tiny_folder, tmp_path):
    err = run_err(capsys, [f"folder:{tiny_folder}", "resnet20", "--resume", "--out", str(tmp_path)])
    assert "--resume needs --name" in err


def test_resume_with_other_settings_refused(capsys, finished_run, cifar_folder):
    """The session's finished run (tests/conftest.py) resumed with another --beta: refused,
    and the run is left as it was."""
    before = (finished_run / "metrics.csv").read_bytes()
    err = run_err(capsys, [f"folder:{cifar_folder}", "resnet8", "--epochs", "2", "--batch-size",
                           "16", "--milestones", "1", "--gamma", "0.5", "--beta", "0.3", "--resume",
                           "--out", str(finished_run.parent), "--name", finished_run.name])
    assert "different settings" in err and "beta" in err
    assert (finished_run / "metrics.csv").read_bytes() == before
