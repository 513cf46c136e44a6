"""Per-head metrics on `sila_logits`.

Each head k owns the slice ``[(k-1)·N, k·N)`` of the concatenated logits. At test
time any head can serve on its own: its prediction is the argmax of its own
slice, and its NLL uses its own N-way softmax.

Metric names are part of the public contract: ``head_k_acc`` for each head,
``top5`` (head 1), ``nll`` (head 1). Keras prefixes validation values with
``val_`` (e.g. ``val_head_2_acc``).
"""

from __future__ import annotations

import keras
from keras import ops

from sila_keras.utils.errors import ConfigError


def head_logits(y_pred, head: int, num_classes: int):
    """Slice the logits of head ``head`` (1-based) out of ``sila_logits``."""
    start = (head - 1) * num_classes
    return ops.cast(y_pred[:, start:start + num_classes], "float32")


def _labels(y_true):
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def head_accuracy(y_true, y_pred, head: int = 1, num_classes: int = 10):
    """Per-example top-1 correctness (0/1) of one head."""
    pred = ops.argmax(head_logits(y_pred, head, num_classes), axis=-1)
    return ops.cast(ops.equal(ops.cast(pred, "int32"), _labels(y_true)), "float32")


def head_top_k(y_true, y_pred, head: int = 1, num_classes: int = 10, k: int = 5):
    """Per-example top-k correctness (0/1) of one head."""
    logits = head_logits(y_pred, head, num_classes)
    k = min(k, num_classes)
    true_logit = ops.take_along_axis(logits, _labels(y_true)[:, None], axis=-1)
    rank = ops.sum(ops.cast(logits > true_logit, "int32"), axis=-1)
    return ops.cast(rank < k, "float32")


def head_nll(y_true, y_pred, head: int = 1, num_classes: int = 10):
    """Per-example negative log-likelihood under one head's own N-way softmax."""
    log_probs = ops.log_softmax(head_logits(y_pred, head, num_classes), axis=-1)
    return -ops.take_along_axis(log_probs, _labels(y_true)[:, None], axis=-1)[:, 0]


class _HeadMetric(keras.metrics.MeanMetricWrapper):
    _fn = None

    def __init__(self, head: int = 1, num_classes: int = 10, name: str | None = None,
                 dtype=None, **fn_kwargs):
        if head < 1:
            raise ConfigError(f"Heads are numbered from 1. Received: head={head}")
        self.head = int(head)
        self.num_classes = int(num_classes)
        self._fn_kwargs = fn_kwargs
        super().__init__(type(self)._fn, name=name or self.default_name(), dtype=dtype,
                         head=self.head, num_classes=self.num_classes, **fn_kwargs)

    def default_name(self) -> str:
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "head": self.head,
                "num_classes": self.num_classes, **self._fn_kwargs}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="sila_keras")
class HeadAccuracy(_HeadMetric):
    """Top-1 accuracy of head k, named ``head_k_acc``.

    Example:
        >>> m = HeadAccuracy(head=2, num_classes=10)
        >>> m.name
        'head_2_acc'
    """

    _fn = staticmethod(head_accuracy)

    def default_name(self):
        return f"head_{self.head}_acc"


@keras.saving.register_keras_serializable(package="sila_keras")
class HeadTopK(_HeadMetric):
    """Top-k accuracy of head k (default: head 1, k=5, named ``top5``)."""

    _fn = staticmethod(head_top_k)

    def __init__(self, head: int = 1, num_classes: int = 10, k: int = 5, name=None, dtype=None):
        super().__init__(head=head, num_classes=num_classes, name=name, dtype=dtype, k=int(k))

    def default_name(self):
        k = self._fn_kwargs["k"]
        return f"top{k}" if self.head == 1 else f"head_{self.head}_top{k}"


@keras.saving.register_keras_serializable(package="sila_keras")
class HeadNLL(_HeadMetric):
    """NLL of head k under its own N-way softmax (default head 1, named ``nll``)."""

    _fn = staticmethod(head_nll)

    def default_name(self):
        return "nll" if self.head == 1 else f"head_{self.head}_nll"


def sila_metrics(num_heads: int, num_classes: int) -> list[keras.metrics.Metric]:
    """The standard metric set: ``head_k_acc`` for every head; ``top2`` … ``top5`` and ``nll``
    of head 1 (SilaNet Table 2 reports Top-1…Top-5)."""
    return ([HeadAccuracy(k, num_classes) for k in range(1, num_heads + 1)]
            + [HeadTopK(1, num_classes, k=k) for k in (2, 3, 4, 5)] + [HeadNLL(1, num_classes)])
