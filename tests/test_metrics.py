"""Per-head metrics on sila_logits."""

import keras
import numpy as np
import pytest

from sila_keras.core.metrics import HeadAccuracy, HeadNLL, HeadTopK, sila_metrics


def logits_for(y, n=4, m=2):
    z = np.zeros((len(y), n * m), np.float32)
    z[np.arange(len(y)), y] = 5.0  # head 1 always right
    z[np.arange(len(y)), n + (y + 1) % n] = 5.0  # head 2 always wrong
    return z


def test_head_accuracy_uses_its_own_slice():
    y = np.array([0, 1, 2, 3])
    z = logits_for(y)
    a1, a2 = HeadAccuracy(1, 4), HeadAccuracy(2, 4)
    a1.update_state(y, z)
    a2.update_state(y, z)
    assert float(a1.result()) == 1.0 and float(a2.result()) == 0.0
    assert (a1.name, a2.name) == ("head_1_acc", "head_2_acc")


def test_top_k_and_nll_against_numpy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 50)
    z = rng.normal(size=(50, 20)).astype(np.float32)
    top = HeadTopK(1, 10, k=5)
    top.update_state(y, z)
    ranks = (z[:, :10] > z[np.arange(50), y][:, None]).sum(1)
    assert float(top.result()) == pytest.approx(np.mean(ranks < 5))
    nll = HeadNLL(1, 10)
    nll.update_state(y, z)
    h = z[:, :10] - z[:, :10].max(1, keepdims=True)
    ref = -(h[np.arange(50), y] - np.log(np.exp(h).sum(1))).mean()
    assert float(nll.result()) == pytest.approx(ref, rel=1e-5)
    assert (top.name, nll.name) == ("top5", "nll")


def test_metric_set_and_serialization():
    names = [m.name for m in sila_metrics(3, 10)]
    assert names == ["head_1_acc", "head_2_acc", "head_3_acc", "top2", "top3", "top4", "top5", "nll"]
    m = keras.metrics.deserialize(keras.metrics.serialize(HeadAccuracy(3, 100)))
    assert (m.head, m.num_classes, m.name) == (3, 100, "head_3_acc")


def test_head_numbered_from_one():
    with pytest.raises(ValueError, match="numbered from 1"):
        HeadAccuracy(0, 10)
