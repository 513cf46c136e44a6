"""Train a SiLa model: ``python -m sila_keras.train DATASET MODEL [options]``.

The training path is a chain of short functions, each usable on its own
(tuning and the digit-pair task reuse them)::

    check_run_dir → load_data → build_model → compile_model → create_run_dir
        → make_datasets → fit → save_run

Run directory (``<out>/<name>``): ``config.json``, ``metrics.csv``,
``summary.json``, ``model.keras``, ``labels.txt``, ``curves.png``,
``checkpoints/`` (for ``--resume``), ``tensorboard/``.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from sila_keras import io
from sila_keras.config import DOWNLOAD_MODES, MODES, PAPER_MILESTONES, STRATEGIES, TrainConfig

CHECKPOINT_DIR = "checkpoints"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    import sila_keras.augment  # noqa: F401  (registers autoaugment / randaugment)
    from sila_keras.models import list_backbones
    from sila_keras.pipeline import AUGMENTATIONS

    d = TrainConfig("", "")
    p = argparse.ArgumentParser(
        prog="sila-train",
        description="Train a classifier with Siamese Labels (SiLa) auxiliary heads "
                    "(SilaNet, Gan et al.). Defaults follow the paper's CIFAR recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", help="tfds name (cifar10, tf_flowers, imagenette, …) or folder:PATH: "
                                   "PATH/<class>/* (split by --val-split), or with train/ + test/ "
                                   "or val/ class folders (PATH may be a .tar.gz or .zip)")
    p.add_argument("model", help=f"backbone: {', '.join(list_backbones())}")
    g = p.add_argument_group("SiLa")
    g.add_argument("--heads", type=int, default=d.heads, help="M label sets / heads (1 = base model)")
    g.add_argument("--beta", type=float, default=d.beta, help="β: weight of the first Siamese set")
    g.add_argument("--lam", type=float, default=d.lam, help="λ: decay of β per further set")
    g.add_argument("--betas", type=_floats, default=None,
                   help="explicit weight per set β_1,…,β_M (paper B Eq. 10); overrides β/λ")
    g.add_argument("--mode", default=d.mode, choices=MODES,
                   help="sila: SilaNet heads (paper A); mutual/dml: two networks (paper B); "
                        "dynamic: multi-exit network (paper B)")
    g.add_argument("--peer", default=None, help="--mode mutual/dml: the second network's backbone")
    g.add_argument("--dml", action="store_true", help="--mode mutual: add Deep Mutual Learning KL terms")
    g.add_argument("--no-sila", action="store_true",
                   help="--mode dynamic: train the original MSDNet (sum of per-exit CE) instead of SiLa")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (all replicas)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="coupled L2 as in PyTorch SGD (g += wd·w)")
    g.add_argument("--milestones", type=_ints, default=PAPER_MILESTONES,
                   help="epochs at which lr *= gamma (comma-separated; '' for none)")
    g.add_argument("--gamma", type=float, default=d.gamma, help="lr decay factor at each milestone")
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--augment", default=d.augment, choices=sorted(AUGMENTATIONS),
                   help="training augmentation (standard = pad 4 + crop + flip)")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="tfds data_dir with pre-downloaded data")
    g.add_argument("--download", default=d.download, choices=DOWNLOAD_MODES,
                   help="tfds: download when missing and online (auto) or never")
    g.add_argument("--limit-train", type=int, default=None, help="use N training images (class-balanced)")
    g.add_argument("--limit-test", type=int, default=None, help="use N test images (class-balanced)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="folder datasets: skip and count undecodable image files instead of failing")
    add_data_flags(g, d)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--deterministic", action="store_true",
                   help="TF op determinism + seeds: identical metrics for identical CPU runs")
    g.add_argument("--out", default=d.out, help="parent folder of run directories")
    g.add_argument("--name", default=None, help="run folder name (default <dataset>-<model>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in <out>/<name>")
    g.add_argument("--strategy", default=d.strategy, choices=STRATEGIES,
                   help="auto = MirroredStrategy when >1 GPU is visible")
    g.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 on GPU, mixed_bfloat16 on CPU (loss and softmax stay float32)")
    g.add_argument("--jit", action="store_true", help="XLA-compile the train step (jit_compile)")
    g.add_argument("--steps-per-execution", type=int, default=d.steps_per_execution,
                   help="train steps per tf.function call (fewer Python round trips)")
    g.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N logical devices (to try --strategy mirrored without GPUs)")
    g.add_argument("--verbose", type=int, default=None, choices=(0, 1, 2),
                   help="Keras progress output (default: bar on a terminal, else none)")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def add_data_flags(g, d: TrainConfig) -> None:
    """Issue 14: image size, resize policy, splits, cache, steps per epoch."""
    g.add_argument("--image-size", default=None, metavar="H[,W]",
                   help="train at this size (default: the images' one size; required when "
                        "they differ, 224 for variable-size tfds datasets)")
    g.add_argument("--resize", default=d.resize, choices=("squash", "crop", "pad"),
                   help="how images of another size are resized: squash (ignore aspect), "
                        "crop (centred crop to aspect) or pad (fit inside, zero padding)")
    g.add_argument("--val-split", type=float, default=None, metavar="F",
                   help="fraction held out (class-stratified, by --seed) when the dataset has "
                        "no held-out split: a folder of <class>/* or a train-only tfds "
                        "dataset (default 0.2)")
    g.add_argument("--train-split", default=None, help="tfds: training split (e.g. 'train[:90%%]')")
    g.add_argument("--test-split", default=None,
                   help="tfds: held-out split (default: test, else validation, else --val-split)")
    g.add_argument("--cache", default=d.cache, metavar="MODE",
                   help="decoded images: none (stream every epoch), memory, disk[:DIR]; auto = "
                        "memory when they fit in 1 GiB, else none")
    g.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="train N batches per epoch (default: one pass over the training images)")


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a validated :class:`TrainConfig` (name resolved)."""
    name = args.name
    if name is None:
        if args.resume:
            raise ValueError("--resume needs --name NAME: the run folder under --out to continue.")
        name = default_run_name(args.dataset, args.model)
    return TrainConfig(
        dataset=args.dataset, model=args.model, heads=args.heads, beta=args.beta, lam=args.lam,
        betas=args.betas, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, milestones=args.milestones,
        gamma=args.gamma, nesterov=args.nesterov, augment=args.augment, seed=args.seed,
        out=args.out, name=name, resume=args.resume, strategy=args.strategy,
        limit_train=args.limit_train, limit_test=args.limit_test, data_dir=args.data_dir,
        download=args.download, verbose=args.verbose, debug=args.debug, mode=args.mode,
        peer=args.peer, dml=args.dml, no_sila=args.no_sila, mixed_precision=args.mixed_precision,
        jit=args.jit, steps_per_execution=args.steps_per_execution,
        deterministic=args.deterministic, skip_bad_images=args.skip_bad_images,
        image_size=args.image_size, resize=args.resize, val_split=args.val_split,
        train_split=args.train_split, test_split=args.test_split, cache=args.cache,
        steps_per_epoch=args.steps_per_epoch,
    )


def default_run_name(dataset: str, model: str) -> str:
    ds = dataset.split(":", 1)[-1].rstrip("/")
    ds = Path(ds).name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        ds = ds.removesuffix(suffix)
    ds = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds) or "data"
    return f"{ds}-{Path(model).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns the exit status (0 ok, 2 bad input, 3 training failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.cpu_devices:
            from sila_keras.distribute import split_cpu

            split_cpu(args.cpu_devices)
        config = config_from_args(args)
        run(config)
        return 0
    except (ValueError, TypeError, FileNotFoundError, PermissionError, FileExistsError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"sila-train: error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:
        print(f"sila-train: training stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("sila-train: interrupted. The last completed epoch is checkpointed; "
              "continue with the same command plus --resume.", file=sys.stderr)
        return 130


class TrainingFailed(RuntimeError):
    """Training could not continue (e.g. a non-finite loss)."""


# --------------------------------------------------------------------------- the chain


@dataclass
class ResumeState:
    initial_epoch: int = 0
    checkpoint: Path | None = None  # the committed model file to resume from
    rows: list | None = None
    wall_time_s: float = 0.0


def validate_model_name(model: str) -> None:
    """Fail early (before data loading) on an unknown backbone or a missing model file."""
    from sila_keras.models import get_backbone

    if model.endswith((".keras", ".h5")):
        if not Path(model).is_file():
            raise FileNotFoundError(f"Model file not found: '{model}'. Pass a saved Keras classifier "
                                    "(.keras) or a registered backbone name.")
        return
    get_backbone(model)


def check_run_dir(config: TrainConfig, run_dir: Path | None = None) -> ResumeState:
    """Check the run directory (read-only): refuse an existing one without ``--resume``;
    with ``--resume``, read where the run stopped.

    ``run_dir`` is the folder this process writes (default ``config.run_dir``; a non-chief
    multi-worker process passes its scratch folder, see
    :func:`sila_keras.distribute.process_run_dir`).

    Raises:
        FileExistsError: the folder exists and ``--resume`` was not given.
        ValueError: ``--resume`` of a run whose config differs, or that does not exist.
    """
    from sila_keras.callbacks import ResumeCheckpoint

    run_dir = Path(run_dir or config.run_dir)
    if run_dir.exists() and not config.resume and any(run_dir.iterdir()):
        raise FileExistsError(
            f"Run directory '{run_dir}' already exists. Add --resume to continue it, "
            "or choose another --name/--out (nothing there is overwritten)."
        )
    state = ResumeState()
    if config.resume:
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise ValueError(f"Cannot resume: '{cfg_path}' not found. Start the run without --resume.")
        old = TrainConfig.from_dict(io.read_json(cfg_path))
        diff = old.differences(config)
        if diff:
            listed = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"Cannot resume '{run_dir}' with different settings ({listed}). "
                             "Use the original command plus --resume.")
        ck = ResumeCheckpoint.load_state(run_dir / CHECKPOINT_DIR)
        if ck:
            state.initial_epoch = int(ck["epoch"])
            state.checkpoint = ck["model"]
            state.wall_time_s = float(ck.get("wall_time_s", 0.0))
            metrics = run_dir / "metrics.csv"
            rows = io.read_csv(metrics) if metrics.exists() else []
            state.rows = [r for r in rows if int(r["epoch"]) <= state.initial_epoch]
    return state


def create_run_dir(config: TrainConfig, run_dir: Path | None = None) -> Path:
    """Create the run directory and write the resolved ``config.json``.

    Called once the data loaded and the model built, so bad input leaves nothing behind.
    """
    run_dir = Path(run_dir or config.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"Cannot create the run directory '{run_dir}': {e.strerror}. "
                              "Choose a writable --out.") from None
    io.write_json(run_dir / "config.json", config.to_dict())
    return run_dir


def load_data(config: TrainConfig):
    """Describe the dataset named in the config (decoded into memory only when small, see
    :func:`sila_keras.data.load_dataset`) and check its size against the backbone."""
    from sila_keras.data import load_dataset

    data = load_dataset(config.dataset, data_dir=config.data_dir, limit_train=config.limit_train,
                        limit_test=config.limit_test, seed=config.seed, download=config.download,
                        skip_bad_images=config.skip_bad_images, image_size=config.image_size,
                        resize=config.resize, val_split=config.val_split,
                        train_split=config.train_split, test_split=config.test_split,
                        cache=config.cache)
    if not config.model.endswith((".keras", ".h5")):
        from sila_keras.data.images import check_size_for_backbone
        from sila_keras.models import get_backbone

        check_size_for_backbone(data.image_size, get_backbone(config.model).min_input_size,
                                config.model)
    return data


def build_model(config: TrainConfig, data):
    """The model for this config and data (normalization from the training pixels).

    ``config.model`` may be a path to the user's own ``.keras`` classifier: SiLa heads are
    attached to it (:func:`sila_keras.attach.load_and_attach`); it receives raw 0–255 pixels.
    """
    if config.model.endswith((".keras", ".h5")):
        from sila_keras.attach import load_and_attach

        return load_and_attach(config.model, config.heads, data.num_classes)
    from sila_keras.modes import build_for_mode

    return build_for_mode(config, data)


def compile_model(model, config: TrainConfig, num_classes: int, steps: int, num_heads: int | None = None):
    """Compile with the mode's loss (SiLa by default), the papers' SGD and per-head metrics."""
    from sila_keras.heads import num_heads_of
    from sila_keras.modes import loss_for_mode, metrics_for_mode
    from sila_keras.optim import make_optimizer

    m = num_heads or num_heads_of(model)
    model.compile(
        optimizer=make_optimizer(config.lr, config.momentum, config.weight_decay, config.milestones,
                                 config.gamma, steps, config.nesterov),
        loss=loss_for_mode(config, num_classes, m),
        # weighted: padded evaluation images (weight 0, several replicas) are not counted
        weighted_metrics=metrics_for_mode(config, num_classes, m),
        jit_compile=bool(config.jit),
        steps_per_execution=int(config.steps_per_execution),
    )
    return model


def make_datasets(config: TrainConfig, train_x, train_y, eval_x, eval_y, initial_epoch: int = 0,
                  options=None, strategy=None):
    """(train dataset, eval dataset, steps per epoch).

    ``train_x``/``eval_x``: image sets (:class:`sila_keras.data.ImageSet`, the ``*_y`` are then
    ignored) or in-memory arrays. ``options``: ``tf.data.Options`` for both (e.g.
    :func:`sila_keras.distribute.dataset_options`). With ``strategy`` of several replicas,
    training batches drop the remainder (no replica is left without examples), and under
    multi-worker each worker reads only its part of every batch.
    """
    from sila_keras.pipeline import as_set, eval_dataset, steps_per_epoch, train_dataset

    train_set, eval_set = as_set(train_x, train_y), as_set(eval_x, eval_y)
    replicas = int(strategy.num_replicas_in_sync) if strategy is not None else 1
    drop = replicas > 1
    if config.batch_size % replicas:
        from sila_keras.errors import ConfigError

        raise ConfigError(f"`--batch-size` (global) must be a multiple of the {replicas} replicas, "
                          f"so that each gets the same share. Received: batch_size={config.batch_size}")
    steps = config.steps_per_epoch or steps_per_epoch(len(train_set), config.batch_size, drop)
    train_cache, eval_cache = _disk_cache_paths(config)
    kw = dict(seed=config.seed, augment=config.augment, initial_epoch=initial_epoch,
              epochs=config.epochs, drop_remainder=drop, steps=steps, cache_path=train_cache)
    from sila_keras.multiworker import in_multi_worker_mode

    if strategy is not None and in_multi_worker_mode(strategy):
        def per_worker(ctx):
            return train_dataset(train_set, None, config.batch_size,
                                 shard=(ctx.num_input_pipelines, ctx.input_pipeline_id), **kw)

        train = strategy.distribute_datasets_from_function(per_worker)
    else:
        train = train_dataset(train_set, None, config.batch_size, options=options, **kw)
    return train, eval_dataset(eval_set, None, config.batch_size, options=options,
                               cache_path=eval_cache, replicas=replicas), steps


def _disk_cache_paths(config: TrainConfig):
    """(train, eval) tf.data cache file prefixes for ``--cache disk[:DIR]``, else (None, None)."""
    import hashlib

    from sila_keras.data import default_cache_dir, parse_cache

    mode, where = parse_cache(config.cache)
    if mode != "disk":
        return None, None
    key = "|".join(str(v) for v in (config.dataset, config.image_size, config.resize,
                                     config.limit_train, config.limit_test, config.seed,
                                     config.val_split, config.train_split, config.test_split))
    base = Path(where or default_cache_dir() / "tfdata") / hashlib.sha1(key.encode()).hexdigest()[:12]
    return str(base / "train"), str(base / "eval")


def fit(model, train_ds, eval_ds, *, epochs: int, steps: int, initial_epoch: int = 0,
        callbacks=(), verbose: int | None = None):
    """The one training loop (Keras ``fit``), shared by train, tuning and pairs."""
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 0
    return model.fit(train_ds, validation_data=eval_ds, epochs=epochs, initial_epoch=initial_epoch,
                     steps_per_epoch=steps, callbacks=list(callbacks), verbose=verbose, shuffle=False)


def head_table(model, num_classes: int) -> dict:
    """Trainable params / MiB / CR of every extracted head vs the base (head 1)."""
    from sila_keras.heads import extract_head, num_heads_of, trainable_params

    out = {}
    base = trainable_params(extract_head(model, 1))
    for k in range(1, num_heads_of(model) + 1):
        p = trainable_params(extract_head(model, k))
        out[f"head_{k}"] = {"params": p, "mib": round(p * 4 / 2**20, 2),
                            "cr_percent": round(100 * (1 - p / base), 2)}
    return out


def save_run(run_dir: Path, model, config: TrainConfig, data, logger, strategy, wall_time_s: float) -> dict:
    """Write ``model.keras``, ``labels.txt``, ``summary.json`` and ``curves.png``."""
    from sila_keras.distribute import strategy_name
    from sila_keras.heads import num_heads_of, trainable_params
    from sila_keras.plots import plot_curves

    with io.atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    io.write_text(run_dir / "labels.txt", "\n".join(data.class_names) + "\n")
    m = num_heads_of(model)
    rows, best = logger.rows, logger.best()
    last = rows[-1] if rows else {}
    heads = head_table(model, data.num_classes)
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
        "dataset": config.dataset, "model": config.model, "num_classes": data.num_classes,
        "num_heads": m, "heads": heads, "total_params": total, "train_mib": round(total * 4 / 2**20, 2),
        "base_params": heads["head_1"]["params"], "epochs_done": int(last.get("epoch", 0) or 0),
        "epochs": config.epochs, "top5": _f(last.get("top5")), "nll": _f(last.get("nll")),
        "wall_time_s": round(wall_time_s, 1), "strategy": strategy_name(strategy),
        "replicas": int(strategy.num_replicas_in_sync),
        "data": {**data_block, "mean": mean, "std": std},
    }
    io.write_json(run_dir / "summary.json", summary)
    if rows:
        plot_curves(rows, m, run_dir / "curves.png", title=f"{config.model} on {Path(data.source).name}")
    return summary


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
        if config.deterministic and not was_deterministic:
            tf_config.disable_op_determinism()


def _run(config: TrainConfig) -> dict:
    import keras

    from sila_keras.callbacks import EpochLogger, NonFiniteGuard, ResumeCheckpoint
    from sila_keras.distribute import dataset_options, make_strategy, process_run_dir, strategy_name
    from sila_keras.heads import num_heads_of
    from sila_keras.modes import after_training, prepare_data_for_mode, validate_for_mode
    from sila_keras.multiworker import agree_on_epoch, barrier
    from sila_keras.precision import check_mixed_precision, set_precision

    validate_model_name(config.model)
    validate_for_mode(config)
    check_mixed_precision(config.model, config.mixed_precision)
    # Only the chief writes the run directory; other multi-workers write (and resume from)
    # their own scratch copy <run>/.workers/<type>_<id>, so machines need no shared disk.
    run_dir = process_run_dir(config.run_dir, config.strategy)
    state = check_run_dir(config, run_dir)
    t_start = time.time()
    # The strategy first: multi-worker collectives must be configured before any TF op runs.
    strategy = make_strategy(config.strategy)
    agree_on_epoch(strategy, state.initial_epoch)  # multi-worker: all resume after the same epoch
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    data = prepare_data_for_mode(config, load_data(config))
    print(f"Data: {data.source}: {len(data.train_y)} train / {len(data.test_y)} test images, "
          f"{data.num_classes} classes, input {data.input_shape} (held out: "
          f"{data.split_info.get('eval_split', 'test')}; cache {data.cache})"
          + "".join(f"\n  note: {n}" for n in data.notes), flush=True)
    set_precision(config.mixed_precision)
    train_ds, eval_ds, steps = make_datasets(config, data.train, None, data.test, None,
                                             state.initial_epoch, options=dataset_options(strategy),
                                             strategy=strategy)
    with strategy.scope():
        if state.initial_epoch:
            model = keras.models.load_model(state.checkpoint)
            print(f"Resuming {run_dir} after epoch {state.initial_epoch}", flush=True)
        else:
            model = compile_model(build_model(config, data), config, data.num_classes, steps)
    create_run_dir(config, run_dir)
    num_heads = num_heads_of(model)
    print(f"Model: {config.model}, {num_heads} head(s), {model.count_params():,} params; "
          f"strategy {strategy_name(strategy)} × {strategy.num_replicas_in_sync} replica(s); "
          f"run dir {run_dir}", flush=True)
    if state.initial_epoch >= config.epochs:
        print(f"Nothing to do: {state.initial_epoch} of {config.epochs} epochs are done.")
    guard = NonFiniteGuard()
    logger = EpochLogger(run_dir / "metrics.csv", num_heads, state.rows, total_epochs=config.epochs,
                         guard=guard)
    elapsed = lambda: {"wall_time_s": state.wall_time_s + time.time() - t_start}  # noqa: E731
    callbacks = [guard, logger, ResumeCheckpoint(run_dir / CHECKPOINT_DIR, elapsed, guard=guard),
                 keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False,
                                             profile_batch=0)]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if state.initial_epoch < config.epochs:
            fit(model, train_ds, eval_ds, epochs=config.epochs, steps=steps,
                initial_epoch=state.initial_epoch, callbacks=callbacks, verbose=config.verbose)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if guard.failure:
        raise TrainingFailed(guard.failure)
    summary = save_run(run_dir, model, config, data, logger, strategy, elapsed()["wall_time_s"])
    summary = after_training(config, model, data, run_dir, logger.rows, summary)
    io.write_json(run_dir / "summary.json", summary)
    barrier(strategy)  # multi-worker: no process exits while a peer still needs it
    heads = "  ".join(f"head_{k} {100 * (v['final_acc'] or 0):.2f}% (best {100 * (v['best_acc'] or 0):.2f}%)"
                      for k, v in ((int(h.split('_')[1]), v) for h, v in summary["heads"].items()))
    print(f"Done: {heads}\nRun directory: {run_dir}", flush=True)
    return summary


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
