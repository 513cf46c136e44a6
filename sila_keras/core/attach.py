"""Attach SiLa auxiliary heads to any functional Keras classifier.

SilaNet's heads (§2.2) need only two things from a network: its classifier
logits (``head_1``) and a few feature maps on its main path where modules C, D, …
can attach. :func:`attach_heads` finds both in a user's own functional model:

* **main path** and **candidate taps** — the ends of its resolution stages but the
  last, found from the graph (:mod:`sila_keras.models.taps`);
* **placement** — the same rule as the built-in zoo
  (:func:`sila_keras.core.heads.place_heads`): head 2 at the deepest tap, head 3 at
  the next shallower one, …

Example:
    >>> import keras
    >>> base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None,
    ...                                       classes=10, alpha=0.35)
    >>> sila = attach_heads(base, num_heads=3)
    >>> sila.output.shape
    (None, 30)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from sila_keras.core.head_modules import DEFAULT_MODULE, get_head_module
from sila_keras.core.heads import SILA_OUTPUT, assemble
from sila_keras.models.registry import MODEL_FILE_SUFFIXES
from sila_keras.models.taps import (
    check_classifier,
    classifier_logits,
    find_taps,
    last_stage_reduction,
    taps_by_name,
)
from sila_keras.utils.errors import ModelError

RESERVED = (SILA_OUTPUT,)


def attach_heads(model: keras.Model, num_heads: int = 3, taps: Sequence[str] | None = None,
                 *, copy: bool = True, name: str | None = None,
                 head_module: str = DEFAULT_MODULE) -> keras.Model:
    """Turn a functional Keras classifier into a SiLa model with ``num_heads`` heads.

    ``head_1`` is the model's own classifier output. If it ends in a softmax, the
    pre-softmax logits are used instead (a warning says so): a dense layer with a
    softmax activation is replaced by a linear twin ``<name>_logits`` carrying the
    same weights; a final ``Softmax``/``Activation("softmax")`` layer is dropped.
    Heads 2..M are SilaNet's auxiliary modules (3×3 conv to N → global average
    pooling, with BN + ReLU first on tensors that are not activated yet), or the modules
    named by ``head_module`` (:mod:`sila_keras.core.head_modules`).

    The SiLa model takes the same inputs as ``model``. Training code in this
    package feeds raw pixels (float32, 0–255): put any preprocessing your model
    needs (``Rescaling``, ``Normalization``) inside it.

    Args:
        model: a functional (or built Sequential) ``keras.Model`` with one image
            input ``(B, H, W, C)`` and one output ``(B, N)``.
        num_heads: M; 1 returns the base model with the SiLa output layout.
        taps: layer names whose outputs may take heads, to choose by hand
            (default: found automatically, see :func:`find_taps`).
        copy: work on a clone of ``model`` (default), so training the SiLa model
            leaves ``model`` untouched; ``False`` shares its layers.
        name: name of the SiLa model (default ``sila_<model name>``).
        head_module: the module of heads 2..M (``--head-module``; default ``conv``).

    Returns:
        A functional ``keras.Model`` with the output ``sila_logits`` ``(B, M·N)``.

    Raises:
        TypeError: ``model`` is not a functional Keras model.
        ValueError: bad inputs/outputs, unknown or unusable ``taps``, more heads
            than attach points (the message gives the maximum), layer names
            that clash with the SiLa naming contract, or a head module that does not fit.
    """
    get_head_module(head_module)
    _check_model(model)
    if copy:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        model = clone
    logits = classifier_logits(model)
    num_classes = int(logits.shape[-1])
    if taps is None:
        chosen = find_taps(model)
        if not chosen and num_heads > 1:
            raise ModelError(
                f"No attach point found in model '{model.name}': its main path has no 4-D feature "
                "map that ends a resolution stage before the last one. If the backbone is a nested "
                "model (a keras.Model used as a layer), build it flat instead (keras.applications "
                "take input_tensor=...), or pass taps=[layer names]. "
                f"Received: num_heads={num_heads}"
            )
    else:
        chosen = taps_by_name(model, taps)
    return assemble(model.inputs[0], logits, chosen, num_heads, num_classes,
                    name or f"sila_{model.name}", model_name=f"Model '{model.name}'",
                    head_module=head_module, reduction=_last_reduction(model))


def _last_reduction(model: keras.Model) -> int:
    """The model's last resolution stage's reduction (0, the taps' rule, when its input
    size is not fixed)."""
    try:
        return last_stage_reduction(model)
    except ModelError:
        return 0


def load_and_attach(path, num_heads: int = 3, num_classes: int | None = None,
                    head_module: str = DEFAULT_MODULE) -> keras.Model:
    """Load a user's classifier from a ``.keras`` file and attach SiLa heads to it.

    The loaded model is used directly (no copy). It receives the images as this
    package's pipeline gives them: raw pixels, float32, 0–255, NHWC.

    Args:
        path: a ``.keras`` (or legacy ``.h5``) file holding a functional classifier.
        num_heads: M.
        num_classes: the dataset's N; the model's output width must equal it.
        head_module: the module of heads 2..M (``--head-module``).

    Returns:
        The SiLa model (see :func:`attach_heads`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a Keras model file, already a SiLa model, or an output width
            that is not ``num_classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model file not found. Received: path='{path}'")
    if path.suffix not in MODEL_FILE_SUFFIXES:
        raise ModelError(
            "A model file must be a Keras '.keras' (or legacy '.h5') file; save yours with "
            f"model.save('my_model.keras'). Received: path='{path}'"
        )
    model = keras.models.load_model(path, compile=False)
    if any(layer.name == SILA_OUTPUT for layer in model.layers):
        raise ModelError(
            f"'{path}' is already a SiLa model (it has 'sila_logits'). Train a plain classifier "
            "file, or extract its base first: sila_keras.extract_head(model, 1). "
            f"Received: path='{path}'"
        )
    _check_model(model)
    width = model.outputs[0].shape[-1]
    if num_classes is not None and width != int(num_classes):
        raise ModelError(
            f"The model in '{path}' outputs {width} classes but the dataset has {num_classes}. "
            f"Rebuild its classifier with {num_classes} outputs (e.g. classes={num_classes}). "
            f"Received: output shape {tuple(model.outputs[0].shape)}"
        )
    return attach_heads(model, num_heads, copy=False, head_module=head_module)


def _check_model(model) -> None:
    check_classifier(model)
    clash = [la.name for la in model.layers
             if la.name in RESERVED or (la.name.startswith("head_") and la.name[5:6].isdigit())]
    if clash:
        raise ModelError(
            "Layer names 'sila_logits' and 'head_<k>…' are reserved for the SiLa heads; rename "
            f"these layers. Received: {clash}"
        )
