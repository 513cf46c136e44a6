"""Attach points of any functional Keras classifier, found from its graph.

SiLa's auxiliary heads need a network's classifier logits and a few feature maps on its
main path. :func:`find_taps` finds them in a functional model that nobody registered
(a user's own ``.keras`` file, a ``keras.applications`` model):

* **main path** — the 4-D tensors every input → output path goes through
  (block outputs, not tensors inside residual or Inception branches);
* **candidate taps** — on that path, after at least one weight layer, the end
  of each resolution stage but the last: the last tensor before a strided conv
  or pooling shrinks the map to ≤ 0.6 of the stage's size per side (a valid conv
  trimming a border stays in its stage; zero-padding bumps never end one; a
  stage without weight layers, like a final pooling, does not count).

:func:`sila_keras.core.attach.attach_heads` places heads on them; the ``keras:`` backbones
(:mod:`sila_keras.models.applications`) declare theirs with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
from keras import layers

from sila_keras.models.registry import Tap
from sila_keras.utils.errors import ModelError

# A feature map at most this fraction of its stage's first size (per side) starts a new stage.
STAGE_SHRINK = 0.6


def find_taps(model: keras.Model) -> list[Tap]:
    """Candidate attach points of a functional classifier, shallow → deep.

    The ends of the resolution stages but the last, on the main path (see the
    module docstring). Each :class:`Tap` is named after the layer that produced
    it, so the same points can be passed back as ``attach_heads(taps=[...])``.

    Raises:
        ValueError: the input's spatial size is not fixed.
    """
    graph, stages = _stages(model)
    h = model.inputs[0].shape[1]
    return [_tap(graph, stage[-1], h) for stage in stages[:-1]]


def last_stage_reduction(model: keras.Model) -> int:
    """The reduction (input side ÷ feature-map side) of the last resolution stage of a
    functional classifier's main path: where its own classifier pools (1 when none is found).

    Raises:
        ValueError: the input's spatial size is not fixed.
    """
    _, stages = _stages(model)
    if not stages:
        return 1
    h, side = model.inputs[0].shape[1], stages[-1][-1].shape[1]  # as a tap's (_tap)
    return max(1, round(h / side)) if h and side else 1


def _stages(model: keras.Model):
    """``(graph, stages)``: the main path's resolution stages that hold weight layers, each a
    list of its 4-D tensors, shallow → deep."""
    check_classifier(model)
    graph = _Graph(model.inputs[0], classifier_logits(model, quiet=True))
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
    return graph, kept


def check_classifier(model) -> None:
    """Refuse what is not a functional classifier with one image input and one (B, N) output."""
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


def classifier_logits(model: keras.Model, quiet: bool = False):
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


def taps_by_name(model: keras.Model, names: Sequence[str]) -> list[Tap]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if len(set(names)) != len(names):
        raise ModelError(f"`taps` must name each layer once. Received: taps={names}")
    graph = _Graph(model.inputs[0], classifier_logits(model, quiet=True))
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
