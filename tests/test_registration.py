"""Explicit registration: a light ``import sila_keras``, every mode's model reloads in a fresh
process after only ``import sila_keras``, modes as a registry, no import cycles."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sila_keras.modes import Mode, get_mode, list_modes, make_mode, method_label, register_mode
from sila_keras.training.config import TrainConfig
from sila_keras.utils.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "sila_keras"

# Loads every path in argv with nothing imported but sila_keras (then keras, which
# triggers the registration), and only afterwards asks the model what it is.
LOAD_ALL = """
import json, sys
import sila_keras
light = not any(m in sys.modules for m in ("tensorflow", "keras"))
import keras
models = [keras.models.load_model(p) for p in sys.argv[1:]]
from sila_keras.core.heads import head_names_of, mode_of
print(json.dumps({"light": light, "modes": sila_keras.list_modes(), "models": [
    [type(m.loss).__name__, type(m.optimizer).__name__, mode_of(m), head_names_of(m),
     int(m.output.shape[-1])] for m in models]}))
"""


@pytest.mark.slow
def test_every_mode_model_reloads_in_a_fresh_process(finished_run, user_model_run, mutual_runs,
                                                     dynamic_runs):
    runs = {"sila": finished_run, "user .keras": user_model_run, "mutual": mutual_runs / "homo",
            "mutual --dml": mutual_runs / "hetero_dml", "dml": mutual_runs / "dml",
            "dynamic": dynamic_runs / "sila", "dynamic --no-sila": dynamic_runs / "msdnet"}
    out = subprocess.run([sys.executable, "-c", LOAD_ALL,
                          *(str(r / "model.keras") for r in runs.values())],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["light"], "import sila_keras must not import TensorFlow/Keras"
    assert got["modes"] == ["sila", "mutual", "dml", "dynamic"]
    two = ["head_1", "head_2"]
    three = ["head_1", "head_2", "head_3"]
    assert dict(zip(runs, got["models"])) == {
        "sila": ["SilaLoss", "SGDL2", "sila", three, 30],  # 10 CIFAR classes × 3 heads
        "user .keras": ["SilaLoss", "SGDL2", "sila", two, 20],
        "mutual": ["MutualLoss", "SGDL2", "mutual", two, 6],  # 3 classes × 2 nets
        "mutual --dml": ["MutualLoss", "SGDL2", "mutual", two, 6],
        "dml": ["MutualLoss", "SGDL2", "dml", two, 6],
        "dynamic": ["SilaLoss", "SGDL2", "dynamic", three, 9],  # 3 classes × 3 exits
        "dynamic --no-sila": ["MutualLoss", "SGDL2", "dynamic", three, 9],
    }



FIRST_IMPORT_IS_A_SUBMODULE = """
import warnings
warnings.simplefilter("error")  # the registration warning would fail here
import sila_keras
from sila_keras.core.heads import head_name  # imports Keras from inside the half-made heads
import keras
from sila_keras import registration
assert registration._done
names = keras.saving.get_custom_objects()
print(all(f"sila_keras>{n}" in names for n in ("SilaLogits", "SilaLoss", "PadShortcut",
                                               "DigitComparison")))
"""


def test_registration_waits_for_a_submodule_that_imports_keras():
    out = subprocess.run([sys.executable, "-c", FIRST_IMPORT_IS_A_SUBMODULE],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True"

@pytest.mark.slow
def test_summary_method_labels(finished_run, mutual_runs, dynamic_runs):
    def method(run_dir):
        return json.loads((run_dir / "summary.json").read_text())["method"]

    assert method(finished_run) == "SiLa (M=3)"
    assert [method(mutual_runs / n) for n in ("homo", "hetero_dml", "dml")] == \
        ["SiLa", "SiLa+DML", "DML"]
    assert [method(dynamic_runs / n) for n in ("sila", "msdnet")] == ["Dynamic SiLa", "MSDNet"]


@pytest.mark.parametrize("config, label", [
    ({"mode": "sila", "heads": 1}, "IND"), ({"mode": "sila", "heads": 3}, "SiLa (M=3)"),
    ({}, "IND"), ({"mode": "mutual"}, "SiLa"), ({"mode": "mutual", "dml": True}, "SiLa+DML"),
    ({"mode": "mutual", "no_sila": True}, "IND pair"),
    ({"mode": "mutual", "no_sila": True, "dml": True}, "DML"), ({"mode": "dml"}, "DML"),
    ({"mode": "dynamic"}, "Dynamic SiLa"), ({"mode": "dynamic", "no_sila": True}, "MSDNet"),
])
def test_method_label_from_a_config_dict(config, label):
    assert method_label(config) == label


def test_unknown_mode_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"Unknown mode 'mutal'\. Did you mean 'mutual'\?.*"
                                          r"Available: sila, mutual, dml, dynamic"):
        TrainConfig.create(dataset="x", model="resnet20", mode="mutal")


def test_a_mode_is_one_registered_class():
    @register_mode
    class Probe(Mode):
        name = "probe_mode"
        options = ("no_sila",)

    try:
        assert "probe_mode" in list_modes() and get_mode("probe_mode") is Probe
        with pytest.raises(ValueError, match="already registered"):
            register_mode(Probe)
        config = TrainConfig.create(dataset="x", model="resnet20", mode="probe_mode", no_sila=True)
        assert make_mode(config).label(config) == "probe_mode"
        # The options a mode accepts decide the messages of the others.
        with pytest.raises(ConfigError, match="--no-sila only applies to --mode mutual or "
                                              "dynamic or probe_mode"):
            make_mode(config.replace(mode="dml"))
    finally:
        from sila_keras.modes import base

        base._REGISTRY.pop("probe_mode", None)


def test_a_model_file_needs_mode_sila():
    config = TrainConfig.create(dataset="x", model="mine.keras", mode="dynamic")
    with pytest.raises(ConfigError, match="--mode dynamic needs a registered backbone.*"
                                          "--mode sila. Received: model=mine.keras"):
        make_mode(config)


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (anywhere in the file, lazy imports included)."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in modules:
                    deps.add(full)
                elif node.module in modules:
                    deps.add(node.module)
    return deps


def test_no_import_cycles():
    paths = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {m: _module_imports(p, set(paths)) - {m} for m, p in paths.items()}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return path + [start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_models_saved_before_silalogits_still_read(tmp_path):
    """A plain ``Concatenate`` named sila_logits (older runs): heads by position, no mode."""
    import keras

    from sila_keras.core.heads import extract_head, head_names_of, mode_of, sila_output

    x = keras.Input((4,), name="image")
    heads = [keras.layers.Dense(3, name=f"head_{k}")(x) for k in (1, 2)]
    old = keras.Model(x, keras.layers.Concatenate(name="sila_logits")(heads))
    new = keras.Model(x, sila_output(heads, mode="mutual"))
    new.save(tmp_path / "new.keras")
    new = keras.models.load_model(tmp_path / "new.keras")
    assert head_names_of(old) == head_names_of(new) == ["head_1", "head_2"]
    assert (mode_of(old), mode_of(new)) == (None, "mutual")
    assert extract_head(old, 2).output.shape == (None, 3)


def test_a_model_saved_before_the_package_layout_changed_still_loads():
    """``tests/data/sila_resnet8_before_layout.keras`` is a 1-epoch ResNet-8 SiLa run's
    ``model.keras`` (SilaLoss, head metrics, SGDL2, SilaLogits, PadShortcut), written before
    the modules moved into role subpackages; it loads after only ``import sila_keras`` and
    computes what it computed then."""
    import keras
    import numpy as np

    import sila_keras  # noqa: F401

    data = Path(__file__).parent / "data"
    model = keras.models.load_model(data / "sila_resnet8_before_layout.keras")
    expected = np.load(data / "sila_resnet8_before_layout.npz")
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["y"],
                               rtol=1e-4, atol=1e-4)
    assert type(model.loss).__name__ == "SilaLoss"
    assert type(model.optimizer).__name__ == "SGDL2"


# The role groups of ``sila_keras``, lowest first (docs/architecture.md draws the same order). A
# module may import its own group and the groups before it; the package's top-level modules
# (the public API, Keras registration and the ``python -m`` entry points) sit above them all.
# Importing the package root itself (``import sila_keras``, which registers every Keras object)
# is allowed anywhere.
GROUP_ORDER = ("utils", "data", "models", "core", "devices", "modes", "training", "reports",
               "pairs")


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in GROUP_ORDER) else "top"


def test_groups_import_only_groups_below_them():
    modules = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    rank = {g: i for i, g in enumerate((*GROUP_ORDER, "top"))}
    assert set(map(_group, modules)) <= set(rank), "a group missing from GROUP_ORDER"
    upward = sorted(f"{m} → {dep}" for m, p in modules.items()
                    for dep in _module_imports(p, set(modules)) - {"sila_keras"}
                    if rank[_group(dep)] > rank[_group(m)])
    assert not upward, f"imports into a higher group: {upward}"


def test_top_level_holds_at_most_eight_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


@pytest.mark.parametrize("owner", ["api", "keras_modules", "families"])
def test_module_name_lists_name_real_modules(owner):
    import importlib

    import sila_keras
    from sila_keras import registration
    from sila_keras.models import registry

    if owner == "api":
        for name, module in sila_keras._API.items():
            assert hasattr(importlib.import_module(module), name), (name, module)
    elif owner == "keras_modules":
        for module in registration.KERAS_MODULES:
            importlib.import_module(module)
    else:
        for family in registry.FAMILIES + registry.PREFIX_FAMILIES:
            importlib.import_module(f"sila_keras.models.{family}")
