"""Named paper recipes (``--recipe``): the papers' values, flags over recipes, origins in
config.json, ``--recipe list``, the docs tables, bad input. No training: configs only."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_err

from sila_keras.training.config import FIELD_GROUP, TrainConfig
from sila_keras.training.flags import build_parser, config_from_args
from sila_keras.training.recipe_text import markdown, render_docs
from sila_keras.training.recipes import get_recipe, list_recipes, resolve, table1_dataset
from sila_keras.utils.errors import ConfigError, RunDirError
from sila_keras.utils.rundir import RunDir, check_resume

DOCS = Path(__file__).resolve().parents[1] / "docs"
SILANET_MILESTONES = (30, 55, 80, 105, 135, 160, 180, 200, 220, 240)


def cfg(*argv) -> TrainConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_msdnet_dynamic_is_paper_b_section_4_2():
    c = cfg("cifar100", "msdnet", "--recipe", "msdnet-dynamic")
    # §4.2: 300 epochs, batch 64, lr 0.1 ÷10 at 150 and "255" (read 225); MSDNet: wd 1e-4, Nesterov 0.9
    assert (c.sila.mode, c.optim.epochs, c.optim.batch_size, c.optim.lr, c.optim.milestones, c.optim.gamma) == (
        "dynamic", 300, 64, 0.1, (150, 225), 0.1)
    assert (c.optim.weight_decay, c.optim.momentum, c.optim.nesterov, c.optim.optimizer, c.optim.schedule, c.sila.betas) == (
        1e-4, 0.9, True, "sgd", "step", None)
    assert c.run.recipe == "msdnet-dynamic" and c.run.origins["mode"] == "recipe:msdnet-dynamic"


def test_silanet_cifar_is_paper_a_section_3_1():
    c = cfg("cifar10", "resnet20", "--recipe", "silanet-cifar")
    assert (c.sila.mode, c.sila.heads, c.sila.beta, c.sila.lam, c.optim.lr, c.optim.epochs, c.optim.milestones) == (
        "sila", 3, 0.1, 0.5, 0.1, 260, SILANET_MILESTONES)
    # our documented assumptions for what paper A does not state
    assert (c.optim.batch_size, c.optim.gamma, c.optim.momentum, c.optim.weight_decay, c.optim.nesterov, c.data.augment) == (
        128, 0.5, 0.9, 5e-4, False, "standard")
    kinds = {k: s.paper for k, s in get_recipe("silanet-cifar").settings.items()}
    assert kinds["lr"] and kinds["heads"] and not kinds["gamma"] and not kinds["weight_decay"]


def test_strong_heads_sets_the_measured_module_and_levers_per_backbone():
    r20 = cfg("cifar10", "resnet20", "--recipe", "strong-heads")
    assert (r20.sila.head_module, r20.sila.ship_head, r20.sila.ramp_betas, r20.sila.heads) == (
        "sep", 2, 3, 3)
    assert r20.run.origins["ramp_betas"] == "recipe:strong-heads"
    m1 = cfg("cifar10", "mobilenetv1", "--recipe", "strong-heads", "--ramp-betas", "2")
    assert (m1.sila.head_module, m1.sila.ship_head, m1.sila.ramp_betas) == ("sep", 2, 2)
    assert m1.run.origins["ramp_betas"] == "flag"  # a typed flag wins over the recipe
    with pytest.raises(ConfigError, match=r"lists no backbone 'vgg19'\. Listed: resnet20, mobilenetv1"):
        cfg("cifar10", "vgg19", "--recipe", "strong-heads")


def test_without_a_recipe_the_defaults_are_silanet_cifar():
    d = TrainConfig.create("cifar10", "resnet20")
    settings = {k: s.value for k, s in get_recipe("silanet-cifar").settings.items()
                if k in FIELD_GROUP}
    assert {k: d.value(k) for k in settings} == settings


@pytest.mark.parametrize("model,dataset,beta,lam", [  # paper A, Table 1
    ("vgg19", "cifar10", 0.05, 0.8), ("vgg19", "folder:/d/cifar100-jpg.tar.gz", 0.3, 0.5),
    ("resnet18", "cifar10", 0.1, 0.5), ("resnet18", "cifar100", 0.1, 0.5),
    ("wrn40_10", "folder:/d/cifar10", 0.1, 0.5), ("wrn40_10", "cifar100", 0.1, 0.5),
    ("mobilenetv1", "cifar10", 0.2, 0.5), ("mobilenetv1", "cifar100", 0.2, 0.5),
    ("densenet121", "cifar10", 0.1, 0.5), ("densenet121", "cifar100", 0.1, 0.5),
    ("inceptionv3", "cifar10", 0.1, 0.5), ("inceptionv3", "cifar100", 0.1, 0.5),
])
def test_table1_beta_and_lambda_per_backbone_and_dataset(model, dataset, beta, lam):
    c = cfg(dataset, model, "--recipe", "silanet-cifar-table1")
    assert (c.sila.beta, c.sila.lam, c.sila.heads, c.optim.epochs) == (beta, lam, 3, 260)
    assert c.run.origins["beta"] == "recipe:silanet-cifar-table1"


def test_table1_dataset_names():
    assert [table1_dataset(d) for d in ("cifar10", "cifar100:3.0.2", "folder:x/CIFAR-100/",
                                        "folder:../cifar10-jpg.tar.gz", "tf_flowers")] == [
        "cifar10", "cifar100", "cifar100", "cifar10", "tf_flowers"]


def test_sila_b_cifar_is_paper_b_section_4_1_with_and_without_autoaugment():
    c = cfg("cifar100", "resnet18", "--recipe", "sila-b-cifar")
    assert (c.sila.mode, c.sila.betas, c.optim.epochs, c.optim.batch_size, c.optim.lr, c.optim.milestones, c.data.augment) == (
        "mutual", (1.0, 1.0), 260, 128, 0.1, SILANET_MILESTONES, "standard")
    aa = cfg("cifar10", "vgg19", "--recipe", "sila-b-cifar-aa", "--mode", "dml")
    assert (aa.sila.mode, aa.data.augment, aa.sila.betas) == ("dml", "autoaugment", (1.0, 1.0))
    assert aa.run.origins["mode"] == "flag" and aa.run.origins["augment"] == "recipe:sila-b-cifar-aa"


def test_typed_flags_win_even_when_equal_to_the_default():
    c = cfg("cifar100", "msdnet", "--recipe", "msdnet-dynamic", "--epochs", "1",
            "--batch-size", "128", "--lr=0.05", "--no-nesterov", "--weight-d", "5e-4")
    assert (c.optim.epochs, c.optim.batch_size, c.optim.lr, c.optim.nesterov, c.optim.weight_decay) == (1, 128, 0.05, False, 5e-4)
    assert {k: c.run.origins[k] for k in ("epochs", "batch_size", "lr", "nesterov", "weight_decay")} \
        == dict.fromkeys(("epochs", "batch_size", "lr", "nesterov", "weight_decay"), "flag")
    assert c.run.origins["gamma"] == "recipe:msdnet-dynamic" and c.run.origins["seed"] == "default"
    plain = cfg("cifar10", "resnet20")
    assert plain.run.recipe is None and set(plain.run.origins.values()) == {"flag", "default"}


def test_keras_models_default_to_the_finetune_recipe():
    c = cfg("cifar10", "keras:MobileNetV2")
    assert (c.run.recipe, c.optim.optimizer, c.optim.lr, c.net.weights, c.optim.backbone_lr_mult) == (
        "keras-finetune", "adamw", 1e-3, "imagenet", 0.1)
    assert c.run.origins["optimizer"] == "recipe:keras-finetune"
    paper = cfg("cifar10", "keras:MobileNetV2", "--recipe", "silanet-cifar", "--weights", "none")
    assert (paper.optim.optimizer, paper.optim.lr, paper.optim.weight_decay, paper.optim.backbone_lr_mult) == (
        "sgd", 0.1, 5e-4, 1.0)


def test_resolve_skips_fields_this_build_lacks_and_layers_in_order():
    values, origins = resolve(get_recipe("sila-b-cifar-aa"), {"lr": 0.2},
                              {"lr": 0.1, "epochs": 5, "mode": "sila", "seed": 3})
    assert values == {"lr": 0.2, "epochs": 260, "mode": "mutual", "seed": 3}
    assert origins == {"lr": "flag", "epochs": "recipe:sila-b-cifar-aa",
                       "mode": "recipe:sila-b-cifar-aa", "seed": "default"}


def test_config_json_records_recipe_and_origins_and_resume_compares_values(tmp_path):
    from sila_keras.training.train import create_run_dir

    c = cfg("cifar100", "msdnet", "--recipe", "msdnet-dynamic", "--epochs", "1",
            "--out", str(tmp_path), "--name", "r")
    create_run_dir(c)
    saved = RunDir(tmp_path / "r").read_config()  # by flat name
    assert saved["recipe"] == "msdnet-dynamic" and saved["epochs"] == 1
    assert saved["origins"]["epochs"] == "flag" and saved["origins"]["seed"] == "default"
    assert saved["origins"]["weight_decay"] == "recipe:msdnet-dynamic"
    assert (saved["batch_size"], saved["milestones"], saved["weight_decay"]) == (64, [150, 225], 1e-4)
    old = TrainConfig.from_dict(saved)
    same = old.replace(recipe=None, origins=dict.fromkeys(old.run.origins, "flag"))
    check_resume(old, same, "'r'")  # the same values typed as flags: resumable
    with pytest.raises(RunDirError, match=r"batch_size: 64 → 128"):
        check_resume(old, same.replace(batch_size=128), "'r'")


@pytest.mark.parametrize("argv,message", [
    (["--recipe", "nope"], r"Unknown recipe 'nope'\. Available: silanet-cifar, .*msdnet-dynamic"),
    (["--recipe", "msdnet-dynamic", "--mode", "sila"],
     r"Recipe 'msdnet-dynamic' is for --mode dynamic .*Received: mode='sila'"),
    (["--recipe", "pairs-003"], r"Recipe 'pairs-003' is for sila-pairs .*not sila-train"),
    (["--recipe", "silanet-cifar-table1"],
     r"lists no backbone/dataset 'msdnet/[^']+'\. Listed: vgg19, resnet18, .* × cifar10, cifar100"),
])
def test_bad_recipe_input_exits_2_and_writes_nothing(tiny_folder, tmp_path, capsys, argv, message):
    err = run_err(capsys, [f"folder:{tiny_folder}", "msdnet", *argv,
                           "--out", str(tmp_path / "runs"), "--name", "x"])
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_recipe_list_prints_sources_and_assumptions_without_tensorflow():
    code = ("import sys; from sila_keras.training.train import main\n"
            "try:\n    main(['--recipe', 'list'])\nexcept SystemExit as e:\n"
            "    print('EXIT', e.code, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    text = out.stdout
    assert text.rstrip().endswith("EXIT 0 False"), out.stderr[-2000:]
    for name in list_recipes():
        assert f"\n{name}  [" in "\n" + text
    assert "msdnet-dynamic  [sila-train --mode dynamic]" in text and "§4.2" in text
    assert "milestones = 150,225  (assumption)" in text and "epochs = 300" in text
    assert "vgg19/cifar100: beta = 0.3, lam = 0.5  (paper) Table 1" in text


@pytest.mark.parametrize("name,doc", [
    ("silanet-cifar", "paper_a.md"), ("silanet-cifar-table1", "paper_a.md"),
    ("sila-b-cifar", "paper_b.md"), ("sila-b-cifar-aa", "paper_b.md"),
    ("msdnet-dynamic", "paper_b.md"), ("pairs-003", "pairs.md"), ("strong-heads", "heads.md"),
])
def test_docs_tables_are_the_registry(name, doc):
    text = (DOCS / doc).read_text()
    block = f"<!-- recipe:{name} (generated: sila_keras.training.recipe_text.render_docs) -->\n{markdown(name)}\n"
    assert block in text and render_docs(text) == text, \
        f"regenerate: p = Path('docs/{doc}'); p.write_text(render_docs(p.read_text()))"


def test_pairs_recipe_fills_table_1_and_table_2_settings(capsys, tmp_path):
    from sila_keras.pairs.cli import apply_recipe, configs_from_args
    from sila_keras.pairs.cli import build_parser as pairs_parser
    from sila_keras.pairs.cli import main as pairs_main

    args = pairs_parser().parse_args(["--arch", "conv", "--recipe", "pairs-003", "--epochs", "2"])
    origins = apply_recipe(args)
    (single,) = configs_from_args(args)[1]
    assert (single.lr, single.batch_size, single.epochs, single.rounds, single.pairs) == (
        0.05, 25, 2, 10, 1000)
    assert origins["lr"] == "recipe:pairs-003" and origins["epochs"] == "flag"
    args = pairs_parser().parse_args(["--table", "--recipe", "pairs-003"])
    apply_recipe(args)
    rows = configs_from_args(args)[1]
    assert {(r.lr, r.batch_size, r.rounds) for r in rows} == {(0.005, 50, 20)}
    assert pairs_main(["--arch", "conv", "--recipe", "silanet-cifar",
                       "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is for sila-train" in err and not (tmp_path / "p").exists()


def test_stored_configs_load_and_bad_origins_are_refused():
    assert TrainConfig.from_dict({"dataset": "d", "model": "resnet20", "recipe": "renamed"}).run.recipe \
        == "renamed"  # a run recorded under a recipe name that no longer exists still loads
    assert TrainConfig.from_dict({"dataset": "d", "model": "resnet20"}).run.origins == {}  # old runs
    with pytest.raises(ConfigError, match="`origins` values must be"):
        TrainConfig.create("d", "resnet20", origins={"lr": "typed"})
