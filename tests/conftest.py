"""Test setup. The CPU is split into 2 logical devices *before* TensorFlow starts,
so MirroredStrategy tests run on a CPU-only machine.

GPUs are hidden (here and in every subprocess a test starts) unless ``SILA_TEST_GPU=1``:
the suite asserts CPU behaviour (2 mirrored replicas, bfloat16 mixed precision), and a
test process must not grab a GPU's memory. With ``SILA_TEST_GPU=1`` the GPUs stay visible
with memory growth on, and only tests marked ``gpu`` use them (they skip without one).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
USE_GPU = os.environ.get("SILA_TEST_GPU") == "1"
if not USE_GPU:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by subprocesses (multi-worker, CLI)

import tensorflow as tf  # noqa: E402

if USE_GPU:
    for _gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(_gpu, True)
else:
    tf.config.set_visible_devices([], "GPU")
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


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run only with ``SILA_TEST_GPU=1`` and a visible GPU."""
    if USE_GPU and tf.config.list_logical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="needs a GPU and SILA_TEST_GPU=1")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
