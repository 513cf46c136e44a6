"""AutoAugment (CIFAR-10 policy) in both magnitude semantics, RandAugment, and Cutout: every
op, the policy table, the references (PIL / NumPy, computed here), the pipeline, bad input."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from sila_keras.data import augment as A
from sila_keras.data import augment_ops
from sila_keras.data.pipeline import AUGMENTATIONS, batch_randint, cutout_batch, train_dataset

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
IMAGE[:8, :8] = RNG.integers(60, 90, (8, 8, 3))  # a flat patch so histograms are uneven
# The official code's fill: its normalisation zero, the CIFAR-10 mean, 255 · (.4914, .4822, .4465)
MEAN = np.array([125, 123, 114])


def op(name, magnitude, sign=1.0, image=IMAGE, semantics="official"):
    return A.apply_op(tf.constant(image), name, magnitude, sign, semantics=semantics).numpy()


def official_unwrap(rgba):
    """The official code's ``pil_unwrap``: transparent pixels become the mean pixel."""
    a = np.asarray(rgba).astype(np.int32)
    rgb = a[..., :3].copy()
    rgb[a[..., 3] == 0] = MEAN
    return rgb


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


@pytest.mark.parametrize("semantics", A.SEMANTICS)
@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_every_op_keeps_shape_and_dtype(semantics, shape):
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    for name in A.OPS:
        for magnitude, sign in ((0, 1.0), (9, -1.0)):
            out = A.apply_op(tf.constant(image), name, magnitude, sign, semantics=semantics)
            assert out.dtype == tf.uint8 and tuple(out.shape) == shape, name


# --------------------------------------------------------------------------- hand-computed images


def _luma(x):
    """PIL's documented L = R·299/1000 + G·587/1000 + B·114/1000, rounded."""
    return np.floor((299 * x[..., :1] + 587 * x[..., 1:2] + 114 * x[..., 2:3]) / 1000 + 0.5)


SMALL = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                  [[100, 100, 100], [200, 40, 90], [13, 77, 250]]], np.uint8)


@pytest.mark.parametrize("semantics, magnitude, sign, factor", [
    ("official", 2, -1.0, 0.1 + 1.8 * 2 / 10),  # 0.46: no sign in the official code
    ("official", 9, 1.0, 0.1 + 1.8 * 9 / 10),  # 1.72
    ("torchvision", 2, -1.0, 1 - 0.9 * 2 / 9),  # 0.8
    ("torchvision", 9, 1.0, 1 + 0.9),  # 1.9
])
def test_color_against_hand_computed(semantics, magnitude, sign, factor):
    x = SMALL.astype(np.float32)
    grey = _luma(SMALL.astype(np.int64)).astype(np.float32)
    expected = np.clip(np.floor(grey + np.float32(factor) * (x - grey)), 0, 255)  # PIL truncates
    np.testing.assert_array_equal(op("Color", magnitude, sign, SMALL, semantics), expected)


@pytest.mark.parametrize("semantics, magnitude, bits", [
    ("official", 0, 4), ("official", 5, 2), ("official", 7, 2), ("official", 9, 1),
    ("torchvision", 0, 8), ("torchvision", 5, 6), ("torchvision", 7, 5), ("torchvision", 9, 4),
])
def test_posterize_against_hand_computed(semantics, magnitude, bits):
    expected = SMALL & np.uint8((0xFF << (8 - bits)) & 0xFF)
    np.testing.assert_array_equal(op("Posterize", magnitude, 1.0, SMALL, semantics), expected)


@pytest.mark.parametrize("semantics, magnitude, shift, fill", [
    ("official", 3, 3, MEAN), ("official", 9, 9, MEAN),  # int(m·10/10) px
    ("torchvision", 3, 4, 0), ("torchvision", 9, 14, 0),  # int(150/331·32·m/9) px
])
def test_translate_against_hand_computed(semantics, magnitude, shift, fill):
    image = RNG.integers(0, 256, (4, 32, 3), dtype=np.uint8)
    left = op("TranslateX", magnitude, 1.0, image, semantics)  # output x samples input x + t
    np.testing.assert_array_equal(left[:, :32 - shift], image[:, shift:])
    assert (left[:, 32 - shift:] == fill).all()
    right = op("TranslateX", magnitude, -1.0, image, semantics)
    np.testing.assert_array_equal(right[:, shift:], image[:, :32 - shift])
    tall = np.transpose(image, (1, 0, 2)).copy()  # (32, 4, 3): TranslateY scales with the height
    down = op("TranslateY", magnitude, -1.0, tall, semantics)
    np.testing.assert_array_equal(down[shift:], tall[:32 - shift])
    assert (down[:shift] == fill).all()


# --------------------------------------------------------------------------- against PIL

PIL_IMAGE = Image.fromarray(IMAGE)


ENHANCERS = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
             "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}


@pytest.mark.parametrize("name", sorted(ENHANCERS))
@pytest.mark.parametrize("semantics, magnitude, sign, factor", [
    ("official", 7, -1.0, 0.1 + 1.8 * 7 / 10), ("official", 1, 1.0, 0.1 + 1.8 * 1 / 10),
    ("torchvision", 7, -1.0, 1 - 0.9 * 7 / 9), ("torchvision", 4, 1.0, 1 + 0.9 * 4 / 9)])
def test_enhance_ops_are_pil_exactly(name, semantics, magnitude, sign, factor):
    expected = np.asarray(ENHANCERS[name](PIL_IMAGE).enhance(factor))
    np.testing.assert_array_equal(op(name, magnitude, sign, semantics=semantics), expected)


@pytest.mark.parametrize("semantics, name, reference", [
    ("official", "Solarize", lambda im: ImageOps.solarize(im, 256 - int(7 * 256 / 10))),
    ("official", "Posterize", lambda im: ImageOps.posterize(im, 4 - int(7 * 4 / 10))),
    ("torchvision", "Solarize", lambda im: ImageOps.solarize(im, 255 * (1 - 7 / 9))),
    ("torchvision", "Posterize", lambda im: ImageOps.posterize(im, 8 - round(4 * 7 / 9))),
])
def test_threshold_ops_are_pil_exactly(semantics, name, reference):
    np.testing.assert_array_equal(op(name, 7, semantics=semantics), np.asarray(reference(PIL_IMAGE)))


@pytest.mark.parametrize("semantics", A.SEMANTICS)
@pytest.mark.parametrize("name, reference", [
    ("Invert", ImageOps.invert), ("AutoContrast", ImageOps.autocontrast),
    ("Equalize", ImageOps.equalize)])
def test_unparametrised_ops_are_the_same_in_both(semantics, name, reference):
    np.testing.assert_array_equal(op(name, 5, semantics=semantics), np.asarray(reference(PIL_IMAGE)))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_official_geometric_ops_are_pil_on_rgba_with_mean_fill(sign):
    rgba = PIL_IMAGE.convert("RGBA")
    v = 0.3 * 8 / 10 * sign
    cases = {"ShearX": rgba.transform((32, 32), Image.AFFINE, (1, v, 0, 0, 1, 0)),
             "ShearY": rgba.transform((32, 32), Image.AFFINE, (1, 0, 0, v, 1, 0)),
             "Rotate": rgba.rotate(int(8 * 30 / 10) * sign)}
    for name, expected in cases.items():
        got = op(name, 8, sign)
        np.testing.assert_array_equal(got, official_unwrap(expected), err_msg=name)
        assert (got == MEAN).all(-1).sum() > 0, name


def test_torchvision_geometric_ops_are_pil_with_black_fill():
    v = 0.3 * 8 / 9
    np.testing.assert_array_equal(
        op("ShearY", 8, -1.0, semantics="torchvision"),
        np.asarray(PIL_IMAGE.transform((32, 32), Image.AFFINE, (1, 0, 0, -v, 1, 0))))
    rotated = op("Rotate", 8, 1.0, semantics="torchvision")
    np.testing.assert_array_equal(rotated, np.asarray(PIL_IMAGE.rotate(30 * 8 / 9)))
    np.testing.assert_array_equal(op("Rotate", 0, semantics="torchvision"), IMAGE)


def test_official_fill_inside_a_subpolicy():
    """Transparent pixels end as the mean, unless a later op converts to RGB (then black)."""
    image = tf.constant(IMAGE, tf.float32)
    rgba = PIL_IMAGE.convert("RGBA")
    draws = tf.constant([0.0, 0.0, 0.9, 0.9])  # both steps run, both signs +1
    # 5: (ShearY, 0.2, 7), (Posterize, 0.3, 7): posterize runs on convert('RGB')
    sheared = rgba.transform((32, 32), Image.AFFINE, (1, 0, 0, 0.21, 1, 0))
    expected = official_unwrap(ImageOps.posterize(sheared.convert("RGB"), 2).convert("RGBA"))
    got = A.apply_subpolicy(image, 5, draws).numpy()
    np.testing.assert_array_equal(got, expected)
    assert (got == 0).all(-1).sum() > 0  # the exposed corner is black
    # 1: (Rotate, 0.7, 2), (TranslateX, 0.3, 9): transparent to the end → the mean
    moved = rgba.rotate(6).transform((32, 32), Image.AFFINE, (1, 0, 9, 0, 1, 0))
    got = A.apply_subpolicy(image, 1, draws).numpy()
    np.testing.assert_array_equal(got, official_unwrap(moved))
    assert (got[:, -9:] == MEAN).all()


@pytest.mark.parametrize("index", range(25))
def test_each_subpolicy_applies_both_ops(index):
    """torchvision semantics (no alpha channel): a sub-policy is its two ops in a row."""
    image = tf.constant(IMAGE, tf.float32)
    (op1, p1, m1), (op2, p2, m2) = A.CIFAR10_POLICY[index]
    sem = "torchvision"
    both = A.apply_subpolicy(image, index, tf.constant([0.0, 0.0, 0.9, 0.2]), semantics=sem)
    expected = A.apply_op(image, op1, m1, 1.0, semantics=sem) if p1 > 0 else image
    if p2 > 0:  # (Invert, 0.0) never runs
        expected = A.apply_op(expected, op2, m2, -1.0, semantics=sem)
    np.testing.assert_array_equal(both.numpy(), expected.numpy())
    for s in A.SEMANTICS:
        skipped = A.apply_subpolicy(image, index, tf.constant([0.999, 0.999, 0.5, 0.5]), semantics=s)
        np.testing.assert_array_equal(skipped.numpy(), IMAGE)


def test_randaugment_keeps_torchvision_semantics():
    # a RandAugment op at M=9 of 31 bins: TranslateX by int(150/331·32·9/30) = 4 px, fill 0
    table = A.OP_NAMES.index("TranslateX")
    x = tf.constant(IMAGE, tf.float32)
    out = augment_ops.apply_by_id(x, tf.constant(table), tf.constant(9.0), tf.constant(1.0), 3,
                            "torchvision", 31).numpy()
    np.testing.assert_array_equal(out[:, :28], IMAGE[:, 4:])
    assert (out[:, 28:] == 0).all()


# --------------------------------------------------------------------------- pipeline and Cutout


def test_registered_and_deterministic_in_the_pipeline():
    """Per-example path; autoaugment with Cutout stays a pure function of (seed, epoch)."""
    assert {"autoaugment", "randaugment"} <= set(AUGMENTATIONS)
    x = np.stack([IMAGE] * 8)
    y = np.arange(8) % 2
    for name, cutout in (("autoaugment", 8), ("randaugment", 0)):
        ds = train_dataset(x, y, 4, seed=1, augment=name, epochs=2, cutout=cutout)
        batches = [np.concatenate([b[0].numpy() for b in ds]) for _ in range(2)]
        np.testing.assert_array_equal(batches[0], batches[1])  # stateless: same seed, same images
        out = batches[0]
        assert out.shape == (16, 32, 32, 3) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
        assert not np.array_equal(out[:8], out[8:])  # epoch 2 is augmented differently
        assert any(not np.array_equal(img, IMAGE) for img in out)
        if cutout:  # what --resume after epoch 1 sees; a square in every image
            resumed = train_dataset(x, y, 4, seed=1, augment=name, initial_epoch=1, epochs=2,
                                    cutout=cutout)
            np.testing.assert_array_equal(np.concatenate([b[0] for b in resumed]), out[8:])
            assert ((out == 128).all(-1).sum(axis=(1, 2)) >= 16).all()


def test_cutout_greys_a_square_clipped_at_the_border():
    out = A.cutout(tf.constant(IMAGE), tf.constant([4, 2])).numpy()
    changed = np.any(out != IMAGE, axis=-1)
    assert 0 < changed.sum() <= 16 * 16 and (out[changed] == 128).all()
    flat = np.full((12, 10, 1), 7, np.uint8)  # any size, any channel count
    sizes = {int((A.cutout(tf.constant(flat), tf.constant([s, 3]), 6).numpy() == 128).sum())
             for s in range(40)}
    assert max(sizes) == 36 and min(sizes) >= 9 and len(sizes) > 2  # 3×3 … 6×6 when clipped


def test_cutout_batch_is_per_example_and_exact():
    x = np.full((16, 12, 10, 3), 200, np.uint8)
    seeds = np.stack([np.full(16, 7), np.arange(100, 116)], 1).astype(np.int32)
    out = cutout_batch(tf.constant(x), tf.constant(seeds), 6).numpy()
    rev = cutout_batch(tf.constant(x), tf.constant(seeds[::-1]), 6).numpy()[::-1]
    np.testing.assert_array_equal(out, rev)  # whatever the batch position
    cy = batch_randint(tf.constant(seeds), 0, 12, 1, salt=3).numpy()[:, 0]
    cx = batch_randint(tf.constant(seeds), 0, 10, 1, salt=4).numpy()[:, 0]
    for k in range(16):
        mask = np.zeros((12, 10), bool)
        mask[max(0, cy[k] - 3):cy[k] + 3, max(0, cx[k] - 3):cx[k] + 3] = True
        np.testing.assert_array_equal((out[k] == 128).all(-1), mask)
        assert (out[k][~mask] == 200).all()
    assert len(set(zip(cy, cx))) > 4


def test_cutout_is_off_by_default_and_follows_any_augmentation():
    from sila_keras.training.config import TrainConfig

    cfg = TrainConfig.create("folder:x", "resnet20")
    assert cfg.data.cutout == 0 and cfg.data.autoaugment_semantics == "official"
    x = np.full((8, 16, 16, 3), 201, np.uint8)  # no op of the policy makes 201 grey (128)
    y = np.arange(8) % 2
    plain = np.concatenate([b[0] for b in train_dataset(x, y, 4, augment="none").as_numpy_iterator()])
    assert (plain == 201).all()
    for augment in ("none", "standard", "autoaugment"):
        ds = train_dataset(x, y, 4, augment=augment, cutout=6, autoaugment_semantics="torchvision")
        out = np.concatenate([b[0] for b in ds.as_numpy_iterator()])
        grey = (out == 128).all(-1).sum(axis=(1, 2))
        assert ((grey >= 9) & (grey <= 36)).all(), (augment, grey)


def test_cutout_batches_are_a_pure_function_of_seed_and_epoch(augment="standard"):
    """The batched path (the per-example one: test_registered_and_deterministic_…)."""
    x = RNG.integers(0, 120, (12, 16, 16, 3), dtype=np.uint8)
    y = np.arange(12) % 3

    def epochs(initial):
        return train_dataset(x, y, 4, augment=augment, initial_epoch=initial, epochs=2, cutout=8)

    first = epochs(0)
    both, second = list(first.as_numpy_iterator()), list(epochs(1).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([b[0] for b in first.as_numpy_iterator()]),
                                  np.concatenate([b[0] for b in both]))
    both, second = [b[0] for b in both], [b[0] for b in second]
    for a, b in zip(both[3:], second, strict=True):
        np.testing.assert_array_equal(a, b)  # what --resume after epoch 1 sees
    assert not np.array_equal(both[0], both[3])  # each epoch its own squares
    assert all(((b == 128).all(-1).sum(axis=(1, 2)) >= 16).all() for b in both)


def test_options_reach_the_pipeline(monkeypatch):
    """--cutout / --autoaugment-semantics travel config → make_datasets → train_dataset, and
    the semantics change what autoaugment does."""
    import sila_keras.data.pipeline as pipeline
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import make_datasets

    seen = {}
    monkeypatch.setattr(pipeline, "train_dataset", lambda *a, **kw: seen.update(kw))
    cfg = TrainConfig.create("folder:x", "resnet20", augment="autoaugment", cutout=8,
                      autoaugment_semantics="torchvision", batch_size=4)
    make_datasets(cfg, IMAGE[None].repeat(4, 0), np.zeros(4), IMAGE[None], np.zeros(1))
    assert (seen["cutout"], seen["autoaugment_semantics"]) == (8, "torchvision")
    runs = {s: A.get_augmentation("autoaugment", semantics=s) for s in A.SEMANTICS}
    outs = [[runs[s](tf.constant(IMAGE), tf.constant([k, 5])).numpy() for s in A.SEMANTICS]
            for k in range(6)]
    assert any(not np.array_equal(a, b) for a, b in outs)


# --------------------------------------------------------------------------- bad input


def test_bad_op_arguments():
    with pytest.raises(ValueError, match="Unknown augmentation op 'Blur'. Available"):
        op("Blur", 3)
    with pytest.raises(ValueError, match=r"`magnitude` must be in \[0, 9\]"):
        op("Rotate", 10)
    with pytest.raises(ValueError, match="Unknown --autoaugment-semantics 'pil'. Available: "
                                         "official, torchvision"):
        A.get_augmentation("autoaugment", semantics="pil")


def test_bad_cutout_and_semantics_in_the_config():
    from sila_keras.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"`--cutout` must be an integer >= 0 .* cutout=-1"):
        TrainConfig.create("folder:x", "resnet20", cutout=-1)
    with pytest.raises(ValueError, match=r"smaller than the image side \(32x32 px\).*cutout=32"):
        TrainConfig.create("folder:x", "resnet20", cutout=32, image_size=(32, 32))
    with pytest.raises(ValueError, match="Unknown --autoaugment-semantics 'tv'"):
        TrainConfig.create("folder:x", "resnet20", autoaugment_semantics="tv")
    with pytest.raises(ValueError, match=r"smaller than the image side \(16x16 px\)"):
        train_dataset(np.zeros((4, 16, 16, 3), np.uint8), np.zeros(4), 2, cutout=16)


def test_config_json_before_cutout_keeps_what_the_run_did():
    from sila_keras.training.config import TrainConfig

    old = {"dataset": "folder:x", "model": "resnet20", "augment": "autoaugment"}
    cfg = TrainConfig.from_dict(old)
    assert (cfg.data.cutout, cfg.data.autoaugment_semantics) == (16, "torchvision")
    assert TrainConfig.from_dict({**old, "augment": "standard"}).data.cutout == 0
    new = TrainConfig.create("folder:x", "resnet20", augment="autoaugment")  # written now: kept as is
    assert TrainConfig.from_dict(new.to_dict()) == new and new.data.cutout == 0


def test_cli_flags(capsys, tiny_folder, tmp_path):
    from helpers import run_err

    from sila_keras.training.flags import build_parser, config_from_args

    def config(*flags):
        return config_from_args(build_parser().parse_args(["folder:x", "resnet20", *flags]))

    cfg = config("--augment", "autoaugment", "--cutout", "16", "--autoaugment-semantics",
                 "torchvision")
    assert (cfg.data.cutout, cfg.data.autoaugment_semantics) == (16, "torchvision")
    assert capsys.readouterr().err == ""
    config("--augment", "standard", "--autoaugment-semantics", "official")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: --autoaugment-semantics applies to --augment " \
                                    "autoaugment only; ignored with --augment standard" in err
    base = [f"folder:{tiny_folder}", "resnet20", "--out", str(tmp_path), "--epochs", "1"]
    assert "cutout=-1" in run_err(capsys, [*base, "--cutout", "-1"])
    assert "Available: official, torchvision" in run_err(
        capsys, [*base, "--autoaugment-semantics", "pil"])
    err = run_err(capsys, [*base, "--cutout", "64"])  # the 32-px images are known after loading
    assert "`--cutout` must be smaller than the image side (32x32 px). Received: cutout=64" in err
    assert not any(tmp_path.iterdir())
