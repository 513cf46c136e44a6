"""Shipping a shallow head — --ship-head, self-distillation, the sub-network trained
alone, the head-vs-alone benchmark and its table in export/report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from sila_keras.core.losses import SilaLoss, distill_loss, ship_head_weights, sila_loss
from sila_keras.training.config import TrainConfig
from sila_keras.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- --ship-head


def test_ship_head_weights_raise_head_k_to_one():
    assert ship_head_weights(3, 3, beta=0.1, lam=0.5) == [1.0, 0.1, 1.0]
    assert ship_head_weights(4, 2, beta=0.2, lam=0.5) == pytest.approx([1.0, 1.0, 0.1, 0.05])
    assert ship_head_weights(3, 1) == pytest.approx([1.0, 0.1, 0.05])  # k = 1: unchanged
    with pytest.raises(ConfigError, match=r"must name a head in 1\.\.3"):
        ship_head_weights(3, 4)


@pytest.mark.parametrize("fields, match", [
    ({"ship_head": 4}, r"`--ship-head` must name a head in 1\.\.3 .*ship_head=4"),
    ({"ship_head": 0}, r"must name a head in 1\.\.3"),
    ({"ship_head": 3, "betas": (1, 0.1, 1)}, r"cannot be combined with `--betas`"),
    ({"distill": -1.0}, r"`--distill` .* must be >= 0"),
    ({"distill": 1.0, "distill_t": 0.0}, r"`--distill-t` .* must be > 0"),
    ({"distill": 1.0, "heads": 1}, r"needs `--heads` >= 2"),
])
def test_ship_and_distill_validation(fields, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.create("folder:x", "resnet20", **fields)


def test_ship_head_flags_are_refused_clearly_on_the_command_line(capsys, tmp_path):
    from helpers import run_err

    err = run_err(capsys, ["folder:x", "resnet20", "--ship-head", "5", "--out", str(tmp_path)])
    assert "--ship-head" in err and "1..3" in err
    err = run_err(capsys, ["folder:x", "resnet20", "--ship-head", "2", "--betas", "1,1,1",
                           "--out", str(tmp_path)])
    assert "--betas" in err
    err = run_err(capsys, ["folder:x", "resnet20", "--mode", "mutual", "--distill", "1",
                           "--out", str(tmp_path)])
    assert "--distill only applies to --mode sila" in err
    assert not any(tmp_path.iterdir())


def test_sila_mode_uses_and_reports_the_ship_weights(capsys):
    from sila_keras.modes import make_mode

    mode = make_mode(TrainConfig.create("folder:x", "resnet20", ship_head=3, distill=0.5, distill_t=2))
    loss = mode.loss(10, 3)
    assert loss.weights_for(30) == [1.0, 0.1, 1.0]
    assert (loss.distill, loss.distill_t) == (0.5, 2.0)
    mode.check_before_data()
    out = capsys.readouterr().out
    assert "Set weights: head_1 1, head_2 0.1, head_3 1 (--ship-head 3" in out
    assert "W=0.5, T=2" in out
    make_mode(TrainConfig.create("folder:x", "resnet20", ship_head=1)).check_before_data()
    assert "weights unchanged" in capsys.readouterr().out


# ----------------------------------------------------------------- --head-module


@pytest.mark.parametrize("argv, message", [
    (["--head-module", "sepp"], r"Unknown head module 'sepp'\. Did you mean 'sep'\? Available: "
                                r"conv, bn_conv, sep\. Received: head_module='sepp'"),
    (["--head-module", "sep", "--heads", "1"], r"`--head-module` shapes the auxiliary heads "
                                               r"2\.\.M, so it needs `--heads` >= 2\. Received: "
                                               r"heads=1, head_module='sep'"),
    (["--head-module", "bn_conv", "--mode", "dml"], r"--head-module only applies to --mode sila"),
])
def test_bad_head_module_is_refused_in_one_line_and_writes_nothing(capsys, tmp_path, argv, message):
    import re

    from helpers import run_err

    err = run_err(capsys, ["folder:x", "resnet8", *argv, "--out", str(tmp_path)])
    assert re.search(message, err), err
    assert not any(tmp_path.iterdir())


def test_head_module_that_does_not_fit_is_refused_before_the_data(capsys, tmp_path, monkeypatch):
    """The symbolic build of check_before_data checks every head's tap (here a tap made too
    small for ``sep`` by patching the rule): one line, exit 2, the dataset never opened."""
    from helpers import run_err

    from sila_keras.core import head_modules

    monkeypatch.setattr(head_modules, "min_side", lambda n: 64 if n else 1)
    err = run_err(capsys, ["folder:does-not-exist", "resnet8", "--head-module", "sep",
                           "--image-size", "16", "--out", str(tmp_path)])
    assert ("Head module 'sep' does not fit head_2: it halves the tap 'stage2' (8×8×32, "
            "reduction 2) 1 time(s)") in err
    assert "Modules that fit this tap: conv, bn_conv" in err and "tap shape (8, 8, 32)" in err
    assert not any(tmp_path.iterdir())


def test_cli_trains_a_private_capacity_module_with_levers_and_ships_it(tiny_folder, tmp_path):
    """sila-train --head-module sep with every lever on, one tiny epoch; config.json and
    summary.json record them; head 2 exports to TFLite, which MediaPipe's ImageClassifier runs."""
    import json

    from export.cli import main as export
    from sila_keras.training.train import main
    from sila_keras.utils.rundir import RunDir

    levers = ["--ramp-betas", "2", "--grad-equilibrium", "--distill", "0.1", "--distill-start", "1"]
    assert main([f"folder:{tiny_folder}", "resnet8", "--head-module", "sep", *levers,
                 "--epochs", "1", "--batch-size", "6", "--milestones", "", "--limit-train", "12",
                 "--limit-test", "6", "--out", str(tmp_path), "--name", "sep"]) == 0
    run = RunDir(tmp_path / "sep")
    sila = run.read_config()  # flat field names
    assert sila["head_module"] == "sep" and sila["ramp_betas"] == 2 and sila["grad_equilibrium"]
    summary = run.read_summary()
    assert summary["head_module"] == "sep"
    assert summary["levers"] == {"ramp_betas": 2, "distill_start": 1, "grad_equilibrium": True}
    head = summary["heads"]["head_2"]
    out = tmp_path / "export"
    assert export([str(run.path), "--head", "2", "--formats", "tflite", "--quantize", "none",
                   "--latency-runs", "1", "--parity-samples", "6", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["head"] == head["params"]
    assert manifest["params"]["head_macs"] == head["macs"] > 0
    mediapipe = manifest["artifacts"]["tflite"]["mediapipe"]
    assert mediapipe["runs"] and mediapipe["category_names_ok"], mediapipe


# ----------------------------------------------------------------- self-distillation


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_distill_loss_matches_numpy():
    rng = np.random.default_rng(0)
    b, m, n, t = 4, 3, 5, 2.0
    z = rng.normal(size=(b, m * n)).astype(np.float32) * 3
    blocks = z.reshape(b, m, n)
    p1 = _softmax(blocks[:, 0] / t)
    ref = sum(t * t * (p1 * (np.log(p1) - np.log(_softmax(blocks[:, k] / t)))).sum(-1)
              for k in range(1, m))
    np.testing.assert_allclose(np.asarray(distill_loss(z, m, n, t)), ref, rtol=1e-5, atol=1e-6)
    y = np.array([0, 1, 2, 3])
    loss = SilaLoss(n, beta=0.1, lam=0.5, distill=0.7, distill_t=t)
    plain = np.asarray(sila_loss(y, z, n, [1.0, 0.1, 0.05]))
    np.testing.assert_allclose(float(loss(y, z)), (plain + 0.7 * ref).mean(), rtol=1e-5)
    back = SilaLoss.from_config(loss.get_config())
    assert (back.distill, back.distill_t) == (0.7, 2.0)


def test_no_distillation_gradient_reaches_the_teacher():
    z = tf.Variable(np.random.default_rng(1).normal(size=(2, 30)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(distill_loss(z, 3, 10, 3.0))
    g = tape.gradient(loss, z).numpy()
    assert np.all(g[:, :10] == 0)  # head 1: the teacher, held constant
    assert np.abs(g[:, 10:20]).sum() > 0 and np.abs(g[:, 20:]).sum() > 0


# ----------------------------------------------------------------- the sub-network alone


def test_standalone_head_is_the_exported_layers_renamed_and_fresh():
    from sila_keras.core.heads import (
        build_sila_model,
        extract_head,
        standalone_head,
        trainable_params,
    )

    model = build_sila_model("resnet20", 10, 3, mean=[120, 110, 100], std=[60, 61, 62])
    sub = standalone_head(model, 3)
    ref = extract_head(model, 3)
    assert trainable_params(sub) == trainable_params(ref)
    assert [la.name for la in sub.layers][-2:] == ["aux_conv", "aux_logits"]
    assert not any(la.name.startswith("head_") for la in sub.layers)
    assert not np.allclose(sub.get_layer("stem_conv").get_weights()[0],
                           model.get_layer("stem_conv").get_weights()[0])  # re-initialised
    np.testing.assert_allclose(np.ravel(sub.get_layer("normalize").mean), [120, 110, 100])


# ----------------------------------------------------------------- the benchmark


def _bench():
    spec = importlib.util.spec_from_file_location("head_vs_alone",
                                                  ROOT / "benchmarks" / "head_vs_alone.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["head_vs_alone"] = mod
    spec.loader.exec_module(mod)
    return mod


STUDY_ARGS = ["--model", "resnet8", "--preset", "smoke", "--limit-train", "18", "--limit-test", "9", "--batch-size", "6",
              "--arms", "sila,alone", "--alone-heads", "3"]


@pytest.fixture(scope="session")
def study(tmp_path_factory, tiny_folder):
    """The benchmark on a tiny run (SiLa + head 3's sub-network alone, one seed, 1 epoch), run
    three times, once per session for all xdist workers: fresh; again (all finished); and
    after the alone run's summary.json is removed (as if killed after its last checkpoint).
    The printed output of the second and third passes is kept in ``pass_2.txt``/``pass_3.txt``."""
    import contextlib
    import io

    from helpers import train_once

    def make(out):
        argv = [f"folder:{tiny_folder}", *STUDY_ARGS, "--out", str(out)]
        assert _bench().main(argv) == 0
        for n in (2, 3):
            if n == 3:
                from sila_keras.utils.rundir import StudyDir

                StudyDir(out).run("alone_h3", 0).summary_path.unlink()
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert _bench().main(argv) == 0
            (out / f"pass_{n}.txt").write_text(buf.getvalue())

    out = train_once(tmp_path_factory, "head_vs_alone_study", make)
    return out, [f"folder:{tiny_folder}", *STUDY_ARGS, "--out", str(out)]


def test_benchmark_writes_table_and_plot(study):
    from sila_keras.reports.study import alone_accuracy, load_study
    from sila_keras.utils.rundir import StudyDir

    out, _ = study
    for name in (StudyDir.TABLE, StudyDir.TABLE_CSV, StudyDir.PLOT, StudyDir.TRADEOFF_PLOT,
                 StudyDir.RESULTS):
        assert (out / name).is_file(), name
    result = load_study(out)
    arms = {(r["head"], r["arm"]) for r in result["table"]}
    assert arms == {(1, "sila"), (2, "sila"), (3, "sila"), (3, "alone")}
    assert set(alone_accuracy(result)) == {3}
    md = (out / StudyDir.TABLE).read_text()
    assert "| head | params | SiLa | alone |" in md and "| 2 |" in md
    # the alone arm: head 3's extracted, renamed sub-network trained with --heads 1
    alone = StudyDir(out).run("alone_h3", 0)
    summary = alone.read_summary()
    assert summary["num_heads"] == 1 and summary["heads"]["head_1"]["final_acc"] is not None
    # head 3 of ResNet-8: stem (464) + one stage-1 block (4,672) + its 3×3 conv 16 → N = 3
    assert summary["heads"]["head_1"]["params"] == 464 + 4672 + (9 * 16 + 1) * 3
    assert alone.read_config()["model"] == str(StudyDir(out).model_file(3, 0).resolve())


def test_benchmark_resume_skips_finished_arms_and_continues_partial_ones(study):
    out, _ = study
    text = (out / "pass_2.txt").read_text()
    assert text.count("done: skipped") == 2 and "training:" not in text
    text = (out / "pass_3.txt").read_text()
    assert "[sila seed 0] done: skipped" in text
    assert "[alone_h3 seed 0] resuming" in text and "--resume" in text
    assert (out / "runs" / "alone_h3-s0" / "summary.json").is_file()


def test_an_alone_lr_command_adds_its_column_to_the_same_table(study, tmp_path):
    """Only the other-lr runs, in a folder that has the study: they join its table (their
    recipe is the study's; the lr is the arm's only change)."""
    import shutil

    from sila_keras.reports.study import load_study

    out, argv = study
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    argv = [a if a != str(out) else str(copy) for a in argv]
    assert _bench().main([*argv, "--arms", "alone_lr", "--alone-lr", "0.05"]) == 0
    rows = {(r["head"], r["arm"]): r for r in load_study(copy)["table"]}
    assert set(rows) == {(1, "sila"), (2, "sila"), (3, "sila"), (3, "alone"), (3, "alone_lr")}
    config = json.loads((copy / "runs" / "alone_lr_h3-s0" / "config.json").read_text())
    assert config["optim"]["lr"] == 0.05


def test_alone_reference_is_found_only_for_the_same_recipe(study, tmp_path):
    from sila_keras.reports.study import find_study

    out, _ = study
    sila_run = out / "runs" / "sila-s0"
    found, note = find_study(sila_run)
    assert found is not None and str(out) in note
    other = tmp_path / "runs" / "other"  # a run of another recipe
    other.mkdir(parents=True)
    (other / "config.json").write_text((sila_run / "config.json").read_text()
                                       .replace('"epochs": 1', '"epochs": 7'))
    found, note = find_study(other, explicit=out)
    assert found is None and "epochs" in note
    with pytest.raises(ConfigError, match="No head-vs-alone results"):
        find_study(sila_run, explicit=out / "runs")


def test_export_table_and_report_show_the_alone_column(study, tmp_path):
    from export.report import heads_columns, heads_markdown, heads_rows
    from sila_keras.reports.report import render
    from sila_keras.reports.study import alone_accuracy, load_study

    out, _ = study
    alone = alone_accuracy(load_study(out))
    manifests = [{"head": k, "params": {"head": 10 * k, "head_mib": 0.1, "cr_percent": 5.0},
                  "artifacts": {}, "ok": True} for k in (1, 2, 3)]
    rows = heads_rows(manifests, alone)
    md = heads_markdown(rows, "t", "ref")
    assert "| alone |" in md.splitlines()[4]
    assert md.splitlines()[-1].endswith(f"| {100 * alone[3][0]:.1f}% |")
    assert " — |" in md.splitlines()[-2] and "alone_accuracy" in heads_columns(rows)
    plain = heads_markdown(heads_rows(manifests), "t")
    assert "alone" not in plain
    text = render([out / "runs" / "sila-s0"], tmp_path / "report.md")
    assert "Head vs sub-network alone: resnet8, 18 training images, 1 epoch(s)" in text


def test_tuner_targets_the_shipped_head():
    from tuning.config import SearchConfig

    train = TrainConfig.create("folder:x", "resnet20", heads=3, ship_head=3, epochs=1)
    assert SearchConfig(train, out="s", objective="head_3_acc").objective == "val_head_3_acc"
    with pytest.raises(ConfigError, match="--tune-heads tries M = 2"):
        SearchConfig(train, out="s", tune_heads=True)


def test_export_refuses_a_missing_alone_folder_before_writing(finished_run, tmp_path, capsys):
    from export.cli import main

    out = tmp_path / "x"
    rc = main([str(finished_run), "--head", "all", "--alone", str(tmp_path / "none"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "No head-vs-alone results" in err and not out.exists()


def test_alone_lr_arm_trains_the_same_subnetwork_at_another_lr(tmp_path):
    bench = _bench()
    args = bench.build_parser().parse_args(["folder:x", "--out", str(tmp_path), "--seeds", "0,1",
                                            "--arms", "alone", "--alone-lr", "0.02"])
    jobs = bench.plan(args, bench.settings(args))
    assert [j.arm for j in jobs] == ["alone_h2", "alone_lr_h2", "alone_h3", "alone_lr_h3"] * 2
    same, other = jobs[0], jobs[1]
    assert same.argv[1] == other.argv[1]  # one sub-network file per head and seed
    lr = [a for i, a in enumerate(other.argv[1:]) if other.argv[i] == "--lr"]
    assert lr == ["0.1", "0.02"]  # the later flag wins in sila-train


def test_alone_lr_arm_alone_trains_only_the_other_lr(tmp_path):
    bench = _bench()
    parse = lambda *a: bench.build_parser().parse_args(["folder:x", "--out", str(tmp_path), *a])  # noqa: E731
    args = parse("--arms", "alone_lr", "--alone-lr", "0.02", "--alone-heads", "2", "--seeds", "1",
                 "--head-module", "sep")
    jobs = bench.plan(args, bench.settings(args))
    assert [j.name for j in jobs] == ["alone_lr_h2-sep"]
    assert jobs[0].argv[jobs[0].argv.index("--seed") - 2:][:2] == ["--lr", "0.02"]
    args = parse("--arms", "alone,alone_lr", "--alone-lr", "0.02", "--alone-heads", "2")
    assert [j.arm for j in bench.plan(args, bench.settings(args))] == ["alone_h2", "alone_lr_h2"] * 3
    with pytest.raises(SystemExit, match="the alone_lr arm trains at --alone-lr; pass --alone-lr"):
        bench.settings(parse("--arms", "alone_lr"))


def test_cascade_benchmark_finds_the_runs_of_its_variant():
    _bench()  # cascade_seeds imports head_vs_alone by name
    spec = importlib.util.spec_from_file_location("cascade_seeds",
                                                  ROOT / "benchmarks" / "cascade_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    variant = lambda arm, *a: mod.run_variant(["--out", "o", *a], "folder:x", arm)  # noqa: E731
    assert variant("sila") == ""
    assert variant("sila", "--head-module", "sep", "--grad-equilibrium", "--distill-start", "3") == "sep.ge"
    assert variant("distill", "--head-module", "sep", "--distill-start", "3") == "sep.ds3"
    with pytest.raises(SystemExit, match="one --head-module at a time"):
        variant("sila", "--head-module", "conv,sep")
    from sila_keras.utils.rundir import StudyDir

    assert [p.name for p in StudyDir("o").cascade_files("sila", "")] == [
        "cascade_seeds.json", "cascade_seeds.md"]
    assert [p.name for p in StudyDir("o").cascade_files("ship", "sep")] == [
        "cascade_seeds-ship-sep.json", "cascade_seeds-ship-sep.md"]


def test_benchmark_refuses_a_finished_arm_made_with_other_settings(study):
    out, argv = study
    with pytest.raises(SystemExit, match="trained with other settings \\(epochs: 1 there, 2 now\\)"):
        _bench().main([*argv, "--arms", "sila", "--epochs", "2"])


# ----------------------------------------------------------------- head modules and levers in the benchmark


def test_benchmark_plans_every_module_and_passes_the_levers(tmp_path):
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.flags import build_parser, config_from_args

    bench = _bench()
    args = bench.build_parser().parse_args([
        "folder:x", "--out", str(tmp_path), "--seeds", "0", "--arms", "sila,alone,distill",
        "--alone-heads", "1,3", "--head-module", "conv,sep", "--grad-equilibrium",
        "--distill-start", "2"])
    jobs = {j.name: j for j in bench.plan(args, bench.settings(args))}
    assert list(jobs) == ["sila-ge", "alone_h1", "alone_h3", "distill-ge.ds2",
                          "sila-sep.ge", "alone_h3-sep", "distill-sep.ge.ds2"]
    flags = lambda j: " ".join(jobs[j].argv)  # noqa: E731
    assert "--head-module sep --grad-equilibrium" in flags("sila-sep.ge")
    assert "--distill-start" not in flags("sila-sep.ge")  # the schedule of --distill only
    assert "--grad-equilibrium --distill-start 2" in flags("distill-sep.ge.ds2")
    assert "--head-module" not in flags("sila-ge") and "--grad" not in flags("alone_h3-sep")
    assert jobs["alone_h3-sep"].argv[1].endswith("models/head_3-sep-s0.keras")
    assert jobs["alone_h1"].argv[1].endswith("models/head_1-s0.keras")  # the base: no module
    assert str(jobs["sila-sep.ge"].run.path).endswith("runs/sila-sep.ge-s0")
    for name in ("sila-sep.ge", "distill-sep.ge.ds2"):  # what sila-train will be asked
        config = config_from_args(build_parser().parse_args(jobs[name].argv))
        assert isinstance(config, TrainConfig) and config.sila.head_module == "sep"
        assert config.sila.grad_equilibrium
    with pytest.raises(SystemExit, match="Unknown head module 'sepp'"):
        bench.settings(bench.build_parser().parse_args(["x", "--out", "o", "--head-module", "sepp"]))
    with pytest.raises(SystemExit, match="`--ramp-betas` must be an integer >= 0"):
        bench.settings(bench.build_parser().parse_args(["x", "--out", "o", "--ramp-betas", "-1"]))


def test_alone_subnetwork_has_the_module_of_the_sila_heads(tiny_folder, tmp_path):
    import keras

    from sila_keras.core.heads import build_sila_model, extract_head, trainable_params

    bench = _bench()
    args = bench.build_parser().parse_args([f"folder:{tiny_folder}", *STUDY_ARGS,
                                            "--out", str(tmp_path)])
    path = bench.write_subnetwork(args, bench.settings(args), 3, 0, "sep")
    assert path.name == "head_3-sep-s0.keras"
    sub = keras.models.load_model(path)
    sila = build_sila_model("resnet8", 3, 3, (32, 32, 3), head_module="sep")
    assert trainable_params(sub) == trainable_params(extract_head(sila, 3))  # the same size
    assert "aux_dw1" in [la.name for la in sub.layers]


def test_variants_share_one_table_and_export_picks_the_runs_module(tmp_path):
    from sila_keras.reports.study import (
        alone_accuracy,
        load_study,
        markdown,
        merge_study,
        table_rows,
        write_study,
    )

    base = {"backbone": "resnet8", "recipe": {"epochs": 1}, "sila": {"heads": 3},
            "ship": {"distill": 0.1}, "seeds": [0]}
    old = {**base, "table": table_rows({"sila": {1: [0.6], 3: [0.3]}, "alone": {3: [0.4]}},
                                       {1: 100, 3: 30})}
    new = {**base, "table": table_rows(
        {("sila", "sep", ""): {1: [0.61], 3: [0.45]}, ("alone", "sep", ""): {3: [0.5]},
         ("sila", "conv", "grad-equilibrium"): {1: [0.62], 3: [0.35]}},
        {1: 100, (3, "sep"): 36, (3, "conv"): 30}, {(3, "sep"): 7, (3, "conv"): 9})}
    study = merge_study(old, new)
    md = markdown(study)
    assert ("| head | params (conv / sep) | SiLa | SiLa [grad-equilibrium] | SiLa [sep] | "
            "alone | alone [sep] |") in md
    assert "| 3 | 30 / 36 | 30.00 | 35.00 | 45.00 | 40.00 | 50.00 |" in md
    assert alone_accuracy(study)[3][0] == 0.4 and alone_accuracy(study, module="sep")[3][0] == 0.5
    write_study(tmp_path, study)
    header = (tmp_path / "head_vs_alone.csv").read_text().splitlines()[0]
    assert header == "head,params,macs,arm,module,levers,n,mean,std,values"
    assert len(load_study(tmp_path)["table"]) == 3 + 5  # the old rows and the new
    with pytest.raises(ConfigError, match=r"for another recipe; .*Use another --out"):
        merge_study(old, {**new, "recipe": {"epochs": 2}})
