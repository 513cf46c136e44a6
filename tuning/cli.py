"""``python -m tuning DATASET MODEL [options]`` / ``sila-tune``: search β and λ with keras-tuner.

Every data/model/optimiser flag of ``sila-train`` is accepted and means the same
(the parser is built on ``sila_keras.training.train.build_parser()``; defaults come from
``TrainConfig``). ``--epochs`` is the number of epochs per trial. β/λ flags of
``sila-train`` are replaced by ranges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sila_keras.training.config import TrainConfig
from sila_keras.utils.cli import Command, HelpFormatter, run_command
from sila_keras.utils.errors import ConfigError
from tuning.config import TUNERS, SearchConfig, parse_range

# sila-train flags that have no meaning in a search, and what to use instead.
REPLACED = {"beta": "--beta-range LO,HI", "lam": "--lam-range LO,HI",
            "betas": "--beta-range/--lam-range (explicit per-set weights are not searched)",
            "name": "--out DIR (the search folder)"}


def build_parser() -> argparse.ArgumentParser:
    """``sila-train``'s parser plus the search flags."""
    from sila_keras.training.train import build_parser as train_parser

    d, s = TrainConfig(), SearchConfig.__dataclass_fields__
    p = argparse.ArgumentParser(
        prog="sila-tune", parents=[train_parser()], conflict_handler="resolve",
        description="Search the SiLa loss weights β (log-uniform) and λ (uniform) — and optionally "
                    "the number of heads — with keras-tuner. The objective is measured on a "
                    "validation split held out from the TRAINING images; the test split is only "
                    "used by --final-epochs, once, after the search.",
        formatter_class=HelpFormatter,
        epilog="Distributed search: run the same command with KERASTUNER_TUNER_ID=chief on one "
               "process and tuner0, tuner1, … on workers, all with KERASTUNER_ORACLE_IP and "
               "KERASTUNER_ORACLE_PORT set and the same --out (see docs/tuning.md).",
    )
    g = p.add_argument_group("search")
    g.add_argument("--tuner", default=s["tuner"].default,
                   help=f"search algorithm: {', '.join(TUNERS)}")
    g.add_argument("--max-trials", type=int, default=s["max_trials"].default,
                   help="configurations to try (a cap for hyperband); may grow on --resume")
    g.add_argument("--epochs", type=int, default=d.optim.epochs,
                   help="training epochs per trial (hyperband: max epochs per trial)")
    g.add_argument("--objective", default=s["objective"].default,
                   help="head_k_acc to maximise on the validation split (val_head_k_acc "
                        "accepted); e.g. head_3_acc with --ship-head 3 to tune for the head "
                        "you will ship")
    g.add_argument("--beta-range", default=_fmt(s["beta_range"].default),
                   help="LO,HI of β, sampled log-uniformly (LO > 0)")
    g.add_argument("--lam-range", default=_fmt(s["lam_range"].default),
                   help="LO,HI of λ, sampled uniformly (fixed when --heads 2: it has no effect)")
    g.add_argument("--heads", type=int, default=d.sila.heads,
                   help="M heads of every trial; with --tune-heads the largest M searched")
    g.add_argument("--tune-heads", action="store_true", help="also search M in 2..--heads")
    g.add_argument("--val-split", type=float, default=s["val_split"].default,
                   help="fraction of the training images held out (stratified) for the objective")
    g.add_argument("--hyperband-factor", type=int, default=s["hyperband_factor"].default,
                   help="hyperband: reduction factor between rounds")
    g.add_argument("--final-epochs", type=int, default=None,
                   help="retrain the best config this long on all training images and evaluate "
                        "once on the test split (written to final_test.json)")
    g.add_argument("--out", default=None,
                   help=f"search folder (default {d.run.out}/tune-<dataset>-<model>-<time>); must be "
                        "new or empty unless --resume")
    g.add_argument("--resume", action="store_true",
                   help="continue the search in --out; finished trials are not rerun")
    for flag in REPLACED:
        g.add_argument(f"--{flag}", default=None, help=argparse.SUPPRESS)
    return p


def _fmt(rng) -> str:
    return ",".join(f"{v:g}" for v in rng)


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """Parsed flags → a validated :class:`SearchConfig` (train flags via sila-train's mapping)."""
    from sila_keras.training.train import config_from_args as train_config
    from sila_keras.training.train import default_run_name

    for flag, instead in REPLACED.items():
        if getattr(args, flag) is not None:
            raise ConfigError(f"`--{flag}` is not a sila-tune flag: the search chooses it. "
                             f"Use {instead}. Received: {flag}={getattr(args, flag)!r}")
    out = args.out
    if out is None:
        if args.resume:
            raise ConfigError("--resume needs --out DIR: the folder of the search to continue.")
        out = str(Path(TrainConfig().run.out) / f"tune-{default_run_name(args.dataset, args.model)}")
    d = TrainConfig()
    # --val-split here is the search's hold-out (SearchConfig), not the dataset's
    ns = argparse.Namespace(**{**vars(args), "beta": d.sila.beta, "lam": d.sila.lam, "betas": None,
                               "name": "trial", "resume": False, "out": out, "val_split": None})
    train = train_config(ns)
    return SearchConfig(
        train=train, out=out, tuner=args.tuner, max_trials=args.max_trials,
        objective=args.objective, beta_range=parse_range(args.beta_range, "--beta-range"),
        lam_range=parse_range(args.lam_range, "--lam-range"), tune_heads=args.tune_heads,
        val_split=args.val_split, resume=args.resume, final_epochs=args.final_epochs,
        hyperband_factor=args.hyperband_factor,
    )


INTERRUPTED_HINT = ("Finished trials are kept; continue with the same command plus --resume "
                    "(the interrupted trial is rerun).")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0 ok, 2 bad input, 3 search failed, 130 interrupted."""
    return run_command(Command("sila-tune", build_parser, _main, INTERRUPTED_HINT), argv)


def _main(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    from sila_keras.devices.distribute import apply_cpu_devices

    apply_cpu_devices(args.cpu_devices)
    from tuning.search import run_search

    run_search(config)


if __name__ == "__main__":
    sys.exit(main())
