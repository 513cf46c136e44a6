"""Reproduction report: ``python -m sila_keras.report RUN_DIR [RUN_DIR …] [--out report.md]``.

Puts runs side by side in the papers' formats — SilaNet Table 1 (ACC per head), Table 2
(Top-1…Top-5 of head 1), Table 3 (params train/test, CR) and SiLa-learning's
Top-1/Top-5/BEST/NLL per network — plus overlaid accuracy curves (PNG beside the report).
Runs are grouped by dataset/model and labelled by how their configs differ (e.g.
``heads=1`` vs ``heads=3, beta=0.1, lam=0.5``); runs that differ only in ``seed`` are one
arm, shown as mean ± std.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sila_keras.core.sizes import float32_mib
from sila_keras.utils import files
from sila_keras.utils.cli import Command, run_command
from sila_keras.utils.rundir import RunDir

# Config keys that never distinguish arms.
IGNORED = {"name", "out", "resume", "seed", "verbose", "debug", "data_dir", "download", "epochs",
           "steps_per_execution", "jit", "strategy", "deterministic", "skip_bad_images", "backbone_kwargs",
           "sync_bn", "checkpoint_every"}
LABEL_KEYS = ("mode", "heads", "beta", "lam", "betas", "peer", "dml", "no_sila", "augment")


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict
    rows: list[dict]


@dataclass
class Arm:
    label: str
    runs: list[Run] = field(default_factory=list)


def load_run(path: Path) -> Run:
    """Read a finished run directory.

    Raises:
        RunDirError: not a folder, or ``config.json``/``summary.json``/``metrics.csv`` missing.
    """
    run = RunDir(path).load(finished=True)
    return Run(run.path, run.config, run.summary, run.rows)


def group_runs(runs: list[Run]) -> dict[str, list[Arm]]:
    """Group by ``dataset · model``; within a group, one arm per config (seeds merged)."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[f"{Path(r.config['dataset'].split(':', 1)[-1]).name or r.config['dataset']} · "
               f"{r.config['model']}"].append(r)
    out = {}
    for key, members in groups.items():
        varying = [k for k in members[0].config if k not in IGNORED
                   and len({repr(m.config.get(k)) for m in members}) > 1]
        arms: dict[str, Arm] = {}
        for r in members:
            label = _label(r.config, varying)
            arms.setdefault(label, Arm(label)).runs.append(r)
        out[key] = list(arms.values())
    return out


def _label(config: dict, varying: list[str]) -> str:
    keys = [k for k in LABEL_KEYS if k in varying or (k in ("heads",) and not varying)]
    keys += [k for k in varying if k not in keys]
    if config.get("heads", 1) > 1 and config.get("mode", "sila") == "sila":
        for k in ("beta", "lam"):
            if k not in keys:
                keys.append(k)
    parts = []
    for k in keys:
        v = config.get(k)
        if k in ("beta", "lam") and (config.get("heads", 1) == 1 or config.get("betas")):
            continue
        parts.append(f"{'β' if k == 'beta' else 'λ' if k == 'lam' else k}={_fmt_value(v)}")
    return ", ".join(parts) or "default"


def _fmt_value(v):
    if isinstance(v, list):
        return ",".join(_fmt_value(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def mean_std(values: list[float | None], scale: float = 100.0, digits: int = 2) -> str:
    vals = [scale * float(v) for v in values if v not in (None, "")]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _last(run: Run, col: str):
    return run.rows[-1].get(col) if run.rows else None


def _best(run: Run, col: str):
    vals = [float(r[col]) for r in run.rows if r.get(col) not in (None, "")]
    return max(vals) if vals else None


def table1(arms: list[Arm]) -> list[str]:
    m = max(a.runs[0].summary.get("num_heads", 1) for a in arms)
    head = "| arm | seeds | epochs | " + " | ".join(f"ACC{k}" for k in range(1, m + 1)) + " | BEST1 |"
    lines = [head, "|" + "---|" * (m + 4)]
    for a in arms:
        accs = [mean_std([_last(r, f"head_{k}_acc") for r in a.runs]) for k in range(1, m + 1)]
        best = mean_std([_best(r, "head_1_acc") for r in a.runs])
        epochs = "/".join(sorted({str(r.summary.get("epochs_done")) for r in a.runs}))
        lines.append(f"| {a.label} | {len(a.runs)} | {epochs} | " + " | ".join(accs) + f" | {best} |")
    return lines


def table2(arms: list[Arm]) -> list[str]:
    lines = ["| arm | Top-1 | Top-2 | Top-3 | Top-4 | Top-5 |", "|---|---|---|---|---|---|"]
    for a in arms:
        cols = ["head_1_acc", "top2", "top3", "top4", "top5"]
        lines.append(f"| {a.label} | " + " | ".join(mean_std([_last(r, c) for r in a.runs]) for c in cols) + " |")
    return lines


def table3(arms: list[Arm]) -> list[str]:
    lines = ["| arm | train MiB | test MiB (head 1) | head 2 MiB | CR head 2 (%) | ACC2 |",
             "|---|---|---|---|---|---|"]
    for a in arms:
        s = a.runs[0].summary
        heads = s.get("heads", {})
        h2 = heads.get("head_2", {})
        mib = lambda p: f"{float32_mib(p):.2f}" if p else "–"  # noqa: E731
        lines.append(f"| {a.label} | {mib(s.get('total_params'))} | {mib(heads.get('head_1', {}).get('params'))} "
                     f"| {mib(h2.get('params'))} | {h2.get('cr_percent', '–')} "
                     f"| {mean_std([_last(r, 'head_2_acc') for r in a.runs]) if h2 else '–'} |")
    return lines


def table_nets(arms: list[Arm]) -> list[str]:
    lines = ["| arm | net | Top-1 | Top-5 | BEST | NLL |", "|---|---|---|---|---|---|"]
    for a in arms:
        nets = a.runs[0].summary.get("nets") or {"net_1": None}
        for net in nets:
            def pick(r, key, net=net):
                n = (r.summary.get("nets") or {}).get(net)
                if n is not None:
                    return n.get(key)
                return {"top1": _last(r, "head_1_acc"), "top5": _last(r, "top5"),
                        "best": _best(r, "head_1_acc"), "nll": _last(r, "nll")}[key]

            lines.append(f"| {a.label} | {net} | {mean_std([pick(r, 'top1') for r in a.runs])} | "
                         f"{mean_std([pick(r, 'top5') for r in a.runs])} | "
                         f"{mean_std([pick(r, 'best') for r in a.runs])} | "
                         f"{mean_std([pick(r, 'nll') for r in a.runs], scale=1, digits=3)} |")
    return lines


def plot_group(arms: list[Arm], path: Path, title: str) -> None:
    """Per-head test accuracy vs epoch, every arm overlaid (mean over seeds, ± std band)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=120)
    for i, a in enumerate(arms):
        m = a.runs[0].summary.get("num_heads", 1)
        for k in range(1, m + 1):
            n = min(len(r.rows) for r in a.runs)
            if n == 0:
                continue
            acc = np.array([[100 * float(r.rows[e][f"head_{k}_acc"]) for e in range(n)] for r in a.runs])
            ep = np.arange(1, n + 1)
            style = "-" if k == 1 else ("--" if k == 2 else ":")
            line, = ax.plot(ep, acc.mean(0), style, color=f"C{i}", label=f"{a.label} · ACC{k}")
            if len(a.runs) > 1:
                ax.fill_between(ep, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), color=f"C{i}", alpha=0.15)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    from sila_keras.utils.plots import save_png

    save_png(fig, path)


def render(run_dirs: list[Path], out: Path) -> str:
    """Write the Markdown report (and PNGs beside it); returns the Markdown text.

    A head-vs-alone benchmark folder (``benchmarks/head_vs_alone.py``) given among the
    runs, or holding one of them, adds its table (:func:`study_sections`).
    """
    from sila_keras.utils.rundir import StudyDir

    studies = [Path(p) for p in run_dirs if StudyDir(p).holds_results()]
    runs = [load_run(Path(p)) for p in run_dirs if Path(p) not in studies]
    groups = group_runs(runs)
    md = ["# SiLa reproduction report", "",
          f"{len(runs)} run(s). Accuracies are % on the test split at the last epoch (mean ± std over "
          "seeds where an arm has several); BEST is the maximum over epochs.", ""]
    for gi, (key, arms) in enumerate(groups.items(), start=1):
        png = out.with_name(f"{out.stem}_curves_{gi}.png")
        plot_group(arms, png, key)
        md += [f"## {key}", "", "Runs: " + "; ".join(f"**{a.label}**: " + ", ".join(
            f"`{r.path.name}` (seed {r.config.get('seed')})" for r in a.runs) for a in arms), "",
            "### Table 1 — accuracy per head (SilaNet Table 1)", "", *table1(arms), "",
            "### Table 2 — Top-k of head 1 (SilaNet Table 2)", "", *table2(arms), "",
            "### Table 3 — parameters (SilaNet Table 3; MiB = trainable params × 4 / 2²⁰)", "", *table3(arms), "",
            "### Top-1 / Top-5 / BEST / NLL per network (SiLa learning Tables 1–3)", "", *table_nets(arms), "",
            f"![curves]({png.name})", ""]
    md += warning_section(runs)
    md += cascade_section(runs)
    md += study_sections(studies, [r.path for r in runs])
    text = "\n".join(md)
    files.write_text(out, text)
    return text


def warning_section(runs: list[Run]) -> list[str]:
    """The warnings the runs recorded in ``summary.json`` (e.g. a head that predicts one
    class at test time: stale BatchNorm statistics, :mod:`sila_keras.core.batchnorm`)."""
    from sila_keras.core.batchnorm import warning_line

    lines = []
    for r in runs:
        found = [w for w in r.summary.get("warnings") or [] if w.get("kind") == "collapsed_predictions"]
        if found:
            lines.append(f"- `{r.path.name}`: {warning_line(found)}")
    return ["## Warnings", "", *lines, ""] if lines else []


def cascade_section(runs: list[Run]) -> list[str]:
    """Each run's early-exit cascade (``sila-cascade``'s ``cascade.json`` and its plot)."""
    from sila_keras.reports.cascade_eval import report_lines
    from sila_keras.utils.rundir import RunDir

    lines = []
    for r in runs:
        found = report_lines(r.path)
        if found:
            lines += [*found, "", f"![cascade]({(r.path / RunDir.CASCADE_PLOT).resolve()})", ""]
    return ["## Early-exit cascade (sila-cascade)", "", *lines] if lines else []


def study_sections(studies: list[Path], run_paths: list[Path]) -> list[str]:
    """The head-vs-alone table of each benchmark folder given, or found among the runs'
    parents (:func:`sila_keras.reports.study.find_study`; a run of another recipe adds nothing)."""
    from sila_keras.reports.study import find_study, heading, load_study, markdown

    found = {p.resolve(): load_study(p) for p in studies}
    for path in run_paths:
        study, note = find_study(path)
        if study is not None:
            found.setdefault(Path(study["folder"]).resolve(), study)
    md = []
    for folder, study in found.items():
        md += [f"## {heading(study)}", "",
               f"From `{folder}` (benchmarks/head_vs_alone.py).", "", markdown(study)]
    return md


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sila-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path,
                   help="run directories written by sila-train (or head-vs-alone benchmark "
                        "folders, benchmarks/head_vs_alone.py: their table is added)")
    p.add_argument("--out", type=Path, default=Path("report.md"), help="Markdown file to write")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0, or 2 on bad input (see :mod:`sila_keras.utils.cli`)."""
    return run_command(Command("sila-report", build_parser, _main, needs_tensorflow=False), argv)


def _main(args: argparse.Namespace) -> None:
    render(args.runs, args.out)
    print(f"Report written to {args.out}")
