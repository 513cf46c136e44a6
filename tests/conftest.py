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

import helpers as testing  # noqa: E402  (tests/helpers.py)
import pytest  # noqa: E402


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


# ----------------------------------------------------------------- tiny finished runs, one per mode
# Session-scoped, so the mode tests and the fresh-process reload test share one training each.


@pytest.fixture(scope="session")
def finished_run(cifar_folder, tmp_path_factory):
    """A 2-epoch ``--mode sila`` resnet20 run on real CIFAR images (lr halved after epoch 1)."""
    from sila_keras.train import main

    out = tmp_path_factory.mktemp("runs")
    rc = main([f"folder:{cifar_folder}", "resnet20", "--epochs", "2", "--batch-size", "16",
               "--milestones", "1", "--gamma", "0.5", "--out", str(out), "--name", "e2e"])
    assert rc == 0
    return out / "e2e"


@pytest.fixture(scope="session")
def user_model_run(cifar_folder, tmp_path_factory):
    """A 1-epoch run of the user's own ``.keras`` CNN with 2 SiLa heads attached."""
    from sila_keras.train import main

    out = tmp_path_factory.mktemp("user_model_run")
    path = out / "mine.keras"
    testing.small_cnn(10).save(path)
    assert main([f"folder:{cifar_folder}", str(path), "--heads", "2", "--epochs", "1",
                 "--batch-size", "16", "--milestones", "", "--out", str(out), "--name", "own"]) == 0
    return out / "own"


@pytest.fixture(scope="session")
def mutual_runs(tiny_folder, tmp_path_factory):
    """Tiny two-network runs: homogeneous SiLa (with AutoAugment, as in Table 3),
    heterogeneous SiLa+DML (``--peer testing.PEER``) and the ``--mode dml`` baseline."""
    from sila_keras.train import main

    out = tmp_path_factory.mktemp("mutual_runs")
    cases = {"homo": ["resnet20", "--mode", "mutual", "--augment", "autoaugment"],
             "hetero_dml": ["resnet20", "--mode", "mutual", "--peer", testing.PEER, "--dml"],
             "dml": ["resnet20", "--mode", "dml"]}
    for name, args in cases.items():
        rc = main([f"folder:{tiny_folder}", *args, "--epochs", "1", "--batch-size", "8",
                   "--milestones", "", "--out", str(out), "--name", name])
        assert rc == 0, name
    return out


@pytest.fixture(scope="session")
def dynamic_runs(tiny_folder, tmp_path_factory):
    """Tiny ``--mode dynamic`` runs of a 3-exit MSDNet: Dynamic SiLa and (``--no-sila``) MSDNet."""
    from sila_keras.config import TrainConfig
    from sila_keras.train import run

    out = tmp_path_factory.mktemp("dynamic_runs")
    for name, no_sila in (("sila", False), ("msdnet", True)):
        run(TrainConfig(dataset=f"folder:{tiny_folder}", model="msdnet", mode="dynamic",
                        no_sila=no_sila, epochs=1, batch_size=8, milestones=(), out=str(out),
                        name=name, backbone_kwargs=testing.MSDNET_TINY, verbose=0))
    return out


# Trained session runs: every test using one goes to the same xdist worker (pyproject sets
# ``--dist loadgroup``), so each is trained once per suite, not once per worker.
SHARED_RUNS = {"finished_run", "user_model_run", "mutual_runs", "dynamic_runs"}


def _xdist_group(item):
    """The worker group of a test: ``trained_runs`` if it uses a shared trained run, else its
    module if it uses a module- or session-scoped fixture defined in that module (built once,
    not once per worker), else none (the test may go to any worker)."""
    names = set(getattr(item, "fixturenames", ()))
    if names & SHARED_RUNS:
        return "trained_runs"
    module = item.nodeid.split("::")[0]
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs if info is not None else {}
    for name in names:
        if any(d.scope in ("module", "session") and d.baseid == module for d in defs.get(name, ())):
            return module
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Group tests sharing a trained fixture on one worker; ``gpu`` tests run only with
    ``SILA_TEST_GPU=1`` and a visible GPU."""
    for item in items:
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if USE_GPU and tf.config.list_logical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="needs a GPU and SILA_TEST_GPU=1")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
