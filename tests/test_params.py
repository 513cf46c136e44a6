"""`python -m sila_keras.params`: the SilaNet Table 3 parameter table."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sila_keras.core.sizes import float32_mib
from sila_keras.reports.params import PAPER_TABLE3, TABLE3, main, num_classes_of, param_table


def test_param_table_counts_resnet20():
    t = param_table("resnet20", 10, 3)
    # He et al.'s ResNet-20 (0.27M); aux modules: 9·C·N + N at C = 32 (head 2) and 16 (head 3).
    assert t["base_params"] == 269_722
    assert t["train_params"] == 269_722 + (9 * 32 * 10 + 10) + (9 * 16 * 10 + 10)
    assert t["base_mib"] == round(float32_mib(269_722), 2)
    assert list(t["heads"]) == ["head_1", "head_2", "head_3"]
    assert t["heads"]["head_1"] == {"params": 269_722, "mib": 1.03, "cr_percent": 0.0,
                                    "macs": 40_551_040}
    assert t["base_macs"] == 40_551_040  # He et al.'s ResNet-20: ≈41 M mult-adds at 32×32
    h2 = t["heads"]["head_2"]
    assert h2["cr_percent"] == round(100 * (1 - h2["params"] / 269_722), 2)
    assert t["heads"]["head_3"]["params"] < h2["params"] < 269_722
    # head 3 = stem + stage 1 + its module; the module alone is a 3×3 conv 16 → N at 32×32
    assert t["heads"]["head_3"]["macs"] - 32 * 32 * 9 * 16 * 10 == _stem_and_stage1_macs()


def _stem_and_stage1_macs() -> int:
    """ResNet-20's stem (3×3, 3 → 16) and stage 1 (6 convs 3×3, 16 → 16) at 32×32."""
    return 32 * 32 * 9 * (3 * 16 + 6 * 16 * 16)


def test_count_macs_matches_the_layer_formulas():
    import keras

    from sila_keras.core.sizes import count_macs

    x = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(6, 3, strides=2, padding="same", groups=2)(x)  # 4·4 · 9 · 2 · 6
    y = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(y)  # 16 · 9 · 6 · 2
    y = keras.layers.SeparableConv2D(5, 3, padding="valid")(y)  # 2·2 · (9 · 12 + 12 · 5)
    inner = keras.Sequential([keras.Input((2, 2, 5)), keras.layers.Dense(3)])  # nested: 4 · 5 · 3
    y = keras.layers.GlobalAveragePooling2D()(inner(y))
    y = keras.layers.Dense(7)(keras.layers.BatchNormalization()(y))  # 3 · 7 (BN: not counted)
    shared = keras.layers.Dense(7)
    y = shared(shared(y))  # one layer called twice: 2 · 7 · 7
    want = 16 * 9 * 2 * 6 + 16 * 9 * 6 * 2 + 4 * (9 * 12 + 12 * 5) + 4 * 5 * 3 + 3 * 7 + 2 * 49
    model = keras.Model(x, y)
    assert count_macs(model) == want
    first = keras.Model(x, model.layers[1].output)  # a sub-model counts its own calls only
    assert count_macs(first) == 16 * 9 * 2 * 6

def test_json_cli_in_process(capsys):
    assert main(["--dataset", "cifar10", "--models", "mobilenetv1,resnet20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["mobilenetv1", "resnet20"]
    mb = out["mobilenetv1"]
    assert set(mb) >= {"base_params", "base_mib", "train_params", "train_mib", "heads"}
    assert set(mb["heads"]["head_2"]) == {"params", "mib", "cr_percent", "macs"}
    assert mb["base_macs"] == mb["heads"]["head_1"]["macs"] > mb["heads"]["head_2"]["macs"]
    # SilaNet Table 3: base, train and test (head 2) sizes of MobileNetV1.
    paper = PAPER_TABLE3["mobilenetv1"]
    assert mb["base_params"] == TABLE3["mobilenetv1"]["base_params"]
    assert mb["base_mib"] == paper["base_mib"] and mb["train_mib"] == paper["train_mib"]
    assert mb["heads"]["head_2"]["mib"] == paper["head_2_mib"]
    assert mb["paper"] == paper
    assert "paper" not in out["resnet20"]  # not in the paper


def test_table_cli_and_dataset_sizes(capsys):
    assert main(["--dataset", "cifar100", "--models", "mobilenetv1", "--heads", "4"]) == 0
    text = capsys.readouterr().out
    assert "N=100, M=4 heads" in text
    assert "12.65 (12.65)" in text and "7.93 (7.93)" in text  # CIFAR-100 reference sizes
    assert "head_4 MiB" in text and ")*" not in text  # no cell differs
    assert "base MMACs" in text and "head_4 MMACs" in text
    assert num_classes_of("cifar10") == 10 and num_classes_of("7") == 7


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "imagenet"], r"`--dataset` must be cifar10, cifar100 or a number"),
    (["--models", "vgg91"], r"Unknown backbone 'vgg91'.*Available: "),
    (["--models", "resnet20", "--heads", "4"], r"'resnet20' can place at most 3 heads"),
    (["--heads", "0"], r"`--heads` must be >= 1"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sila-params: error: ")
    assert re.search(message, err[0])


def test_subprocess_json():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "sila_keras.params", "--models", "resnet20",
                          "--json"], capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["resnet20"]["heads"]["head_3"]["params"] > 0
