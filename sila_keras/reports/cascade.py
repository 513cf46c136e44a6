"""Early-exit cascade of a SiLa model's heads: calibrate, measure, write the trade-off.

The M heads share one trunk. At inference an image is classified by the cheapest head first;
it stops there when that head is confident enough and goes on to the next deeper head
otherwise; the deepest head (``head_1`` in a SilaNet) takes every image left. This is paper
B's dynamic evaluation (:mod:`sila_keras.modes.anytime`) applied to any SiLa model.

* :mod:`sila_keras.reports.cascade_routing`: confidence, routing and threshold calibration
  (pure NumPy).
* :mod:`sila_keras.reports.cascade_eval`: the model's order and costs, calibration images,
  the measured trade-off, the run files and the summary over seeds.
* This module: :func:`run_cascade` (one run directory) and the ``sila-cascade`` command line.

``python -m sila_keras.cascade RUN`` writes ``cascade.json``, ``cascade.csv`` and
``cascade.png`` into the run directory (:class:`~sila_keras.utils.rundir.RunDir`); the latency
columns are filled by ``python -m export RUN --cascade`` (LiteRT timing of each segment).
"""

from __future__ import annotations

import argparse

import numpy as np

from sila_keras.reports.cascade_eval import (
    DEFAULT_CALIBRATION_SIZE,
    calibration_images,
    cascade_order,
    evaluate_cascade,
    write_results,
)
from sila_keras.reports.cascade_routing import CONFIDENCES, DEFAULT_TARGET_DROP, confidence_of
from sila_keras.utils.cli import Command, HelpFormatter, run_command
from sila_keras.utils.errors import ConfigError, DataError
from sila_keras.utils.rundir import RunDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sila-cascade", formatter_class=HelpFormatter,
        description="Early-exit cascade of a run's heads: choose per-head confidence thresholds "
                    "on held-out training images, then measure Top-1 vs mean MACs on the test "
                    f"split; writes {RunDir.CASCADE_JSON}, {RunDir.CASCADE_CSV} and "
                    f"{RunDir.CASCADE_PLOT} into the run directory. LiteRT latency: "
                    "python -m export RUN --cascade.")
    p.add_argument("run", metavar="RUN", help="a run directory written by sila-train")
    target = p.add_argument_group("target (one of)")
    target.add_argument("--target-drop", type=float, default=None,
                        help="at most this many Top-1 points below head 1 on the calibration "
                             f"images: the cheapest such cascade (default {DEFAULT_TARGET_DROP})")
    target.add_argument("--budget-macs", type=float, default=None,
                        help="mean multiply-accumulates per image: the most accurate cascade "
                             "within it")
    p.add_argument("--confidence", choices=CONFIDENCES, default="max",
                   help="max softmax probability, top-1 minus top-2 margin, or negative entropy")
    p.add_argument("--calibration", default=None, metavar="DATASET",
                   help="calibrate on this dataset's training split (folder:PATH or a tfds "
                        "name); needed when the run trained on every training image")
    p.add_argument("--calibration-split", default=None, metavar="SPLIT",
                   help="tfds split of --calibration (e.g. 'train[90%%:]')")
    p.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE,
                   help="class-balanced calibration images")
    p.add_argument("--limit-test", type=int, default=None,
                   help="measure on N test images (class-balanced; default all)")
    p.add_argument("--data-dir", default=None, help="tfds data directory")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Argument rules checked before anything is loaded (one line, exit 2, nothing written)."""
    if args.target_drop is not None and args.budget_macs is not None:
        raise ConfigError("Give one target: --target-drop or --budget-macs, not both. "
                          f"Received: target_drop={args.target_drop}, "
                          f"budget_macs={args.budget_macs}")
    if args.budget_macs is not None and args.budget_macs <= 0:
        raise ConfigError(f"--budget-macs must be > 0. Received: budget_macs={args.budget_macs}")
    if args.calibration_size < 1:
        raise ConfigError("--calibration-size must be >= 1. "
                          f"Received: calibration_size={args.calibration_size}")
    if args.calibration_split and not args.calibration:
        raise ConfigError("--calibration-split needs --calibration DATASET. "
                          f"Received: calibration_split={args.calibration_split!r}")
    from sila_keras.reports.analyze import check_run_dir

    check_run_dir(args.run)  # reads no model: a wrong folder is answered before TensorFlow starts


def run_cascade(run_dir, *, target_drop=None, budget_macs=None, confidence="max",
                calibration=None, calibration_split=None,
                calibration_size=DEFAULT_CALIBRATION_SIZE, limit_test=None, data_dir=None,
                batch_size=256, seed=0) -> dict:
    """Load a run, calibrate, measure and write its cascade files; returns ``cascade.json``."""
    from sila_keras.core.heads import num_heads_of
    from sila_keras.data import load_dataset, run_dataset_kwargs
    from sila_keras.reports.analyze import load_run

    if confidence not in CONFIDENCES:
        confidence_of(np.zeros((1, 2)), confidence)  # raises the one message
    model, config = load_run(run_dir)
    if num_heads_of(model) < 2:
        cascade_order(model)  # raises the one-head message
    size = tuple(model.input_shape[1:3])
    x_cal, y_cal, source = calibration_images(config, size, calibration, calibration_split,
                                              calibration_size, seed, data_dir)
    kw = run_dataset_kwargs(config)
    if data_dir:
        kw["data_dir"] = data_dir
    data = load_dataset(config["dataset"], limit_train=1, limit_test=limit_test,
                        download="never", cache="none", **kw)
    if len(y_cal) == 0:
        raise DataError(f"No calibration images found. Received: calibration={calibration}")
    result = evaluate_cascade(model, (x_cal, y_cal), (data.test.to_array(), data.test_y),
                              target_drop=target_drop, budget_macs=budget_macs,
                              kind=confidence, batch_size=batch_size)
    result["calibration"]["source"] = source
    result["test_split"] = data.split_info.get("eval_split", "test")
    write_results(run_dir, result, config.get("model", ""))
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0 on success, 2 on bad input (see :mod:`sila_keras.utils.cli`)."""
    return run_command(Command("sila-cascade", build_parser, _main, needs_tensorflow=False),
                       argv)


def _main(args: argparse.Namespace) -> None:
    from sila_keras.utils.cli import prepare_tensorflow

    check_args(args)  # before TensorFlow: a bad combination costs no start-up
    prepare_tensorflow("sila-cascade", loud=args.debug)
    result = run_cascade(args.run, target_drop=args.target_drop, budget_macs=args.budget_macs,
                         confidence=args.confidence, calibration=args.calibration,
                         calibration_split=args.calibration_split,
                         calibration_size=args.calibration_size, limit_test=args.limit_test,
                         data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed)
    c = result["cascade"]
    print(f"Calibrated on {result['calibration']['examples']} images "
          f"({result['calibration']['source']}); thresholds "
          + ", ".join(f"{h}={t:.4g}" for h, t in zip(result["heads"], c["thresholds"][:-1])))
    print(f"Test: cascade Top-1 {100 * c['accuracy']:.2f}% at {c['mean_macs'] / 1e6:.4g} M MACs "
          f"per image; " + ", ".join(f"{s['name']} {100 * s['accuracy']:.2f}% at "
                                     f"{s['macs'] / 1e6:.4g} M" for s in result["single"]))
    run = RunDir(args.run)
    print(f"Wrote {run / RunDir.CASCADE_JSON}, {run / RunDir.CASCADE_CSV}, "
          f"{run / RunDir.CASCADE_PLOT}")

