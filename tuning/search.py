"""Run a β/λ search end to end: ``run_search(SearchConfig) -> summary``.

The chain mirrors ``sila_keras.training.train``::

    check_out_dir → load data → hold out validation → SilaHyperModel
        → check objective → prepare_out_dir → make_tuner → tuner.search → write results
        → (--final-epochs) final_run on the full training split, test once

Distributed search uses keras-tuner's chief/worker mode, selected by the
environment: ``KERASTUNER_TUNER_ID`` (``chief``, ``tuner0``, ``tuner1``, …),
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``, the same ``--out`` for
all. The chief runs the oracle (no training) and alone writes the results;
each worker asks it for trials and trains them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sila_keras.training import train as sk_train
from sila_keras.utils import files
from sila_keras.utils.errors import ConfigError, RunDirError, RunFailed
from sila_keras.utils.rundir import SearchDir, check_resume
from tuning.config import SearchConfig

PROJECT = SearchDir.PROJECT  # keras-tuner's project folder inside --out


class SearchFailed(RunFailed):
    """The search could not produce a result (e.g. every trial failed). Exit code 3."""


# --------------------------------------------------------------------------- roles


def distributed_role() -> str:
    """``single``, ``chief`` or ``worker``, from keras-tuner's environment variables.

    Raises:
        ValueError: ``KERASTUNER_ORACLE_IP`` set without the other two variables.
    """
    if not os.environ.get("KERASTUNER_ORACLE_IP"):
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise ConfigError(
            f"Distributed search: KERASTUNER_ORACLE_IP is set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not. Set KERASTUNER_TUNER_ID=chief on one "
            "process and tuner0, tuner1, … on the workers, all with the same "
            "KERASTUNER_ORACLE_IP/KERASTUNER_ORACLE_PORT; or unset KERASTUNER_ORACLE_IP."
        )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


# --------------------------------------------------------------------------- the chain


def check_out_dir(config: SearchConfig, role: str) -> None:
    """Fail fast (before loading data) if ``--out`` cannot take this search.

    Workers are not checked: they join the chief's search in the same folder.

    Raises:
        RunDirError: the folder holds files and ``--resume`` was not given; ``--resume`` of
            no search, or with different settings.
    """
    out = SearchDir(config.out)
    if role == "worker":
        return
    if config.resume:
        old = sk_train.RunDir(out.path).read_resumable_config(SearchConfig, SearchDir.CONFIG)
        check_resume(old, config, f"the search in '{out.path}'",
                     "Use the original command plus --resume (--max-trials may grow).")
    elif _previous_search(out, role):
        raise RunDirError(
            f"Output folder '{out.path}' already exists and is not empty. Add --resume to continue "
            "the search there, or choose another --out (nothing there is overwritten)."
        )


def prepare_out_dir(config: SearchConfig, role: str) -> Path:
    """Create the search folder and (chief / single process) write ``search_config.json``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if role != "worker":
        files.write_json(SearchDir(out) / SearchDir.CONFIG, config.to_dict())
    return out


def _previous_search(out: SearchDir, role: str) -> bool:
    if not out.path.exists():
        return False
    if role == "chief":  # workers may already have created tuner/ for this very search
        return out.holds_search()
    return any(out.path.iterdir())


def load_search_data(config: SearchConfig, keep_test: bool):
    """Load the dataset; return ``(SearchData, full ImageData or None)``.

    The search only ever receives the :class:`SearchData` (training split cut
    into train/validation). The full data, with its test split, is kept only
    for ``--final-epochs``.
    """
    from tuning.hypermodel import SearchData

    data = sk_train.load_data(config.train)
    print(f"Data: {data.source}: {len(data.train_y)} train / {len(data.test_y)} test images, "
          f"{data.num_classes} classes, input {data.input_shape}"
          + "".join(f"\n  note: {n}" for n in data.notes), flush=True)
    search = SearchData.from_training_split(data, config.val_split, config.train.run.seed)
    print(f"Search split (from the training images, stratified): {len(search.train_y)} train / "
          f"{len(search.val_y)} validation; the test split is not used by the search.", flush=True)
    if not keep_test:
        data = None
    return search, data


def make_tuner(config: SearchConfig, hypermodel, strategy=None):
    """The keras-tuner tuner for ``config.tuner`` with the project in ``<out>/tuner``.

    ``overwrite=False`` always: a new search starts in an empty folder (checked by
    :func:`prepare_out_dir`), and a resumed or distributed one must reload, not
    delete, the project.
    """
    import keras_tuner as kt

    common = dict(hypermodel=hypermodel, objective=kt.Objective(config.objective, direction="max"),
                  seed=config.train.run.seed + 1, directory=str(config.out), project_name=PROJECT,
                  overwrite=False, distribution_strategy=strategy)
    if config.tuner == "random":
        return kt.RandomSearch(max_trials=config.max_trials, **common)
    if config.tuner == "bayesian":
        return kt.BayesianOptimization(max_trials=config.max_trials, **common)
    tuner = kt.Hyperband(max_epochs=config.train.optim.epochs, factor=config.hyperband_factor, **common)
    tuner.oracle.max_trials = config.max_trials  # a cap on top of Hyperband's schedule
    return tuner


def trial_strategy(name: str):
    """The tf.distribute strategy each trial trains under (None = the default one)."""
    from sila_keras.devices.distribute import make_strategy, strategy_name

    strategy = make_strategy(name)
    return None if strategy_name(strategy) == "default" else strategy


def search(tuner, config: SearchConfig, callbacks=()) -> None:
    """``tuner.search`` with the per-trial epochs; surfaces keras-tuner's give-up as SearchFailed."""
    kwargs = {"epochs": config.train.optim.epochs, "callbacks": list(callbacks)}
    if config.train.run.verbose is not None:
        kwargs["verbose"] = config.train.run.verbose
    try:
        tuner.search(**kwargs)
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        raise SearchFailed(f"{str(e).splitlines()[0]} — see the 'message' of the trials in "
                           f"{Path(config.out) / PROJECT}/trial_*/trial.json (add --debug for "
                           "tracebacks). Try a narrower --beta-range or a lower --lr.") from None


def final_run(config: SearchConfig, best: dict, data) -> dict:
    """Retrain the best config on the full training split, then evaluate ONCE on the test split.

    Writes ``<out>/final/model.keras``, ``labels.txt`` and ``<out>/final_test.json``.
    """
    import keras

    from sila_keras.devices.distribute import make_strategy
    from sila_keras.training.batchnorm import precise_bn_callback
    from sila_keras.training.callbacks import NonFiniteGuard

    cfg = config.train.replace(beta=best["beta"], lam=best["lam"], heads=int(best["heads"]),
                               betas=None).with_epochs(int(config.final_epochs))
    print(f"Final run: β={cfg.sila.beta:.4g}, λ={cfg.sila.lam:.4g}, M={cfg.sila.heads}, {cfg.optim.epochs} epoch(s) on all "
          f"{len(data.train_y)} training images; then one evaluation on the test split.", flush=True)
    t0 = time.time()
    keras.utils.set_random_seed(cfg.run.seed)
    strategy = make_strategy(cfg.run.strategy)
    train_ds, test_ds, steps = sk_train.make_datasets(cfg, data.train_x, data.train_y, data.test_x,
                                                      data.test_y)
    with strategy.scope():
        model = sk_train.compile_model(sk_train.build_model(cfg, data), cfg, data.num_classes, steps)
    guard = NonFiniteGuard()
    with strategy.scope():  # precise BN (keras: models): recomputed when fit ends
        precise = precise_bn_callback(model, cfg, data, strategy, steps, print_fn=None)
    sk_train.fit(model, train_ds, None, epochs=cfg.optim.epochs, steps=steps,
                 callbacks=[guard] + ([precise] if precise is not None else []),
                 verbose=cfg.run.verbose, freeze_epochs=cfg.optim.freeze_epochs)
    if guard.failure:
        raise SearchFailed(f"Final run: {guard.failure}")
    test = model.evaluate(test_ds, verbose=0, return_dict=True)  # the only look at the test split
    search_dir = SearchDir(config.out)
    final = search_dir.final.create()
    final.save_model(model)
    final.write_labels(data.class_names)
    result = {
        "split": "test", "note": "evaluated once, after the search; the test split played no part "
                                 "in choosing the hyperparameters",
        "beta": cfg.sila.beta, "lam": cfg.sila.lam, "heads": cfg.sila.heads, "epochs": cfg.optim.epochs,
        "train_examples": len(data.train_y), "test_examples": len(data.test_y),
        "test": {f"test_{k}": float(v) for k, v in test.items()},
        "model": str(final.model_path), "wall_time_s": round(time.time() - t0, 1),
    }
    files.write_json(search_dir / SearchDir.FINAL_TEST, result)
    heads = "  ".join(f"head_{k} {100 * result['test'][f'test_head_{k}_acc']:.2f}%"
                      for k in range(1, cfg.sila.heads + 1))
    print(f"FINAL (test split, evaluated once): {heads}", flush=True)
    return result


def run_search(config: SearchConfig) -> dict | None:
    """Run (or resume, or join) a search; returns the summary (None on a worker)."""
    import keras

    from tuning import report
    from tuning.hypermodel import SilaHyperModel

    role = distributed_role()
    sk_train.validate_model_name(config.train.net.model)
    check_out_dir(config, role)
    t0 = time.time()
    keras.utils.set_random_seed(config.train.run.seed)
    data, full = load_search_data(config, keep_test=bool(config.final_epochs) and role != "worker")
    hypermodel = SilaHyperModel(config.train, data, config.beta_range, config.lam_range,
                                config.tune_heads)
    hypermodel.check_objective(config.objective, config.min_heads)
    out = prepare_out_dir(config, role)  # only once the data and the objective are known good
    tuner = make_tuner(config, hypermodel, trial_strategy(config.train.run.strategy))
    print(f"Search: {config.tuner}, up to {config.max_trials} trial(s) × {config.train.optim.epochs} "
          f"epoch(s), objective {config.objective} (max); role {role}; folder {out}", flush=True)
    tensorboard = keras.callbacks.TensorBoard(str(out / SearchDir.TENSORBOARD), write_graph=False,
                                              profile_batch=0)
    search(tuner, config, [tensorboard])
    if role == "worker":
        print(f"Worker {os.environ['KERASTUNER_TUNER_ID']}: no trials left; the chief writes the "
              "results.", flush=True)
        return None
    rows = report.trial_rows(tuner.oracle, config.objective, config.tune_heads)
    best = report.best_row(rows, config.objective)
    if best is not None and not config.tune_heads:
        best = {**best, "heads": config.train.sila.heads}
    data_info = {"source": data.source, "search_train_examples": len(data.train_y),
                 "validation_examples": len(data.val_y), "val_split": config.val_split,
                 "seed": config.train.run.seed}
    result = report.write_results(out, rows, best, config, data_info)
    if result is None:
        raise SearchFailed(f"No trial completed ({len(rows)} recorded); see 'message' in "
                           f"{out / SearchDir.TRIALS}.")
    print(f"Best: β={result['beta']:.4g}, λ={result['lam']:.4g}, M={result['heads']}: "
          f"{config.objective} {100 * result['objective_value']:.2f}% (validation, trial "
          f"#{result['trial']}; {result['trials']['completed']}/{result['trials']['total']} "
          f"trials completed, {time.time() - t0:.0f}s)\nResults: {out}", flush=True)
    summary = {"best": result, "trials": rows}
    if config.final_epochs:
        summary["final"] = final_run(config, result, full)
    return summary
