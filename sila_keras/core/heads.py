"""SilaNet heads: attach auxiliary modules to a backbone and concatenate them.

Naming contract (relied on by the exporter, metrics and tuner):

* ``head_1`` — the backbone's own classifier (the base model);
* ``head_2`` — the auxiliary module attached deepest (SilaNet's module C, at the
  end of the second-to-last resolution stage); ``head_3`` one stage shallower
  (module D), and so on;
* every layer of head k is prefixed ``head_k_`` (``head_3_conv``), and the
  module's output layer is named ``head_k``; the module is SilaNet's by default, or one
  of :mod:`sila_keras.core.head_modules` (``--head-module``);
* ``sila_logits`` — the ``Concatenate`` of ``head_1 … head_M``, shape ``(B, M·N)``,
  built by :func:`sila_output` only. It is a :class:`SilaLogits` layer, which records
  the head order and the training mode in its config, so a saved model says what it is
  (:func:`head_names_of`, :func:`mode_of`) without guessing from layer names.

The same contract serves every training mode: in ``--mode mutual``/``dml`` head k is
net k; in ``--mode dynamic`` head k is exit k (shallowest first).

Placement rule (SilaNet §2.2, "each segment of the base model has about the same
number of layers"): candidate attach points are the ends of the backbone's
resolution stages; head 2 takes the deepest, each further head the next
shallower one. With stages of about equal depth, this cuts the network into
segments of about equal depth, and it reproduces the placements of the paper's
Table 3 (see ``../shared/reference/paper-architectures.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import layers

from sila_keras.core.head_modules import DEFAULT_MODULE, build_head, check_fit, get_head_module
from sila_keras.core.sizes import compression_percent, count_macs, float32_mib
from sila_keras.models.registry import Tap, get_backbone, last_reduction
from sila_keras.utils.errors import ModelError

SILA_OUTPUT = "sila_logits"
DEFAULT_MEAN = (127.5, 127.5, 127.5)
DEFAULT_STD = (63.75, 63.75, 63.75)


def head_name(k: int) -> str:
    """The layer name of head ``k`` (1-based): ``head_k``."""
    return f"head_{int(k)}"


@keras.saving.register_keras_serializable(package="sila_keras")
class SilaLogits(layers.Concatenate):
    """The ``sila_logits`` layer: the heads' logits concatenated, plus what they are.

    A ``Concatenate`` (last axis, float32) whose config also holds ``heads`` (the head
    layer names in order) and ``mode`` (the training mode that built the model), so both
    survive ``model.save``/``keras.models.load_model``. Build it with :func:`sila_output`.

    Args:
        heads: head layer names, in head order.
        mode: training mode (``sila``, ``mutual``, ``dml``, ``dynamic``).
        **kwargs: ``Concatenate``/``Layer`` arguments.

    Example:
        >>> import keras
        >>> a, b = keras.Input((3,)), keras.Input((3,))
        >>> layer = SilaLogits(heads=["head_1", "head_2"], mode="sila")
        >>> layer([a, b]).shape
        (None, 6)
    """

    def __init__(self, heads=(), mode: str = "sila", axis: int = -1, **kwargs):
        super().__init__(axis=axis, **kwargs)
        self.heads = [str(h) for h in heads]
        self.mode = str(mode)

    def get_config(self):
        return {**super().get_config(), "heads": list(self.heads), "mode": self.mode}


def sila_output(head_logits: Sequence, mode: str = "sila", names: Sequence[str] | None = None):
    """``sila_logits``: the concatenation of the heads' logits (the one builder).

    Args:
        head_logits: the M symbolic ``(B, N)`` tensors, head 1 first.
        mode: the training mode, recorded with the model.
        names: the layer names that output ``head_logits`` (default ``head_1 … head_M``,
            the contract of every ``--mode``), recorded with the model.

    Returns:
        The symbolic ``(B, M·N)`` float32 tensor.
    """
    names = [head_name(k) for k in range(1, len(head_logits) + 1)] if names is None else names
    if len(names) != len(head_logits):
        raise ModelError(f"`names` needs one name per head ({len(head_logits)}). "
                         f"Received: names={list(names)}")
    return SilaLogits(heads=names, mode=mode, axis=-1, name=SILA_OUTPUT,
                      dtype="float32")(list(head_logits))


def place_heads(taps: Sequence[Tap], num_heads: int, model_name: str = "this model") -> list[Tap]:
    """Choose the taps for heads 2..M (returned in head order: deepest first).

    Raises:
        ValueError: ``num_heads < 1`` or more heads than the model can place.
    """
    if num_heads < 1:
        raise ModelError(f"`num_heads` must be >= 1 (1 = the base model). Received: num_heads={num_heads}")
    max_heads = len(taps) + 1
    if num_heads > max_heads:
        raise ModelError(
            f"{model_name} can place at most {max_heads} heads (1 + {len(taps)} attach points: "
            f"{', '.join(t.name for t in taps) or 'none'}). Received: num_heads={num_heads}"
        )
    return list(reversed(taps))[: num_heads - 1]


def aux_head(tap: Tap, head: int, num_classes: int, module: str = DEFAULT_MODULE,
             last_reduction: int | None = None):
    """Head ``head``'s auxiliary module on ``tap``: by default SilaNet's ([BN + ReLU if
    pre-activation] → 3×3 conv to N → GAP); ``module`` names another
    (:mod:`sila_keras.core.head_modules`).

    Every layer is named ``head_{head}_*``; the output layer is ``head_{head}``.

    Args:
        tap: where the head attaches.
        head: k.
        num_classes: N.
        module: a registered head module (``--head-module``).
        last_reduction: the reduction of the backbone's last resolution stage (default:
            twice the tap's), for modules that downsample to it.

    Raises:
        ConfigError: unknown module.
        ModelError: the module does not fit the tap.
    """
    last = last_reduction or 2 * int(tap.reduction)
    return build_head(tap, head_name(head), num_classes, module, last)


def normalizer(num_channels: int, mean=None, std=None) -> layers.Layer:
    """In-model preprocessing: raw pixels (0–255) → per-channel standardized values."""
    mean = list(DEFAULT_MEAN[:1] * num_channels if mean is None else mean)
    std = list(DEFAULT_STD[:1] * num_channels if std is None else std)
    if len(mean) != num_channels or len(std) != num_channels:
        raise ModelError(
            f"`mean` and `std` need one value per channel ({num_channels}). "
            f"Received: mean={mean}, std={std}"
        )
    return layers.Normalization(mean=mean, variance=[float(s) ** 2 for s in std], name="normalize")


def assemble(inputs, base_logits, taps: Sequence[Tap], num_heads: int, num_classes: int,
             name: str, model_name: str = "this model", head_module: str = DEFAULT_MODULE,
             reduction: int = 0) -> keras.Model:
    """Join the base classifier and the auxiliary heads into one SiLa model.

    ``head_module``: the module of heads 2..M (:mod:`sila_keras.core.head_modules`);
    ``reduction``: the backbone's last resolution stage's (0: twice the deepest tap's,
    :func:`~sila_keras.models.registry.last_reduction`).
    """
    chosen = place_heads(taps, num_heads, model_name)
    last = last_reduction(taps, reduction)
    heads = [layers.Identity(name=head_name(1))(base_logits)]
    heads += [aux_head(tap, k, num_classes, head_module, last)
              for k, tap in enumerate(chosen, start=2)]
    return keras.Model(inputs, sila_output(heads, mode="sila"), name=name)


def build_backbone(backbone: str, num_classes: int, input_shape: Sequence[int] = (32, 32, 3),
                   mean=None, std=None, **backbone_kwargs):
    """``(inputs, BackboneOutput)``: a validated ``image`` input (raw pixels), normalized
    inside, through the registered backbone ``backbone`` (logits, taps, exits).

    Raises:
        ValueError: unknown backbone, ``num_classes`` < 2, a bad or too small input shape.
    """
    spec = get_backbone(backbone)
    if int(num_classes) < 2:
        raise ModelError(f"`num_classes` must be >= 2. Received: num_classes={num_classes}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ModelError(f"`input_shape` must be (H, W, C). Received: input_shape={input_shape}")
    spec.check_input_size(*input_shape[:2], f"input_shape={input_shape}")
    inputs = keras.Input(input_shape, name="image")
    # raw_input backbones (keras: applications) bring their own preprocessing.
    x = inputs if spec.raw_input else normalizer(input_shape[-1], mean, std)(inputs)
    return inputs, spec.builder(x, int(num_classes), **backbone_kwargs)


def build_sila_model(backbone: str, num_classes: int, num_heads: int = 3,
                     input_shape: Sequence[int] = (32, 32, 3), mean=None, std=None,
                     name: str | None = None, head_module: str = DEFAULT_MODULE,
                     **backbone_kwargs) -> keras.Model:
    """Build a SilaNet: backbone + M−1 auxiliary heads, output ``sila_logits``.

    The model takes raw pixels (float32, 0–255, NHWC) and normalizes inside.

    Args:
        backbone: a registered backbone name (see ``list_backbones()``).
        num_classes: N.
        num_heads: M; 1 gives the plain base model.
        input_shape: ``(H, W, C)``.
        mean: per-channel mean of the training pixels (default 127.5).
        std: per-channel std of the training pixels (default 63.75).
        name: model name (default ``sila_<backbone>``).
        head_module: the auxiliary module of heads 2..M (``--head-module``; default
            ``conv``, SilaNet's; :mod:`sila_keras.core.head_modules`).
        **backbone_kwargs: passed to the backbone builder.

    Returns:
        A functional ``keras.Model`` with one output ``sila_logits`` ``(B, M·N)``.

    Raises:
        ValueError: unknown backbone or head module, bad ``num_heads``, an input too small,
            or a head module that does not fit its tap.

    Example:
        >>> m = build_sila_model("resnet20", num_classes=10, num_heads=3)
        >>> m.output.shape
        (None, 30)
    """
    get_head_module(head_module)  # an unknown name fails before the backbone is built
    inputs, out = build_backbone(backbone, num_classes, input_shape, mean, std, **backbone_kwargs)
    return assemble(inputs, out.logits, out.taps, num_heads, int(num_classes),
                    name or f"sila_{backbone.replace(':', '_')}",  # keras:<Name> → keras_<Name>
                    model_name=f"Backbone '{backbone}'", head_module=head_module,
                    reduction=out.last_reduction())


def num_heads_of(model: keras.Model) -> int:
    """M: the number of heads feeding ``sila_logits``."""
    return len(head_names_of(model))


def head_names_of(model: keras.Model) -> list[str]:
    """The head layer names of a SiLa model, in head order (recorded in ``sila_logits``).

    Models saved before the order was recorded (a plain ``Concatenate``) give
    ``head_1 … head_M`` for their M inputs.
    """
    concat = sila_layer(model)
    if isinstance(concat, SilaLogits) and concat.heads:
        return list(concat.heads)
    m = len(concat.input) if isinstance(concat.input, list) else 1
    return [head_name(k) for k in range(1, m + 1)]


def mode_of(model: keras.Model) -> str | None:
    """The training mode recorded in ``sila_logits`` (``None`` for older saved models)."""
    concat = sila_layer(model)
    return concat.mode if isinstance(concat, SilaLogits) else None


def sila_layer(model: keras.Model) -> layers.Layer:
    """The ``sila_logits`` layer, with a clear error if the model has none."""
    try:
        return model.get_layer(SILA_OUTPUT)
    except ValueError:
        raise ModelError(
            f"Model '{model.name}' is not a SiLa model: it has no layer named 'sila_logits'. "
            "Build it with sila_keras.build_sila_model or sila_keras.attach_heads."
        ) from None


def extract_head(model: keras.Model, head: int) -> keras.Model:
    """A model ``inputs → head_k logits`` holding only the layers head k needs.

    The returned model shares layers (and so trained weights) with ``model``;
    its logits equal slice k of ``sila_logits``. Save or export it to get an
    independent copy.

    Raises:
        ValueError: ``model`` has no ``sila_logits`` or no head ``head``.
    """
    names = head_names_of(model)
    m = len(names)
    if not 1 <= int(head) <= m:
        raise ModelError(
            f"Head index out of range: model '{model.name}' has heads 1..{m} "
            f"({', '.join(names)}). Received: head={head}"
        )
    layer = model.get_layer(names[int(head) - 1])
    net = _nested_sila_net(layer)
    if net is None:
        out = layer.output
    else:  # a mutual-mode net: its own one-head SiLa model, kept without its SilaLogits
        inner = keras.Model(net.input, net.get_layer(head_names_of(net)[0]).output, name=net.name)
        out = layer(inner(net._inbound_nodes[0].input_tensors[0]))
    return keras.Model(model.input, out, name=f"{model.name}_{names[int(head) - 1]}")


def _nested_sila_net(layer):
    """The nested SiLa model (its own ``sila_logits``) that ``layer`` passes on unchanged, as a
    mutual-mode head does with its net; None for every other head layer."""
    node = layer._inbound_nodes[0] if layer._inbound_nodes else None
    if not isinstance(layer, keras.layers.Identity) or node is None:
        return None
    net = node.input_tensors[0]._keras_history.operation
    is_sila = isinstance(net, keras.Model) and any(la.name == SILA_OUTPUT for la in net.layers)
    return net if is_sila and num_heads_of(net) == 1 else None


def trainable_params(model: keras.Model) -> int:
    """Trainable parameters (BN moving statistics excluded), as the papers count them."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def head_table(model: keras.Model) -> dict:
    """Trainable params, MiB, CR and MACs of every extracted head vs the base (head 1).

    Returns:
        ``{"head_k": {"params", "mib", "cr_percent", "macs"}}`` for k = 1 … M; MiB
        (:func:`~sila_keras.core.sizes.float32_mib`) and CR in percent
        (:func:`~sila_keras.core.sizes.compression_percent`) rounded to 0.01; MACs of one
        image through the extracted head (:func:`~sila_keras.core.sizes.count_macs`).
    """
    out = {}
    base = trainable_params(extract_head(model, 1))
    for k in range(1, num_heads_of(model) + 1):
        head = extract_head(model, k)
        p = trainable_params(head)
        out[head_name(k)] = {"params": p, "mib": round(float32_mib(p), 2),
                             "cr_percent": round(compression_percent(base, p), 2),
                             "macs": count_macs(head)}
    return out


def check_heads_fit(backbone: str, num_heads: int, head_module: str = DEFAULT_MODULE,
                    image_size: Sequence[int] | None = None, **backbone_kwargs) -> None:
    """``num_heads`` heads of ``head_module`` fit ``backbone``: builds it symbolically (no
    data, ~1 s) at ``image_size`` (H, W; default 32, or the backbone's minimum if larger).

    Raises:
        ConfigError: unknown head module.
        ModelError: more heads than the backbone has attach points (+1), or a head module
            that does not fit its tap at this size.
    """
    module = get_head_module(head_module)
    size = max(32, get_backbone(backbone).min_input_size)
    h, w = (int(d) for d in image_size) if image_size else (size, size)
    _, out = build_backbone(backbone, 10, (h, w, 3), **backbone_kwargs)
    chosen = place_heads(out.taps, num_heads, f"Backbone '{backbone}'")
    for k, tap in enumerate(chosen, start=2):
        check_fit(module, tap, head_name(k), out.last_reduction())


STANDALONE_PREFIX = "aux"  # head k's own layers in a sub-network trained alone


def standalone_head(model: keras.Model, head: int, name: str | None = None) -> keras.Model:
    """Head k's sub-network as a fresh classifier, to train alone (``--heads 1``).

    The same layers as :func:`extract_head` (what ``python -m export RUN --head k`` ships),
    cloned with **new** weights (drawn from each layer's initializer under the current Keras
    seed, ``keras.utils.set_random_seed``) and with head k's layers renamed
    ``head_k_*`` → ``aux_*`` (``head_k`` → ``aux_logits``), because ``head_<k>`` names are
    reserved for the heads a SiLa run attaches. The input normalization (the ``normalize``
    layer's mean/std) is kept. Save it as ``.keras`` and pass the file as MODEL to
    ``sila-train … --heads 1``: it trains through the normal loop as a plain classifier.

    Args:
        model: a SiLa model (output ``sila_logits``).
        head: k in 1..M (1 = the base model alone).
        name: model name (default ``<model>_head_<k>_alone``).

    Returns:
        A functional ``keras.Model`` ``image → (B, N)`` logits, independent of ``model``.

    Raises:
        ModelError: no ``sila_logits`` or no head ``head``.

    Example:
        >>> m = build_sila_model("resnet20", num_classes=10, num_heads=3)
        >>> sub = standalone_head(m, 3)
        >>> sub.output.shape, sub.layers[-1].name
        ((None, 10), 'aux_logits')
    """
    sub = extract_head(model, head)
    old = sub.layers[-1].name  # head_k (or head_1's Identity)

    def fresh(layer):
        cfg = layer.get_config()
        if layer.name == old:
            cfg["name"] = f"{STANDALONE_PREFIX}_logits"
        elif layer.name.startswith(f"{old}_"):
            cfg["name"] = STANDALONE_PREFIX + layer.name[len(old):]
        return type(layer).from_config(cfg)  # new variables, initialised afresh

    clone = keras.models.clone_model(sub, clone_function=fresh)
    return keras.Model(clone.input, clone.output, name=name or f"{model.name}_{old}_alone")
