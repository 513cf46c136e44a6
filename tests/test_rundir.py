"""RunDir: the run-directory schema, atomic writes, loading (finished and partial), resume check."""

import re
from pathlib import Path

import keras
import pytest

from sila_keras.training.config import TrainConfig
from sila_keras.utils.errors import RunDirError
from sila_keras.utils.rundir import RunDir, check_resume, read_checkpoint, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip(tmp_path):
    run = RunDir(tmp_path / "r").create()
    config = TrainConfig.create("folder:x", "resnet20", epochs=2)
    cfg = config.to_dict()
    rows = [{"epoch": 1, "lr": 0.1, "loss": 2.0, "head_1_acc": 0.25}]
    run.write_config(cfg)
    run.write_metrics(rows, ["epoch", "lr", "loss", "head_1_acc"])
    run.write_summary({"num_heads": 1, "epochs_done": 1})
    run.write_labels(["cat", "dog"])
    loaded = run.load()
    assert loaded.finished and loaded.config == config.flat() and loaded.summary["epochs_done"] == 1
    assert loaded.rows == [{"epoch": "1", "lr": "0.1", "loss": "2.0", "head_1_acc": "0.25"}]
    assert loaded.class_names == ["cat", "dog"]
    assert sorted(p.name for p in run.path.iterdir()) == [
        "config.json", "labels.txt", "metrics.csv", "summary.json"]  # no temp files left
    assert TrainConfig.from_dict(run.read_config()) == TrainConfig.from_dict(cfg) == config


def test_config_json_is_grouped_and_old_flat_runs_still_load(tmp_path):
    config = TrainConfig.create("folder:x", "resnet20", epochs=2, beta=0.3, milestones=(1,))
    on_disk = config.to_dict()
    assert on_disk["optim"]["epochs"] == 2 and on_disk["sila"]["beta"] == 0.3
    assert on_disk["optim"]["milestones"] == [1] and "epochs" not in on_disk
    old = RunDir(tmp_path / "old").create()  # a run written before the grouping: one flat dict
    old.write_config({**config.flat(), "a_field_of_another_version": 1})
    assert old.read_config()["beta"] == 0.3
    assert TrainConfig.from_dict(old.read_config()) == config


def test_partial_run_loads_only_when_asked(tmp_path):
    run = RunDir(tmp_path / "killed").create()
    run.write_config({"dataset": "mnist", "model": "resnet20"})
    run.write_metrics([{"epoch": 1, "head_1_acc": 0.5}])
    partial = run.load(finished=False)
    assert not partial.finished and partial.summary == {} and len(partial.rows) == 1
    with pytest.raises(RunDirError, match=r"not a finished run directory \(missing summary.json\)"):
        run.load()
    with pytest.raises(RunDirError, match="missing model.keras"):
        run.load(finished=False, need_model=True)
    with pytest.raises(RunDirError, match="Run directory not found"):
        RunDir(tmp_path / "nope").load(finished=False)


def test_new_run_dir_refuses_a_used_folder(tmp_path):
    RunDir(tmp_path / "empty").create().check_new()  # an empty folder is fine
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    with pytest.raises(RunDirError, match="already exists. Add --resume"):
        RunDir(tmp_path / "used").check_new()
    assert (tmp_path / "used" / "x").read_text() == "keep me"


def test_create_names_an_unwritable_out(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunDirError, match="Cannot create the run directory .* Choose a writable --out"):
        RunDir(tmp_path / "a_file" / "run").create()


def test_resume_diff_lists_every_changed_setting():
    old = TrainConfig.create("folder:x", "resnet20", heads=3, lr=0.1, epochs=2)
    check_resume(old, old.replace(epochs=5), "'r'")  # epochs may grow
    with pytest.raises(RunDirError) as e:
        check_resume(old, old.replace(heads=2, lr=0.05), "'r'")
    msg = str(e.value)
    assert "Cannot resume 'r' with different settings" in msg
    assert "heads: 3 → 2" in msg and "lr: 0.1 → 0.05" in msg and "epochs" not in msg


def test_resume_needs_a_stored_config(tmp_path):
    with pytest.raises(RunDirError, match="Cannot resume: .*config.json' not found"):
        RunDir(tmp_path).read_resumable_config(TrainConfig)


def test_checkpoints_keep_only_the_newest_epoch(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    folder = tmp_path / "checkpoints"
    write_checkpoint(folder, model, 1, {"wall_time_s": 1.0})
    write_checkpoint(folder, model, 2, {"wall_time_s": 2.0})
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0002.keras", "state.json"]
    state = read_checkpoint(folder)
    assert state["epoch"] == 2 and state["model"] == folder / "epoch-0002.keras"
    assert state["wall_time_s"] == 2.0
    (folder / "epoch-0002.keras").unlink()
    with pytest.raises(RunDirError, match="names the model file 'epoch-0002.keras', which is missing"):
        RunDir(tmp_path).checkpoint_state()
    assert read_checkpoint(tmp_path / "none") is None


# Run-file names owned by RunDir / SearchDir / PairsDir.
OWNED = ("config.json", "metrics.csv", "summary.json", "labels.txt", "curves.png", "state.json",
         "search_config.json", "trials.csv", "best_hparams.json", "final_test.json",
         "results.json", "grid.json", "table.json")


# Same file names, other concepts: the member of a .keras archive that holds its model
# config, and the labels file zipped into a TFLite model's metadata.
NOT_RUN_FILES = {("export/artifacts.py", "config.json"), ("export/metadata.py", "labels.txt")}


def test_run_file_names_are_spelled_only_in_rundir():
    offenders = []
    for pkg in ("sila_keras", "tuning", "export"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "rundir.py":
                continue
            for name in OWNED:
                if (path.relative_to(ROOT).as_posix(), name) in NOT_RUN_FILES:
                    continue
                if re.search(rf"[\"'/]{re.escape(name)}[\"']", path.read_text()):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_config_groups_own_their_fields():
    from sila_keras.training.config import FIELD_GROUP, GROUPS

    names = [f for cls in GROUPS.values() for f in cls.__dataclass_fields__]
    assert len(names) == len(set(names)) == len(FIELD_GROUP)  # flat names are unique
    cfg = TrainConfig.create("folder:x", "resnet20", lr=0.05, seed=3, peer="resnet32")
    assert (cfg.optim.lr, cfg.run.seed, cfg.mutual.peer) == (0.05, 3, "resnet32")
    assert cfg.value("lr") == 0.05 and cfg.replace(lr=0.2).optim.lr == 0.2
    with pytest.raises(AttributeError, match=r"TrainConfig\.optim\.lr"):
        cfg.lr  # noqa: B018  (flat reads point at the group)
    with pytest.raises(TypeError, match="no field 'lrr'"):
        cfg.replace(lrr=1)
