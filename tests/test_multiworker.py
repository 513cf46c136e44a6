"""Multi-worker training (``--strategy multiworker``), its TF_CONFIG checks, the isolated
Keras fix (``sila_keras.devices.multiworker``) and a ``--mixed-precision`` smoke run.

The loopback test starts two real worker processes on 127.0.0.1 (free ports, each bounded
by a timeout and killed if it overruns: a peer that never starts makes the other wait
forever), trains one epoch, then resumes both for a second epoch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import free_ports

from sila_keras.devices import multiworker
from sila_keras.devices.distribute import parse_tf_config, process_run_dir, tf_config_task
from sila_keras.training.train import main

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = int(os.environ.get("SILA_MULTIWORKER_TIMEOUT", "420"))
TRAIN_ARGS = ["resnet8", "--strategy", "multiworker", "--batch-size", "6", "--milestones", "",
              "--verbose", "0", "--name", "mw"]


def tf_config(workers: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def run_workers(argv: list[str], log_dir: Path, tag: str) -> list[int]:
    """Run ``python -m sila_keras.train argv`` as every worker of a fresh loopback cluster.

    Returns the exit codes. A worker still running after TIMEOUT_S is killed (SIGKILL:
    collective waits ignore SIGTERM) and the test fails with its log.
    """
    workers = free_ports(2)
    procs, logs = [], []
    for i in range(len(workers)):
        env = {**os.environ, "TF_CONFIG": tf_config(workers, i), "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        log = log_dir / f"{tag}_worker{i}.log"
        logs.append(log)
        with open(log, "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "sila_keras.train", *argv],
                                          env=env, cwd=log_dir, stdout=out, stderr=subprocess.STDOUT))
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        pytest.fail(f"multi-worker run '{tag}' took over {TIMEOUT_S}s; logs:\n"
                    + "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for code, log in zip(codes, logs):
        assert code == 0, f"{log.name} exited {code}:\n{log.read_text()[-3000:]}"
    return codes


def trainable(path: Path) -> list[np.ndarray]:
    import sila_keras.models  # noqa: F401  (registers custom layers for loading)

    return [v.numpy() for v in keras.models.load_model(path).trainable_weights]


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- TF_CONFIG


@pytest.mark.parametrize("raw, match", [
    (None, "TF_CONFIG is not set"),
    ("{cluster: 1}", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'needs a "cluster" object'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "no parameter servers"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "lists no workers"),
    ('{"cluster": {"worker": ["10.0.0.1"]}, "task": {"type": "worker", "index": 0}}',
     r'list of "host:port" strings'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', r'needs "task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}',
     "task.type must be one of"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task.index must be an integer from 0 to 1"),
])
def test_bad_tf_config_names_the_problem_and_shows_an_example(monkeypatch, raw, match):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=match) as info:
        parse_tf_config(raw)
    assert "10.0.0.1:12345" in str(info.value)  # the 2-machine example


def test_cli_multiworker_without_tf_config_fails_fast(monkeypatch, tmp_path, tiny_folder, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = main([f"folder:{tiny_folder}", *TRAIN_ARGS, "--epochs", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sila-train: error: --strategy multiworker needs a valid TF_CONFIG")
    assert '"task": {"type": "worker", "index": 0}' in err.replace("\\", "")
    assert not (tmp_path / "mw").exists()


def test_chief_and_scratch_dirs_follow_tf_config(monkeypatch, tmp_path):
    two = ["a:1", "b:2"]
    assert tf_config_task(tf_config(two, 0)) == ("worker", 0, True)
    assert tf_config_task(tf_config(two, 1)) == ("worker", 1, False)
    with_chief = json.dumps({"cluster": {"chief": ["c:3"], "worker": two},
                             "task": {"type": "worker", "index": 0}})
    assert tf_config_task(with_chief) == ("worker", 0, False)
    monkeypatch.setenv("TF_CONFIG", tf_config(two, 1))
    assert process_run_dir(tmp_path, "multiworker") == tmp_path / ".workers" / "worker_1"
    assert process_run_dir(tmp_path, "mirrored") == tmp_path
    monkeypatch.setenv("TF_CONFIG", tf_config(two, 0))
    assert process_run_dir(tmp_path, "multiworker") == tmp_path


# --------------------------------------------------------------------------- the Keras fix


def test_keras_fix_is_isolated_reversible_and_version_guarded(monkeypatch):
    from keras.src.backend.tensorflow import trainer

    was_installed = multiworker.is_installed()
    multiworker.uninstall()
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica
    try:
        assert multiworker.install() and multiworker.install()  # idempotent
        assert trainer.TensorFlowTrainer._maybe_symbolic_build is not original_build
        assert trainer.reduce_per_replica is not original_reduce
        multiworker.uninstall()
        assert trainer.TensorFlowTrainer._maybe_symbolic_build is original_build
        assert trainer.reduce_per_replica is original_reduce
        monkeypatch.setattr(keras, "__version__", "4.0.0")
        with pytest.raises(ValueError, match=r"supports Keras 3\.0 to <4\.0.*keras==4\.0\.0"):
            multiworker.install()
        assert not multiworker.is_installed()
    finally:
        monkeypatch.undo()
        if was_installed:
            multiworker.install()


# --------------------------------------------------------------------------- two workers


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory, tiny_folder):
    """One epoch on a 2-worker loopback cluster; returns the output folder."""
    out = tmp_path_factory.mktemp("multiworker")
    run_workers([f"folder:{tiny_folder}", *TRAIN_ARGS, "--epochs", "1", "--out", str(out)],
                out, "epoch1")
    return out


@pytest.mark.slow
def test_two_workers_train_identical_weights_and_only_the_chief_writes(two_worker_run):
    run = two_worker_run / "mw"
    scratch = run / ".workers" / "worker_1"
    assert {p.name for p in run.iterdir()} == {
        "config.json", "metrics.csv", "summary.json", "model.keras", "labels.txt", "curves.png",
        "checkpoints", "tensorboard", ".workers"}
    assert [p.name for p in (run / ".workers").iterdir()] == ["worker_1"]
    assert sorted(p.name for p in two_worker_run.iterdir() if p.suffix != ".log") == ["mw"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["strategy"] == "MultiWorkerMirroredStrategy"
    assert summary["replicas"] == 2 and summary["epochs_done"] == 1
    assert len(rows(run / "metrics.csv")) == 1
    chief = trainable(run / "model.keras")
    for other in (scratch / "checkpoints" / "epoch-0001.keras", scratch / "model.keras"):
        for a, b in zip(chief, trainable(other), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def mirrored_reference(tmp_path_factory, tiny_folder):
    """The same run, 2 epochs uninterrupted, on one machine with 2 mirrored replicas
    (conftest splits the CPU in two): what 2 workers × 1 replica must reproduce."""
    out = tmp_path_factory.mktemp("mirrored")
    args = [a if a != "multiworker" else "mirrored" for a in TRAIN_ARGS]
    assert main([f"folder:{tiny_folder}", *args, "--epochs", "2", "--out", str(out)]) == 0
    return out / "mw"


@pytest.mark.slow
def test_mirrored_cli_run_records_its_strategy(mirrored_reference):
    summary = json.loads((mirrored_reference / "summary.json").read_text())
    assert summary["strategy"] == "MirroredStrategy" and summary["replicas"] == 2
    assert summary["epochs_done"] == 2


def assert_same_row(row: dict, ref: dict) -> None:
    for key in ("loss", "test_loss", "nll", "head_1_acc", "head_2_acc", "head_3_acc"):
        assert float(row[key]) == pytest.approx(float(ref[key]), rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_two_workers_equal_two_mirrored_replicas_on_one_machine(two_worker_run, mirrored_reference):
    """Epoch 1: training loss and every test metric as with 2 replicas in one process."""
    assert_same_row(rows(two_worker_run / "mw" / "metrics.csv")[0],
                    rows(mirrored_reference / "metrics.csv")[0])


@pytest.mark.slow
def test_two_workers_resume_exactly_from_their_own_checkpoints(two_worker_run, mirrored_reference,
                                                               tiny_folder):
    """Epoch 2 after ``--resume`` = epoch 2 of the uninterrupted run (each worker keeps its
    own BatchNorm statistics — synchronized across workers by default here, 3 images per
    replica — so even the test metrics match)."""
    import sila_keras.models  # noqa: F401

    run_workers([f"folder:{tiny_folder}", *TRAIN_ARGS, "--epochs", "2", "--resume",
                 "--out", str(two_worker_run)], two_worker_run, "resume")
    run = two_worker_run / "mw"
    scratch = run / ".workers" / "worker_1"
    got = rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in got] == [1, 2]
    for folder in (run, scratch):
        assert json.loads((folder / "checkpoints" / "state.json").read_text())["epoch"] == 2
    for a, b in zip(trainable(run / "model.keras"), trainable(scratch / "model.keras"), strict=True):
        np.testing.assert_array_equal(a, b)
    mw = keras.models.load_model(run / "model.keras")
    ref = keras.models.load_model(mirrored_reference / "model.keras")
    for a, b in zip(mw.weights, ref.weights, strict=True):  # BN statistics included
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    assert_same_row(got[1], rows(mirrored_reference / "metrics.csv")[1])


# --------------------------------------------------------------------------- mixed precision


@pytest.mark.slow
def test_mixed_precision_run_keeps_float32_logits_and_a_finite_loss(tmp_path, tiny_folder):
    import sila_keras.models  # noqa: F401

    try:
        code = main([f"folder:{tiny_folder}", "resnet8", "--mixed-precision", "--epochs", "1",
                     "--batch-size", "6", "--milestones", "", "--strategy", "default",
                     "--limit-train", "6", "--limit-test", "6",  # one step: dtypes are the point
                     "--verbose", "0", "--out", str(tmp_path), "--name", "mp"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert code == 0
    model = keras.models.load_model(tmp_path / "mp" / "model.keras")
    assert model.get_layer("head_2_conv").compute_dtype == "bfloat16"  # CPU: mixed_bfloat16
    assert model.get_layer("sila_logits").compute_dtype == "float32"
    out = model(np.zeros((2, 32, 32, 3), np.float32))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert math.isfinite(float(rows(tmp_path / "mp" / "metrics.csv")[0]["loss"]))
