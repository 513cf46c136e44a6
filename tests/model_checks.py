"""One check of the SiLa model contract, shared by the model tests (as keras-hub's
``run_backbone_test`` is by its backbone tests).

Imported by the test files as ``model_checks``; not part of the installed package.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from sila_keras.core.heads import extract_head, head_name, head_names_of, num_heads_of

# The only layer of ours a SiLa training model holds: ``sila_logits``, which records the heads.
OWN_LAYERS = {"SilaLogits"}


class Checked(NamedTuple):
    """What ``check_sila_model`` computed, for a test's own further assertions."""

    logits: np.ndarray | None  # the model's ``sila_logits`` on the images (None without images)
    heads: list[keras.Model]  # extract_head(model, k) for k = 1 … M


def check_sila_model(model: keras.Model, *, num_heads: int, num_classes: int, images=None,
                     head_names=None, builtin_heads: bool = True, save_dir=None,
                     tflite: bool = False, atol: float = 1e-5) -> Checked:
    """Check a SiLa model: its ``sila_logits`` contract and what every extracted head ships.

    Always: ``sila_logits`` is ``(None, M·N)``, the model has ``M`` heads named ``head_names``
    (default ``head_1 … head_M``), each head's layer outputs ``(None, N)``, and the model's only
    layer not from Keras is ``SilaLogits``; every head, extracted, outputs ``(None, N)`` and (with
    ``builtin_heads``) is built from Keras' own layers only, as what the exporter ships must be.

    Args:
        model: The SiLa model (built, attached or loaded).
        num_heads: M, the heads the model must have.
        num_classes: N, the classes of each head.
        images: A batch ``(B, H, W, C)``: the model's output is ``(B, M·N)`` and every
            extracted head's logits equal its slice of it (within ``atol``).
        head_names: The head layer names in head order, when not ``head_1 … head_M``.
        builtin_heads: Check that the extracted heads hold Keras' own layers only. ``False`` for
            a mutual model: each net is a one-head SiLa model of its own, and the extracted
            head keeps that net's ``SilaLogits``.
        save_dir: A folder: the model, saved there and reloaded in this process, gives the same
            outputs, and every extracted head, saved there, reloads with plain
            ``keras.models.load_model`` (no registered custom object) and gives the same
            logits. Needs ``images`` and ``builtin_heads``.
        tflite: Every extracted head converts to TFLite with built-in ops only (no Flex ops)
            and, run there, gives its logits (within 1e-4). Needs ``images``.
        atol: Tolerance of a head's logits against its slice of ``sila_logits``.

    Returns:
        The model's logits on ``images`` and the extracted heads, for further checks.
    """
    m, n = num_heads, num_classes
    names = list(head_names or [head_name(k) for k in range(1, m + 1)])
    assert model.output.shape == (None, m * n), model.output.shape
    assert num_heads_of(model) == m and head_names_of(model) == names, head_names_of(model)
    for name in names:
        assert model.get_layer(name).output.shape == (None, n), name
    assert custom_layers(model) == OWN_LAYERS, custom_layers(model)

    heads = [extract_head(model, k) for k in range(1, m + 1)]
    for k, head in enumerate(heads, start=1):
        assert head.output.shape == (None, n), (k, head.output.shape)
        assert not builtin_heads or not custom_layers(head), (k, custom_layers(head))

    if images is None:
        assert save_dir is None and not tflite, "the round trips compare outputs: pass images"
        return Checked(None, heads)
    logits = _np(model(images, training=False))
    assert logits.shape == (len(images), m * n), logits.shape
    head_logits = [_np(head(images, training=False)) for head in heads]
    for k, got in enumerate(head_logits, start=1):
        np.testing.assert_allclose(got, logits[:, (k - 1) * n:k * n], atol=atol, err_msg=f"head {k}")

    if save_dir is not None:
        assert builtin_heads, "plain Keras loads only heads of built-in layers"
        _check_saved(model, heads, head_logits, logits, images, Path(save_dir))
    if tflite:
        for k, (head, want) in enumerate(zip(heads, head_logits, strict=True), start=1):
            np.testing.assert_allclose(run_tflite(to_tflite(head), images), want, atol=1e-4,
                                       err_msg=f"head {k} in TFLite")
    return Checked(logits, heads)


def custom_layers(model: keras.Model) -> set[str]:
    """Class names of the layers in ``model`` (nested models included) not from Keras."""
    return {type(layer).__name__ for layer in model._flatten_layers()
            if not type(layer).__module__.startswith("keras")}


@contextlib.contextmanager
def plain_keras():
    """Keras as a user without ``sila_keras`` has it: no registered custom objects."""
    registered = keras.saving.get_custom_objects()
    saved = dict(registered)
    registered.clear()
    try:
        yield
    finally:
        registered.update(saved)


def to_tflite(model: keras.Model) -> bytes:
    """``model`` as a TFLite flatbuffer using TFLite's built-in ops only (fails otherwise)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    return converter.convert()


def run_tflite(flatbuffer: bytes, images) -> np.ndarray:
    """The TFLite model's output on ``images``, run in LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(np.shape(images)))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.asarray(images, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def _check_saved(model, heads, head_logits, logits, images, folder: Path) -> None:
    """Save → reload in this process gives the same outputs; heads load with plain Keras."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "sila_model.keras")
    again = keras.models.load_model(folder / "sila_model.keras")
    np.testing.assert_array_equal(_np(again(images, training=False)), logits)
    assert head_names_of(again) == head_names_of(model)
    for k, (head, want) in enumerate(zip(heads, head_logits, strict=True), start=1):
        path = folder / f"head_{k}.keras"
        head.save(path)
        with plain_keras():
            loaded = keras.models.load_model(path)
        assert not custom_layers(loaded), (k, custom_layers(loaded))
        np.testing.assert_array_equal(_np(loaded(images, training=False)), want, err_msg=f"head {k}")


def _np(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)
