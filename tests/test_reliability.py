"""Reliability: non-finite loss, determinism, SIGTERM, skip-bad-images, unwritable out, disk full."""

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sila_keras.training.train import main
from sila_keras.utils import files

FAST = ["--epochs", "1", "--batch-size", "8", "--milestones", ""]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def test_non_finite_loss_stops_with_a_clear_message(capsys, tiny_folder, tmp_path):
    rc = main([f"folder:{tiny_folder}", "resnet8", *FAST, "--beta", "1e38", "--out", str(tmp_path),
               "--name", "nan"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "epoch 1, batch 1" in err and "--lr" in err and "--beta" in err
    assert not list((tmp_path / "nan" / "checkpoints").glob("*.keras"))  # no NaN checkpoint
    assert not (tmp_path / "nan" / "model.keras").exists()


def test_guard_keeps_last_good_checkpoint(tmp_path):
    """Epoch 1 fine, epoch 2 non-finite: the checkpoint still holds epoch 1."""
    import keras
    import numpy as np

    from sila_keras.training.callbacks import NonFiniteGuard, ResumeCheckpoint

    class Explode(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                for w in self.model.trainable_weights:
                    w.assign(w * np.float32("nan"))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "sparse_categorical_crossentropy")
    guard = NonFiniteGuard()
    ckpt = ResumeCheckpoint(tmp_path / "ck", guard=guard)
    x, y = np.ones((8, 3), np.float32), np.zeros(8, np.int32)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[guard, Explode(), ckpt])
    assert guard.failure and "epoch 2" in guard.failure
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["epoch"] == 1


def test_sigterm_stops_cleanly_and_resume_continues(tiny_folder, tmp_path):
    args = [f"folder:{tiny_folder}", "resnet8", "--epochs", "30", "--batch-size", "6",
            "--milestones", "", "--out", str(tmp_path), "--name", "t"]
    proc = subprocess.Popen([sys.executable, "-m", "sila_keras.train", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "t" / "checkpoints" / "state.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not state.exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    done = json.loads(state.read_text())["epoch"]
    with open(tmp_path / "t" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)][:done] == list(range(1, done + 1))


def test_skip_bad_images_counts_them(tiny_folder, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    (data / "train" / "a" / "0001.png").write_bytes(b"garbage")
    (data / "test" / "c" / "0000.png").write_bytes(b"")
    assert main([f"folder:{data}", "resnet8", *FAST, "--skip-bad-images", "--out", str(tmp_path),
                 "--name", "s"]) == 0
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert s["data"]["train_examples"] == 17 and s["data"]["test_examples"] == 8
    assert "skipped 2 unreadable image file(s)" in s["data"]["notes"][0]


def test_unwritable_out(capsys, tiny_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main([f"folder:{tiny_folder}", "resnet8", *FAST, "--out", str(blocker / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "Cannot create the run directory" in err and "--out" in err


def test_disk_full_during_write_leaves_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    files.write_text(target, "epoch\n1\n")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_text", full)
    with pytest.raises(OSError, match="No space"):
        files.write_text(target, "epoch\n1\n2\n")
    monkeypatch.undo()
    assert target.read_text() == "epoch\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temp file left behind


# --------------------------------------------------------------------------- SIGKILL at the worst moments

KILLER = r"""
import os, signal, sys
from pathlib import Path

import keras

from sila_keras.utils import files
from sila_keras.training.train import main

point, epoch = sys.argv[1], int(sys.argv[2])
if point == "before_commit":  # epoch's model file in place, state.json not yet written
    write_json = files.write_json

    def patched(path, obj):
        if Path(path).name == "state.json" and obj.get("epoch") == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        write_json(path, obj)

    files.write_json = patched
else:  # "mid_save": half of the epoch's model file written
    save = keras.Model.save

    def patched(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        if Path(filepath).name.startswith(".epoch-%04d.keras" % epoch):
            data = Path(filepath).read_bytes()
            Path(filepath).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    keras.Model.save = patched
sys.exit(main(sys.argv[3:]))
"""

RUN3 = ["resnet8", "--epochs", "3", "--batch-size", "6", "--milestones", "2", "--gamma", "0.5",
        "--deterministic", "--seed", "3", "--verbose", "0"]


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    assert main([f"folder:{tiny_folder}", *RUN3, "--out", str(out), "--name", "whole"]) == 0
    return _rows(out / "whole" / "metrics.csv")


def test_deterministic_runs_give_identical_metrics(tiny_folder, tmp_path, uninterrupted):
    """The same --deterministic command, run again in a fresh process: identical metrics.csv."""
    args = [sys.executable, "-m", "sila_keras.train", f"folder:{tiny_folder}", *RUN3,
            "--out", str(tmp_path), "--name", "again"]
    out = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    again = _rows(tmp_path / "again" / "metrics.csv")
    assert len(again) == 3 and again == uninterrupted


def test_deterministic_run_leaves_op_determinism_as_it_found_it(uninterrupted):
    """The in-process --deterministic run (fixture) switched op determinism off again."""
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()


@pytest.mark.slow
@pytest.mark.parametrize("point, streamed", [("before_commit", True), ("mid_save", False)],
                         ids=["before_commit-streamed", "mid_save"])
def test_sigkill_during_checkpoint_write_resumes_exactly(point, streamed, tiny_folder, tmp_path,
                                                         uninterrupted):
    """Killed while epoch 2's checkpoint is written: --resume redoes epoch 2 from the epoch-1
    checkpoint and ends with the same metrics, epoch by epoch, as a run never killed.

    ``streamed``: the images are decoded from the files every epoch (--cache none), killed
    while epoch 2 is committed; the resumed run still ends with the metrics of the
    uninterrupted (in-memory) run. The other kill point keeps the images in memory."""
    cache = ["--cache", "none"] if streamed else []
    args = [f"folder:{tiny_folder}", *RUN3, *cache, "--out", str(tmp_path), "--name", "k"]
    proc = subprocess.run([sys.executable, "-c", KILLER, point, "2", *args], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ck = tmp_path / "k" / "checkpoints"
    state = json.loads((ck / "state.json").read_text())
    assert state["epoch"] == 1 and state["model"] == "epoch-0001.keras" and (ck / state["model"]).is_file()
    assert not (tmp_path / "k" / "model.keras").exists()  # a killed run has no final model
    assert main([*args, "--resume"]) == 0
    assert _rows(tmp_path / "k" / "metrics.csv") == uninterrupted  # epochs 1, 2, 3; lr halved at 2
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert summary["epochs_done"] == 3
    assert (summary["data"]["cache"] == "none") == streamed
    assert sorted(p.name for p in ck.iterdir()) == ["epoch-0003.keras", "state.json"]  # no temp left
