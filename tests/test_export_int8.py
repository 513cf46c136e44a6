"""Full-integer export: the accuracy gate, XNNPACK's split graph, selective int8, int16x8 last.

Reuses the tiny trained resnet8 run of ``test_export.py`` (deterministic: the same model and
the same quantization figures every session) and its 100 labelled CIFAR test images. On those,
plain int8 loses 0.5 points of accuracy on both heads; with ``--tolerance int8-drop=0`` head 1
needs one layer in float (selective int8) and head 2 cannot be brought through by any scheme.
"""

import dataclasses
import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import test_export
from test_export import LABELS, mediapipe_classify, run_cli

import export
from export import artifacts as art
from export import gate, quantize
from sila_keras import build_sila_model

# test_export.py's session fixtures: one trained run and one image set for both files
trained_run, sila_model = test_export.trained_run, test_export.sila_model
phone_folder, phone_images = test_export.phone_folder, test_export.phone_images
TOL = {"int8": 0.97, "int8-drop": 1.0}


def test_gate_judges_accuracy_drop_and_confident_agreement():
    labels = np.array([0, 1, 2, 0])
    ref = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0], [1.0, 0.98, 0]])  # last: a near tie
    same = gate.judge(ref, ref, labels, TOL)
    assert same["passed"] and same["accuracy_drop"] == 0 and same["confident_images"] == 3
    flipped = ref.copy()
    flipped[3] = [0.98, 1.0, 0]  # the near tie flips: 1 of 4 images lost = 25 points
    g = gate.judge(ref, flipped, labels, TOL)
    assert g["float_accuracy"] == 1.0 and g["int8_accuracy"] == 0.75 and g["accuracy_drop"] == 25.0
    assert g["confident_agreement"] == 1.0  # not a confident image: agreement unaffected
    assert not g["passed"] and "drop 25.0 points > 1" in g["reasons"][0]
    assert gate.judge(ref, flipped, labels, {**TOL, "int8-drop": 25.0})["passed"]
    tied = ref.copy()
    tied[3] = [0.5, 0.5, 0]  # a tie with the label among 2 classes: half a hit
    assert gate.judge(ref, tied, labels, TOL)["accuracy_drop"] == 12.5
    wrong = ref.copy()
    wrong[0] = [0, 4.0, 0]  # a confident image flips: agreement 2/3 < 97 %
    g = gate.judge(ref, wrong, None, TOL)  # without labels only agreement is judged
    assert g["accuracy_drop"] is None and not g["passed"] and "3 images where" in g["reasons"][0]


# --------------------------------------------------------------------------- a hard-swish backbone


@pytest.mark.slow
def test_hard_swish_model_exports_int8_for_phones(phone_folder, phone_images, tmp_path, capsys):
    keras.utils.set_random_seed(0)  # an untrained net near chance: its gate must not be luck
    model = build_sila_model("keras:MobileNetV3Small", 10, 3, (32, 32, 3), weights="none")
    model.save(tmp_path / "mnv3.keras")
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tmp_path / "mnv3.keras", "--head", "2", "--formats", "tflite",
                      "--quantize", "none,int8", "--calibration", f"folder:{phone_folder}",
                      "--latency-runs", "5", "--out", out, "--quiet")
    assert rc == 0, err
    m = json.loads((out / "manifest.json").read_text())
    int8 = m["artifacts"]["tflite_int8"]
    assert m["eval"]["images"] == 100 and "held-out" in m["eval"]["dataset"]  # its test split
    assert int8["parity"]["gate"]["passed"] and int8["input"]["dtype"] == "uint8"
    # XNNPACK leaves int8 HARD_SWISH out and splits the graph; kept in float it runs as one piece
    assert int8["search"]["xnnpack"]["int8_pieces"] > 1
    assert int8["search"]["xnnpack"]["split_by"] == ["HARD_SWISH"]
    assert int8["scheme"] == "int8-selective" and int8["latency"]["delegate_pieces"] == 1
    assert {f["op"] for f in int8["float_layers"]} == {"HARD_SWISH"} and int8["float_mac_share"] < 0.05
    assert int8["latency"]["vs_float32"] > 0 and m["latency_reference"]["file"] == "model.tflite"
    assert "shipped int8, HARD_SWISH in float (XNNPACK)" in int8["fallback"]
    x, _ = phone_images
    for cats in mediapipe_classify(out / "model_int8.tflite", x):  # as a phone app loads it
        assert [c[1] for c in cats] == [f"class_{i}" for i, _, _ in cats]
        assert sum(s for _, _, s in cats) == pytest.approx(1.0, abs=0.05)
    assert int8["mediapipe"]["runs"] and int8["mediapipe"]["category_names_ok"]


# --------------------------------------------------------------------------- selective, none, int16x8


def _export_int8(trained_run, phone_folder, out, head, capsys, *extra):
    return run_cli(capsys, trained_run, "--head", str(head), "--formats", "tflite",
                   "--quantize", "none,int8", "--eval", f"folder:{phone_folder}", "--eval-samples",
                   "100", "--latency-runs", "2", "--out", out, "--quiet", *extra)


@pytest.mark.slow
def test_selective_int8_ships_when_plain_int8_fails(trained_run, phone_folder, tmp_path, capsys):
    from ai_edge_litert.interpreter import Interpreter

    rc, err = _export_int8(trained_run, phone_folder, tmp_path / "o", 1, capsys,
                           "--tolerance", "int8-drop=0")
    assert rc == 0, err
    int8 = json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"]["tflite_int8"]
    plain, *rest = int8["search"]["attempts"]
    assert plain["name"] == "int8" and not plain["passed"] and plain["gate"]["accuracy_drop"] > 0
    assert rest[-1]["name"].startswith("selective") and rest[-1]["passed"]
    assert int8["search"]["shipped"] == rest[-1]["name"] and int8["scheme"] == "int8-selective"
    assert int8["parity"]["gate"]["accuracy_drop"] <= 0
    layers = [f["layer"] for f in int8["float_layers"]]
    assert layers and set(layers) <= set(rest[-1]["float_layers"])
    assert 0 < int8["float_mac_share"] <= quantize.MAX_FLOAT_MAC_SHARE
    assert int8["search"]["layer_errors"][0]["layer"] == layers[0]  # the worst layer first
    assert "shipped selective" in int8["fallback"]
    interp = Interpreter(model_path=str(tmp_path / "o" / "model_int8.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.uint8  # still raw uint8 pixels
    assert any(t["dtype"] == np.float32 for t in interp.get_tensor_details())  # float layers
    assert int8["mediapipe"]["runs"] and "int8 accelerators (NNAPI-style NPUs/DSPs)" not in int8["targets"]


@pytest.mark.slow
def test_no_scheme_through_the_gate_exits_3(trained_run, phone_folder, tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = _export_int8(trained_run, phone_folder, out, 2, capsys, "--tolerance", "int8-drop=0")
    assert rc == 3 and "no int8 scheme passed the gate" in err and "int16x8" in err
    assert not (out / "model_int8.tflite").exists() and (out / "model.tflite").is_file()
    failed = json.loads((out / "manifest.json").read_text())["failed"]["tflite_int8"]
    names = [a["name"] for a in failed["search"]["attempts"]]
    assert names[0] == "int8" and names[-1] == "int16x8" and any(n.startswith("selective") for n in names)
    assert not any(a["passed"] for a in failed["search"]["attempts"])


def _grey_calibration(monkeypatch, int16x8: bool):
    """Calibrate on flat grey images (activation ranges all wrong) and allow no float layer."""
    real_calibrate, real_convert = quantize.calibrate, art._convert
    monkeypatch.setattr(quantize, "MAX_FLOAT_MAC_SHARE", 0.0)
    monkeypatch.setattr(quantize, "calibrate", lambda sm, cal: real_calibrate(sm, np.full_like(cal, 128.0)))
    if int16x8:
        def convert(saved_model, quantization, calibration, int8_io, scheme, flex):
            return real_convert(saved_model, quantization, np.full_like(calibration, 128.0), int8_io,
                                scheme, flex)

        monkeypatch.setattr(art, "_convert", convert)


@pytest.mark.slow
def test_int8_io_and_the_int16x8_last_resort(sila_model, phone_images, tmp_path, monkeypatch):
    from ai_edge_litert.interpreter import Interpreter

    x, y = phone_images[0][:60].astype(np.float32), phone_images[1][:60]
    kw = dict(calibration=x[:20], eval_data=(x, y), verbose=0)
    gated = export.ExportOptions(formats="tflite", quantize="int8", latency_runs=1)
    off = dataclasses.replace(gated, tolerances={"int8": 0.0, "int8-drop": 100.0})  # gate off:
    entry = export.export_head(sila_model, 2, tmp_path / "u8", options=off,  # plain uint8 I/O
                               **kw)["artifacts"]["tflite_int8"]
    assert entry["scheme"] == "int8" and "fallback" not in entry and entry["float_layers"] == []
    assert entry["input"] == {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
    assert entry["output"] == {"name": "probabilities", "dtype": "uint8", "scale": 1 / 256, "zero_point": 0}
    assert entry["mediapipe"]["runs"] and entry["mediapipe"]["category_names_ok"]
    assert "int8 accelerators (NNAPI-style NPUs/DSPs)" in entry["targets"]
    entry = export.export_head(sila_model, 2, tmp_path / "i8", **kw,  # --int8-io int8
                               options=dataclasses.replace(off, int8_io="int8"))["artifacts"]["tflite_int8"]
    assert entry["input"] == {"dtype": "int8", "scale": 1.0, "zero_point": -128}
    assert entry["mediapipe"]["runs"] is None and "int8 input" in entry["mediapipe"]["reason"]
    _grey_calibration(monkeypatch, int16x8=False)  # int8 fails, selective may not: int16x8 ships
    m = export.export_head(sila_model, 2, tmp_path / "fb", options=gated, **kw)
    assert m["ok"], m["failed"]
    entry = m["artifacts"]["tflite_int8"]
    assert entry["scheme"] == "int16x8" and "shipped int16x8" in entry["fallback"]
    assert [a["name"] for a in entry["search"]["attempts"]][0] == "int8"
    assert not entry["search"]["attempts"][0]["passed"] and entry["parity"]["gate"]["passed"]
    interp = Interpreter(model_path=str(tmp_path / "fb" / "model_int8.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert any(t["dtype"] == np.int16 for t in interp.get_tensor_details())  # 16-bit activations
    assert entry["mediapipe"]["runs"] and "int8 accelerators (NNAPI-style NPUs/DSPs)" not in entry["targets"]
    assert entry["latency"]["delegate_pieces"] == 0  # reference kernels only
    assert any("slower than float32" in w for w in m["warnings"])  # a phone CPU should not get it
    _grey_calibration(monkeypatch, int16x8=True)  # every scheme loses accuracy: nothing shipped
    m = export.export_head(sila_model, 2, tmp_path / "none", options=gated, **kw)
    assert not m["ok"] and not (tmp_path / "none" / "model_int8.tflite").exists()
    assert "no int8 scheme passed the gate" in m["failed"]["tflite_int8"]["reason"]


# --------------------------------------------------------------------------- bad input


def test_int8_needs_labelled_held_out_images(sila_model, trained_run, tmp_path, capsys, monkeypatch):
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="labelled held-out images.*eval_data=\\(images, labels\\)"):
        export.export_head(sila_model, 2, tmp_path / "api", calibration=x, sample_images=x,
                           options=export.ExportOptions(formats="tflite", quantize="int8"))
    assert not (tmp_path / "api").exists()
    from export import source

    empty = SimpleNamespace(train_x=x, train_y=np.zeros(8, int), test_x=x[:0], test_y=np.zeros(0, int),
                            num_classes=10, class_names=list(LABELS), source="no test split")
    monkeypatch.setattr(source, "load_images", lambda *a, **k: empty)
    rc, err = run_cli(capsys, trained_run, "--head", "2", "--formats", "tflite", "--quantize", "int8",
                      "--out", tmp_path / "o")
    assert rc == 2 and "has no test split" in err and "Pass --eval DATASET" in err
    assert err.count("error:") == 1 and not (tmp_path / "o").exists()


def _grey_folder(root, classes=10):
    from PIL import Image

    for split in ("train", "test"):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            Image.fromarray(np.full((32, 32), 20 * c, np.uint8), mode="L").save(root / split / f"c{c}" / "0.png")
    return root


def test_calibration_images_of_the_wrong_shape(sila_model, trained_run, tmp_path, capsys):
    rc, err = run_cli(capsys, trained_run, "--head", "2", "--formats", "tflite", "--quantize", "int8",
                      "--calibration", f"folder:{_grey_folder(tmp_path / 'grey')}", "--out", tmp_path / "o")
    assert rc == 2 and "Calibration images must be (n, 32, 32, 3)" in err and "1]" in err
    assert err.count("error:") == 1 and not (tmp_path / "o").exists()
    x = np.zeros((4, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match=r"Calibration images must be \(n, 32, 32, 3\).*16, 16, 3\]"):
        export.export_head(sila_model, 2, tmp_path / "api", calibration=x, eval_data=(x, np.zeros(4, int)),
                           options=export.ExportOptions(formats="tflite", quantize="int8"))
    assert not (tmp_path / "api").exists()
