"""Mixed precision: policy choice, the refusals, and float32 export of a mixed model."""

import json

import keras
import numpy as np
import pytest

import sila_keras as sk
from sila_keras.training.precision import (
    as_float32,
    check_mixed_precision,
    cpu_has_native_bf16,
    is_float32,
    mixed_policy,
    policy_for,
)


@pytest.fixture
def mixed_model():
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = sk.build_sila_model("resnet20", num_classes=10, num_heads=3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def test_policy_for_device():
    assert policy_for(False, has_gpu=True) == "float32"
    assert policy_for(True, has_gpu=True) == "mixed_float16"
    assert policy_for(True, has_gpu=False) == "mixed_bfloat16"


def test_native_bf16_is_read_from_cpu_flags():
    assert cpu_has_native_bf16("flags\t: fpu sse avx2 fma\n") is False
    assert cpu_has_native_bf16("flags\t: fpu avx512f avx512_bf16 amx_tile\n") is True
    assert cpu_has_native_bf16("processor : 0\n") is None


def test_mixed_precision_on_a_saved_model_is_refused_with_the_fix():
    check_mixed_precision("resnet20", True)
    check_mixed_precision("mine.keras", False)
    with pytest.raises(ValueError, match=r"mine\.keras.*set_global_policy.*drop --mixed-precision"):
        check_mixed_precision("mine.keras", True)


def test_cli_refuses_mixed_precision_for_a_saved_model(tmp_path, tiny_folder, capsys):
    from sila_keras.training.train import main

    saved = tmp_path / "mine.keras"
    saved.write_bytes(b"not read: refused before loading")
    code = main([f"folder:{tiny_folder}", str(saved), "--mixed-precision", "--out", str(tmp_path / "runs"),
                 "--name", "r"])
    err = capsys.readouterr().err
    assert code != 0
    assert "--mixed-precision cannot be applied to a saved model" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "r").exists()


def test_float32_copy_has_the_same_weights_and_close_outputs(mixed_model):
    assert not is_float32(mixed_model)
    assert mixed_policy(mixed_model) == "mixed_bfloat16"
    clone = as_float32(mixed_model)
    assert clone is not mixed_model and is_float32(clone)
    assert [w.name for w in clone.weights] == [w.name for w in mixed_model.weights]
    for a, b in zip(clone.get_weights(), mixed_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    ref = keras.ops.convert_to_numpy(mixed_model(x, training=False))
    out = keras.ops.convert_to_numpy(clone(x, training=False))
    assert out.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: the float32 copy differs by that rounding only.
    np.testing.assert_allclose(out, ref, atol=0.05 * max(1.0, np.abs(ref).max()))
    assert as_float32(clone) is clone  # already float32: returned as is


def test_export_of_a_mixed_model_is_float32(mixed_model, tmp_path):
    from export import ExportOptions, export_head

    options = ExportOptions(formats="keras", parity_samples=8, latency_runs=1)
    manifest = export_head(mixed_model, 2, tmp_path / "head2", options=options, verbose=0)
    assert manifest["ok"], manifest["failed"]
    assert manifest["options"]["trained_precision"] == "mixed_bfloat16"
    exported = keras.models.load_model(tmp_path / "head2" / "model.keras", compile=False)
    assert is_float32(exported)
    on_disk = json.loads((tmp_path / "head2" / "manifest.json").read_text())
    assert on_disk["options"]["trained_precision"] == "mixed_bfloat16"
