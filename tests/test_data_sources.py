"""Data sources: folder layouts, any image format/size/channels, --val-split, tfds splits,
bad input; pipeline sharding and drop-remainder across replicas."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_err

from sila_keras.data import load_dataset, stratified_split
from sila_keras.training.train import main
from sila_keras.utils.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--batch-size", "8", "--milestones", "", "--verbose", "0"]


def cifar_images(cifar_folder, per_class=6):
    """{class: [uint8 32x32x3 arrays]} from the session's CIFAR JPEG folder."""
    from PIL import Image

    out = {}
    for d in sorted((cifar_folder / "train").iterdir())[:3]:
        out[d.name] = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(d.iterdir())[:per_class]]
    return out


def write_image(path: Path, rgb: np.ndarray, fmt: str, mode: str = "RGB", size=None):
    from PIL import Image

    im = Image.fromarray(rgb)
    if size is not None:
        im = im.resize((size[1], size[0]))
    im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def mixed_tree(root: Path, images, sizes=((40, 48), (36, 36), (48, 40))):
    """``root/<class>/*``: JPEG, PNG (grayscale), PNG (RGBA), BMP and GIF at several sizes."""
    kinds = [("JPEG", "RGB", ".jpg"), ("PNG", "L", ".png"), ("PNG", "RGBA", ".png"),
             ("BMP", "RGB", ".bmp"), ("GIF", "P", ".gif"), ("JPEG", "L", ".jpeg")]
    for c, arrays in images.items():
        for i, a in enumerate(arrays):
            fmt, mode, ext = kinds[i % len(kinds)]
            write_image(root / c / f"{i:03d}{ext}", a, fmt, mode, sizes[i % len(sizes)])
    return root


@pytest.fixture(scope="module")
def images(cifar_folder):
    return cifar_images(cifar_folder)


# --------------------------------------------------------------------------- layouts


def test_train_test_layout(cifar_folder):
    data = load_dataset(f"folder:{cifar_folder}", cache="none")
    assert data.split_info["layout"] == "train+test" and data.split_info["eval_split"] == "test/"
    assert len(data.train) == 80 and len(data.test) == 40 and data.input_shape == (32, 32, 3)
    assert set(data.split_info["eval_per_class"].values()) == {4}


def test_train_val_test_layout_evaluates_on_test(tmp_path, images):
    for split in ("train", "validation", "test"):
        for c, arrays in images.items():
            for i, a in enumerate(arrays[:2]):
                write_image(tmp_path / split / c / f"{i}.png", a, "PNG")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.split_info["layout"] == "train+test+validation"
    assert data.split_info["eval_split"] == "test/" and "validation/ not used" in data.notes[0]
    shutil.rmtree(tmp_path / "test")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.split_info == {**data.split_info, "layout": "train+validation",
                               "eval_split": "validation/"}
    assert len(data.test) == 6


def test_single_tree_is_split_by_val_split(tmp_path, images):
    mixed_tree(tmp_path / "photos", images)
    data = load_dataset(f"folder:{tmp_path / 'photos'}", image_size="32", val_split=0.34, seed=1)
    assert data.split_info["layout"] == "single" and "val-split 0.34" in data.split_info["eval_split"]
    assert data.split_info["train_per_class"] == {c: 4 for c in images}
    assert data.split_info["eval_per_class"] == {c: 2 for c in images}


def test_val_split_is_deterministic_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 5, 1])
    a_tr, a_ev = stratified_split(labels, 0.2, seed=5)
    b_tr, b_ev = stratified_split(labels, 0.2, seed=5)
    _, c_ev = stratified_split(labels, 0.2, seed=6)
    assert (a_ev == b_ev).all() and (a_tr == b_tr).all() and not np.array_equal(a_ev, c_ev)
    assert np.bincount(labels[a_ev]).tolist() == [2, 4, 1, 1]  # round(0.2·n_c), at least 1
    assert sorted([*a_tr, *a_ev]) == list(range(len(labels)))


# --------------------------------------------------------------------------- any image


def test_mixed_formats_sizes_and_channels(tmp_path, images):
    root = mixed_tree(tmp_path / "p", images)
    with pytest.raises(DataError, match=r"different sizes \(HxW: .*--image-size"):
        load_dataset(f"folder:{root}")
    for policy in ("squash", "crop", "pad"):
        data = load_dataset(f"folder:{root}", image_size="24,32", resize=policy, cache="none")
        x = data.train_x
        assert x.shape == (15, 24, 32, 3) and x.dtype == np.uint8 and data.resize == policy
    pad = load_dataset(f"folder:{root}", image_size="32,32", resize="pad").train_x
    assert (pad[:, 0] == 0).all(axis=(1, 2)).any()  # a 40x48 (HxW) image: zero rows on top
    assert not (pad[:, 0] == 0).all(axis=(1, 2)).all()  # 36x36 ones are not padded
    gray = tmp_path / "g"
    for c, arrays in images.items():
        for i, a in enumerate(arrays[:3]):
            write_image(gray / c / f"{i}.png", a, "PNG", "L")
    assert load_dataset(f"folder:{gray}").input_shape == (32, 32, 1)


def test_same_size_images_need_no_image_size(tmp_path, images):
    for c, arrays in images.items():
        for i, a in enumerate(arrays):
            write_image(tmp_path / c / f"{i}.bmp", a, "BMP", size=(20, 28))
    data = load_dataset(f"folder:{tmp_path}", cache="none")
    assert data.input_shape == (20, 28, 3) and data.cache == "none"
    np.testing.assert_array_equal(data.train_x, load_dataset(f"folder:{tmp_path}").train_x)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def tree(tmp_path, images):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for c, arrays in images.items():
            for i, a in enumerate(arrays[:3]):
                write_image(root / split / c / f"{i}.jpg", a, "JPEG")
    return root


@pytest.mark.parametrize("case, match", [
    ("empty_class", "hold no images"),
    ("one_split_only", "Class 'extra' exists in"),
    ("no_images", "No images"),
    ("truncated", "Cannot read image file"),
    ("small_size", "at least 8 px for backbone 'resnet20'"),
    ("val_split_range", "--val-split` must be in (0, 1)"),
    ("val_split_empties_class", "leaves class"),
])
def test_bad_input_one_line_exit_2_nothing_written(capsys, tree, tmp_path, case, match):
    extra = []
    if case == "empty_class":
        (tree / "train" / "zzz").mkdir()
        (tree / "test" / "zzz").mkdir()
    elif case == "one_split_only":
        shutil.copytree(tree / "train" / next(iter(os.listdir(tree / "train"))), tree / "train" / "extra")
    elif case == "no_images":
        for f in tree.rglob("*.jpg"):
            f.unlink()
    elif case == "truncated":
        bad = next((tree / "train").rglob("*.jpg"))
        bad.write_bytes(bad.read_bytes()[:200])
    elif case == "small_size":
        extra = ["--image-size", "4"]
    elif case == "val_split_range":
        extra = ["--val-split", "1.5"]
    elif case == "val_split_empties_class":
        shutil.rmtree(tree / "test")
        for c in (tree / "train").iterdir():
            for f in list(c.iterdir())[1:]:
                f.unlink()
        (tree / "train").rename(tree / "flat")
        tree = tree / "flat"
        extra = ["--val-split", "0.5"]
    err = run_err(capsys, [f"folder:{tree}", "resnet20", *FAST, *extra, "--out", str(tmp_path / "o")])
    assert match in err
    assert not (tmp_path / "o").exists()


def test_tfds_dataset_without_class_label_is_refused(capsys, tmp_path):
    err = run_err(capsys, ["div2k", "resnet20", *FAST, "--out", str(tmp_path / "o")])
    assert "no image feature with a class label" in err
    assert not (tmp_path / "o").exists()


def test_skip_bad_images_counted_in_summary(tree, tmp_path):
    bad = next((tree / "train").rglob("*.jpg"))
    bad.write_bytes(bad.read_bytes()[:200])
    data = load_dataset(f"folder:{tree}", skip_bad_images=True)
    assert data.split_info["skipped_images"] == 1 and len(data.train) == 8
    with pytest.raises(ConfigError, match="--cache"):
        load_dataset(f"folder:{tree}", cache="ram")


# --------------------------------------------------------------------------- tfds


def test_tfds_split_plan():
    from sila_keras.data.tfds_source import plan_splits

    assert plan_splits(["train", "validation"], None, None) == ("train", "validation")
    assert plan_splits(["train", "test", "validation"], None, None) == ("train", "test")
    assert plan_splits(["train"], None, None) == ("train", None)
    assert plan_splits(["train"], "train[:90%]", "train[90%:]") == ("train[:90%]", "train[90%:]")
    assert plan_splits([], None, None) == ("train", "test")  # unknown (not prepared, mocked)
    assert plan_splits([], None, None, 0.1) == ("train", None)


@pytest.mark.parametrize("name, extra, eval_split", [
    ("tf_flowers", ["--val-split", "0.25"], "val-split 0.25 of 'train'"),
    ("imagenette", ["--test-split", "validation", "--limit-train", "10", "--cache", "none"],
     "validation"),
])
def test_tfds_photo_datasets_train_and_report(tmp_path, name, extra, eval_split):
    """Variable-size mocked photos (random sizes) stream, resize and train."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        rc = main([name, "resnet8", *FAST, "--image-size", "32", "--heads", "2", *extra,
                   "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["data"]["source"] == f"tfds:{name}" and s["data"]["eval_split"].startswith(eval_split)
    assert s["data"]["input_shape"] == [32, 32, 3] and s["heads"]["head_1"]["final_acc"] is not None
    assert sum(s["data"]["train_per_class"].values()) == s["data"]["train_examples"]


# --------------------------------------------------------------------------- pipeline (replicas)


def _indices(ds):
    return [b for b in ds.as_numpy_iterator()]


def test_drop_remainder_keeps_every_training_batch_full_and_eval_complete():
    from sila_keras.data.pipeline import eval_dataset, steps_per_epoch, train_dataset

    x = np.arange(27, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    y = np.arange(27) % 3
    for n in (26, 27):
        steps = steps_per_epoch(n, 12, drop_remainder=True)
        batches = list(train_dataset(x[:n], y[:n], 12, augment="none", drop_remainder=True,
                                     epochs=2).as_numpy_iterator())
        assert steps == 2 and len(batches) == 4 and all(len(b[1]) == 12 for b in batches)
        seen = np.concatenate([b[0][:, 0, 0, 0] for b in batches[:2]])
        assert len(set(seen.tolist())) == 24  # one epoch: no image twice
        ev = np.concatenate([b[1] for b in eval_dataset(x[:n], y[:n], 12).as_numpy_iterator()])
        assert len(ev) == n
        padded = list(eval_dataset(x[:n], y[:n], 12, replicas=4).as_numpy_iterator())
        last = len(padded[-1][1])
        assert -(-last // 4) * 3 < last  # ceil(b/4) per replica: none left empty
        weights = np.concatenate([b[2] for b in padded])
        assert weights.sum() == n and (weights[:n] == 1).all()  # every image counted once


def test_workers_read_disjoint_shards_forming_the_global_batches(tmp_path, images):
    """Each worker decodes only its slice of every global batch; together they are the batches
    a single process would make (so 2 workers == 2 mirrored replicas)."""
    from sila_keras.data.pipeline import train_dataset

    root = mixed_tree(tmp_path / "p", images, sizes=((16, 16),))
    data = load_dataset(f"folder:{root}", val_split=0.2, cache="none")
    n = len(data.train)

    def pixels(**kw):
        ds = train_dataset(data.train, None, 4, augment="none", seed=3, **kw)
        return [b[0] for b in ds.as_numpy_iterator()]

    whole = pixels(drop_remainder=True)
    parts = [pixels(shard=(2, w)) for w in (0, 1)]
    assert len(whole) == n // 4 == len(parts[0]) == len(parts[1])
    for b, (p0, p1) in enumerate(zip(*parts)):
        assert p0.shape[0] == p1.shape[0] == 2
        np.testing.assert_array_equal(np.concatenate([p0, p1]), whole[b])
    flat = [p.reshape(2, -1) for ps in parts for p in ps]
    rows = {r.tobytes() for f in flat for r in f}
    assert len(rows) == 2 * len(flat)  # no image read by both workers


def test_four_replicas_26_images_train_to_the_end(cifar_folder, tmp_path):
    """26 images, batch 12, 4 replicas: the last batch (2 images) must leave no replica empty
    (that failed with "Incompatible shapes" in stem_bn). A subprocess: the test session has 2
    devices. Two heads: each replica traces the whole step, so every head costs four times."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "sila_keras.train", f"folder:{cifar_folder}", "resnet8",
         "--cpu-devices", "4", "--strategy", "mirrored", "--limit-train", "26", "--limit-test", "27",
         "--batch-size", "12", "--heads", "2", "--epochs", "1", "--milestones", "", "--verbose",
         "0", "--out", str(tmp_path), "--name", "r4"],
        env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((tmp_path / "r4" / "summary.json").read_text())
    assert s["replicas"] == 4 and s["data"]["test_examples"] == 27
    acc = s["heads"]["head_1"]["final_acc"] * 27  # a count of the 27 images: padding not counted
    assert abs(acc - round(acc)) < 1e-4


# --------------------------------------------------------------------------- vectorised augmentation


def test_batched_standard_augmentation_is_per_example_and_exact():
    """Per batch, yet a pure function of each example's seed: the same image whatever batch
    or position it is in, and exactly a pad-4 crop + flip of the original."""
    import tensorflow as tf

    from sila_keras.data.pipeline import batch_randint, get_batch_augmentation

    fn = get_batch_augmentation("standard")
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (16, 12, 10, 3), dtype=np.uint8)
    seeds = np.stack([np.full(16, 7), np.arange(100, 116)], 1).astype(np.int32)
    out = fn(tf.constant(x), tf.constant(seeds)).numpy()
    rev = fn(tf.constant(x[::-1]), tf.constant(seeds[::-1])).numpy()[::-1]
    np.testing.assert_array_equal(out, rev)
    d = batch_randint(tf.constant(seeds), -4, 5, 2, salt=1).numpy()
    flip = batch_randint(tf.constant(seeds), 0, 2, 1, salt=2).numpy()[:, 0]
    for k in range(16):
        padded = np.pad(x[k], ((4, 4), (4, 4), (0, 0)))
        ref = padded[4 + d[k, 0]:4 + d[k, 0] + 12, 4 + d[k, 1]:4 + d[k, 1] + 10]
        np.testing.assert_array_equal(out[k], ref[:, ::-1] if flip[k] else ref)
    assert len({tuple(r) for r in d}) > 4 and 0 < flip.sum() < 16  # examples differ


@pytest.mark.parametrize("augment", ["standard", "autoaugment", "randaugment"])
def test_training_batches_are_a_pure_function_of_seed_and_epoch(augment):
    from sila_keras.data.pipeline import train_dataset

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y = np.arange(20) % 4

    def epochs(initial, seed=0):
        ds = train_dataset(x, y, 8, augment=augment, seed=seed, initial_epoch=initial, epochs=2)
        return [b[0] for b in ds.as_numpy_iterator()]

    both, second = epochs(0), epochs(1)
    assert len(both) == 6 and len(second) == 3
    for a, b in zip(both[3:], second):
        np.testing.assert_array_equal(a, b)  # what --resume after epoch 1 sees
    assert not np.array_equal(both[0], both[3]) and not np.array_equal(both[0], epochs(0, 1)[0])


def test_disk_cache_gives_the_images_of_the_files(tmp_path, images):
    """--cache disk: decoded once into tf.data cache files, then read from there."""
    from sila_keras.data.pipeline import eval_dataset, train_dataset

    root = mixed_tree(tmp_path / "p", images, sizes=((16, 16),))
    data = load_dataset(f"folder:{root}", cache=f"disk:{tmp_path / 'c'}")
    assert data.cache.startswith("disk") and type(data.train).__name__ == "FileSet"
    cache = str(tmp_path / "c" / "eval")
    cached = np.concatenate([b[0] for b in eval_dataset(data.test, None, 4, cache_path=cache)])
    assert list((tmp_path / "c").glob("eval*.index"))
    np.testing.assert_array_equal(cached, data.test_x.astype(np.float32))

    def epoch(path):
        ds = train_dataset(data.train, None, 4, augment="none", cache_path=path)
        return np.concatenate([b[0] for b in ds.as_numpy_iterator()])

    a, b = epoch(str(tmp_path / "c" / "train")), epoch(str(tmp_path / "c" / "train"))
    np.testing.assert_array_equal(a, b)  # a pure function of (seed, epoch) from the cache too
    assert sorted(a.reshape(len(a), -1).sum(1)) == sorted(data.train_x.reshape(len(a), -1).sum(1))
