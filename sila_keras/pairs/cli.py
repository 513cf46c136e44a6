"""``python -m sila_keras.pairs``: the digit-pair comparison experiments (Deng & Li, project 1).

Three modes:

* one configuration (default): ``--arch`` with ``--no-aux``/``--no-share``/``--sila``;
* ``--grid``: the paper's grid, lr ∈ {0.001, 0.005, 0.01, 0.05, 0.1} × batch ∈
  {25, 50, 100, 200}, ``--rounds`` rounds each; the best is picked by mean *test*
  accuracy, as the paper did (§3), unless ``--val-split`` gives a validation set;
* ``--table``: the paper's Table 2, parallel/siamese × auxiliary loss on/off,
  20 rounds each by default, at lr 0.005 and batch 50 (the authors' setting).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sila_keras.training.flags import FlagParser, add_recipe_flag
from sila_keras.utils import files
from sila_keras.utils.cli import Command, HelpFormatter, run_command
from sila_keras.utils.errors import ConfigError, RunDirError
from sila_keras.utils.rundir import PairsDir

PROG = "sila-pairs"
# The networks of sila_keras.pairs.models.ARCHS, named here so --help needs no Keras.
ARCH_NAMES = ("fc", "conv", "parallel", "siamese")
GRID_LRS = (0.001, 0.005, 0.01, 0.05, 0.1)
GRID_BATCHES = (25, 50, 100, 200)
TABLE_ROWS = (("siamese", True, True), ("siamese", True, False),
              ("parallel", False, True), ("parallel", False, False))  # (arch, share, aux)
TEST_SELECTION_NOTE = (
    "NOTE: the best setting is selected on mean TEST accuracy, which is what the paper did (§3); "
    "its accuracy is therefore optimistic. Add --val-split F for an honest selection on held-out "
    "training pairs."
)


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        prog=PROG,
        description="Digit-pair comparison on MNIST (Deng & Li, 'Classification, weight sharing, "
                    "auxiliary losses'): is the first digit <= the second? Four networks, weight "
                    "sharing and auxiliary digit losses, optionally SiLa.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--arch", default=None,
                   help=f"network: {', '.join(ARCH_NAMES)} (not needed with --table)")
    p.add_argument("--no-aux", action="store_true", help="drop the auxiliary digit losses")
    p.add_argument("--no-share", action="store_true",
                   help="no weight sharing: siamese becomes parallel (meaningless for fc/conv)")
    p.add_argument("--sila", action="store_true",
                   help="add a second comparison head from the digit posteriors and train both "
                        "comparison heads with the SiLa loss (N=2, M=2)")
    g = p.add_argument_group("experiment")
    g.add_argument("--rounds", type=int, default=None,
                   help="rounds per configuration (default 10; 20 with --table)")
    g.add_argument("--epochs", type=int, default=25)
    g.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate (default: the paper's Table 1 best for --arch; "
                        "0.005 with --table)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="minibatch size (default: Table 1's for --arch; 50 with --table)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--aux-weight", type=float, default=1.0, help="weight of each digit cross-entropy")
    g.add_argument("--beta", type=float, default=1.0, help="--sila: SiLa weight of the second head")
    g.add_argument("--normalize", action="store_true",
                   help="standardize input pixels with the training pool's mean/std (the paper "
                        "feeds raw 0-255 values, for which its learning rates were tuned)")
    g.add_argument("--pairs", type=int, default=1000, help="training pairs and test pairs per round")
    g.add_argument("--pair-draw", default="once", metavar="{once,per-round}",
                   help="once: the pairs are drawn once and every round uses them (the authors' "
                        "code; rounds differ in initialisation and shuffling); per-round: fresh "
                        "pairs every round (default: once)")
    g.add_argument("--grid", action="store_true", help="run the paper's lr × batch-size grid")
    g.add_argument("--val-split", type=float, default=None,
                   help="hold out this fraction of the training pairs; --grid then selects on it")
    g.add_argument("--table", action="store_true",
                   help="run the paper's Table 2 (siamese/parallel × aux on/off)")
    g = p.add_argument_group("data and output")
    g.add_argument("--mnist-dir", default=None,
                   help="folder with the MNIST IDX files (t10k-*; train-* too if available); "
                        "default: tfds 'mnist' when prepared, else ../shared/data")
    g.add_argument("--data-dir", default=None, help="tfds data_dir with a prepared 'mnist'")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="output folder (default runs/pairs/<mode>-<time>)")
    g.add_argument("--resume", action="store_true",
                   help="continue a killed run in --out: configurations it finished are loaded from "
                        "<out>/done/, the others are run")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    add_recipe_flag(p, "sila-pairs")  # one published experiment's settings
    return p


INTERRUPTED_HINT = "Finished configurations are saved in --out; add --resume to continue."


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0 on success, 2 on bad input, 130 when interrupted."""
    return run_command(Command(PROG, build_parser, run, INTERRUPTED_HINT), argv)


# --------------------------------------------------------------------------- modes


def run(args: argparse.Namespace) -> int:
    """Validate every flag (before loading data or building a graph), then run the mode."""
    origins = apply_recipe(args)  # fills the flags not typed
    mode, configs = configs_from_args(args)
    out = _out_dir(args)
    files.write_json(out / PairsDir.RECIPE, {"recipe": args.recipe, "origins": origins})
    if args.resume:
        check_resumed_pair_draw(out, configs[0].pair_draw)
    pools = _load_pools(args)
    _quiet_tf_warnings()
    if mode == "table":
        _run_table(configs, pools, out)
    elif mode == "grid":
        _run_grid(configs, pools, out, args.val_split is not None)
    else:
        _run_single(configs[0], pools, out)
    return 0


DONE_DIR = PairsDir.DONE
# Before --pair-draw existed every run drew per round: a done/ file without it drew per round.
LEGACY_PAIR_DRAW = "per-round"


def _settings(config) -> dict:
    """The settings a ``done/`` file is keyed by and compared on: ``config.to_dict()``, without
    ``pair_draw`` when it is the legacy value, so runs from before the option still resume."""
    d = config.to_dict()
    if d.get("pair_draw") == LEGACY_PAIR_DRAW:
        del d["pair_draw"]
    return d


def _done_path(config, out: Path) -> Path:
    import hashlib
    import json

    key = hashlib.sha1(json.dumps(_settings(config), sort_keys=True).encode()).hexdigest()[:12]
    return out / DONE_DIR / f"{config.effective_arch}-{key}.json"


def check_resumed_pair_draw(out: Path, pair_draw: str) -> None:
    """Refuse to resume a run in ``out`` whose finished configurations drew pairs otherwise.

    Raises:
        RunDirError: a ``done/`` file with another ``pair_draw`` (a different experiment).
    """
    for path in sorted((Path(out) / DONE_DIR).glob("*.json")):
        saved = files.read_json(path).get("config") or {}
        old = saved.get("pair_draw", LEGACY_PAIR_DRAW)
        if old != pair_draw:
            raise RunDirError(
                f"Cannot resume '{out}' with different settings (pair_draw: {old!r} → "
                f"{pair_draw!r}): its finished configurations drew pairs {old}, a different "
                f"experiment. Add --pair-draw {old} to continue it, or choose another --out.")


def _run_or_load(config, pools, out: Path, position: str = "") -> dict:
    """The result of one configuration: loaded from ``<out>/done/`` when an earlier (killed)
    run in ``out`` finished it with the same settings and data, else run and saved there
    (atomically) before anything else happens."""
    path = _done_path(config, out)
    if path.is_file():
        saved = files.read_json(path)
        if saved.get("config") == _settings(config) and saved.get("data") == pools.source:
            print(f"{position}{config.label} lr {config.lr:g} b {config.batch_size}: finished earlier, "
                  f"loaded from {path}", flush=True)
            return saved["result"]
    result = _run_one(config, pools, position)
    files.write_json(path, {"config": _settings(config), "data": pools.source, "result": result})
    return files.read_json(path)["result"]  # the same JSON form whether run now or loaded


# The flags a recipe may set (PairConfig fields)
RECIPE_FIELDS = ("rounds", "epochs", "lr", "batch_size", "pairs", "aux_weight", "momentum",
                 "normalize", "pair_draw")


def apply_recipe(args: argparse.Namespace) -> dict:
    """``--recipe`` (``pairs-003``) fills the flags not typed, in ``args``; returns
    each flag's origin (``flag``, ``default`` or ``recipe:<name>``)."""
    from sila_keras.training.flags import given_flags
    from sila_keras.training.recipes import PAIRS, get_recipe, resolve

    recipe = get_recipe(args.recipe) if args.recipe is not None else None
    flat = {k: getattr(args, k) for k in (*RECIPE_FIELDS, "arch", "table", "grid")
            if hasattr(args, k)}
    given = given_flags(args, {})
    values, origins = resolve(recipe, {k: v for k, v in flat.items() if k in given},
                              {k: v for k, v in flat.items() if k not in given}, command=PAIRS)
    for k in RECIPE_FIELDS:
        if k in values:
            setattr(args, k, values[k])
    return {k: origins[k] for k in RECIPE_FIELDS if k in origins}


def configs_from_args(args: argparse.Namespace) -> tuple[str, list]:
    """The mode (``single``, ``grid`` or ``table``) and its validated :class:`PairConfig` list."""
    from sila_keras.pairs import models as pmodels
    from sila_keras.pairs.experiment import PairConfig

    if args.grid and args.table:
        raise ConfigError("--grid and --table are separate experiments; run them one at a time.")
    if not args.table and args.arch is None:
        raise ConfigError(f"--arch is required (one of {', '.join(pmodels.ARCHS)}), unless --table.")
    if args.grid and (args.lr is not None or args.batch_size is not None):
        raise ConfigError("--grid searches lr and batch size itself; drop --lr/--batch-size.")
    rounds = args.rounds if args.rounds is not None else (20 if args.table else 10)
    common = dict(sila=args.sila, rounds=rounds, epochs=args.epochs, pairs=args.pairs,
                  val_split=args.val_split, aux_weight=args.aux_weight, beta=args.beta,
                  momentum=args.momentum, normalize=args.normalize, seed=args.seed,
                  pair_draw=args.pair_draw)
    if args.table:
        if args.arch is not None or args.no_aux or args.no_share:
            raise ConfigError("--table runs its own four configurations; "
                             "drop --arch/--no-aux/--no-share.")
        lr = _given(args.lr, pmodels.TABLE2_HPARAMS["lr"])
        bs = _given(args.batch_size, pmodels.TABLE2_HPARAMS["batch_size"])
        return "table", [PairConfig(arch, aux=aux, share=share if arch == "siamese" else None,
                                    lr=lr, batch_size=bs, **common)
                         for arch, share, aux in TABLE_ROWS]
    pmodels.check_arch(args.arch)
    variant = dict(aux=not args.no_aux, share=False if args.no_share else None, **common)
    base = PairConfig(args.arch, **variant)  # validates the flags once
    if args.grid:
        return "grid", [PairConfig(args.arch, lr=lr, batch_size=b, **variant)
                        for lr in GRID_LRS for b in GRID_BATCHES]
    best = pmodels.PAPER_TABLE1[base.effective_arch]
    return "single", [PairConfig(args.arch, lr=_given(args.lr, best["lr"]),
                                 batch_size=_given(args.batch_size, best["batch_size"]), **variant)]


def _given(value, default):
    return default if value is None else value


def _quiet_tf_warnings() -> None:
    """Every round builds a fresh model; TF's "retracing" warnings about that are noise here."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def _out_dir(args) -> Path:
    mode = "table" if args.table else ("grid-" if args.grid else "") + (args.arch or "")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out: the folder of the run to continue.")
        if not (Path(args.out) / DONE_DIR).is_dir():
            raise ConfigError(f"Cannot resume: '{Path(args.out) / DONE_DIR}' not found (no finished "
                                    "configuration to continue from). Run without --resume.")
        return Path(args.out)
    out = Path(args.out) if args.out else Path("runs") / "pairs" / f"{mode}-{stamp}"
    existing = PairsDir(out).existing_results()
    if existing:
        raise RunDirError(f"'{out}' already holds {', '.join(existing)}; nothing is overwritten. "
                              "Add --resume to continue that run, or choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the output folder '{out}': {e.strerror}. "
                              "Choose a writable --out.") from None
    return out


def _load_pools(args):
    from sila_keras.pairs.data import load_pools

    pools = load_pools(args.mnist_dir, args.data_dir, args.seed)
    print(f"Data: {pools.source}: pools of {len(pools.train_y)} training and {len(pools.test_y)} "
          f"test images, disjoint: {'yes' if pools.disjoint else 'NO'}"
          + "".join(f"\n  note: {n}" for n in pools.notes), flush=True)
    return pools


def _run_one(config, pools, position: str = ""):
    """run_config with a progress bar over rounds × epochs (a line per round off a terminal)."""
    from sila_keras.pairs.experiment import logged, run_config

    desc = f"{position}{config.label} lr {config.lr:g} b {config.batch_size}"
    total = config.rounds * config.epochs
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="epoch", file=sys.stderr, leave=True)

        def on_epoch(r, epoch, logs):
            acc = 100 * (logged(logs, "comparison") or 0)
            bar.set_postfix_str(f"round {r + 1}/{config.rounds} test {acc:.1f}%")
            bar.update(1)
    else:
        bar = None

        def on_epoch(r, epoch, logs):
            if epoch + 1 == config.epochs:
                print(f"  {desc}: round {r + 1}/{config.rounds}: test accuracy "
                      f"{100 * (logged(logs, 'comparison') or 0):.2f}%", flush=True)
    try:
        return run_config(config, pools, on_epoch)
    finally:
        if bar is not None:
            bar.close()


def _run_single(config, pools, out: Path) -> dict:
    from sila_keras.pairs import report

    result = _run_or_load(config, pools, out)
    table = report.table1_markdown([result])
    written = report.write_run(out, result, table)
    print(report.result_line(result))
    print(table)
    print("Wrote " + ", ".join(str(f) for f in written), flush=True)
    return result


def _slug(config) -> str:
    parts = [config.effective_arch, "aux" if config.has_aux else "noaux"]
    return "-".join(parts + (["sila"] if config.sila else []))


def _run_table(configs, pools, out: Path) -> list[dict]:
    from sila_keras.pairs import report

    results = []
    for i, config in enumerate(configs, start=1):
        result = _run_or_load(config, pools, out, f"[{i}/{len(configs)}] ")
        report.write_run(out / _slug(config), result, report.table1_markdown([result]))
        print(report.result_line(result), flush=True)
        results.append(result)
    table = report.table2_markdown(results)
    verdict = ordering_verdict(results)
    files.write_json(out / PairsDir.TABLE_JSON, {"rows": [_summary(r) for r in results], "ordering": verdict,
                                       "data": pools.describe()})
    files.write_text(out / PairsDir.TABLE, table + "\n" + verdict["text"] + "\n")
    report.plot_bands(results, out / PairsDir.CURVES,
                      title=f"Table 2 configurations: mean ± std over {results[0]['rounds']} rounds")
    print("\n" + table + "\n" + verdict["text"])
    print(f"Wrote {out / PairsDir.TABLE}, {out / PairsDir.TABLE_JSON}, {out / PairsDir.CURVES} and one folder "
          "per configuration", flush=True)
    return results


def ordering_verdict(results: list[dict]) -> dict:
    """Whether the paper's ordering holds: sharing+aux ≥ aux only > sharing only > none."""
    acc = {(r["options"]["share"], r["options"]["aux"]): r["mean_accuracy"] for r in results}
    both, share = acc[(True, True)], acc[(True, False)]
    aux, none = acc[(False, True)], acc[(False, False)]
    checks = {"sharing+aux >= aux only": both >= aux, "aux only > sharing only": aux > share,
              "sharing only > none": share > none}
    ok = all(checks.values())
    text = ("Paper's ordering (sharing+aux ≥ aux only > sharing only > none): "
            + ("HOLDS" if ok else "does NOT hold")
            + " — " + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items()))
    return {"holds": ok, "checks": checks, "text": text}


def _summary(r: dict) -> dict:
    keep = ("arch", "label", "options", "rounds", "lr", "batch_size", "mean_accuracy", "std_accuracy",
            "accuracies", "mean_val_accuracy", "std_val_accuracy", "mean_digit_accuracy",
            "mean_digit_rule_accuracy", "mean_head_2_accuracy", "params", "paper_params", "paper_table2", "wall_time_s")
    return {k: r[k] for k in keep if k in r}


def _run_grid(configs, pools, out: Path, honest: bool) -> dict:
    from sila_keras.pairs import report

    key = "mean_val_accuracy" if honest else "mean_accuracy"
    grid, results = [], []
    for i, config in enumerate(configs, start=1):
        result = _run_or_load(config, pools, out, f"[{i}/{len(configs)}] ")
        print(report.result_line(result), flush=True)
        results.append(result)
        grid.append(_summary(result))
        files.write_json(out / PairsDir.GRID_JSON, {"selected_by": key, "grid": grid, "complete": False})
    best_i = max(range(len(results)), key=lambda j: results[j][key])
    best = dict(results[best_i])
    note = ("Selected on mean VALIDATION accuracy (--val-split "
            f"{configs[0].val_split}: held-out training pairs); the test accuracy is unbiased."
            if honest else TEST_SELECTION_NOTE)
    best["selection"] = {"selected_by": key, "note": note, "grid_size": len(results)}
    files.write_json(out / PairsDir.GRID_JSON, {"selected_by": key, "note": note, "grid": grid, "complete": True,
                                      "best": {"lr": best["lr"], "batch_size": best["batch_size"]}})
    tables = (f"## Mean test accuracy ({configs[0].rounds} rounds each)\n\n"
              + report.grid_markdown(grid, "mean_accuracy"))
    if honest:
        tables += "\n## Mean validation accuracy\n\n" + report.grid_markdown(grid, "mean_val_accuracy")
    best_table = report.table1_markdown([best])
    files.write_text(out / PairsDir.GRID, tables + "\n## Selected\n\n" + best_table + "\n" + note + "\n")
    report.write_run(out, best, best_table)
    print("\n" + tables + f"\nBest: lr {best['lr']:g}, batch {best['batch_size']}\n" + best_table
          + "\n" + note)
    print(f"Wrote {out / PairsDir.GRID}, {out / PairsDir.GRID_JSON}, and the selected setting's "
          f"results.json / table.md / curves.png in {out}", flush=True)
    return best
