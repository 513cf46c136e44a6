"""Attach SiLa auxiliary heads to any functional Keras classifier.

SilaNet's heads (§2.2) need only two things from a network: its classifier
logits (``head_1``) and a few feature maps on its main path where modules C, D, …
can attach. :func:`attach_heads` finds both in a user's own functional model:

* **main path** — the 4-D tensors every input → output path goes through
  (block outputs, not tensors inside residual or Inception branches);
* **candidate taps** — on that path, after at least one weight layer, the end
  of each resolution stage but the last: the last tensor before a strided conv
  or pooling shrinks the map to ≤ 0.6 of the stage's size per side (a valid conv
  trimming a border stays in its stage; zero-padding bumps never end one; a
  stage without weight layers, like a final pooling, does not count);
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

import warnings
from collections.abc import Sequence
from pathlib import Path

import keras
from keras import layers

from sila_keras.core.heads import SILA_OUTPUT, assemble
from sila_keras.models.registry import Tap
from sila_keras.utils.errors import ModelError

RESERVED = (SILA_OUTPUT,)
# A feature map at most this fraction of its stage's first size (per side) starts a new stage.
STAGE_SHRINK = 0.6


def attach_heads(model: keras.Model, num_heads: int = 3, taps: Sequence[str] | None = None,
                 *, copy: bool = True, name: str | None = None) -> keras.Model:
    """Turn a functional Keras classifier into a SiLa model with ``num_heads`` heads.

    ``head_1`` is the model's own classifier output. If it ends in a softmax, the
    pre-softmax logits are used instead (a warning says so): a dense layer with a
    softmax activation is replaced by a linear twin ``<name>_logits`` carrying the
    same weights; a final ``Softmax``/``Activation("softmax")`` layer is dropped.
    Heads 2..M are SilaNet's auxiliary modules (3×3 conv to N → global average
    pooling, with BN + ReLU first on tensors that are not activated yet).

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

    Returns:
        A functional ``keras.Model`` with the output ``sila_logits`` ``(B, M·N)``.

    Raises:
        TypeError: ``model`` is not a functional Keras model.
        ValueError: bad inputs/outputs, unknown or unusable ``taps``, more heads
            than attach points (the message gives the maximum), or layer names
            that clash with the SiLa naming contract.
    """
    _check_model(model)
    if copy:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        model = clone
    logits = _logits(model)
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
        chosen = _taps_by_name(model, taps)
    return assemble(model.inputs[0], logits, chosen, num_heads, num_classes,
                    name or f"sila_{model.name}", model_name=f"Model '{model.name}'")


def find_taps(model: keras.Model) -> list[Tap]:
    """Candidate attach points of a functional classifier, shallow → deep.

    The ends of the resolution stages but the last, on the main path (see the
    module docstring). Each :class:`Tap` is named after the layer that produced
    it, so the same points can be passed back as ``attach_heads(taps=[...])``.

    Raises:
        ValueError: the input's spatial size is not fixed.
    """
    _check_model(model)
    graph = _Graph(model.inputs[0], _logits(model, quiet=True))
    h, w = model.inputs[0].shape[1:3]
    if h is None or w is None:
        raise ModelError(
            "Finding attach points automatically needs a fixed input size (the resolution "
            f"stages are found from the feature-map sizes). Received: input shape "
            f"{tuple(model.inputs[0].shape)}. Rebuild the model with e.g. input_shape=(32, 32, 3), "
            "or pass taps=[layer names]."
        )
    path = [t for t in graph.main_path() if len(t.shape) == 4 and graph.depth(t) > 0]
    stages: list[list] = []
    ref = None
    for t in path:
        th, tw = t.shape[1:3]
        if ref is None or th <= STAGE_SHRINK * ref[0] or tw <= STAGE_SHRINK * ref[1]:
            stages.append([t])  # a strided conv or pooling starts a new stage
            ref = (th, tw)
        elif th <= ref[0] and tw <= ref[1]:
            stages[-1].append(t)  # same stage (a valid conv may trim a border)
        # else: a zero-padding bump, never a stage end
    kept, done = [], 0  # a stage without weight layers (e.g. a last pooling) is no stage
    for stage in stages:
        if graph.depth(stage[-1]) > done:
            kept.append(stage)
            done = graph.depth(stage[-1])
    return [_tap(graph, stage[-1], h) for stage in kept[:-1]]


def load_and_attach(path, num_heads: int = 3, num_classes: int | None = None) -> keras.Model:
    """Load a user's classifier from a ``.keras`` file and attach SiLa heads to it.

    The loaded model is used directly (no copy). It receives the images as this
    package's pipeline gives them: raw pixels, float32, 0–255, NHWC.

    Args:
        path: a ``.keras`` (or legacy ``.h5``) file holding a functional classifier.
        num_heads: M.
        num_classes: the dataset's N; the model's output width must equal it.

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
    if path.suffix not in (".keras", ".h5"):
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
    return attach_heads(model, num_heads, copy=False)


# --------------------------------------------------------------------------- helpers


class _Graph:
    """The tensors between the input and the logits, in topological order."""

    def __init__(self, source, sink):
        self.source, self.sink = source, sink
        parents: dict[int, list] = {}
        tensors: dict[int, object] = {}
        stack = [sink]
        while stack:  # ancestors of the sink
            t = stack.pop()
            if id(t) in tensors:
                continue
            tensors[id(t)] = t
            parents[id(t)] = _inputs_of(t)
            stack.extend(parents[id(t)])
        reach = {id(source)}  # … that descend from the source
        self.order = []
        for t in self._topological(tensors, parents):
            if id(t) == id(source) or any(id(p) in reach for p in parents[id(t)]):
                reach.add(id(t))
                self.order.append(t)
        if id(sink) not in reach:
            raise ModelError("The model's output does not depend on its input.")
        self.parents = {k: [p for p in v if id(p) in reach] for k, v in parents.items()
                        if k in reach}
        self._depth: dict[int, int] = {}

    @staticmethod
    def _topological(tensors, parents):
        done, out = set(), []
        for start in tensors.values():
            stack = [(start, False)]
            while stack:
                t, expanded = stack.pop()
                if id(t) in done:
                    continue
                if expanded:
                    done.add(id(t))
                    out.append(t)
                    continue
                stack.append((t, True))
                stack.extend((p, False) for p in parents[id(t)] if id(p) not in done)
        return out

    def main_path(self) -> list:
        """Tensors every source → sink path goes through (no edge jumps over them)."""
        pos = {id(t): i for i, t in enumerate(self.order)}
        # `furthest`: the furthest position an edge from a tensor before i lands on.
        furthest, jumps_over = -1, []
        children_max = [-1] * len(self.order)
        for t in self.order:
            for p in self.parents[id(t)]:
                children_max[pos[id(p)]] = max(children_max[pos[id(p)]], pos[id(t)])
        for i in range(len(self.order)):
            jumps_over.append(furthest > i)
            furthest = max(furthest, children_max[i])
        return [t for i, t in enumerate(self.order) if not jumps_over[i]]

    def depth(self, t) -> int:
        """Weight layers (kernels) among the ancestors of ``t``, ``t``'s own layer included."""
        if id(t) not in self._depth:
            ops, seen, stack = {}, set(), [t]
            while stack:
                u = stack.pop()
                if id(u) in seen:
                    continue
                seen.add(id(u))
                op = u._keras_history.operation
                if op is not None:
                    ops[id(op)] = op
                stack.extend(self.parents.get(id(u), []))
            self._depth[id(t)] = sum(_kernels(op) for op in ops.values())
        return self._depth[id(t)]

    def position(self, t) -> int:
        return next(i for i, u in enumerate(self.order) if u is t)


def _inputs_of(t) -> list:
    history = getattr(t, "_keras_history", None)
    if history is None or history.operation is None:
        return []
    node = history.operation._inbound_nodes[history.node_index]
    return list(node.input_tensors)


def _kernels(op) -> int:
    return sum(1 for w in getattr(op, "weights", []) if "kernel" in w.path.rsplit("/", 1)[-1])


def _layer_of(t):
    return t._keras_history.operation


def _tap(graph: _Graph, t, input_height: int | None) -> Tap:
    h = t.shape[1]
    reduction = max(1, round(input_height / h)) if input_height and h else 1
    return Tap(_layer_of(t).name, t, int(t.shape[-1]), reduction, graph.depth(t),
               preact=not _activated(t))


# Layers whose output is activated when all their inputs are.
_PASS_THROUGH = (layers.Concatenate, layers.MaxPooling2D, layers.AveragePooling2D,
                 layers.ZeroPadding2D, layers.Dropout, layers.Identity, layers.SpatialDropout2D)


def _activated(t) -> bool:
    """Whether ``t`` already went through a non-linearity (ReLU & co.).

    If not (a conv, BN or residual sum output, as in pre-activation networks),
    the auxiliary head starts with BN + ReLU.
    """
    layer = _layer_of(t)
    if layer is None:
        return False
    if isinstance(layer, (layers.ReLU, layers.ELU, layers.LeakyReLU, layers.PReLU)):
        return True
    if isinstance(layer, _PASS_THROUGH):
        parents = _inputs_of(t)
        return bool(parents) and all(_activated(p) for p in parents)
    act = getattr(layer, "activation", None)
    return act is not None and getattr(act, "__name__", "linear") != "linear"


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"attach_heads needs a keras.Model. Received: model of type {type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise TypeError(
            "attach_heads needs a functional model (keras.Model(inputs, outputs) or a Sequential "
            f"built with an Input); a subclassed model has no graph to attach to. "
            f"Received: model '{model.name}' of type {type(model).__name__}"
        )
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelError(
            "attach_heads needs one image input (B, H, W, C). "
            f"Received: inputs {[tuple(i.shape) for i in inputs]}"
        )
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ModelError(
            "attach_heads needs one classifier output (B, N). "
            f"Received: outputs {[tuple(o.shape) for o in outputs]}"
        )
    clash = [la.name for la in model.layers
             if la.name in RESERVED or (la.name.startswith("head_") and la.name[5:6].isdigit())]
    if clash:
        raise ModelError(
            "Layer names 'sila_logits' and 'head_<k>…' are reserved for the SiLa heads; rename "
            f"these layers. Received: {clash}"
        )


def _logits(model: keras.Model, quiet: bool = False):
    """The pre-softmax classifier output of ``model``."""
    out = model.outputs[0]
    layer = _layer_of(out)
    if _is_softmax_layer(layer):
        if not quiet:
            warnings.warn(f"Model '{model.name}' ends in a softmax layer '{layer.name}'; head_1 "
                          "uses its input (the logits).", stacklevel=3)
        return _inputs_of(out)[0]
    act = getattr(layer, "activation", None)
    if isinstance(layer, layers.Dense) and getattr(act, "__name__", "") == "softmax":
        if quiet:
            return _inputs_of(out)[0]  # same stages; the twin is made only when attaching
        cfg = {**layer.get_config(), "activation": "linear", "name": f"{layer.name}_logits"}
        twin = type(layer).from_config(cfg)
        logits = twin(_inputs_of(out)[0])
        twin.set_weights(layer.get_weights())
        warnings.warn(f"Model '{model.name}' ends in a softmax ('{layer.name}'); head_1 uses its "
                      f"pre-softmax logits (linear twin '{twin.name}', same weights).", stacklevel=3)
        return logits
    return out


def _is_softmax_layer(layer) -> bool:
    if isinstance(layer, layers.Softmax):
        return True
    act = getattr(layer, "activation", None)
    return isinstance(layer, layers.Activation) and getattr(act, "__name__", "") == "softmax"


def _taps_by_name(model: keras.Model, names: Sequence[str]) -> list[Tap]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if len(set(names)) != len(names):
        raise ModelError(f"`taps` must name each layer once. Received: taps={names}")
    graph = _Graph(model.inputs[0], _logits(model, quiet=True))
    on_graph = {id(t) for t in graph.order}
    h = model.inputs[0].shape[1]
    found = []
    for n in names:
        try:
            t = model.get_layer(n).output
        except (ValueError, AttributeError):
            auto = _auto_names(model)
            raise ModelError(
                f"`taps` must name single-use layers of model '{model.name}'. Received: taps "
                f"entry '{n}'. Automatic candidates: {auto}"
            ) from None
        if len(t.shape) != 4 or id(t) not in on_graph:
            raise ModelError(
                f"A tap must be a 4-D feature map (B, H, W, C) between the input and the "
                f"classifier. Received: '{n}' with output shape {tuple(t.shape)}. Automatic "
                f"candidates: {_auto_names(model)}"
            )
        found.append(_tap(graph, t, h))
    return sorted(found, key=lambda tap: (tap.depth, graph.position(tap.tensor)))


def _auto_names(model) -> list[str]:
    try:
        return [t.name for t in find_taps(model)]
    except ValueError:
        return []
