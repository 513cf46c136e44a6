"""The early-exit cascade of a run's heads (sila_keras.reports.cascade, export --cascade).

Calibration on synthetic probabilities with a known answer; routing against a NumPy loop;
calibration images never from the test split; the command on the shared ``finished_run``
(resnet8, 3 heads, real CIFAR images); bad input: one line, exit 2, nothing written.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import cifar_subset_folder, train_once

from sila_keras.reports import cascade as cas
from sila_keras.reports import cascade_eval as ceval
from sila_keras.reports import cascade_routing as routing
from sila_keras.utils.rundir import RunDir

# --------------------------------------------------------------------------- synthetic


def _known_case():
    """Two steps; the cheap one is right exactly when its max probability is 0.9."""
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    right = np.eye(2)[y] * 0.8 + 0.1  # 0.9 on the true class
    wrong = np.eye(2)[1 - y] * 0.2 + 0.4  # 0.6 on the wrong class
    sure = np.arange(8) < 4
    cheap = np.where(sure[:, None], right, wrong)
    deep = np.eye(2)[y]
    return [cheap, deep], y


def test_calibration_finds_the_known_threshold():
    probs, y = _known_case()
    cal = routing.calibrate(probs, y, [1.0, 3.0], target_drop=0.0)
    # Only the four confident images may leave early: threshold in (0.6, 0.9], cost 1·½ + 3·½.
    assert 0.6 < cal.thresholds[0] <= 0.9 and cal.thresholds[-1] == -np.inf
    assert cal.accuracy == 1.0 and cal.mean_macs == pytest.approx(2.0)
    assert cal.head1_accuracy == 1.0
    # Half the head-1 accuracy may be lost: everything leaves at the cheap head (cost 1).
    cheap = routing.calibrate(probs, y, [1.0, 3.0], target_drop=50.0)
    assert cheap.mean_macs == pytest.approx(1.0) and cheap.accuracy == 0.5
    by_budget = routing.calibrate(probs, y, [1.0, 3.0], budget_macs=2.0)
    assert by_budget.accuracy == 1.0 and by_budget.mean_macs <= 2.0


@pytest.mark.parametrize("kind", cas.CONFIDENCES)
def test_routing_equals_a_numpy_loop(kind):
    rng = np.random.default_rng(0)
    probs = [routing.softmax(rng.normal(size=(64, 5)) * s) for s in (1.0, 2.0, 3.0)]
    conf = routing.confidences(probs, kind)
    thresholds = np.quantile(conf, 0.6, axis=0)
    pred, steps = routing.route(probs, thresholds, kind)
    for i in range(64):
        for k, p in enumerate(probs):
            p = p[i]
            top = np.sort(p)
            c = {"max": p.max(), "margin": top[-1] - top[-2],
                 "entropy": float(np.sum(p * np.log(p)))}[kind]
            if k == len(probs) - 1 or c >= thresholds[k]:
                assert (steps[i], pred[i]) == (k, p.argmax())
                break


def test_unreachable_targets_say_what_is_reachable():
    probs, y = _known_case()
    with pytest.raises(cas.ConfigError, match=r"reachable mean MACs per image: 1 … 3"):
        routing.calibrate(probs, y, [1.0, 3.0], budget_macs=0.5)
    with pytest.raises(cas.ConfigError, match=r"reachable: --target-drop >= 0.00"):
        routing.calibrate(probs, y, [1.0, 3.0], target_drop=-5.0)
    with pytest.raises(cas.ConfigError, match="not both"):
        routing.calibrate(probs, y, [1.0, 3.0], target_drop=1.0, budget_macs=2.0)


# --------------------------------------------------------------------------- calibration images


@pytest.fixture(scope="session")
def unseen_folder(cifar_folder, tmp_path_factory):
    """CIFAR training JPEGs that ``cifar_folder`` (and so ``finished_run``) does not hold."""
    def make(out):
        cifar_subset_folder(out, 12, 1)
        for path in (out / "train").rglob("*.jpg"):
            if (cifar_folder / path.relative_to(out)).exists():
                path.unlink()
    return train_once(tmp_path_factory, "cascade_unseen", make)


def _test_images(run):
    from sila_keras.data import load_dataset, run_dataset_kwargs

    config = RunDir(run).read_config()
    data = load_dataset(config["dataset"], cache="none", **run_dataset_kwargs(config))
    return config, data


def _overlap(a, b) -> int:
    keys = {x.tobytes() for x in b}
    return sum(x.tobytes() in keys for x in a)


def test_calibration_never_sees_the_test_split(finished_run, unseen_folder):
    config, data = _test_images(finished_run)
    test_x, train_x = data.test.to_array(), data.train.to_array()
    x, y, source = ceval.calibration_images(config, (32, 32), f"folder:{unseen_folder}")
    assert len(y) == 40 and _overlap(x, test_x) == 0 and _overlap(x, train_x) == 0
    # A run that trained on a subset calibrates on the training images it left out.
    x, y, source = ceval.calibration_images({**config, "limit_train": 50}, (32, 32))
    assert len(y) == 30 and "outside --limit-train" in source
    assert _overlap(x, test_x) == 0
    trained = data.train.take(ceval.unused_training_positions({**config, "limit_train": None},
                                                            data.train_y)[0])
    assert len(trained) == 0  # trained on all: nothing unused
    with pytest.raises(cas.DataError, match=r"trained on all 80 training images .* Pass "
                                            r"--calibration DATASET"):
        ceval.calibration_images(config, (32, 32))


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def cascaded_run(finished_run, unseen_folder, tmp_path_factory):
    """A copy of ``finished_run`` after ``sila-cascade --target-drop 100``."""
    run = tmp_path_factory.mktemp("cascade") / "run"
    shutil.copytree(finished_run, run)
    assert cas.main([str(run), "--calibration", f"folder:{unseen_folder}",
                     "--target-drop", "100"]) == 0
    return run


def test_cascade_command_writes_its_files(cascaded_run, tmp_path):
    run = cascaded_run
    result = json.loads((run / RunDir.CASCADE_JSON).read_text())
    heads = ["head_3", "head_2", "head_1"]
    assert result["heads"] == heads  # cheapest (shallowest tap) first
    assert result["costs"] == sorted(result["costs"])
    assert result["calibration"]["examples"] == 40 and result["test_examples"] == 40
    # Any drop allowed: on the calibration images every image leaves at the cheapest head.
    assert result["calibration"]["mean_macs"] == pytest.approx(result["costs"][0])
    assert result["cascade"]["reach"][0] == 1.0 and len(result["sweep"]) == routing.SWEEP_POINTS
    assert [s["name"] for s in result["single"]] == heads
    assert (run / RunDir.CASCADE_CSV).is_file() and (run / RunDir.CASCADE_PLOT).is_file()
    # The report shows it.
    from sila_keras.reports.report import render

    text = render([run], tmp_path / "report.md")
    assert "Early-exit cascade" in text and RunDir.CASCADE_PLOT in text


def _bad(capsys, argv, match):
    rc = cas.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert match in err, err


def test_bad_input_is_one_line_and_writes_nothing(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _bad(capsys, [str(run)], "Pass --calibration DATASET")
    _bad(capsys, [str(run), "--calibration", "folder:x", "--calibration-split", "train",
                  "--budget-macs", "-1"], "--budget-macs must be > 0")
    assert not (run / RunDir.CASCADE_JSON).exists()
    one_head = tmp_path / "one"
    shutil.copytree(finished_run, one_head)
    import keras

    from sila_keras.core.heads import extract_head

    model = keras.models.load_model(one_head / RunDir.MODEL, compile=False)
    from sila_keras.core.heads import sila_output

    single = keras.Model(model.input, sila_output([extract_head(model, 1).output]))
    single.save(one_head / RunDir.MODEL)
    _bad(capsys, [str(one_head), "--calibration", "folder:x"], "at least 2 heads")
    # Both targets: refused by the argument check, before TensorFlow (a fresh process).
    proc = subprocess.run([sys.executable, "-m", "sila_keras.cascade", str(run),
                           "--target-drop", "1", "--budget-macs", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "not both" in proc.stderr and not (run / RunDir.CASCADE_JSON).exists()
    # Export before calibration, or with a quantization segments do not take: one line,
    # nothing written.
    from export.cli import main as export_main

    for argv, says in (([], "run it first"), (["--quantize", "int8"], "run it first"),
                       (["--quantize", "float16"], "Supported: none, int8"),
                       (["--quantize", "none,int8"], "one kind per export")):
        assert export_main([str(run), "--cascade", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert not (run / RunDir.EXPORT).exists()


# --------------------------------------------------------------------------- export


def test_segments_chain_to_the_heads_of_every_kind_of_model():
    """The cut works on a residual trunk and on MSDNet's multi-scale exits (several features)."""
    import keras

    from export.cascade import build_segments
    from sila_keras import build_sila_model
    from sila_keras.modes.dynamic import build_dynamic_model

    for model in (build_sila_model("resnet8", 10, num_heads=3),
                  build_dynamic_model("msdnet", 10, blocks=3, base=1, step=1)):
        order = ceval.cascade_order(model)
        x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
        want = ceval.head_probs(model, x, order)
        feeds = [x]
        for segment, probs in zip(build_segments(model, order), want):
            out = segment(feeds)
            out = out if isinstance(out, list) else [out]
            np.testing.assert_allclose(keras.ops.convert_to_numpy(out[0]), probs, atol=1e-5)
            feeds = [keras.ops.convert_to_numpy(o) for o in out[1:]]
        assert feeds == []


def test_exported_segments_in_litert_equal_the_keras_cascade(cascaded_run, capsys):
    from export import metadata as md
    from export.cascade import MANIFEST
    from export.cascade_runner import CascadeRunner, check_against_keras
    from export.cli import main

    assert main([str(cascaded_run), "--cascade", "--latency-runs", "3"]) == 0
    out = cascaded_run / RunDir.EXPORT / "cascade"
    manifest = json.loads((out / MANIFEST).read_text())
    assert [s["file"] for s in manifest["segments"]] == [f"segment_{k}.tflite" for k in (1, 2, 3)]
    assert manifest["parity"]["images"] == 40 and len(manifest["segment_latency_ms"]) == 3
    assert md.read(out / "segment_1.tflite")["name"]  # phone metadata on the first segment
    result = json.loads((cascaded_run / RunDir.CASCADE_JSON).read_text())
    assert result["cascade"]["mean_latency_ms"] > 0
    # each head alone timed from its own file (no other head's branch), beside the segments
    assert sorted(manifest["head_latency_ms"]) == ["1", "2", "3"]
    assert all(s["latency_ms"] == manifest["head_latency_ms"][str(s["head"])] > 0
               for s in result["single"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temporary files gone
    # Thresholds that send images through every segment: LiteRT and Keras still agree.
    from sila_keras.reports.analyze import load_run

    model, config = load_run(cascaded_run)
    _, data = _test_images(cascaded_run)
    images = data.test.to_array()
    runner = CascadeRunner(out)
    conf = routing.confidences(ceval.head_probs(model, images, manifest["order"]))
    for q in (0.3, 0.7):
        runner.thresholds = np.append(np.quantile(conf[:, :-1], q, axis=0), -np.inf)
        check = check_against_keras(runner, model, images)  # raises unless equal (near ties)
        assert check["near_ties"] <= len(images) // 4, check
        assert len(set(runner.predict(images)[1])) > 1  # images leave at several segments


def test_latency_and_savings_against_head_1_alone():
    result = {"order": [3, 2, 1], "heads": ["head_3", "head_2", "head_1"], "confidence": "max",
              "cascade": {"accuracy": 0.6, "mean_macs": 40.0, "reach": [1.0, 0.5, 0.25]},
              "sweep": [{"accuracy": 0.5, "mean_macs": 10.0, "reach": [1.0, 0.0, 0.0]}],
              "single": [{"head": 3, "accuracy": 0.5, "macs": 10},
                         {"head": 2, "accuracy": 0.55, "macs": 30},
                         {"head": 1, "accuracy": 0.62, "macs": 80}]}
    out = ceval.with_latency(result, [1.0, 2.0, 4.0], head_ms={1: 5.0, 3: 1.0})
    assert out["cascade"]["mean_latency_ms"] == pytest.approx(1 + 0.5 * 2 + 0.25 * 4)
    assert [s["latency_ms_via_segments"] for s in out["single"]] == [1.0, 3.0, 7.0]
    assert ceval.single_latency(out["single"][2]) == 5.0  # its own file, not the 7 ms chain
    assert ceval.single_latency(out["single"][1]) == 3.0  # not timed alone: via the segments
    saved = ceval.savings(out)
    assert saved["drop_points"] == pytest.approx(2.0)
    assert saved["macs_saved_pct"] == pytest.approx(50.0)
    assert saved["latency_saved_pct"] == pytest.approx(100 * (1 - 3.0 / 5.0))
    assert saved["latency_saved_vs_chain_pct"] == pytest.approx(100 * (1 - 3.0 / 7.0))
    assert ceval.savings(result)["latency_saved_pct"] is None  # never timed


# --------------------------------------------------------------------------- int8 segments


def _int8_export(run, *extra):
    from export.cli import main

    return main([str(run), "--cascade", "--quantize", "int8", "--parity-samples", "40",
                 "--latency-runs", "3", "--quiet", *extra])


def test_int8_segments_pass_the_gate_and_run_in_litert(cascaded_run):
    from ai_edge_litert.interpreter import Interpreter

    from export import metadata as md
    from export.cascade import MANIFEST, OUT_FOLDER_INT8
    from export.cascade_runner import CascadeRunner
    from sila_keras.reports.analyze import load_run

    before = (cascaded_run / RunDir.CASCADE_JSON).read_bytes()
    assert _int8_export(cascaded_run) == 0  # the default tolerances: the single head's gate
    out = cascaded_run / RunDir.EXPORT / OUT_FOLDER_INT8
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["quantization"] == "int8" and len(manifest["segments"]) == 3
    for k, seg in enumerate(manifest["segments"], start=1):
        it = Interpreter(model_path=str(out / seg["file"]))
        sig = it.get_signature_runner("serving_default")
        inputs, outputs = sig.get_input_details(), sig.get_output_details()
        # integer inside (int16 activations when the search fell back to int16x8) ...
        kinds = {np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
        assert kinds & {"int8", "int16"} and seg["scheme"] in ("int8", "int8-selective", "int16x8")
        # ... float32 at the boundaries but segment 1's image (uint8 raw pixels, as --head K)
        image_type = "uint8" if k == 1 and seg["scheme"] != "int16x8" else "float32"
        assert {np.dtype(d["dtype"]).name for d in outputs.values()} == {"float32"}
        assert {np.dtype(d["dtype"]).name for d in inputs.values()} == {image_type}
        assert {n: d["dtype"] for n, d in seg["io"]["inputs"].items()} == dict.fromkeys(
            inputs, image_type)
        assert seg["gate"]["passed"]
    assert manifest["segments"][0]["io"]["inputs"]["image"] in (
        {"dtype": "uint8", "scale": 1.0, "zero_point": 0}, {"dtype": "float32"})
    assert md.read(out / "segment_1.tflite")["name"]  # phone metadata on the first segment
    gate = manifest["gate"]
    assert gate["passed"] and gate["images"] == 40 and gate["agreement"] >= 0.9
    assert gate["accuracy_drop"] <= gate["tolerances"]["int8-drop"]
    # The runner chains the int8 files as an app does and agrees with the Keras cascade.
    model, _ = load_run(cascaded_run)
    _, data = _test_images(cascaded_run)
    images = data.test.to_array()
    probs = ceval.head_probs(model, images, manifest["order"])
    runner = CascadeRunner(out)
    want, _ = routing.route(probs, runner.thresholds, runner.confidence)
    assert np.mean(runner.predict(images)[0] == want) >= 0.9
    assert len(manifest["segment_latency_ms"]) == 3 and sorted(manifest["head_latency_ms"]) == [
        "1", "2", "3"]
    assert not [p for p in out.parent.rglob(".*")]  # no staging folder left
    assert (cascaded_run / RunDir.CASCADE_JSON).read_bytes() == before  # float figures kept


def test_int8_chain_failing_the_gate_is_refused_and_writes_nothing(cascaded_run, tmp_path,
                                                                  capsys, monkeypatch):
    from export import cascade_int8

    judged = cascade_int8.chain_gate

    def strict(runner, model, data):  # int8-drop=-1: a drop nothing meets (the parser says >= 0)
        g = judged(runner, model, data)
        return {**g, "passed": False,
                "reasons": [f"drop {g['accuracy_drop']:.1f} points > -1"]}

    monkeypatch.setattr(cascade_int8, "chain_gate", strict)
    out = tmp_path / "new" / "cascade"
    # lenient per-segment tolerances: plain int8 ships at once, the chain's gate refuses
    # exit 3 (an artifact failed), as a single head's int8 file that fails its gate
    assert _int8_export(cascaded_run, "--out", str(out), "--tolerance", "int8=0,int8-drop=100") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "int8 gate" in err and "drop --quantize int8" in err, err
    assert not (tmp_path / "new").exists()  # nothing half-written, no folder left
