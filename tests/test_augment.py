"""AutoAugment (CIFAR-10 policy) and RandAugment: every op, the policy table, the pipeline."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from sila_keras import augment as A
from sila_keras.pipeline import AUGMENTATIONS, train_dataset

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
IMAGE[:8, :8] = RNG.integers(60, 90, (8, 8, 3))  # a flat patch so histograms are uneven


def op(name, magnitude, sign=1.0, image=IMAGE):
    return A.apply_op(tf.constant(image), name, magnitude, sign).numpy()


def test_policy_table_is_the_published_cifar10_policy():
    assert len(A.CIFAR10_POLICY) == 25
    assert all(len(sub) == 2 for sub in A.CIFAR10_POLICY)
    used = {name for sub in A.CIFAR10_POLICY for name, _, _ in sub}
    # 14 of the 15 operations (ShearX only appears in RandAugment and other policies)
    assert used == set(A.OPS) - {"Identity", "ShearX"}
    assert set(A.RANDAUGMENT_OPS) == set(A.OPS) - {"Invert"}
    for sub in A.CIFAR10_POLICY:
        for _name, prob, mag in sub:
            assert 0.0 <= prob <= 1.0 and 0 <= mag <= 9
    assert A.CIFAR10_POLICY[0] == (("Invert", 0.1, 7), ("Contrast", 0.2, 6))
    assert A.CIFAR10_POLICY[24] == (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1))


@pytest.mark.parametrize("name", sorted(A.OPS))
@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_every_op_keeps_shape_and_dtype(name, shape):
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    for magnitude in (0, 4, 9):
        for sign in (-1.0, 1.0):
            out = A.apply_op(tf.constant(image), name, magnitude, sign)
            assert out.dtype == tf.uint8 and tuple(out.shape) == shape


@pytest.mark.parametrize("name, reference, tol", [
    ("Invert", lambda im: ImageOps.invert(im), 0),
    ("AutoContrast", lambda im: ImageOps.autocontrast(im), 1),
    ("Equalize", lambda im: ImageOps.equalize(im), 0),
    ("Solarize", lambda im: ImageOps.solarize(im, 255 * (1 - 5 / 9)), 0),
    ("Posterize", lambda im: ImageOps.posterize(im, 8 - round(4 * 5 / 9)), 0),
    ("Color", lambda im: ImageEnhance.Color(im).enhance(1 + 0.9 * 5 / 9), 2),
    ("Contrast", lambda im: ImageEnhance.Contrast(im).enhance(1 + 0.9 * 5 / 9), 2),
    ("Brightness", lambda im: ImageEnhance.Brightness(im).enhance(1 + 0.9 * 5 / 9), 1),
    ("Sharpness", lambda im: ImageEnhance.Sharpness(im).enhance(1 + 0.9 * 5 / 9), 2),
])
def test_pixel_ops_match_pil(name, reference, tol):
    expected = np.asarray(reference(Image.fromarray(IMAGE)), np.int32)
    got = op(name, 5).astype(np.int32)
    assert np.abs(got - expected).max() <= tol


def test_geometric_ops_move_pixels_and_fill_grey():
    shifted = op("TranslateX", 9, 1.0)  # round(150/331 · 32) = 15 pixels
    np.testing.assert_array_equal(shifted[:, :17], IMAGE[:, 15:])
    assert (shifted[:, 17:] == 128).all()
    np.testing.assert_array_equal(op("TranslateY", 9, -1.0)[15:], IMAGE[:17])
    np.testing.assert_array_equal(op("Rotate", 0), IMAGE)
    rotated = op("Rotate", 9, 1.0)
    assert not np.array_equal(rotated, IMAGE) and (rotated == 128).all(axis=-1).sum() > 0
    sheared = op("ShearX", 9, 1.0)
    np.testing.assert_array_equal(sheared[0], IMAGE[0])  # row 0 does not move under x-shear
    assert not np.array_equal(sheared, IMAGE)


@pytest.mark.parametrize("index", range(25))
def test_each_subpolicy_applies_both_ops(index):
    image = tf.constant(IMAGE, tf.float32)
    (op1, p1, m1), (op2, p2, m2) = A.CIFAR10_POLICY[index]
    both = A.apply_subpolicy(image, index, tf.constant([0.0, 0.0, 0.9, 0.2]))
    expected = A.apply_op(image, op1, m1, 1.0) if p1 > 0 else image
    expected = A.apply_op(expected, op2, m2, -1.0) if p2 > 0 else expected  # (Invert, 0.0) never runs
    np.testing.assert_array_equal(both.numpy(), expected.numpy())
    skipped = A.apply_subpolicy(image, index, tf.constant([0.999, 0.999, 0.5, 0.5]))
    np.testing.assert_array_equal(skipped.numpy(), IMAGE)


def test_registered_and_deterministic_in_the_pipeline():
    assert {"autoaugment", "randaugment"} <= set(AUGMENTATIONS)
    x = np.stack([IMAGE] * 12)
    y = np.arange(12) % 3
    for name in ("autoaugment", "randaugment"):
        ds = train_dataset(x, y, 6, seed=1, augment=name, epochs=2)
        batches = [np.concatenate([b[0].numpy() for b in ds]) for _ in range(2)]
        np.testing.assert_array_equal(batches[0], batches[1])  # stateless: same seed, same images
        out = batches[0]
        assert out.shape == (24, 32, 32, 3) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
        assert not np.array_equal(out[:12], out[12:])  # epoch 2 is augmented differently
        assert any(not np.array_equal(img, IMAGE) for img in out)


def test_cutout_greys_a_square():
    out = A.cutout(tf.constant(IMAGE), tf.constant([4, 2])).numpy()
    changed = np.any(out != IMAGE, axis=-1)
    assert 0 < changed.sum() <= 16 * 16 and (out[changed] == 128).all()


def test_auto_augment_output_is_uint8_hwc():
    for s in range(8):
        out = A.auto_augment(tf.constant(IMAGE), tf.constant([s, 7]))
        assert out.dtype == tf.uint8 and tuple(out.shape) == IMAGE.shape


def test_bad_op_arguments():
    with pytest.raises(ValueError, match="Unknown augmentation op 'Blur'. Available"):
        op("Blur", 3)
    with pytest.raises(ValueError, match=r"`magnitude` must be in \[0, 9\]"):
        op("Rotate", 10)
