"""BatchNormalization statistics: the momentum of a model's BN layers, *precise BN* (their
moving statistics recomputed from training images) and the guard that spots stale ones.

Why: a BN layer normalises with the statistics of the batch while training, and with its
*moving* statistics — an exponential moving average, ``moving = m·moving + (1 − m)·batch`` —
at test time. ``keras.applications`` builds MobileNetV2/V3 with ``momentum=0.999``: after
``s`` steps the moving statistics still hold ``0.999**s`` of their initial values (54 % after
625 steps), so a short run from scratch predicts one class at test time while its training
accuracy climbs. Two remedies, after timm (``--bn-momentum``) and "precise BN" (Wu &
Johnson, *Rethinking "Batch" in BatchNorm*, 2021; pycls, fvcore ``update_bn_stats``,
``torch.optim.swa_utils.update_bn``):

* :func:`set_bn_momentum` — a shorter average for every BN layer (nested models included);
* :func:`recompute_bn_statistics` — replace every trainable BN layer's moving mean and
  variance by the exact mean and (population) variance of its input over ``N`` images, seen
  in training-mode forward passes (each BN layer normalising with batch statistics, as in
  training), weights untouched.

What is averaged: every BN layer's input over **all** the images given — per batch the
per-replica sums are added up across replicas (an all-reduce), and the batches are pooled
on the host in float64 (Chan's parallel formula), so the result is the mean/variance over
the N images whatever the batching, the number of replicas or a short last batch. Inside
the forward pass each BN layer normalises as it did in training: over the global batch with
synchronized BN (``--sync-bn``), over its replica's part of the batch otherwise. Non-trainable
BN layers (a frozen backbone: Keras runs them in inference mode) are left as they are, as
training leaves them.

Example:
    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    >>> x = np.arange(12, dtype="float32").reshape(4, 3)
    >>> r = recompute_bn_statistics(m, x, batch_size=2)
    >>> m.layers[0].moving_mean.numpy().tolist(), r.layers, r.images
    ([4.5, 5.5, 6.5], 1, 4)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sila_keras.utils.errors import ConfigError

# The momentum fitted to a run (:func:`fitted_momentum`): at most Keras' default, and small
# enough that the initial statistics weigh less than STALE_SHARE after the run's steps.
MOMENTUM_CAP = 0.99
STALE_SHARE = 0.01
# The guard (:func:`collapsed_heads`): a head whose test predictions put at least this share
# on one class, while it trains at least TRAIN_OVER_CHANCE × chance.
COLLAPSE_SHARE = 0.9
TRAIN_OVER_CHANCE = 2.0
COLLAPSE_HINT = ("stale BatchNorm statistics (moving averages that still hold their initial "
                 "values: a BN momentum too slow for the run's length) are the likely cause; "
                 "recompute them with --precise-bn N (e.g. 2048), or lower --bn-momentum "
                 "(e.g. 0.99)")


def batchnorm_layers(model) -> list:
    """Every ``keras.layers.BatchNormalization`` of ``model``, nested models and layers
    included, each once, in the order Keras tracks them (SyncBN is the same class with
    ``synchronized=True``)."""
    import keras

    found, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def check_momentum(momentum: float | None) -> None:
    """Raises ConfigError unless ``momentum`` is None or in (0, 1)."""
    if momentum is None:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum < 1:
        raise ConfigError("`--bn-momentum` must be in (0, 1): the weight of the old moving "
                          "statistics at each step (Keras' default 0.99; PyTorch's momentum "
                          f"0.1 is 0.9 here). Received: bn_momentum={momentum!r}")


def set_bn_momentum(model, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer of ``model`` (nested models
    included). It is read when Keras traces the training step, so call it before ``fit``
    (a compiled model's traced step keeps the old value). Returns the number of layers.

    Raises:
        ConfigError: ``momentum`` outside (0, 1).
    """
    check_momentum(momentum)
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def fitted_momentum(total_steps: int) -> float:
    """The largest momentum, at most :data:`MOMENTUM_CAP` (Keras' default 0.99), with which
    the initial moving statistics weigh less than :data:`STALE_SHARE` (1 %) after
    ``total_steps`` updates: ``min(0.99, 0.01 ** (1 / S))`` — 0.99 from 459 steps on
    (keras.applications' 0.999 would need 4603), 0.955 for 100 steps.

    Example:
        >>> round(fitted_momentum(100), 4), fitted_momentum(625)
        (0.955, 0.99)
    """
    return min(MOMENTUM_CAP, STALE_SHARE ** (1.0 / max(1, int(total_steps))))


def cap_bn_momentum(model, cap: float) -> int:
    """Lower every BN layer whose momentum is above ``cap`` to ``cap`` (faster ones keep
    theirs). Returns the number of layers lowered.

    Raises:
        ConfigError: ``cap`` outside (0, 1).
    """
    check_momentum(cap)
    lowered = [la for la in batchnorm_layers(model) if la.momentum > cap]
    for layer in lowered:
        layer.momentum = float(cap)
    return len(lowered)


def bn_momenta(model) -> list[float]:
    """The distinct momenta of ``model``'s BN layers, sorted (empty without BN)."""
    return sorted({float(la.momentum) for la in batchnorm_layers(model)})


@dataclass(frozen=True)
class Recalibration:
    """What :func:`recompute_bn_statistics` did.

    Attributes:
        layers: BN layers whose moving statistics were recomputed.
        images: images seen (over all replicas).
        seconds: wall time, tracing included on a first call.
        steady_seconds: the wall time without the first batch's (which traces on a first
            call), scaled to all batches: the cost of a later call; None with one batch.
        frozen: BN layers left as they were because they are non-trainable (inference mode).
        unreached: trainable BN layers the forward pass never called (left as they were).
    """

    layers: int
    images: int
    seconds: float
    steady_seconds: float | None = None
    frozen: int = 0
    unreached: int = 0

    def to_dict(self) -> dict:
        steady = None if self.steady_seconds is None else round(self.steady_seconds, 3)
        return {"layers": self.layers, "images": self.images, "seconds": round(self.seconds, 3),
                "steady_seconds": steady, "frozen": self.frozen, "unreached": self.unreached}


class BatchNormRecalibrator:
    """Precise BN for one model: :meth:`run` recomputes its BN moving statistics.

    Keeps its traced forward pass between calls (a run recalibrates before every test
    evaluation: the trace is paid once), and traces again when the set of trainable BN
    layers changes (``--freeze-epochs``) or their ``synchronized`` flags do. Create and call it in the strategy's scope.

    Args:
        model: a Keras model (functional, Sequential or subclassed; nested models included).
        strategy: the ``tf.distribute`` strategy the model lives in (default: the current one).

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
        >>> r = BatchNormRecalibrator(m).run(np.ones((4, 2), "float32"), batch_size=2)
        >>> r.layers, m.layers[0].moving_variance.numpy().tolist()
        (1, [0.0, 0.0])
    """

    def __init__(self, model, strategy=None):
        import tensorflow as tf

        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self.layers = batchnorm_layers(model)
        self._key = None
        self._step = None
        self._reached: list[int] = []
        # What the BN layers record while the step traces; per thread, because
        # MirroredStrategy traces each replica's forward pass in a thread of its own.
        self._local = threading.local()

    # ------------------------------------------------------------------ the traced step

    def _trainable(self) -> list[int]:
        return [i for i, la in enumerate(self.layers)
                if la.trainable and not getattr(la, "renorm", False)]

    def _make_step(self, signature):
        import tensorflow as tf

        def replica_step(x):
            captured = self._local.captured = []
            self.model(x, training=True)
            reached = sorted({i for i, *_ in captured})
            self._reached = reached
            ctx = tf.distribute.get_replica_context()
            count = {i: [] for i in reached}
            total = {i: [] for i in reached}
            for i, n, s, _, _ in captured:
                count[i].append(n)
                total[i].append(s)
            images = tf.cast(tf.shape(x)[0], tf.float32)
            images, n_sum, s_sum = ctx.all_reduce(tf.distribute.ReduceOp.SUM, (
                images, [tf.add_n(count[i]) for i in reached],
                [tf.add_n(total[i]) for i in reached]))
            means = [tf.math.divide_no_nan(s, n) for s, n in zip(s_sum, n_sum)]
            dev = {i: [] for i in reached}
            for i, n, _, m, v in captured:  # n·(v + (m − M)²): deviations from the batch mean
                dev[i].append(n * (v + tf.square(m - means[reached.index(i)])))
            q_sum = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.add_n(dev[i]) for i in reached])
            self._local.captured = []
            return images, n_sum, means, [tf.math.divide_no_nan(q, n) for q, n in zip(q_sum, n_sum)]

        strategy = self.strategy

        # One trace for every batch size (the last batch is shorter).
        @tf.function(input_signature=[signature])
        def step(batch):
            return strategy.run(replica_step, args=(batch,))

        return step

    def _capture(self, index: int, original):
        """A replacement for a BN layer's ``call`` that records its input's per-channel
        count, sum, mean and (population) variance, then runs the layer as before."""
        import tensorflow as tf

        layer = self.layers[index]

        def call(inputs, training=None, mask=None):
            x = tf.cast(inputs, tf.float32)  # mixed precision: statistics in float32, as Keras
            rank = len(x.shape)
            axis = layer.axis % rank
            axes = [a for a in range(rank) if a != axis]
            n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float32)
            s = tf.reduce_sum(x, axes, keepdims=True)
            mean = tf.math.divide_no_nan(s, n)  # an empty replica (short last batch) gives 0
            var = tf.math.divide_no_nan(tf.reduce_sum(tf.square(x - mean), axes), n)
            self._local.captured.append((index, n, tf.reshape(s, [-1]), tf.reshape(mean, [-1]), var))
            return original(inputs, training=training, mask=mask)

        return call

    # ------------------------------------------------------------------ the public call

    def run(self, images, *, num_images: int | None = None, batch_size: int = 64) -> Recalibration:
        """Recompute the moving mean and variance of every trainable BN layer from ``images``.

        Args:
            images: a NumPy array ``(n, H, W, C)`` of model inputs, or a ``tf.data.Dataset``
                of batches (``x`` or ``(x, …)`` tuples: the first element is used).
            num_images: use only the first N images (default: all).
            batch_size: the batch size for an array, or when ``num_images`` re-batches a
                dataset (the batch size changes the training-mode features of deeper layers:
                use the training batch size).

        Returns:
            A :class:`Recalibration`.

        Raises:
            ConfigError: ``num_images`` negative; no image given.
        """
        t0 = time.perf_counter()
        trainable = self._trainable()
        frozen = len(self.layers) - len(trainable)
        dataset = _as_dataset(images, num_images, batch_size)
        if not trainable:
            return Recalibration(0, 0, time.perf_counter() - t0, frozen=frozen)
        dist = self.strategy.experimental_distribute_dataset(dataset)
        # what the trace depends on: which layers train, which synchronize, the batches' spec
        key = (tuple(trainable), tuple(bool(la.synchronized) for la in self.layers),
               dist.element_spec)
        if key != self._key:
            self._step, self._key = self._make_step(dist.element_spec), key
        pooled = {i: _Pooled(self.layers[i]) for i in trainable}
        keep = _snapshot(self.model, [self.layers[i] for i in trainable])
        originals = {i: self.layers[i].call for i in trainable}
        seen, batches, after_first = 0.0, 0, None
        local = self.strategy.experimental_local_results
        try:
            for i in trainable:  # only a (re)trace runs these; a traced step has them inside
                self.layers[i].call = self._capture(i, originals[i])
            for batch in dist:
                images_b, counts, means, variances = self._step(batch)
                seen += float(local(images_b)[0])
                for j, i in enumerate(self._reached):
                    pooled[i].add(local(counts[j])[0], local(means[j])[0], local(variances[j])[0])
                batches += 1
                if batches == 1:
                    after_first = time.perf_counter()
        finally:
            for i in trainable:
                del self.layers[i].call  # the class's own call again
            self._local.captured = []
            _restore(keep)
        if not seen:
            raise ConfigError("Precise BN needs at least one image. Received: no images")
        reached = [i for i in trainable if pooled[i].n > 0]
        for i in reached:
            pooled[i].assign()
        t1 = time.perf_counter()
        steady = (t1 - after_first) * batches / (batches - 1) if batches > 1 else None
        return Recalibration(len(reached), int(seen), t1 - t0, steady, frozen=frozen,
                             unreached=len(trainable) - len(reached))


def recompute_bn_statistics(model, images, *, num_images: int | None = None, batch_size: int = 64,
                            strategy=None) -> Recalibration:
    """Precise BN: recompute every trainable BatchNormalization layer's moving statistics
    from training-mode forward passes over ``images`` (see the module docstring); weights
    (kernels, γ, β) and every other variable are left bit-identical.

    Feed un-augmented training images (the test-time preprocessing): the statistics must be
    those of the inputs the model will see at test time, and test images are not augmented.

    One call; a run that recalibrates repeatedly keeps a :class:`BatchNormRecalibrator`.

    Args:
        model: the Keras model.
        images: NumPy array or ``tf.data.Dataset`` of batches (see
            :meth:`BatchNormRecalibrator.run`).
        num_images: use the first N images (default: all).
        batch_size: batch size for an array, or to re-batch a dataset cut to ``num_images``.
        strategy: the model's ``tf.distribute`` strategy (default: the current one).

    Returns:
        A :class:`Recalibration` (layers recomputed, images seen, seconds).
    """
    return BatchNormRecalibrator(model, strategy).run(images, num_images=num_images,
                                                      batch_size=batch_size)


class _Pooled:
    """Per-channel count, mean and sum of squared deviations over batches (float64, Chan)."""

    def __init__(self, layer):
        self.layer = layer
        self.n = 0.0
        self.mean = None
        self.m2 = None

    def add(self, n, mean, var) -> None:
        n = float(np.asarray(n))
        if n <= 0:
            return
        mean = np.asarray(mean, np.float64)
        var = np.asarray(var, np.float64)
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, var * n
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + var * n + delta ** 2 * (self.n * n / total)
        self.n = total

    def assign(self) -> None:
        self.layer.moving_mean.assign(self.mean.astype(np.float32))
        self.layer.moving_variance.assign((self.m2 / self.n).astype(np.float32))


def _as_dataset(images, num_images: int | None, batch_size: int):
    import tensorflow as tf

    if num_images is not None and (isinstance(num_images, bool) or int(num_images) != num_images
                                   or num_images < 0):
        raise ConfigError("`num_images` must be an integer >= 0. "
                          f"Received: num_images={num_images!r}")
    if isinstance(images, tf.data.Dataset):
        ds = images.map(lambda *xs: xs[0])
        if num_images is not None:
            ds = ds.unbatch().take(int(num_images)).batch(int(batch_size))
        return ds
    x = np.asarray(images, np.float32)
    if num_images is not None:
        x = x[:int(num_images)]
    return tf.data.Dataset.from_tensor_slices(x).batch(int(batch_size))


def _snapshot(model, recomputed: Sequence) -> list[tuple]:
    """Every non-trainable variable except the moving statistics being recomputed (random
    seed states of dropout layers, other BN layers…), to put back after the forward passes,
    so that recalibrating changes nothing else (training goes on exactly as without it)."""
    skip = {id(v) for la in recomputed for v in (la.moving_mean, la.moving_variance)}
    return [(v, np.array(v.numpy())) for v in model.non_trainable_variables if id(v) not in skip]


def _restore(saved: list[tuple]) -> None:
    for variable, value in saved:
        variable.assign(value)


# --------------------------------------------------------------------------- the guard


def collapsed_heads(predictions: Mapping[str, np.ndarray], train_accuracy: Mapping[str, float],
                    num_classes: int, class_names: Sequence[str] | None = None) -> list[dict]:
    """Heads that predict one class for (almost) every test image while they train well.

    A head is flagged when its most frequent predicted class takes at least
    :data:`COLLAPSE_SHARE` of the test predictions and its last training accuracy is at
    least :data:`TRAIN_OVER_CHANCE` × chance (1/N): it learned something, yet at test time
    answers one class — the signature of stale BatchNorm statistics.

    Args:
        predictions: head name → predicted class per test image.
        train_accuracy: head name → training accuracy of the last epoch (heads without one
            are not judged).
        num_classes: N.
        class_names: optional names, for the message.

    Returns:
        One dict per flagged head: ``kind`` (``"collapsed_predictions"``), ``head``,
        ``top_class`` (index), ``top_class_name``, ``top_class_share``, ``train_accuracy``,
        ``hint`` — the form ``summary.json`` records under ``warnings``.
    """
    out = []
    for head, pred in predictions.items():
        pred = np.asarray(pred).reshape(-1)
        acc = train_accuracy.get(head)
        if not len(pred) or acc is None:
            continue
        counts = np.bincount(pred.astype(np.int64), minlength=num_classes)
        top = int(counts.argmax())
        share = float(counts[top] / len(pred))
        if share >= COLLAPSE_SHARE and float(acc) >= TRAIN_OVER_CHANCE / num_classes:
            name = class_names[top] if class_names is not None and top < len(class_names) else str(top)
            out.append({"kind": "collapsed_predictions", "head": head, "top_class": top,
                        "top_class_name": name, "top_class_share": round(share, 4),
                        "train_accuracy": round(float(acc), 4), "hint": COLLAPSE_HINT})
    return out


def warning_line(warnings: Sequence[Mapping]) -> str:
    """One line for the :func:`collapsed_heads` entries of a run (printed after training;
    reports show it)."""
    heads = ", ".join(f"{w['head']} (class '{w['top_class_name']}', "
                      f"{100 * w['top_class_share']:.0f}%)" for w in warnings)
    accs = sorted(100 * w["train_accuracy"] for w in warnings)
    acc = f"{accs[0]:.1f}%" if accs[0] == accs[-1] else f"{accs[0]:.1f}–{accs[-1]:.1f}%"
    verb = "predicts" if len(warnings) == 1 else "predict"
    return (f"{heads} {verb} one class for the test images while training at {acc} accuracy: "
            f"{warnings[0]['hint']}.")
