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

import helpers as testing  # noqa: E402  (tests/helpers.py)
import pytest  # noqa: E402
from helpers import train_once  # noqa: E402


def pytest_configure(config):
    """Set TensorFlow's devices up before any test module imports it (collection comes after).

    Not in pytest-xdist's controller (``-n``): it runs no test, and importing TensorFlow there
    would cost 5 s of CPU before the workers even start."""
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import tensorflow as tf

    if USE_GPU:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    else:
        tf.config.set_visible_devices([], "GPU")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope="session")
def shared_dir():
    """../shared beside the checkout; tests needing it skip cleanly without it."""
    if not testing.CIFAR_TAR.exists():
        pytest.skip(f"shared data not found at {testing.SHARED_DIR} (set SILA_SHARED_DIR)")
    return testing.SHARED_DIR


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory, shared_dir):
    """Real CIFAR-10 JPEGs: 8 train + 4 test per class (80 / 40 images). One folder for all
    xdist workers, so the shared runs below record the same dataset path on every worker."""
    return train_once(tmp_path_factory, "cifar_small",
                      lambda out: testing.cifar_subset_folder(out, 8, 4))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A synthetic 3-class PNG folder dataset (no shared data needed), one for all workers."""
    return train_once(tmp_path_factory, "tiny", testing.synthetic_folder)


# ----------------------------------------------------------------- tiny finished runs, one per mode
# Session-scoped, so the mode tests and the fresh-process reload test share one training each;
# ``train_once`` makes that one per test session, not one per xdist worker.


@pytest.fixture(scope="session")
def finished_run(cifar_folder, tmp_path_factory):
    """A 2-epoch ``--mode sila`` resnet8 run (3 heads) on real CIFAR images (lr halved after
    epoch 1). ResNet-8: the layer kinds of ResNet-20 at a third of the depth, so every test that
    loads, exports or cascades it converts a third of the layers."""
    from sila_keras.training.train import main

    def train(out):
        rc = main([f"folder:{cifar_folder}", "resnet8", "--epochs", "2", "--batch-size", "16",
                   "--milestones", "1", "--gamma", "0.5", "--out", str(out), "--name", "e2e"])
        assert rc == 0

    return train_once(tmp_path_factory, "finished_run", train) / "e2e"


@pytest.fixture(scope="session")
def user_model_run(cifar_folder, tmp_path_factory):
    """A 1-epoch run of the user's own ``.keras`` CNN with 2 SiLa heads attached."""
    from sila_keras.training.train import main

    def train(out):
        path = out / "mine.keras"
        testing.small_cnn(10).save(path)
        assert main([f"folder:{cifar_folder}", str(path), "--heads", "2", "--epochs", "1",
                     "--batch-size", "16", "--milestones", "", "--out", str(out), "--name", "own"]) == 0

    return train_once(tmp_path_factory, "user_model_run", train) / "own"


@pytest.fixture(scope="session")
def mutual_runs(tiny_folder, tmp_path_factory):
    """Tiny two-network runs: homogeneous SiLa (with AutoAugment, as in Table 3),
    heterogeneous SiLa+DML (``--peer testing.PEER``) and the ``--mode dml`` baseline."""
    from sila_keras.training.train import main

    cases = {"homo": ["resnet8", "--mode", "mutual", "--augment", "autoaugment"],
             "hetero_dml": ["resnet8", "--mode", "mutual", "--peer", testing.PEER, "--dml"],
             "dml": ["resnet8", "--mode", "dml"]}

    def train(out):
        for name, args in cases.items():
            rc = main([f"folder:{tiny_folder}", *args, "--epochs", "1", "--batch-size", "8",
                       "--milestones", "", "--out", str(out), "--name", name])
            assert rc == 0, name

    return train_once(tmp_path_factory, "mutual_runs", train)


@pytest.fixture(scope="session")
def dynamic_runs(tiny_folder, tmp_path_factory):
    """Tiny ``--mode dynamic`` runs of a 3-exit MSDNet: Dynamic SiLa and (``--no-sila``) MSDNet."""
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import run

    def train(out):
        for name, no_sila in (("sila", False), ("msdnet", True)):
            run(TrainConfig.create(dataset=f"folder:{tiny_folder}", model="msdnet", mode="dynamic",
                            no_sila=no_sila, epochs=1, batch_size=8, milestones=(), out=str(out),
                            name=name, backbone_kwargs=testing.MSDNET_TINY, verbose=0))

    return train_once(tmp_path_factory, "dynamic_runs", train)


# ----------------------------------------------------------------- scheduling under pytest-xdist
# The README runs ``pytest -n 3`` on 2 cores: many tests wait on subprocesses (CLI runs,
# multi-worker clusters, killed runs) or on a cluster's barrier, and a third worker keeps
# both cores busy meanwhile (measured on an idle 2-core machine: 331 s with 3 workers, 357 s
# with 2; peak memory ≈ 7.5 GB). pyproject's addopts add ``--dist loadfile
# --no-loadscope-reorder``: each test file runs on one worker, so a module-scoped trained
# fixture trains once (not once per worker), and the files go out in the order below —
# the longest first, so the workers end together; test_registration last, as it reloads
# the runs that test_train, test_attach, test_mutual and test_dynamic train (``train_once``).
# (``--dist loadgroup`` would be finer, but pytest-xdist 3.8 ignores its groups under
# pytest 9.2: pytest-dev/pytest-xdist#1386.) Files not listed run in between, by name.
LONGEST_FILES_FIRST = ("test_export.py", "test_data_sources.py", "test_reliability.py",
                       "test_multiworker.py", "test_export_int8.py", "test_train.py",
                       "test_tuning.py", "test_zoo.py", "test_dynamic.py", "test_pairs.py",
                       "test_applications.py", "test_batchnorm.py", "test_cascade.py",
                       "test_distributed_gpu.py", "test_mutual.py", "test_heads_study.py",
                       "test_augment.py", "test_analyze.py", "test_attach.py", "test_levers.py")
LAST_FILES = ("test_registration.py",)


def pytest_collection_modifyitems(config, items):
    """Order the files (see above); ``gpu`` tests run only with ``SILA_TEST_GPU=1`` and a
    visible GPU."""
    def rank(item):
        name = item.path.name
        if name in LONGEST_FILES_FIRST:
            return LONGEST_FILES_FIRST.index(name)
        return len(LONGEST_FILES_FIRST) + 1 + LAST_FILES.count(name)

    items[:] = sorted(items, key=rank)  # stable: each file's own order is kept
    if USE_GPU:
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return
    skip = pytest.mark.skip(reason="needs a GPU and SILA_TEST_GPU=1")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
