"""Train a SiLa model: ``python -m sila_keras.train DATASET MODEL [options]``.

The training path is a chain of short functions, each usable on its own
(tuning and the digit-pair task reuse them)::

    check_before_data → check_run_dir → load_data → build_model → compile_model → create_run_dir
        → make_datasets → fit → save_run

The flags and their conversion to a :class:`~sila_keras.training.config.TrainConfig`:
:mod:`sila_keras.training.flags`. The run directory (``<out>/<name>``) and its files:
:class:`sila_keras.utils.rundir.RunDir`. Exit codes, signals and ``--debug``: :mod:`sila_keras.utils.cli`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sila_keras.training.config import TrainConfig
from sila_keras.training.flags import (  # noqa: F401  (re-exported: tuning builds on them)
    build_parser,
    config_from_args,
    default_run_name,
)
from sila_keras.utils.cli import Command, run_command
from sila_keras.utils.errors import ConfigError, RunFailed
from sila_keras.utils.rundir import RunDir, check_resume

INTERRUPTED_HINT = ("The last checkpoint (every --checkpoint-every epochs, 1 by default) is kept; "
                    "continue with the same command plus --resume.")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns the exit status (0 ok, 2 bad input, 3 training failed,
    130 interrupted; see :mod:`sila_keras.utils.cli`)."""
    return run_command(Command("sila-train", build_parser, _main, INTERRUPTED_HINT), argv)


def _main(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    from sila_keras.devices.distribute import apply_cpu_devices

    apply_cpu_devices(args.cpu_devices)
    run(config)


class TrainingFailed(RunFailed):
    """Training could not continue (e.g. a non-finite loss). Exit code 3."""


# --------------------------------------------------------------------------- the chain


@dataclass
class ResumeState:
    initial_epoch: int = 0
    checkpoint: Path | None = None  # the committed model file to resume from
    rows: list | None = None
    wall_time_s: float = 0.0


def validate_model_name(model: str) -> None:
    """Fail early (before data loading) on an unknown backbone or a missing model file."""
    from sila_keras.models import get_backbone, is_model_file

    if is_model_file(model):
        if not Path(model).is_file():
            raise ConfigError(f"Model file not found: '{model}'. Pass a saved Keras classifier "
                                    "(.keras) or a registered backbone name.")
        return
    get_backbone(model)


def check_before_data(config: TrainConfig):
    """Everything checkable without data, before it is loaded: the model name, the mode's
    flags (and what the mode can check without data, e.g. that ``--heads`` fits the
    backbone), mixed precision. Returns the run's validated :class:`~sila_keras.modes.Mode`.

    Raises:
        SilaError: the first problem found.
    """
    from sila_keras.models import get_backbone, is_model_file
    from sila_keras.modes import make_mode
    from sila_keras.training.precision import check_mixed_precision

    validate_model_name(config.net.model)
    if config.data.image_size is not None and not is_model_file(config.net.model):
        get_backbone(config.net.model).check_image_size(config.data.image_size)  # --image-size
    _check_weights_file(config)  # a keras:<Name> --weights PATH
    mode = make_mode(config)  # validates the mode's flags, once per run
    mode.check_before_data()
    check_mixed_precision(config.net.model, config.run.mixed_precision)
    return mode


def _check_weights_file(config: TrainConfig) -> None:
    """A keras:<Name> ``--weights PATH`` must exist (checked before any data is read)."""
    from sila_keras.models import is_application

    if is_application(config.net.model) and not config.run.resume:
        from sila_keras.models.applications import check_weights

        check_weights(config.net.model, config.net.weights)


def check_run_dir(config: TrainConfig, run_dir: Path | None = None) -> ResumeState:
    """Check the run directory (read-only): refuse an existing one without ``--resume``;
    with ``--resume``, read where the run stopped.

    ``run_dir`` is the folder this process writes (default ``config.run_dir``; a non-chief
    multi-worker process passes its scratch folder, see
    :func:`sila_keras.devices.distribute.process_run_dir`).

    Raises:
        RunDirError: the folder exists and ``--resume`` was not given; or ``--resume`` of a
            run whose config differs, or that does not exist.
    """
    run = RunDir(run_dir or config.run_dir)
    state = ResumeState()
    if not config.run.resume:
        run.check_new()
        return state
    old = run.read_resumable_config(TrainConfig)
    check_resume(old, config, f"'{run.path}'")
    ck = run.checkpoint_state()
    if ck:
        state.initial_epoch = int(ck["epoch"])
        state.checkpoint = ck["model"]
        state.wall_time_s = float(ck.get("wall_time_s", 0.0))
        state.rows = [r for r in run.read_metrics() if int(r["epoch"]) <= state.initial_epoch]
    return state


def create_run_dir(config: TrainConfig, run_dir: Path | None = None) -> Path:
    """Create the run directory and write the resolved ``config.json``.

    Called once the data loaded and the model built, so bad input leaves nothing behind.
    """
    run = RunDir(run_dir or config.run_dir).create()
    run.write_config(config.to_dict())
    return run.path


def load_data(config: TrainConfig):
    """Describe the dataset named in the config (decoded into memory only when small, see
    :func:`sila_keras.data.load_dataset`) and check its size against the backbone."""
    from sila_keras.data import load_dataset

    d = config.data
    data = load_dataset(d.dataset, data_dir=d.data_dir, limit_train=d.limit_train,
                        limit_test=d.limit_test, seed=config.run.seed, download=d.download,
                        skip_bad_images=d.skip_bad_images, image_size=d.image_size,
                        resize=d.resize, val_split=d.val_split, train_split=d.train_split,
                        test_split=d.test_split, cache=d.cache)
    from sila_keras.models import is_model_file

    if not is_model_file(config.net.model):
        from sila_keras.models import get_backbone

        get_backbone(config.net.model).check_image_size(data.image_size)
    return data


def build_model(config: TrainConfig, data, mode=None):
    """The model for this config and data (normalization from the training pixels), built by
    the run's :class:`~sila_keras.modes.Mode` (``mode``; default: made from ``config``).

    In ``--mode sila``, ``config.net.model`` may be a path to the user's own ``.keras``
    classifier: SiLa heads are attached to it; it receives raw 0–255 pixels.
    """
    from sila_keras.models import is_application
    from sila_keras.modes import make_mode
    from sila_keras.training.batchnorm import apply_bn_momentum

    if is_application(config.net.model):  # weights and taps go to the application builder
        extra = {"weights": config.net.weights, "taps": config.net.taps}
        mode = make_mode(config.replace(backbone_kwargs={**config.net.backbone_kwargs, **extra}))
    model = (mode or make_mode(config)).build_model(data)
    apply_bn_momentum(model, config, data)  # --bn-momentum, or fitted to the run (keras:, .keras)
    return model


def compile_model(model, config: TrainConfig, num_classes: int, steps: int,
                  num_heads: int | None = None, mode=None, speed=None):
    """Compile with the mode's loss and metrics (SiLa by default) and the papers' SGD.

    Call inside the strategy's scope. ``--grad-equilibrium`` gives the optimizer each
    variable's gradient factor (:func:`sila_keras.core.levers.equilibrium_scales`).
    ``mode``: the run's :class:`~sila_keras.modes.Mode`
    (default: made from ``config``). ``speed``: the run's
    :class:`~sila_keras.devices.distribute.SpeedSettings` (default: resolved from ``config`` for the
    current strategy); float16 mixed precision wraps the SGD in the replica-synchronized
    :class:`~sila_keras.training.precision.SyncLossScaleOptimizer`.
    """
    import tensorflow as tf

    from sila_keras.core.heads import num_heads_of
    from sila_keras.devices.distribute import apply_speed, resolve_speed
    from sila_keras.modes import make_mode
    from sila_keras.training.optim import optimizer_for
    from sila_keras.training.precision import wrap_optimizer

    mode = mode or make_mode(config)
    m = num_heads or num_heads_of(model)
    scales = None
    if config.sila.grad_equilibrium:  # per-variable factors on the loss's gradient
        from sila_keras.core.levers import equilibrium_scales

        scales = equilibrium_scales(model)
    model.compile(
        # paper SGD or the fine-tuning recipe
        optimizer=wrap_optimizer(optimizer_for(config, steps, grad_scales=scales)),
        loss=_with_label_smoothing(mode.loss(num_classes, m), config),
        # weighted: padded evaluation images (weight 0, several replicas) are not counted
        weighted_metrics=mode.metrics(num_classes, m),
    )
    return apply_speed(model, speed or resolve_speed(config, tf.distribute.get_strategy()))


def _with_label_smoothing(loss, config: TrainConfig):
    """``--label-smoothing`` on the SiLa loss (TrainConfig allows it for --mode sila only)."""
    from sila_keras.core.losses import SilaLoss

    if config.optim.label_smoothing and isinstance(loss, SilaLoss):
        loss.label_smoothing = float(config.optim.label_smoothing)
    return loss


def make_datasets(config: TrainConfig, train_x, train_y, eval_x, eval_y, initial_epoch: int = 0,
                  options=None, strategy=None):
    """(train dataset, eval dataset, steps per epoch).

    ``train_x``/``eval_x``: image sets (:class:`sila_keras.data.ImageSet`, the ``*_y`` are then
    ignored) or in-memory arrays. ``options``: ``tf.data.Options`` for both (e.g.
    :func:`sila_keras.devices.distribute.dataset_options`). With ``strategy`` of several replicas,
    training batches drop the remainder (no replica is left without examples), and under
    multi-worker each worker reads only its part of every batch.
    """
    from sila_keras.data.pipeline import as_set, eval_dataset, steps_per_epoch, train_dataset

    train_set, eval_set = as_set(train_x, train_y), as_set(eval_x, eval_y)
    replicas = int(strategy.num_replicas_in_sync) if strategy is not None else 1
    drop = replicas > 1
    if config.optim.batch_size % replicas:
        from sila_keras.utils.errors import ConfigError

        raise ConfigError(f"`--batch-size` (global) must be a multiple of the {replicas} replicas, "
                          f"so that each gets the same share. Received: batch_size={config.optim.batch_size}")
    steps = config.optim.steps_per_epoch or steps_per_epoch(len(train_set), config.optim.batch_size, drop)
    train_cache, eval_cache = _disk_cache_paths(config)
    d = config.data
    kw = dict(seed=config.run.seed, augment=d.augment, initial_epoch=initial_epoch,
              epochs=config.optim.epochs, drop_remainder=drop, steps=steps, cache_path=train_cache,
              cutout=d.cutout, autoaugment_semantics=d.autoaugment_semantics)
    from sila_keras.devices.multiworker import in_multi_worker_mode

    if strategy is not None and in_multi_worker_mode(strategy):
        def per_worker(ctx):
            return train_dataset(train_set, None, config.optim.batch_size,
                                 shard=(ctx.num_input_pipelines, ctx.input_pipeline_id), **kw)

        train = strategy.distribute_datasets_from_function(per_worker)
    else:
        train = train_dataset(train_set, None, config.optim.batch_size, options=options, **kw)
    return train, eval_dataset(eval_set, None, config.optim.batch_size, options=options,
                               cache_path=eval_cache, replicas=replicas), steps


def _disk_cache_paths(config: TrainConfig):
    """(train, eval) tf.data cache file prefixes for ``--cache disk[:DIR]``, else (None, None)."""
    import hashlib

    from sila_keras.data import default_cache_dir, parse_cache

    mode, where = parse_cache(config.data.cache)
    if mode != "disk":
        return None, None
    d = config.data
    key = "|".join(str(v) for v in (d.dataset, d.image_size, d.resize, d.limit_train,
                                     d.limit_test, config.run.seed, d.val_split, d.train_split,
                                     d.test_split))
    base = Path(where or default_cache_dir() / "tfdata") / hashlib.sha1(key.encode()).hexdigest()[:12]
    return str(base / "train"), str(base / "eval")


def fit(model, train_ds, eval_ds, *, epochs: int, steps: int, initial_epoch: int = 0,
        callbacks=(), verbose: int | None = None, freeze_epochs: int = 0):
    """The one training loop (Keras ``fit``), shared by train, tuning and pairs.

    ``verbose``: 0 none, 1 or 2 a batch progress bar of the training loss (default: on a
    terminal only). Keras' own bar is not used: it runs into the next printed line and
    names the test-split metrics ``val_*``; the epoch line comes from the callbacks.

    ``freeze_epochs``: a pretrained backbone stays frozen for the first K epochs
    (:class:`sila_keras.training.finetune.FreezeBackbone`, first in the callback list).

    A loss with per-epoch factors (``--ramp-betas``, …) gets them set at the start of every
    epoch (:class:`sila_keras.training.callbacks.LossSchedule`, before the other callbacks).
    """
    from sila_keras.training.callbacks import LossSchedule, ProgressBar, schedules_loss
    from sila_keras.training.finetune import FreezeBackbone, build_optimizer

    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 0
    callbacks = list(callbacks)
    if verbose:
        callbacks.insert(0, ProgressBar(steps))
    if schedules_loss(model):
        callbacks.insert(0, LossSchedule())
    if freeze_epochs:
        callbacks = [FreezeBackbone(freeze_epochs), *callbacks]
    build_optimizer(model)  # before Keras traces the step (see build_optimizer)
    return model.fit(train_ds, validation_data=eval_ds, epochs=epochs, initial_epoch=initial_epoch,
                     steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)


def save_run(run_dir: Path, model, config: TrainConfig, data, logger, strategy, wall_time_s: float) -> dict:
    """Write ``model.keras``, ``labels.txt``, ``summary.json`` and ``curves.png``."""
    from sila_keras.core.heads import head_table, num_heads_of, trainable_params
    from sila_keras.core.sizes import float32_mib
    from sila_keras.devices.distribute import strategy_name
    from sila_keras.utils.plots import plot_curves

    run = RunDir(run_dir)
    run.save_model(model)
    run.write_labels(data.class_names)
    m = num_heads_of(model)
    rows, best = logger.rows, logger.best()
    last = rows[-1] if rows else {}
    heads = head_table(model)
    for k in range(1, m + 1):
        final = last.get(f"head_{k}_acc")
        heads[f"head_{k}"] = {"final_acc": None if final in (None, "") else float(final),
                              "best_acc": best[f"head_{k}"], **heads[f"head_{k}"]}
    total = trainable_params(model)
    mean, std = data.channel_stats()
    describe = getattr(data, "describe", None)
    data_block = describe() if describe else {
        "source": data.source, "train_examples": len(data.train_y),
        "test_examples": len(data.test_y), "input_shape": list(data.input_shape),
        "class_names": data.class_names, "notes": data.notes}
    summary = {
        "dataset": config.data.dataset, "model": config.net.model, "num_classes": data.num_classes,
        "num_heads": m, "heads": heads, "total_params": total, "train_mib": round(float32_mib(total), 2),
        "base_params": heads["head_1"]["params"], "epochs_done": int(last.get("epoch", 0) or 0),
        "epochs": config.optim.epochs, "top5": _f(last.get("top5")), "nll": _f(last.get("nll")),
        "wall_time_s": round(wall_time_s, 1), "strategy": strategy_name(strategy),
        "replicas": int(strategy.num_replicas_in_sync),
        "data": {**data_block, "mean": mean, "std": std},
    }
    run.write_summary(summary)
    if rows:
        plot_curves(rows, m, run.curves_path, title=f"{config.net.model} on {dataset_label(config.data.dataset)}")
    return summary


def batchnorm_summary(model, config: TrainConfig, precise, eval_ds, data, logger) -> dict:
    """``summary.json``'s ``batchnorm`` block (momenta, precise BN's uses and cost) and
    ``warnings`` (the stale-statistics guard, each also printed as one line)."""
    from sila_keras.core.batchnorm import batchnorm_layers, bn_momenta
    from sila_keras.training.batchnorm import collapse_warnings

    block = {"layers": len(batchnorm_layers(model)), "momentum": bn_momenta(model),
             "bn_momentum": config.net.bn_momentum, "precise_bn": config.net.precise_bn,
             "recalibration": precise.summary() if precise is not None else None}
    return {"batchnorm": block, "warnings": collapse_warnings(model, eval_ds, data, logger)}


def dataset_label(dataset: str) -> str:
    """A human name for a dataset argument: ``cifar10``, or the folder/archive name of
    ``folder:PATH`` (``cifar10-jpg``), never a cache path."""
    kind, _, path = dataset.partition(":")
    if not path:
        return dataset
    name = Path(path.rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        name = name.removesuffix(suffix)
    return name or dataset


def _f(v):
    return None if v in (None, "") else float(v)


def run(config: TrainConfig) -> dict:
    """Train (or resume) one run end to end; returns the summary dict.

    ``--deterministic`` switches TensorFlow's process-wide op determinism on for the run
    and back off afterwards, so an in-process caller (a notebook, the tests) is left as it was.
    """
    from tensorflow.python.framework import config as tf_config

    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        return _run(config)
    finally:
        if config.run.deterministic and not was_deterministic:
            tf_config.disable_op_determinism()


def _run(config: TrainConfig) -> dict:
    import keras

    from sila_keras.core.heads import num_heads_of, trainable_params
    from sila_keras.devices.distribute import (
        apply_speed,
        dataset_options,
        make_strategy,
        process_run_dir,
        resolve_speed,
        strategy_name,
    )
    from sila_keras.devices.multiworker import agree_on_epoch, barrier
    from sila_keras.training.batchnorm import batchnorm_line, precise_bn_callback
    from sila_keras.training.callbacks import EpochLogger, NonFiniteGuard, ResumeCheckpoint
    from sila_keras.training.precision import check_resumed_policy, set_precision

    config = config.resolved()  # BatchNorm defaults of the model kind, recorded in config.json
    # The strategy first: multi-worker collectives must be configured before any TF op runs
    # (the checks below may build a model symbolically).
    strategy = make_strategy(config.run.strategy)
    mode = check_before_data(config)  # validates the mode's flags, once
    # Only the chief writes the run directory; other multi-workers write (and resume from)
    # their own scratch copy <run>/.workers/<type>_<id>, so machines need no shared disk.
    run_dir = process_run_dir(config.run_dir, config.run.strategy)
    run = RunDir(run_dir)
    state = check_run_dir(config, run_dir)
    t_start = time.time()
    agree_on_epoch(strategy, state.initial_epoch)  # multi-worker: all resume after the same epoch
    speed = resolve_speed(config, strategy)  # refuses impossible flag sets before any data
    keras.utils.set_random_seed(config.run.seed)
    if config.run.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    data = mode.prepare_data(load_data(config))
    print(f"Data: {data.source}: {len(data.train_y)} train / {len(data.test_y)} test images, "
          f"{data.num_classes} classes, input {data.input_shape} (held out: "
          f"{data.split_info.get('eval_split', 'test')}; cache {data.cache})"
          + "".join(f"\n  note: {n}" for n in data.notes), flush=True)
    policy = set_precision(config.run.mixed_precision)
    train_ds, eval_ds, steps = make_datasets(config, data.train, None, data.test, None,
                                             state.initial_epoch, options=dataset_options(strategy),
                                             strategy=strategy)
    with strategy.scope():
        if state.initial_epoch:
            model = keras.models.load_model(state.checkpoint)
            check_resumed_policy(model, policy)
            apply_speed(model, speed)  # this run's flags, not the checkpoint's compile settings
            print(f"Resuming {run_dir} after epoch {state.initial_epoch}", flush=True)
        else:
            model = compile_model(build_model(config, data, mode), config, data.num_classes, steps,
                                  mode=mode, speed=speed)
    create_run_dir(config, run_dir)
    num_heads = num_heads_of(model)
    print(f"Model: {config.net.model}, {num_heads} head(s), {trainable_params(model):,} trainable "
          f"parameters (summary.json's total_params; {model.count_params():,} with BatchNorm "
          "statistics and other non-trainable weights); "
          f"strategy {strategy_name(strategy)} × {strategy.num_replicas_in_sync} replica(s); "
          f"run dir {run_dir}\n{speed.line()}; precision {policy}", flush=True)
    bn_line = batchnorm_line(model, config, data)
    if bn_line:
        print(bn_line, flush=True)
    if state.initial_epoch >= config.optim.epochs:
        print(f"Nothing to do: {state.initial_epoch} of {config.optim.epochs} epochs are done.")
    guard = NonFiniteGuard()
    logger = EpochLogger(run.metrics_path, num_heads, state.rows, total_epochs=config.optim.epochs,
                         guard=guard)
    elapsed = lambda: {"wall_time_s": state.wall_time_s + time.time() - t_start}  # noqa: E731
    callbacks = [guard, logger, ResumeCheckpoint(run.checkpoints, elapsed, guard=guard,
                                                 every=config.run.checkpoint_every,
                                                 last_epoch=config.optim.epochs),
                 keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False,
                                             profile_batch=0)]
    with strategy.scope():
        precise = precise_bn_callback(model, config, data, strategy, steps)
    if precise is not None:  # --precise-bn: statistics recomputed before the test evaluation
        callbacks.append(precise)
    if state.initial_epoch < config.optim.epochs:  # Ctrl-C / SIGTERM (sila_keras.utils.cli): exit 130
        fit(model, train_ds, eval_ds, epochs=config.optim.epochs, steps=steps,
            initial_epoch=state.initial_epoch, callbacks=callbacks, verbose=config.run.verbose,
            freeze_epochs=config.optim.freeze_epochs)
    if guard.failure:
        raise TrainingFailed(guard.failure)
    summary = save_run(run_dir, model, config, data, logger, strategy, elapsed()["wall_time_s"])
    summary = mode.after_training(model, data, run_dir, logger.rows, summary)
    summary["speed"] = {**speed.to_dict(), "precision": policy}  # resolved settings
    summary.update(batchnorm_summary(model, config, precise, eval_ds, data, logger))
    run.write_summary(summary)
    barrier(strategy)  # multi-worker: no process exits while a peer still needs it
    heads = "  ".join(f"head_{k} {100 * (v['final_acc'] or 0):.2f}% (best {100 * (v['best_acc'] or 0):.2f}%)"
                      for k, v in ((int(h.split('_')[1]), v) for h, v in summary["heads"].items()))
    print(f"Done: {heads}\nRun directory: {run_dir}", flush=True)
    return summary
