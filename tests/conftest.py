"""Test setup. The CPU is split into 2 logical devices *before* TensorFlow starts,
so MirroredStrategy tests run on a CPU-only machine."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import pytest  # noqa: E402

from sila_keras import testing  # noqa: E402


@pytest.fixture(scope="session")
def shared_dir():
    """../shared beside the checkout; tests needing it skip cleanly without it."""
    if not testing.CIFAR_TAR.exists():
        pytest.skip(f"shared data not found at {testing.SHARED_DIR} (set SILA_SHARED_DIR)")
    return testing.SHARED_DIR


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory, shared_dir):
    """Real CIFAR-10 JPEGs: 8 train + 4 test per class (80 / 40 images)."""
    return testing.cifar_subset_folder(tmp_path_factory.mktemp("cifar_small"), 8, 4)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A synthetic 3-class PNG folder dataset (no shared data needed)."""
    return testing.synthetic_folder(tmp_path_factory.mktemp("tiny"))
