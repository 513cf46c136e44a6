"""Helpers for tests and benchmarks: small real or synthetic image-folder datasets.

Imported by ``tests/conftest.py`` (as ``helpers``) and by ``benchmarks/`` (as
``tests.helpers``); not part of the installed package.
"""

from __future__ import annotations

import fcntl
import io as _io
import os
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np

SHARED_DIR = Path(os.environ.get("SILA_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
CIFAR_TAR = SHARED_DIR / "data" / "cifar10-jpg.tar.gz"
MNIST_DIR = SHARED_DIR / "data"
# A 3-exit MSDNet small enough for a CPU test: two scales (32×32 and 16×16) instead of three.
MSDNET_TINY = {"blocks": 3, "base": 1, "step": 1, "channels": 4, "growth": 2,
               "classifier_channels": 8, "scales": 2, "gr_factor": (1, 2), "bn_factor": (1, 2)}
# The second network of the heterogeneous mutual test run: another architecture than the first
# net's resnet8 (2.5× its depth, 3.6× its parameters), and the cheapest one to train beside it.
PEER = "resnet20"


def cifar_subset_folder(root, train_per_class: int = 8, test_per_class: int = 4,
                        archive: Path = CIFAR_TAR) -> Path:
    """Copy the first few JPEGs of each class and split out of the CIFAR-10 archive.

    Streams the archive once; writes ``root/train/<class>/*.jpg`` and
    ``root/test/<class>/*.jpg``. Returns ``root``.
    """
    root = Path(root)
    want = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tf:
        for member in tf:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in want:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) >= want[parts[0]]:
                continue
            dest = root / parts[0] / parts[1] / parts[2]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tf.extractfile(member).read())
            counts[key] = counts.get(key, 0) + 1
    return root


def synthetic_folder(root, classes=("a", "b", "c"), train_per_class: int = 6, test_per_class: int = 3,
                     size: int = 32, seed: int = 0) -> Path:
    """Write a tiny, learnable PNG folder dataset (class c is bright in channel c % 3)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                img[..., ci % 3] += 150
                buf = _io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                (d / f"{i:04d}.png").write_bytes(buf.getvalue())
    return root


def small_cnn(num_classes: int, softmax_layer: bool = False):
    """A user's own small functional CNN classifier (32×32×3, rescales inside)."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.MaxPooling2D(name="p2")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(num_classes, name="logits")(x)
    if softmax_layer:
        x = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, x, name="small")


def train_once(tmp_path_factory, name: str, train) -> Path:
    """A folder that ``train(folder)`` fills once per test session, shared by the xdist workers.

    Under pytest-xdist every worker runs a session fixture itself; here the first worker to
    ask trains, under an exclusive file lock in the workers' common temporary folder, and the
    others wait for it and reuse the result (the pytest-xdist docs' pattern, with ``fcntl``
    instead of ``filelock``). A failed training leaves no marker, so the next worker retries
    (and fails the same way). Without xdist it is simply ``train(folder)``.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # …/pytest-N/popen-gwK → …/pytest-N, common to this run's workers
    out, done = root / f"shared_{name}", root / f"shared_{name}.done"
    with open(root / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                train(out)
                done.write_text("ok")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def run_err(capsys, argv) -> str:
    """``sila-train argv`` as bad input: exit 2 and one line on stderr, no traceback; returns it."""
    from sila_keras.training.train import main

    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def free_ports(n: int = 2) -> list[str]:
    """``n`` free loopback ``host:port`` addresses (all bound at once, so they differ), for
    a local multi-worker cluster."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()
