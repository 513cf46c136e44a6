"""Fine-tuning a pretrained backbone: freeze it for the first epochs, then train everything.

``--freeze-epochs K`` trains only the new layers — the ``classifier`` (``head_1``) and the
SiLa heads ``head_2 … head_M`` — for epochs 1..K, then unfreezes the backbone (whose lr is
``--backbone-lr-mult`` × the lr, see :mod:`sila_keras.training.optim`). While frozen, the backbone's
BatchNormalization layers are non-trainable, which in Keras 3 also runs them in inference
mode: their moving statistics stay those of the pretrained model (the classic
transfer-learning trap is to freeze the weights but let BN keep updating its statistics on
the new data).

:class:`FreezeBackbone` is a callback of the one training loop
(:func:`sila_keras.training.train.fit`). The frozen state is a function of the epoch only, and the
model is always *saved* unfrozen (checkpoints and ``model.keras`` hold the full trainable
set the optimizer was built for), so ``--resume`` on either side of the switch continues
exactly.

Example:
    >>> cb = FreezeBackbone(freeze_epochs=1)
"""

from __future__ import annotations

import keras

# Layers that are new on top of a pretrained backbone (full lr, trained while frozen).
NEW_LAYER_PREFIXES = ("head_", "classifier", "sila_logits")
# Fixed input preprocessing added around an application: never trained.
FIXED_LAYER_PREFIXES = ("preprocess",)


def is_new_layer(name: str) -> bool:
    """Whether a layer (or variable path) belongs to the new classifier or the SiLa heads."""
    return str(name).startswith(NEW_LAYER_PREFIXES)


def backbone_layers(model: keras.Model) -> list:
    """The pretrained backbone's layers that hold weights (not new, not fixed preprocessing)."""
    return [la for la in model.layers
            if la.weights and not is_new_layer(la.name)
            and not la.name.startswith(FIXED_LAYER_PREFIXES)]


def set_backbone_frozen(model: keras.Model, frozen: bool) -> None:
    """Freeze (``trainable=False``: weights fixed, BatchNorm in inference mode) or unfreeze
    every backbone layer; the new layers stay trainable."""
    for layer in backbone_layers(model):
        layer.trainable = not frozen


def build_optimizer(model) -> None:
    """Create the optimizer's slots (momentum, …) for the model's trainable variables now.

    Without a distribution strategy Keras defers this to the first trace of the training
    step; a variable created while tracing makes ``tf.function`` trace the step a second
    time (~2 s for ResNet-20 on a CPU). ``train.fit`` calls it before every ``fit``; a
    restored checkpoint has built it already.
    """
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)


class FreezeBackbone(keras.callbacks.Callback):
    """Keep the backbone frozen for the first ``freeze_epochs`` epochs of ``fit``.

    At the start of each epoch the model is put in the state that epoch needs; when that
    state changes, Keras' train function is remade (one per state, kept), because the
    trainable set is fixed when the step is traced. At the end of every epoch the flags are
    set back to unfrozen, so callbacks that save the model after it (checkpoints) store the
    full trainable set. Put it first in the callback list.

    Args:
        freeze_epochs: K; epochs 0..K−1 (0-based) train only the new layers.
    """

    def __init__(self, freeze_epochs: int):
        super().__init__()
        self.freeze_epochs = int(freeze_epochs)
        self._functions: dict[bool, object] = {}
        self._state: bool | None = None

    def on_train_begin(self, logs=None):
        self._state = False  # fit() starts from the saved (unfrozen) flags
        self._functions = {}
        set_backbone_frozen(self.model, False)
        build_optimizer(self.model)  # for the full (unfrozen) set; a frozen step uses a part

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.freeze_epochs
        set_backbone_frozen(self.model, frozen)
        if frozen != self._state:
            self._functions[self._state] = self.model.train_function
            if self._functions.get(frozen) is not None:
                self.model.train_function = self._functions[frozen]
            else:
                self.model.make_train_function(force=True)  # traced with this trainable set
            self._state = frozen

    def on_epoch_end(self, epoch, logs=None):
        # Flags only (the traced step is kept): what is saved after this is unfrozen.
        set_backbone_frozen(self.model, False)

    def on_train_end(self, logs=None):
        set_backbone_frozen(self.model, False)
