"""SiLa loss against a NumPy reference (SilaNet Eq. 4, SiLa learning Eq. 10)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sila_keras.core.losses import SilaLoss, set_weights, sila_loss


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(y, z, n, beta=0.1, lam=0.5, betas=None):
    """Literal transcription of the paper's PyTorch code (Fig. 1): M full CEs."""
    ls = np_log_softmax(z.astype(np.float64))
    m = z.shape[1] // n
    if betas is not None:
        return np.mean([-sum(betas[c] * ls[i, y[i] + c * n] for c in range(m)) for i in range(len(y))])
    loss = np.mean(-ls[np.arange(len(y)), y])
    for i in range(1, m):
        loss += lam ** (i - 1) * beta * np.mean(-ls[np.arange(len(y)), y + i * n])
    return loss


@pytest.mark.parametrize("n,m,beta,lam", [(10, 3, 0.1, 0.5), (10, 2, 0.3, 0.5), (5, 4, 0.05, 0.8),
                                          (100, 3, 1.0, 1.0), (3, 5, 0.0, 0.0)])
def test_matches_reference(n, m, beta, lam):
    rng = np.random.default_rng(n * m)
    y = rng.integers(0, n, 16)
    z = rng.normal(0, 3, (16, m * n)).astype(np.float32)
    got = float(SilaLoss(n, beta=beta, lam=lam)(y, z))
    assert got == pytest.approx(reference(y, z, n, beta, lam), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("betas", [[1.0, 1.0], [1.0, 0.5, 0.25], [0.0, 2.0, 1.0, 0.3]])
def test_explicit_betas_match_eq10(betas):
    n = 7
    rng = np.random.default_rng(len(betas))
    y = rng.integers(0, n, 9)
    z = rng.normal(0, 2, (9, len(betas) * n)).astype(np.float32)
    got = float(SilaLoss(n, betas=betas)(y, z))
    assert got == pytest.approx(reference(y, z, n, betas=betas), rel=1e-5)


def test_m1_equals_sparse_categorical_crossentropy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 32)
    z = rng.normal(0, 4, (32, 10)).astype(np.float32)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, z)
    assert float(SilaLoss(10, beta=0.7, lam=0.3)(y, z)) == pytest.approx(float(ce), rel=1e-6)


def test_labels_of_shape_b1_accepted_and_per_example_values():
    z = np.random.default_rng(1).normal(size=(4, 30)).astype(np.float32)
    y = np.array([[0], [3], [9], [5]])
    per_example = sila_loss(y, z, 10, set_weights(3))
    assert tuple(per_example.shape) == (4,)
    assert float(np.mean(per_example)) == pytest.approx(float(SilaLoss(10)(y, z)), rel=1e-6)


def test_gradients_finite_for_extreme_logits():
    z = tf.Variable(np.array([[1e4, -1e4] * 15], np.float32))
    with tf.GradientTape() as tape:
        loss = SilaLoss(10)(np.array([7]), z)
    g = tape.gradient(loss, z)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(g.numpy()))


def test_serialization_round_trip():
    loss = SilaLoss(10, beta=0.2, lam=0.7)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, SilaLoss) and (again.beta, again.lam, again.num_classes) == (0.2, 0.7, 10)
    b = SilaLoss.from_config(SilaLoss(4, betas=[1, 1]).get_config())
    assert b.betas == [1.0, 1.0]


@pytest.mark.parametrize("kwargs,match", [
    ({"beta": -0.1}, "beta.*>= 0"),
    ({"lam": -1.0}, "lam.*>= 0"),
    ({"betas": [1.0, -2.0]}, "betas"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SilaLoss(10, **kwargs)


def test_width_not_multiple_of_n():
    with pytest.raises(ValueError, match="multiple of num_classes=10.*width=25"):
        SilaLoss(10)(np.array([1]), np.zeros((1, 25), np.float32))


def test_betas_length_must_equal_m():
    with pytest.raises(ValueError, match="one weight per label set"):
        SilaLoss(10, betas=[1.0, 1.0])(np.array([1]), np.zeros((1, 30), np.float32))
