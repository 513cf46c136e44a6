"""β/λ search (``python -m tuning``): results, no test-split leak, resume, distributed, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import keras_tuner as kt
import numpy as np
import pytest

from sila_keras.data import load_dataset
from sila_keras.training import train as sk_train
from sila_keras.training.config import TrainConfig
from sila_keras.utils import files
from tuning.cli import main
from tuning.hypermodel import SearchData, SilaHyperModel

REPO = Path(__file__).resolve().parents[1]
FAST = ["resnet8", "--epochs", "1", "--batch-size", "4", "--val-split", "0.34", "--milestones", "",
        "--verbose", "0"]


def cli_args(folder, out, *extra) -> list[str]:
    return [f"folder:{folder}", *FAST, "--out", str(out), *extra]


def digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images}


class Recorder:
    """Wraps the training chain that tuning calls: what data went where, which trials were fit."""

    def __init__(self, mp: pytest.MonkeyPatch, interrupt_fit: bool = False):
        self.datasets, self.fits, self.builds = [], [], 0
        self.interrupt_fit = interrupt_fit
        make_datasets, fit, build_model = sk_train.make_datasets, sk_train.fit, sk_train.build_model

        def rec_datasets(config, train_x, train_y, eval_x, eval_y, initial_epoch=0):
            self.datasets.append(SimpleNamespace(train=digests(train_x), eval=digests(eval_x),
                                                 n_train=len(train_y), n_eval=len(eval_y)))
            return make_datasets(config, train_x, train_y, eval_x, eval_y, initial_epoch)

        def rec_fit(model, train_ds, eval_ds, **kwargs):
            if self.interrupt_fit:
                raise KeyboardInterrupt
            trial = next((c.trial.trial_id for c in kwargs.get("callbacks", ())
                          if hasattr(c, "trial")), None)
            self.fits.append(SimpleNamespace(trial=trial, validates=eval_ds is not None,
                                             replicas=model.distribute_strategy.num_replicas_in_sync))
            return fit(model, train_ds, eval_ds, **kwargs)

        def rec_build(config, data):
            self.builds += 1
            return build_model(config, data)

        mp.setattr(sk_train, "make_datasets", rec_datasets)
        mp.setattr(sk_train, "fit", rec_fit)
        mp.setattr(sk_train, "build_model", rec_build)


@pytest.fixture(scope="module")
def search_run(tiny_folder, tmp_path_factory):
    """One 3-trial random search (+ --final-epochs 1), recorded; shared by the tests below."""
    out = tmp_path_factory.mktemp("tune") / "search"
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        rc = main(cli_args(tiny_folder, out, "--tuner", "random", "--max-trials", "3",
                           "--final-epochs", "1"))
    return SimpleNamespace(rc=rc, out=out, rec=rec)


def test_search_writes_results(search_run):
    assert search_run.rc == 0
    out = search_run.out
    best = json.loads((out / "best_hparams.json").read_text())
    assert best["objective"] == "val_head_1_acc" and best["objective_direction"] == "max"
    assert 0.01 <= best["beta"] <= 1.0 and 0.1 <= best["lam"] <= 1.0 and best["heads"] == 3
    rows = files.read_csv(out / "trials.csv")
    assert len(rows) == 3
    assert list(rows[0]) == ["trial", "trial_id", "beta", "lam", "val_head_1_acc", "epochs_run", "status",
                             "message"]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert [r["trial"] for r in rows] == ["1", "2", "3"]  # keras-tuner's "Running Trial #1"
    assert {r["epochs_run"] for r in rows} == {"1"}
    assert len({r["beta"] for r in rows}) == 3  # three different configurations
    values = [float(r["val_head_1_acc"]) for r in rows]
    assert best["objective_value"] == pytest.approx(max(values))
    winner = rows[values.index(max(values))]
    assert float(winner["beta"]) == best["beta"] and float(winner["lam"]) == best["lam"]
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "tuner" / "oracle.json").is_file()  # keras-tuner's project, for --resume
    final = json.loads((out / "final_test.json").read_text())
    assert final["split"] == "test" and "evaluated once" in final["note"]
    assert set(final["test"]) >= {"test_head_1_acc", "test_head_2_acc", "test_head_3_acc"}
    assert (out / "final" / "model.keras").is_file()


def test_search_never_sees_the_test_split(search_run, tiny_folder):
    data = load_dataset(f"folder:{tiny_folder}")
    train, test = digests(data.train_x), digests(data.test_x)
    assert not train & test
    best = json.loads((search_run.out / "best_hparams.json").read_text())
    *trials, final = search_run.rec.datasets
    assert len(trials) == 3
    for call in trials:  # search: training and validation images, both from the training split
        assert call.train <= train and call.eval <= train
        assert not call.train & call.eval
        assert not (call.train | call.eval) & test
        assert call.n_eval == best["data"]["validation_examples"] == 6
        assert call.n_train == best["data"]["search_train_examples"] == 12
    # only the final run, after the search, sees the test split — all of it, once
    assert final.train == train and final.eval == test
    fits = search_run.rec.fits
    assert [f.validates for f in fits] == [True, True, True, False]  # final: no eval during training


def test_resume_reruns_only_the_interrupted_trial_under_mirrored(search_run, tmp_path, tiny_folder):
    out = tmp_path / "moved"
    shutil.copytree(search_run.out, out)
    before = files.read_csv(out / "trials.csv")
    with pytest.MonkeyPatch.context() as mp:  # 4th trial starts, then the run is interrupted
        rec = Recorder(mp, interrupt_fit=True)
        assert main(cli_args(tiny_folder, out, "--resume", "--max-trials", "4")) == 130
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        rc = main(cli_args(tiny_folder, out, "--resume", "--max-trials", "4",
                           "--strategy", "mirrored"))
    assert rc == 0
    assert [f.trial for f in rec.fits] == ["3"]  # finished trials 0-2 are not rerun
    assert rec.fits[0].replicas == 2  # the trial trained under MirroredStrategy
    rows = files.read_csv(out / "trials.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"COMPLETED"}
    assert rows[:3] == before


def test_existing_output_refused_and_resume_needs_a_search(tiny_folder, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    assert main(cli_args(tiny_folder, tmp_path / "busy", "--max-trials", "1")) == 2
    assert "already exists and is not empty. Add --resume" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert main(cli_args(tiny_folder, tmp_path / "nothing", "--resume")) == 2
    assert "Cannot resume" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--beta-range", "1.0,0.01"], r"`--beta-range` needs min < max\. Received: --beta-range=1.0,0.01"),
    (["--lam-range", "0.5,0.5"], r"`--lam-range` needs min < max"),
    (["--beta-range", "0,1"], r"sampled log-uniformly, so both bounds must be > 0"),
    (["--beta-range=-0.1,1"], r"both bounds must be > 0"),
    (["--lam-range=-1,1"], r"`--lam-range` bounds must be >= 0"),
    (["--beta-range", "0.1"], r"two comma-separated numbers LO,HI"),
    (["--tuner", "grid"], r"Unknown tuner 'grid'\. Available: random, bayesian, hyperband"),
    (["--objective", "head_4_acc"],
     r"Unknown objective 'head_4_acc'\. Valid objectives .*: head_1_acc, head_2_acc, head_3_acc"),
    (["--objective", "val_loss"], r"Unknown objective 'val_loss'"),
    (["--tune-heads", "--objective", "head_3_acc"], r"Valid objectives .*: head_1_acc, head_2_acc \("),
    (["--max-trials", "0"], r"`--max-trials` must be >= 1.*Received: max_trials=0"),
    (["--val-split", "1.5"], r"`--val-split`.* must be in \(0, 1\)"),
    (["--heads", "1"], r"needs `--heads` >= 2"),
    (["--tune-heads", "--heads", "2"], r"`--tune-heads` searches M in 2\.\.--heads"),
    (["--beta", "0.3"], r"`--beta` is not a sila-tune flag.*--beta-range"),
    (["--final-epochs", "0"], r"`--final-epochs` must be >= 1"),
])
def test_bad_input(extra, message, tiny_folder, tmp_path, capsys):
    rc = main(cli_args(tiny_folder, tmp_path / "s", *extra))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("sila-tune: error: ")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "s").exists()  # nothing written


def test_bad_dataset_leaves_no_folder(tmp_path, capsys):
    assert main(cli_args(tmp_path / "missing", tmp_path / "s")) == 2
    assert "Dataset folder not found" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # a corrected rerun is not refused


def test_resume_needs_out(tiny_folder, capsys):
    assert main([f"folder:{tiny_folder}", "resnet20", "--resume"]) == 2
    assert "--resume needs --out DIR" in capsys.readouterr().err


def test_bayesian_without_scipy_names_the_install(tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    assert main(cli_args(tiny_folder, tmp_path / "b", "--tuner", "bayesian")) == 2
    assert "pip install 'keras-tuner[bayesian]'" in capsys.readouterr().err


def test_incomplete_distributed_environment(tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.delenv("KERASTUNER_ORACLE_PORT", raising=False)
    monkeypatch.delenv("KERASTUNER_TUNER_ID", raising=False)
    assert main(cli_args(tiny_folder, tmp_path / "d", "--max-trials", "1")) == 2
    err = capsys.readouterr().err
    assert "KERASTUNER_ORACLE_PORT, KERASTUNER_TUNER_ID are not" in err


def _search_data(n_classes=3, per_class=4, size=8):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n_classes * per_class, size, size, 3), dtype=np.uint8)
    y = np.repeat(np.arange(n_classes), per_class)
    return SearchData(x[::2], y[::2], x[1::2], y[1::2], [str(c) for c in range(n_classes)], "mem")


def test_hypermodel_search_space():
    cfg = TrainConfig.create("folder:x", "resnet20", heads=3, epochs=1, milestones=())
    hm = SilaHyperModel(cfg, _search_data(), beta_range=(0.02, 0.5), lam_range=(0.2, 0.9),
                        tune_heads=True)
    hp = kt.HyperParameters()
    trial = hm.trial_config(hp)
    space = {p.name: p for p in hp.space}
    assert space["beta"].sampling == "log" and (space["beta"].min_value, space["beta"].max_value) == (0.02, 0.5)
    assert space["lam"].sampling == "linear" and (space["lam"].min_value, space["lam"].max_value) == (0.2, 0.9)
    assert (space["heads"].min_value, space["heads"].max_value) == (2, 3)
    assert (trial.sila.beta, trial.sila.lam, trial.sila.heads) == (0.1, 0.5, 3)  # defaults, in range
    hp.values.update(beta=0.3, lam=0.25, heads=2)
    trial = hm.trial_config(hp)
    assert (trial.sila.beta, trial.sila.lam, trial.sila.heads, trial.optim.epochs) == (0.3, 0.25, 2, 1)
    # with M = 2, λ has no effect and is not searched
    hm2 = SilaHyperModel(cfg.replace(heads=2), _search_data())
    hp2 = kt.HyperParameters()
    hm2.trial_config(hp2)
    assert type(hp2.space[[p.name for p in hp2.space].index("lam")]).__name__ == "Fixed"


def test_non_finite_loss_fails_the_trial(monkeypatch):
    hm = SilaHyperModel(TrainConfig.create("folder:x", "resnet20", epochs=1, milestones=()), _search_data())

    def nan_fit(model, train_ds, eval_ds, *, callbacks, **kwargs):
        guard = callbacks[0]
        guard.set_model(model)
        guard.on_train_batch_end(0, {"loss": float("nan")})
        return keras.callbacks.History()

    monkeypatch.setattr(sk_train, "fit", nan_fit)
    model = SimpleNamespace(stop_training=False)
    with pytest.raises(kt.errors.FailedTrialError, match="Training loss became nan"):
        hm.fit(kt.HyperParameters(), model, callbacks=[])
    assert model.stop_training
    with pytest.raises(TypeError, match="trains on its own SearchData"):
        hm.fit(kt.HyperParameters(), model, np.zeros(3), callbacks=[])


def test_objective_checked_against_the_models_metrics():
    cfg = TrainConfig.create("folder:x", "resnet20", heads=2, epochs=1, milestones=(), batch_size=2)
    hm = SilaHyperModel(cfg, _search_data(size=16))
    with pytest.raises(ValueError, match=r"logs no such metric\. Valid objectives: head_1_acc, head_2_acc\."):
        hm.check_objective("val_head_3_acc", 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_chief_and_two_workers(tiny_folder, tmp_path):
    """keras-tuner chief/worker mode on loopback: 2 trials over 2 workers; only the chief reports."""
    out = tmp_path / "dist"
    port = _free_port()
    base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    cmd = [sys.executable, "-m", "tuning", *cli_args(tiny_folder, out, "--max-trials", "2")]
    procs, logs = {}, {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "w+")
            procs[tuner_id] = subprocess.Popen(cmd, cwd=REPO, env={**base, "KERASTUNER_TUNER_ID": tuner_id},
                                               stdout=logs[tuner_id], stderr=subprocess.STDOUT)
        deadline = time.time() + 420  # ~40 s on an idle 2-core machine; generous for a shared one
        for proc in procs.values():
            try:
                proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()  # SIGKILL: a gRPC wait ignores SIGTERM
                proc.wait(10)
    text = {k: (f.seek(0), f.read())[1] for k, f in logs.items()}
    for f in logs.values():
        f.close()
    report = "\n".join(f"--- {k} (exit {procs[k].returncode}):\n{v[-1500:]}" for k, v in text.items())
    assert all(proc.returncode == 0 for proc in procs.values()), report
    rows = files.read_csv(out / "trials.csv")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"COMPLETED"}
    assert json.loads((out / "best_hparams.json").read_text())["objective"] == "val_head_1_acc"
    assert "Results:" in text["chief"]
    for worker in ("tuner0", "tuner1"):
        assert "the chief writes the results" in text[worker] and "Results:" not in text[worker]
    trained = [w for w in ("tuner0", "tuner1") if (out / "tuner" / f"{w}.json").exists()]
    assert trained  # trials were run by workers (each saves its tuner state after a trial)
