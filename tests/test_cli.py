"""The one CLI runner: exit-code table, SIGTERM, --debug, --help without TensorFlow, oneDNN."""

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sila_keras.utils.cli import Command, HelpFormatter, onednn_decision, run_command
from sila_keras.utils.errors import ConfigError, DataError, RunDirError, RunFailed


def _parser():
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--debug", action="store_true")
    return p


def _command(error, hint="continue with --resume."):
    def run(args):
        if error is not None:
            raise error
        print("worked")

    return Command("demo", _parser, run, hint, needs_tensorflow=False)


@pytest.mark.parametrize("error, status, line", [
    (None, 0, None),
    (ConfigError("`--n` must be >= 1. Received: n=0"), 2,
     "demo: error: `--n` must be >= 1. Received: n=0"),
    (DataError("no 'train/' subfolder"), 2, "demo: error: no 'train/' subfolder"),
    (RunDirError("exists"), 2, "demo: error: exists"),
    (RunFailed("loss became nan"), 3, "demo: failed: loss became nan"),
    (KeyboardInterrupt(), 130, "demo: interrupted. continue with --resume."),
])
def test_exit_code_table(capsys, error, status, line):
    assert run_command(_command(error), []) == status
    err = capsys.readouterr().err
    if line is None:
        assert err == ""
    else:
        assert err == line + "\n"  # one line, no traceback


def test_a_bug_shows_its_traceback_and_exits_1(capsys):
    assert run_command(_command(TypeError("unsupported operand")), []) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "TypeError: unsupported operand" in err and "bug" in err


def test_debug_adds_the_traceback_to_bad_input(capsys):
    assert run_command(_command(ConfigError("bad flag")), ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("demo: error: bad flag")


def test_sigterm_stops_like_ctrl_c_and_restores_the_handler(capsys):
    def run(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler long before this ends
        raise AssertionError("SIGTERM did not interrupt")

    before = signal.getsignal(signal.SIGTERM)
    assert run_command(Command("demo", _parser, run, "kept.", needs_tensorflow=False), []) == 130
    assert capsys.readouterr().err == "demo: interrupted. kept.\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_argument_errors_are_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_command(_command(None), ["--nope"])
    assert e.value.code == 2 and "unrecognized arguments: --nope" in capsys.readouterr().err


@pytest.mark.parametrize("flags, environ, expected", [
    ({"fpu", "sse2", "avx", "avx2", "fma"}, {}, "1"),               # AVX2-only x86: TF leaves it off
    ({"sse2", "avx2", "avx512f", "avx512_vnni"}, {}, None),         # TF turns it on itself
    ({"sse2", "avx2", "avx_vnni"}, {}, None),
    ({"sse2", "avx2", "amx_tile", "amx_bf16"}, {}, None),
    ({"sse2", "avx2"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}, None),      # the user's choice wins
    ({"sse2", "avx2"}, {"TF_ENABLE_ONEDNN_OPTS": "1"}, None),
    (None, {}, None),                                              # flags unreadable
    ({"fp", "asimd", "sve"}, {}, None),                            # not x86
])
def test_onednn_decision(flags, environ, expected):
    assert onednn_decision(flags, environ) == expected


def test_cpu_flags_parses_proc_cpuinfo(tmp_path):
    from sila_keras.utils.cli import cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(str(tmp_path / "missing")) is None


# Console scripts: (name as installed, module, argv that fails in argparse).
SCRIPTS = [
    ("sila-train", "sila_keras.training.train", ["cifar10"]),
    ("sila-tune", "tuning.cli", ["cifar10"]),
    ("sila-export", "export.cli", ["run"]),
    ("sila-pairs", "sila_keras.pairs.cli", ["--rounds", "x"]),
    ("sila-analyze", "sila_keras.reports.analyze", ["noise"]),
    ("sila-params", "sila_keras.reports.params", ["--heads", "x"]),
    ("sila-report", "sila_keras.reports.report", []),
    ("sila-cascade", "sila_keras.reports.cascade", ["run", "--confidence", "x"]),
]

_PROBE = """
import sys
sys.argv = [{script!r}]  # what the installed console script sees, set before any import
from {module} import main
codes = []
for argv in (["--help"], {bad!r}):
    try:
        main(argv)
    except SystemExit as e:
        codes.append(e.code)
print(codes, sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


@pytest.mark.parametrize("script, module, bad", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_help_and_argument_errors_do_not_import_tensorflow(script, module, bad):
    code = _PROBE.format(script=script, module=module, bad=bad)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[0, 2] []", out.stdout + out.stderr[-1000:]


def test_python_dash_m_help_does_not_import_tensorflow():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "tuning", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--beta-range" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "tensorflow" not in imported and "keras" not in imported


def test_plain_import_is_light_and_loads_the_api_on_first_use():
    code = ("import sys, sila_keras; before = 'keras' in sys.modules; "
            "print(before, callable(sila_keras.SilaLoss), 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr[-2000:]


def test_train_help_shows_every_default_once():
    from sila_keras.training.train import build_parser

    text = build_parser().format_help()
    for flag, default in (("--epochs", "260"), ("--lr", "0.1"), ("--momentum", "0.9"),
                          ("--seed", "0"), ("--milestones", "30,55,80")):
        block = re.search(rf"\n  {flag} \S+(.*?)(?=\n  -)", text, re.S).group(1)
        assert f"(default: {default}" in block, (flag, block)
    assert "--nesterov" in text and re.search(r"--nesterov\s+Nesterov momentum", text)
    for block in re.split(r"\n  (?=-)", text)[1:]:  # one block per flag
        assert block.count("(default") <= 1, block


def test_help_formatter_skips_switches_and_none():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--n", type=int, default=0, help="a number")
    p.add_argument("--name", default=None, help="a name")
    text = p.format_help()
    assert "a switch\n" in text and "a number (default: 0)" in text and "a name\n" in text


def test_parser_name_lists_match_the_registries():
    import sila_keras.data.augment  # noqa: F401  (registers autoaugment/randaugment)
    from sila_keras.data.pipeline import AUGMENTATIONS
    from sila_keras.models import list_backbones
    from sila_keras.pairs import models as pmodels
    from sila_keras.pairs.cli import ARCH_NAMES
    from sila_keras.training.config_groups import AUGMENT_NAMES, BACKBONE_NAMES

    assert BACKBONE_NAMES == tuple(list_backbones())
    assert AUGMENT_NAMES == tuple(sorted(AUGMENTATIONS))
    assert ARCH_NAMES == tuple(pmodels.ARCHS)
    from sila_keras.data.augment_ops import SEMANTICS
    from sila_keras.modes.dynamic import EVALUATIONS
    from sila_keras.training.config_groups import AUTOAUGMENT_SEMANTICS, DYNAMIC_EVALUATIONS

    assert AUTOAUGMENT_SEMANTICS == SEMANTICS and DYNAMIC_EVALUATIONS == EVALUATIONS


def test_too_many_heads_fails_before_the_data_is_loaded(tmp_path, capsys):
    from sila_keras.training.train import main

    # The dataset does not exist: the heads error must come first (no data was read).
    rc = main([f"folder:{tmp_path}/no-such-data", "resnet20", "--heads", "7", "--out",
               str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "at most 3 heads" in err and "no-such-data" not in err
    assert not (tmp_path / "runs").exists()


def test_epoch_line_starts_its_own_line_and_names_no_val_metrics(tmp_path, capsys):
    import keras
    import numpy as np
    import tensorflow as tf

    from sila_keras.training.callbacks import EpochLogger
    from sila_keras.training.train import fit

    x, y = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    logger = EpochLogger(tmp_path / "metrics.csv", 1, total_epochs=2)
    fit(model, ds.repeat(), ds, epochs=2, steps=2, callbacks=[logger], verbose=1)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines if "epoch " in line] == ["epoch 1/2", "epoch 2/2"]
    assert all(line.startswith("epoch ") for line in lines if "epoch " in line)
    assert "val_" not in out and "2/2" in out  # the batch bar ran, without Keras' val_* names
