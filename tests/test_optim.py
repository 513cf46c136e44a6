"""SGDL2: PyTorch-style coupled L2 (``torch.optim.SGD(weight_decay=…)``), checked by hand."""

import keras
import numpy as np
import pytest

from sila_keras.training.optim import SGDL2

W0 = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
GRADS = [np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32),
         np.array([[-0.2, 0.05], [0.1, 0.3]], np.float32),
         np.array([[0.0, -0.1], [0.2, -0.2]], np.float32)]


def torch_sgd(w, grads, lr, momentum, wd, nesterov=False):
    """torch.optim.SGD's step (dampening 0): g ← g + wd·w; buf ← momentum·buf + g (buf = g on
    the first step); w ← w − lr·buf (Nesterov: w ← w − lr·(g + momentum·buf))."""
    w, buf, out = w.astype(np.float64), None, []
    for g in grads:
        g = g + wd * w
        buf = g.copy() if buf is None else momentum * buf + g
        w = w - lr * ((g + momentum * buf) if nesterov else buf)
        out.append(w.copy())
    return out


def keras_steps(optimizer, grads):
    var = keras.Variable(W0.copy())
    out = []
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        out.append(keras.ops.convert_to_numpy(var).copy())
    return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_three_steps_match_the_hand_computed_pytorch_update(nesterov):
    lr, momentum, wd = 0.1, 0.9, 0.05
    got = keras_steps(SGDL2(l2=wd, learning_rate=lr, momentum=momentum, nesterov=nesterov), GRADS)
    want = torch_sgd(W0, GRADS, lr, momentum, wd, nesterov)
    for step, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=f"step {step}")
    # The first step by hand: w − lr·(g + wd·w), × (1 + momentum) with Nesterov (buf = g).
    first = W0 - lr * (1 + momentum * nesterov) * (GRADS[0] + wd * W0)
    np.testing.assert_allclose(got[0], first, rtol=1e-6)


def test_coupled_decay_differs_from_keras_decoupled_weight_decay():
    """Keras' own ``weight_decay`` (decoupled) is a different update: the check above would fail."""
    lr, momentum, wd = 0.1, 0.9, 0.05
    want = torch_sgd(W0, GRADS, lr, momentum, wd)[-1]
    decoupled = keras_steps(keras.optimizers.SGD(learning_rate=lr, momentum=momentum,
                                                 weight_decay=wd), GRADS)[-1]
    assert not np.allclose(decoupled, want, rtol=1e-4)


def test_zero_decay_is_plain_sgd_and_config_round_trips():
    got = keras_steps(SGDL2(l2=0.0, learning_rate=0.1, momentum=0.9), GRADS)[-1]
    np.testing.assert_allclose(got, torch_sgd(W0, GRADS, 0.1, 0.9, 0.0)[-1], rtol=1e-6, atol=1e-7)
    opt = SGDL2.from_config(SGDL2(l2=5e-4, learning_rate=0.1, momentum=0.9).get_config())
    assert opt.l2 == 5e-4 and opt.get_config()["weight_decay"] is None
