"""Results of the head-vs-alone benchmark — is the shipped head worth it?

``benchmarks/head_vs_alone.py`` trains, for one backbone and recipe, the SiLa model, each
head's sub-network alone (:func:`sila_keras.core.heads.standalone_head`, ``--heads 1``) and the
shipping recipe (``--ship-head k``, ``--distill W``), with several seeds, and writes a
:class:`~sila_keras.utils.rundir.StudyDir`. This module owns what it writes and how others find
it: the table (mean ± std of every head's final test accuracy per arm; CSV, Markdown, PNG),
and the *reference* lookup used by ``python -m export RUN --head all`` (its "alone" column)
and by ``python -m sila_keras.report``.

Every arm is measured for one head module (``--head-module``; the alone sub-networks are cut
from a model with the same module, so the sizes are equal) and one set of levers (``--ramp-betas``,
``--grad-equilibrium``, …): the table's *variants*, ``(arm, module, levers)``. Benchmark runs of
other modules or levers into the same folder add their columns (:func:`merge_study`).

How a run finds its reference (:func:`find_study`): an explicit path (``--alone``), else a
benchmark folder among the run directory's parents (a run the benchmark made). It is used
only when the backbone and the recipe (:data:`RECIPE_KEYS`) match the run's ``config.json``
(:func:`recipe_differences`); otherwise the column is left out and a note says why. The alone
accuracies are those of the run's own head module (:func:`alone_accuracy`).

Example:
    >>> rows = table_rows({"sila": {1: [0.6, 0.62], 2: [0.5, 0.52]}, "alone": {2: [0.55]}},
    ...                   params={1: 100, 2: 40})
    >>> [(r["head"], r["arm"], r["n"]) for r in rows]
    [(1, 'sila', 2), (2, 'sila', 2), (2, 'alone', 1)]
    >>> rows = table_rows({("sila", "sep", "grad-equilibrium"): {2: [0.5]}}, params={(2, "sep"): 41})
    >>> [(r["arm"], r["module"], r["levers"], r["params"]) for r in rows]
    [('sila', 'sep', 'grad-equilibrium', 41)]
"""

from __future__ import annotations

import statistics
from pathlib import Path

from sila_keras.utils import files
from sila_keras.utils.errors import ConfigError
from sila_keras.utils.rundir import StudyDir

KIND = "sila-head-vs-alone"
VERSION = 1
# The fields of a run's config that must match the benchmark's for its alone reference to
# apply: the backbone, the data and the optimisation recipe (not the SiLa weights: the alone
# sub-network of head k does not depend on them).
RECIPE_KEYS = ("model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones",
               "gamma", "nesterov", "augment", "limit_train", "optimizer", "schedule",
               "warmup_epochs", "label_smoothing", "image_size", "steps_per_epoch")
# Arms, in table order, and their column titles.
ARM_TITLES = {"sila": "SiLa", "alone": "alone", "alone_lr": "alone, --alone-lr",
              "ship": "ship-head", "distill": "distill", "ship_distill": "ship-head + distill"}
TABLE_COLUMNS = ("head", "params", "macs", "arm", "module", "levers", "n", "mean", "std", "values")
DEFAULT_MODULE = "conv"  # rows of studies written before modules existed


def dataset_label(dataset: str) -> str:
    """``folder:/x/cifar10-jpg.tar.gz`` → ``cifar10-jpg``; a tfds name stays itself."""
    name = Path(str(dataset).split(":", 1)[-1].rstrip("/")).name or str(dataset)
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        name = name.removesuffix(suffix)
    return name


def recipe_of(config: dict) -> dict:
    """The recipe part of a ``config.json`` dict (plus the dataset's label)."""
    out = {k: config.get(k) for k in RECIPE_KEYS}
    out["dataset"] = dataset_label(config.get("dataset", ""))
    return out


def recipe_differences(study: dict, config: dict) -> dict:
    """Recipe fields where a run's config and a study differ: name → (study, run)."""
    mine, theirs = recipe_of(config), study.get("recipe", {})
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {k: (theirs.get(k), mine[k]) for k in mine if norm(theirs.get(k)) != norm(mine[k])}


# --------------------------------------------------------------------------- the table


def mean_std(values) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def variant(key) -> tuple[str, str, str]:
    """``(arm, module, levers)`` of a results key or a table row: an arm name alone is the
    paper's module without levers."""
    if isinstance(key, dict):
        return key["arm"], key.get("module") or DEFAULT_MODULE, key.get("levers") or ""
    if isinstance(key, str):
        return key, DEFAULT_MODULE, ""
    arm, module, levers = key
    return str(arm), str(module or DEFAULT_MODULE), str(levers or "")


def table_rows(results: dict, params: dict | None = None, macs: dict | None = None) -> list[dict]:
    """Rows (head, params, macs, arm, module, levers, n, mean, std, values) from ``{variant:
    {head: [acc per seed]}}``, a variant being an arm name or ``(arm, module, levers)``
    (:func:`variant`); head-major, variants in :func:`arms_of` order. ``params``/``macs``:
    by head, or by ``(head, module)`` when the modules differ."""
    heads = sorted({int(k) for per_head in results.values() for k in per_head})
    by_variant = {variant(key): per_head for key, per_head in results.items()}
    rows = []
    for k in heads:
        for key in _ordered(by_variant):
            per_head = by_variant[key]
            vals = per_head.get(k) or per_head.get(str(k))
            if not vals:
                continue
            mean, std = mean_std(vals)
            arm, module, levers = key
            rows.append({"head": k, "params": _by_head(params, k, module),
                         "macs": _by_head(macs, k, module), "arm": arm, "module": module,
                         "levers": levers, "n": len(vals), "mean": mean, "std": std,
                         "values": [round(float(v), 4) for v in vals]})
    return rows


def _by_head(values: dict | None, head: int, module: str):
    values = values or {}
    return values.get((head, module), values.get(head))


def _ordered(variants) -> list[tuple[str, str, str]]:
    """Variants by arm (:data:`ARM_TITLES` order, unknown ones last), then module (registry
    order), then levers (as they come)."""
    from sila_keras.core.head_modules import list_head_modules

    arms, modules = list(ARM_TITLES), list_head_modules()
    seen = list(dict.fromkeys(variants))
    rank = lambda v: (arms.index(v[0]) if v[0] in arms else len(arms),  # noqa: E731
                      modules.index(v[1]) if v[1] in modules else len(modules),
                      [x[2] for x in seen if x[:2] == v[:2]].index(v[2]))
    return sorted(seen, key=rank)


def arms_of(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The variants ``(arm, module, levers)`` of table rows, in :func:`_ordered` order."""
    return _ordered(variant(r) for r in rows)


def title(key) -> str:
    """A variant's column title: the arm's (:data:`ARM_TITLES`), plus ``[module, levers]``
    unless it is the paper's module without levers."""
    arm, module, levers = variant(key)
    extra = [x for x in (module if module != DEFAULT_MODULE else "", levers) if x]
    return ARM_TITLES.get(arm, arm) + (f" [{', '.join(extra)}]" if extra else "")


def _pct(mean, std, n) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" if n < 2 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def heading(study: dict) -> str:
    """The table's heading: the backbone and the scale it was measured at."""
    r = study.get("recipe", {})
    return (f"Head vs sub-network alone: {study.get('backbone')}, "
            f"{r.get('limit_train') or 'all'} training images, {r.get('epochs')} epoch(s)")


def markdown(study: dict) -> str:
    """The study's table: one line per head, one column per variant (arm, head module,
    levers; test accuracy %, mean ± std over seeds), plus the scale it was measured at."""
    rows = study["table"]
    arms = arms_of(rows)
    cells = {(r["head"], variant(r)): _pct(r["mean"], r["std"], r["n"]) for r in rows}
    modules = list(dict.fromkeys(v[1] for v in arms))
    params = {(r["head"], variant(r)[1]): r["params"] for r in rows if r.get("params")}
    params_title = "params" if len(modules) == 1 else f"params ({' / '.join(modules)})"
    r = study.get("recipe", {})
    sila, ship = study.get("sila", {}), study.get("ship", {})
    seeds = study.get("seeds", [])
    lines = [
        f"Backbone {study.get('backbone')} on {r.get('dataset')} "
        f"({r.get('limit_train') or 'all'} training images, {study.get('test_images', '?')} test "
        f"images), {r.get('epochs')} epochs, lr {r.get('lr')} ×{r.get('gamma')} at "
        f"{r.get('milestones')}, batch {r.get('batch_size')}; seeds {seeds}. SiLa: M="
        f"{sila.get('heads')}, β {sila.get('beta')}, λ {sila.get('lam')}; ship-head arms: "
        f"--ship-head {ship.get('ship_head')}, distill W={ship.get('distill')}, "
        f"T={ship.get('distill_t')}"
        + (f"; alone, --alone-lr: lr {study['alone_lr']}" if study.get("alone_lr") else "")
        + (f"; head modules {', '.join(modules)} (columns [module, levers])"
           if modules != [DEFAULT_MODULE] or any(v[2] for v in arms) else "")
        + ". Final test accuracy (%), mean ± std over seeds.", "",
        f"| head | {params_title} | " + " | ".join(title(a) for a in arms) + " |",
        "|---:|---:|" + "---:|" * len(arms)]
    for k in sorted({r["head"] for r in rows}):
        p = " / ".join(f"{params[(k, m)]:,}" if (k, m) in params else "—" for m in modules)
        lines.append(f"| {k} | {p} | " + " | ".join(cells.get((k, a), "—") for a in arms) + " |")
    return "\n".join(lines) + "\n"


def plot(study: dict, path) -> None:
    """Grouped bars: test accuracy per head, one bar per arm (± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sila_keras.utils.plots import save_png

    rows = study["table"]
    heads = sorted({r["head"] for r in rows})
    arms = arms_of(rows)
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for i, arm in enumerate(arms):
        xs, ys, es = [], [], []
        for j, k in enumerate(heads):
            row = next((r for r in rows if r["head"] == k and variant(r) == arm), None)
            if row and row["mean"] is not None:
                xs.append(j + (i - (len(arms) - 1) / 2) * width)
                ys.append(100 * row["mean"])
                es.append(100 * (row["std"] or 0.0))
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=title(arm), color=f"C{i % 10}")
    ax.set_xticks(range(len(heads)), [f"head {k}" for k in heads])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{study.get('backbone')}: each head vs its sub-network trained alone")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
    fig.tight_layout()
    save_png(fig, path)


def plot_tradeoff(study: dict, path) -> None:
    """Test accuracy vs parameters (left) and vs MACs (right), log x: every head of every
    variant one point (± std over seeds, labelled with its head number); the SiLa variants
    filled circles, the sub-networks trained alone (each lr) open squares, so a user can
    pick a head by size or cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sila_keras.utils.plots import save_png

    rows = [r for r in study["table"] if r["mean"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=120, sharey=True)
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs per image")):
        for i, arm in enumerate(arms_of(rows)):
            points = [r for r in rows if variant(r) == arm and r.get(key)]
            if not points:
                continue
            alone = arm[0].startswith("alone")
            ax.errorbar([r[key] for r in points], [100 * r["mean"] for r in points],
                        yerr=[100 * (r["std"] or 0.0) for r in points], fmt="s" if alone else "o",
                        mfc="none" if alone else f"C{i % 10}", color=f"C{i % 10}", capsize=3,
                        linestyle="none", label=title(arm))
            for r in points:
                ax.annotate(str(r["head"]), (r[key], 100 * r["mean"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(f"{study.get('backbone')}: accuracy vs size and cost (numbers: head k)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    save_png(fig, path)


def merge_study(old: dict | None, new: dict) -> dict:
    """``new`` plus the variants of ``old`` (the same folder's earlier results) that ``new``
    did not measure: benchmark runs of other head modules or levers add their columns.

    Raises:
        ConfigError: ``old`` is for another backbone, recipe or SiLa/ship setting.
    """
    if not old:
        return new
    keys = ("backbone", "recipe", "sila", "ship")
    differ = [k for k in keys if old.get(k) != new.get(k)]
    if differ:
        raise ConfigError(f"The head-vs-alone results in '{old.get('folder', '?')}' are for "
                          f"another {', '.join(differ)}; their variants cannot share a table. "
                          "Use another --out. Received: " + ", ".join(
                              f"{k}={new.get(k)!r} (there {old.get(k)!r})" for k in differ))
    measured = {variant(r) for r in new["table"]}
    rows = [r for r in old["table"] if variant(r) not in measured] + new["table"]
    order = arms_of(rows)
    table = sorted(rows, key=lambda r: (r["head"], order.index(variant(r))))
    return {**new, "table": table, "runs": {**old.get("runs", {}), **new.get("runs", {})},
            "seeds": sorted({*old.get("seeds", []), *new.get("seeds", [])})}


def write_study(folder, study: dict) -> StudyDir:
    """Write the results JSON, the table (CSV, Markdown) and the plot into ``folder``."""
    out = StudyDir(folder)
    study = {"kind": KIND, "version": VERSION, **study}
    files.write_csv(out / StudyDir.TABLE_CSV, study["table"], TABLE_COLUMNS)
    files.write_text(out / StudyDir.TABLE, f"# {heading(study)}\n\n{markdown(study)}")
    plot(study, out / StudyDir.PLOT)
    plot_tradeoff(study, out / StudyDir.TRADEOFF_PLOT)
    files.write_json(out / StudyDir.RESULTS, study)  # last: its presence means "complete"
    return out


# --------------------------------------------------------------------------- lookup


def load_study(path) -> dict:
    """A study's results from its folder or its JSON file (``folder``: where it was read).

    Raises:
        ConfigError: no results there, or a file that is not a head-vs-alone result.
    """
    path = Path(path)
    file = path / StudyDir.RESULTS if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"No head-vs-alone results at '{path}': expected a folder written by "
                          f"benchmarks/head_vs_alone.py (holding {StudyDir.RESULTS}) or that file. "
                          f"Received: {path}")
    study = files.read_json_object(file)
    if study.get("kind") != KIND:
        raise ConfigError(f"'{file}' is not a head-vs-alone result (kind {study.get('kind')!r}). "
                          f"Received: {path}")
    return {**study, "folder": str(file.parent)}


def find_study(run_dir, explicit=None, levels: int = 3) -> tuple[dict | None, str]:
    """The study that applies to a run, and a note on how it was found (or why not).

    ``explicit`` (a folder or JSON path) wins; else the run directory's parents (up to
    ``levels``) are searched for a benchmark folder. A study applies when the run's
    ``config.json`` has the same backbone and recipe (:data:`RECIPE_KEYS`, the dataset by
    name).
    """
    from sila_keras.utils.rundir import RunDir

    candidates = []
    if explicit is not None:
        candidates.append(Path(explicit))
    elif run_dir is not None:
        candidates += [p for p in list(Path(run_dir).resolve().parents)[:levels]
                       if StudyDir(p).holds_results()]
    if not candidates:
        return None, "no head-vs-alone benchmark result found"
    study = load_study(candidates[0])
    config = RunDir(run_dir).read_config() if run_dir is not None else {}
    diff = recipe_differences(study, config) if config else {"config": ("?", "no config.json")}
    if diff:
        shown = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in list(diff.items())[:4])
        return None, (f"the head-vs-alone result at '{candidates[0]}' is for another backbone or "
                      f"recipe ({shown}); its alone column is left out")
    return study, reference_note(study, config.get("head_module") or DEFAULT_MODULE)


def alone_accuracy(study: dict, arm: str = "alone",
                   module: str = DEFAULT_MODULE) -> dict[int, tuple[float, float | None, int]]:
    """``{head k: (mean, std, n)}`` of the sub-networks trained alone (``arm="alone_lr"``: at
    the study's ``--alone-lr``) whose head k has the module ``module``."""
    return {r["head"]: (r["mean"], r["std"], r["n"]) for r in study["table"]
            if variant(r)[:2] == (arm, module) and r["mean"] is not None}


def run_head_module(run_dir) -> str:
    """The head module a run trained with (its ``config.json``; the paper's before modules)."""
    from sila_keras.utils.rundir import RunDir

    if run_dir is None:
        return DEFAULT_MODULE
    return RunDir(run_dir).read_config().get("head_module") or DEFAULT_MODULE


def reference_note(study: dict, module: str = DEFAULT_MODULE) -> str:
    """Where the alone column comes from, plus the ``--alone-lr`` results when the study has
    them (a bare-module sub-network may not train at the recipe's lr; docs/heads.md)."""
    note = f"alone-trained reference: '{study.get('folder')}', same recipe"
    if module != DEFAULT_MODULE:
        note += f", head module {module}"
    other = alone_accuracy(study, "alone_lr", module)
    if other:
        cells = ", ".join(f"head {k} {_pct(m, sd, n)}%" for k, (m, sd, n) in sorted(other.items()))
        note += f"; trained alone at lr {study.get('alone_lr')}: {cells}"
    return note
