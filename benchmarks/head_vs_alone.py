"""Is the shipped head worth it? Each SiLa head vs the same sub-network trained alone.

For one backbone and recipe, with several seeds, trains (each arm × seed is one ordinary
``sila-train`` run directory under ``OUT/runs/``, through the one training loop):

* ``sila``          — the SiLa model, M heads, β/λ (paper A);
* ``alone``         — head k's sub-network alone for each k in ``--alone-heads`` (default
  2..M): the layers ``python -m export RUN --head k`` keeps, re-initialised and renamed
  (:func:`sila_keras.core.heads.standalone_head`), saved to ``OUT/models/`` and trained with
  ``--heads 1`` as a user's ``.keras`` model — same data subset, recipe and seed;
* ``ship``          — ``--ship-head K`` (head K weighs 1, like head 1);
* ``distill``       — ``--distill W`` (self-distillation, head 1 → shallower heads);
* ``ship_distill``  — both: the recommended recipe for shipping head K;
* ``alone_lr``      — with ``--alone-lr LR``: the alone sub-networks again (same file, same
  seed) at another learning rate — a bare 3×3-conv head trained alone at weight 1 may not
  train at the SiLa recipe's lr (docs/heads.md), and a fair baseline is one that trains.

Head modules and levers (docs/heads.md): ``--head-module NAME[,NAME…]`` measures every arm for
each module (the alone sub-networks are cut from a model with the same module, so head k has
the same size in both); the lever flags (``--ramp-betas``, ``--grad-equilibrium``,
``--distill-start``, ``--distill-ramp``) go to every arm that trains the SiLa model (the alone
runs have one head, where the levers do not apply). Runs of a module other than ``conv`` or
with levers are named ``<arm>-<variant>-s<seed>`` (e.g. ``sila-sep.ge.rb5-s0``).

Then writes ``OUT/head_vs_alone.{json,csv,md,png}`` (:mod:`sila_keras.reports.study`): final test
accuracy per head and variant (arm, head module, levers), mean ± std over seeds; the variants
an earlier command measured into the same OUT (another module, other levers) stay in the
table. Resumable: a finished run (its ``summary.json``) is skipped, a killed one continues
with the run's own ``--resume``; rerun the same command. ``--diagnose`` instead trains seed 0's ``sila`` and ``alone`` arms (plus
two variants of the alone sub-networks: lr ÷ 5, BatchNorm before the head's conv) with
per-epoch gradient norms, logit scale, train accuracy and BatchNorm train/eval-mode test
accuracy, into ``OUT/diagnose/``.

    python benchmarks/head_vs_alone.py folder:../shared/data/cifar10-jpg.tar.gz \\
        --model resnet20 --preset cifar10-10k-15ep --out bench/head-vs-alone-resnet20
    python benchmarks/head_vs_alone.py DATASET --preset cifar10-10k-15ep --limit-train 2000 \\
        --epochs 8 --milestones 4,6 --seeds 0,1 --out bench/small          # a CPU-sized look
    python benchmarks/head_vs_alone.py DATASET --model resnet20 --head-module bn_conv,sep \\
        --arms sila,alone --out bench/head-vs-alone-resnet20          # modules, same table
    python benchmarks/head_vs_alone.py DATASET --model resnet20 --arms sila \\
        --grad-equilibrium --ramp-betas 3 --out bench/head-vs-alone-resnet20   # a lever

Figures depend on the machine only through time; accuracies are what they are (CPU or GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sila_keras.utils.rundir import RunDir, StudyDir  # noqa: E402

# cifar10-10k-15ep: ResNet-20 on 10,000 class-balanced CIFAR-10 training images, 15 epochs,
# lr 0.1 ×0.2 at epochs 8 and 12, batch 128, the full test split, M = 3, β 0.1, λ 0.5 (the
# scale of docs/heads.md's measurements; smoke: one tiny CPU epoch).
PRESETS = {
    "cifar10-10k-15ep": {"limit_train": 10000, "limit_test": None, "epochs": 15, "lr": 0.1,
                         "milestones": "8,12", "gamma": 0.2, "batch_size": 128, "heads": 3,
                         "beta": 0.1, "lam": 0.5, "seeds": "0,1,2"},
    "smoke": {"limit_train": 40, "limit_test": 20, "epochs": 1, "lr": 0.1, "milestones": "",
              "gamma": 0.2, "batch_size": 16, "heads": 3, "beta": 0.1, "lam": 0.5, "seeds": "0"},
}
ARMS = ("sila", "alone", "alone_lr", "ship", "distill", "ship_distill")
DISTILL_ARMS = ("distill", "ship_distill")
# The levers (sila-train flags, docs/heads.md): config field → (flag, short name in run names).
LEVERS = {"ramp_betas": ("--ramp-betas", "rb"), "grad_equilibrium": ("--grad-equilibrium", "ge"),
          "distill_start": ("--distill-start", "ds"), "distill_ramp": ("--distill-ramp", "dr")}
DISTILL_LEVERS = ("distill_start", "distill_ramp")  # for the arms with --distill only


@dataclass
class Job:
    """One arm × variant × seed: a run directory and the ``sila-train`` arguments that fill it."""

    arm: str  # sila, alone_h<k>, ship, distill, ship_distill
    seed: int
    run: RunDir
    argv: list[str]
    head: int | None = None  # alone: the head whose sub-network trains
    module: str = "conv"  # the head module (of the SiLa model; of head k for alone)
    levers: dict | None = None  # field → value, the levers this run trains with
    variant: str = ""  # the run name's variant tag ("" = conv, no levers)

    @property
    def name(self) -> str:
        return f"{self.arm}-{self.variant}" if self.variant else self.arm


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="as for sila-train (folder:PATH or a tfds name)")
    p.add_argument("--model", default="resnet20", help="a registered backbone")
    p.add_argument("--preset", default="cifar10-10k-15ep", choices=sorted(PRESETS),
                   help="the recipe; the flags below override its entries")
    for flag, kind in (("limit-train", int), ("limit-test", int), ("epochs", int), ("lr", float),
                       ("milestones", str), ("gamma", float), ("batch-size", int), ("heads", int),
                       ("beta", float), ("lam", float), ("seeds", str)):
        key = flag.replace("-", "_")
        p.add_argument(f"--{flag}", type=kind, default=None,
                       help=f"the preset's {key} (cifar10-10k-15ep: "
                            f"{PRESETS['cifar10-10k-15ep'][key] or 'all'})")
    p.add_argument("--arms", default="sila,alone,ship,ship_distill",
                   help=f"comma-separated, of: {', '.join(ARMS)} (alone_lr: only the "
                        "--alone-lr runs of the sub-networks; alone with --alone-lr: both lrs)")
    p.add_argument("--alone-heads", default=None, help="heads whose sub-network trains alone "
                   "(default 2..M; 1 = the base network alone, the IND baseline)")
    p.add_argument("--alone-lr", type=float, default=None,
                   help="also train the alone sub-networks at this lr (arm alone_lr)")
    p.add_argument("--ship-head", type=int, default=None, help="K of the ship arms (default M)")
    # W = 1 diverged at lr 0.1 with T = 3 and T = 1 in our CPU-scale runs; W = 0.1, T = 1 trained
    # (docs/heads.md).
    p.add_argument("--distill", type=float, default=0.1, help="W of the distill arms")
    p.add_argument("--distill-t", type=float, default=1.0, help="T of the distill arms")
    p.add_argument("--head-module", default="conv", metavar="NAME[,NAME…]",
                   help="the head module(s) of the SiLa arms and of the sub-networks cut for "
                        "the alone arms (sila-train --head-module; one variant per module)")
    p.add_argument("--ramp-betas", type=int, default=0, metavar="E",
                   help="sila-train --ramp-betas for every SiLa arm")
    p.add_argument("--grad-equilibrium", action="store_true",
                   help="sila-train --grad-equilibrium for every SiLa arm")
    p.add_argument("--distill-start", type=int, default=0, metavar="S",
                   help="sila-train --distill-start for the distill arms")
    p.add_argument("--distill-ramp", type=int, default=0, metavar="R",
                   help="sila-train --distill-ramp for the distill arms")
    p.add_argument("--train-args", default="", help="more sila-train flags for every run "
                   "(e.g. '--augment crop'), space-separated")
    p.add_argument("--out", type=Path, required=True, help="the benchmark folder")
    p.add_argument("--diagnose", action="store_true",
                   help="seed 0 only: per-epoch gradient norms, logit scale, BatchNorm checks")
    return p


def settings(args: argparse.Namespace) -> dict:
    """The preset with the user's flags on top; seeds and heads parsed."""
    s = dict(PRESETS[args.preset])
    for k in s:
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    s["seeds"] = [int(v) for v in str(s["seeds"]).split(",") if v.strip()]
    m = int(s["heads"])
    s["alone_heads"] = ([int(v) for v in args.alone_heads.split(",") if v.strip()]
                        if args.alone_heads else list(range(2, m + 1)))
    s["ship_head"] = args.ship_head or m
    s["arms"] = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in s["arms"] if a not in ARMS] + [
        k for k in s["alone_heads"] + [s["ship_head"]] if not 1 <= k <= m]
    if bad:
        raise SystemExit(f"head_vs_alone: error: unknown arm or head out of 1..{m}: {bad}")
    if "alone_lr" in s["arms"] and not args.alone_lr:
        raise SystemExit("head_vs_alone: error: the alone_lr arm trains at --alone-lr; "
                         "pass --alone-lr LR (e.g. --alone-lr 0.02)")
    s["modules"] = [v.strip() for v in args.head_module.split(",") if v.strip()] or ["conv"]
    s["levers"] = {k: getattr(args, k) for k in LEVERS if getattr(args, k)}
    check_variants(s)
    return s


def check_variants(s: dict) -> None:
    """Unknown modules and bad lever values are refused at once, in sila-train's words."""
    from sila_keras.training.config import TrainConfig
    from sila_keras.utils.errors import ConfigError

    try:
        for module in s["modules"]:
            TrainConfig.create("folder:x", "resnet20", heads=int(s["heads"]), head_module=module,
                               distill=1.0, **s["levers"])
    except ConfigError as e:
        raise SystemExit(f"head_vs_alone: error: {e}") from None


def lever_flags(levers: dict, arm: str) -> list[str]:
    """The sila-train flags of the levers that apply to ``arm`` (the distillation schedule
    only to the arms with --distill)."""
    out = []
    for key, value in levers.items():
        if key in DISTILL_LEVERS and arm not in DISTILL_ARMS:
            continue
        flag = LEVERS[key][0]
        out += [flag] if value is True else [flag, str(value)]
    return out


def variant_tag(module: str, levers: dict) -> str:
    """The run-name tag of a head module and levers: "" for the paper's module without
    levers (the names of earlier benchmark folders), else e.g. ``sep.ge.rb5``."""
    parts = [] if module == "conv" else [module]
    parts += [LEVERS[k][1] + ("" if v is True else str(v)) for k, v in levers.items()]
    return ".".join(parts)


def levers_label(levers: dict) -> str:
    """The table's ``levers`` column: the flags, e.g. ``grad-equilibrium, ramp-betas 3``."""
    return ", ".join(LEVERS[k][0][2:] + ("" if v is True else f" {v}") for k, v in levers.items())


def common_argv(args, s: dict) -> list[str]:
    argv = ["--epochs", str(s["epochs"]), "--lr", str(s["lr"]), "--milestones", s["milestones"],
            "--gamma", str(s["gamma"]), "--batch-size", str(s["batch_size"]), "--verbose", "0"]
    for k in ("limit_train", "limit_test"):
        if s[k] is not None:
            argv += [f"--{k.replace('_', '-')}", str(s[k])]
    return argv + args.train_args.split()


def plan(args, s: dict) -> list[Job]:
    """Every arm × head module × seed of the benchmark, in the order they train."""
    out = StudyDir(args.out)
    base = common_argv(args, s)
    sila = ["--heads", str(s["heads"]), "--beta", str(s["beta"]), "--lam", str(s["lam"])]
    ship = ["--ship-head", str(s["ship_head"])]
    kd = ["--distill", str(args.distill), "--distill-t", str(args.distill_t)]
    arm_flags = {"sila": sila, "ship": sila + ship, "distill": sila + kd,
                 "ship_distill": sila + ship + kd}
    jobs = []
    for seed in s["seeds"]:
        for module in s["modules"]:
            jobs += _module_jobs(args, s, out, seed, module, base, arm_flags)
    return jobs


def _module_jobs(args, s, out: StudyDir, seed: int, module: str, base, arm_flags) -> list[Job]:
    jobs = []
    for arm in s["arms"]:
        if arm in ("alone", "alone_lr"):
            for k in s["alone_heads"]:
                # the alone runs have one head: no levers; head 1's network (the base) has no
                # auxiliary module, so every module's table shares its runs
                tag = variant_tag(module if k > 1 else "conv", {})
                model = out.model_file(k, seed, tag).resolve()
                argv = [args.dataset, str(model), "--heads", "1"]
                run = out.run(f"alone_h{k}", seed, tag)
                if arm == "alone":
                    jobs.append(Job(f"alone_h{k}", seed, run, argv + base + _where(run, seed),
                                    k, module, {}, tag))
                # the same sub-network and seed at another lr (once, if both arms are named)
                if args.alone_lr and (arm == "alone_lr" or "alone_lr" not in s["arms"]):
                    run = out.run(f"alone_lr_h{k}", seed, tag)
                    jobs.append(Job(f"alone_lr_h{k}", seed, run, argv + base + [
                        "--lr", str(args.alone_lr), *_where(run, seed)], k, module, {}, tag))
            continue
        levers = {k: v for k, v in s["levers"].items()
                  if k not in DISTILL_LEVERS or arm in DISTILL_ARMS}
        tag = variant_tag(module, levers)
        run = out.run(arm, seed, tag)
        flags = [*arm_flags[arm], *(["--head-module", module] if module != "conv" else []),
                 *lever_flags(levers, arm)]
        jobs.append(Job(arm, seed, run, [args.dataset, args.model, *flags, *base,
                                         *_where(run, seed)], None, module, levers, tag))
    return jobs


def _where(run: RunDir, seed: int) -> list[str]:
    return ["--seed", str(seed), "--out", str(run.path.parent), "--name", run.path.name]


def status(job: Job) -> str:
    """``done`` (summary.json), ``partial`` (config.json: continue with --resume) or ``new``.

    A finished run made with other settings (another ``--distill-t``, say) is refused rather
    than counted: its numbers would land in the wrong table.
    """
    if job.run.summary_path.is_file():
        check_same_settings(job)
        return "done"
    return "partial" if job.run.config_path.is_file() else "new"


def check_same_settings(job: Job) -> None:
    """Exit with one line when a finished run's config.json differs from this plan's."""
    from sila_keras.training.config import RESUME_MUTABLE, TrainConfig
    from sila_keras.training.flags import build_parser as train_parser
    from sila_keras.training.flags import config_from_args

    planned = config_from_args(train_parser().parse_args(job.argv))
    ignore = tuple(k for k in RESUME_MUTABLE if k != "epochs")  # a longer run is another arm
    diff = TrainConfig.from_dict(job.run.read_config()).differences(planned, ignore)
    if diff:
        shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise SystemExit(f"head_vs_alone: error: {job.run.path} was trained with other settings "
                         f"({shown}). Use another --out, or delete that run to retrain it.")


def write_subnetwork(args, s: dict, head: int, seed: int, module: str = "conv") -> Path:
    """Head k's re-initialised sub-network for one seed, its module ``module`` (kept when it
    already exists, so a resumed alone run finds the MODEL its config names)."""
    module = module if head > 1 else "conv"  # the base network has no auxiliary module
    path = StudyDir(args.out).model_file(head, seed, variant_tag(module, {}))
    if path.is_file():
        return path
    import keras

    from sila_keras.core.heads import build_sila_model, standalone_head
    from sila_keras.training.config import TrainConfig
    from sila_keras.training.train import load_data
    from sila_keras.utils.rundir import save_model

    data = load_data(TrainConfig.create(args.dataset, args.model, limit_train=s["limit_train"],
                                 limit_test=s["limit_test"], seed=seed))
    mean, std = data.channel_stats()  # the statistics the SiLa run normalizes with
    keras.utils.set_random_seed(seed)
    full = build_sila_model(args.model, data.num_classes, max(head, 1), data.input_shape,
                            mean=mean, std=std, head_module=module)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(standalone_head(full, head, name=f"{args.model}_head_{head}_alone"), path)
    keras.backend.clear_session()
    return path


def run_job(args, s: dict, job: Job) -> str:
    """Train (or continue) one arm × seed; returns its status before the call."""
    import keras

    from sila_keras.training.train import main as train

    state = status(job)
    if state == "done":
        print(f"[{job.name} seed {job.seed}] done: skipped", flush=True)
        return state
    if job.head is not None:
        write_subnetwork(args, s, job.head, job.seed, job.module)
    argv = job.argv + (["--resume"] if state == "partial" else [])
    print(f"[{job.name} seed {job.seed}] {'resuming' if state == 'partial' else 'training'}: "
          f"sila-train {' '.join(argv)}", flush=True)
    t = time.time()
    rc = train(argv)
    keras.backend.clear_session()
    if rc != 0:
        raise SystemExit(f"head_vs_alone: error: run {job.run.path} failed (exit {rc}); fix it "
                         "and rerun the same command (finished runs are kept)")
    print(f"[{job.name} seed {job.seed}] finished in {time.time() - t:.0f} s", flush=True)
    return state


def collect(args, s: dict, jobs: list[Job]) -> dict:
    """The study (see :mod:`sila_keras.reports.study`) from the finished runs."""
    from sila_keras.reports.study import recipe_of, table_rows

    results: dict[tuple, dict[int, list[float]]] = {}
    params: dict[tuple[int, str], int] = {}
    macs: dict[tuple[int, str], int] = {}
    test_images, config = None, {}
    for job in jobs:
        run = job.run.load(finished=True)
        heads = run.summary["heads"]
        test_images = (run.summary.get("data") or {}).get("test_examples", test_images)
        if job.head is not None:  # alone: its only head is head k's sub-network
            arm = "alone_lr" if job.arm.startswith("alone_lr") else "alone"
            results.setdefault((arm, job.module, ""), {}).setdefault(job.head, []).append(
                heads["head_1"]["final_acc"])
            params.setdefault((job.head, job.module), heads["head_1"]["params"])
            macs.setdefault((job.head, job.module), heads["head_1"].get("macs"))
            continue
        config = config or run.config
        key = (job.arm, job.module, levers_label(job.levers or {}))
        for name, h in heads.items():
            k = int(name.split("_")[1])
            results.setdefault(key, {}).setdefault(k, []).append(h["final_acc"])
            params[(k, job.module)] = h["params"]
            macs[(k, job.module)] = h.get("macs")
    if not config:  # only alone arms: the recipe from one of them, with the backbone's name
        # (and the recipe's lr: an alone_lr run trained at --alone-lr, the arm's only change)
        config = {**jobs[0].run.read_config(), "model": args.model, "lr": s["lr"]}
    return {"backbone": args.model, "dataset": args.dataset, "recipe": recipe_of(config),
            "sila": {"heads": s["heads"], "beta": s["beta"], "lam": s["lam"]},
            "ship": {"ship_head": s["ship_head"], "distill": args.distill,
                     "distill_t": args.distill_t},
            "seeds": s["seeds"], "arms": s["arms"], "test_images": test_images,
            "alone_lr": args.alone_lr,
            "runs": {f"{j.name}-s{j.seed}": str(j.run.path) for j in jobs},
            "table": table_rows(results, params, macs)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = settings(args)
    if args.diagnose:
        from head_vs_alone_diagnose import diagnose  # benchmarks/, beside this script

        diagnose(args, s)
        return 0
    jobs = plan(args, s)
    print(f"head_vs_alone: {len(jobs)} runs ({sum(status(j) == 'done' for j in jobs)} done) "
          f"in {args.out}", flush=True)
    for job in jobs:
        run_job(args, s, job)
    from sila_keras.reports.study import load_study, markdown, merge_study, write_study
    from sila_keras.utils.errors import ConfigError

    study = collect(args, s, jobs)
    try:  # the variants an earlier command measured into this folder stay in the table
        previous = load_study(args.out) if StudyDir(args.out).holds_results() else None
        study = merge_study(previous, study)
    except ConfigError as e:
        raise SystemExit(f"head_vs_alone: error: {e}") from None
    out = write_study(args.out, study)
    print(markdown({"kind": "", **study}))
    print(f"Written: {out / StudyDir.TABLE}, {out / StudyDir.TABLE_CSV}, {out / StudyDir.PLOT}, "
          f"{out / StudyDir.TRADEOFF_PLOT}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
