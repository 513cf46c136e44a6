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

Then writes ``OUT/head_vs_alone.{json,csv,md,png}`` (:mod:`sila_keras.reports.study`): final test
accuracy per head and arm, mean ± std over seeds. Resumable: a finished run (its
``summary.json``) is skipped, a killed one continues with the run's own ``--resume``; rerun
the same command. ``--diagnose`` instead trains seed 0's ``sila`` and ``alone`` arms (plus
two variants of the alone sub-networks: lr ÷ 5, BatchNorm before the head's conv) with
per-epoch gradient norms, logit scale, train accuracy and BatchNorm train/eval-mode test
accuracy, into ``OUT/diagnose/``.

    python benchmarks/head_vs_alone.py folder:../shared/data/cifar10-jpg.tar.gz \\
        --model resnet20 --preset cifar10-10k-15ep --out bench/head-vs-alone-resnet20
    python benchmarks/head_vs_alone.py DATASET --preset cifar10-10k-15ep --limit-train 2000 \\
        --epochs 8 --milestones 4,6 --seeds 0,1 --out bench/small          # a CPU-sized look

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
ARMS = ("sila", "alone", "ship", "distill", "ship_distill")


@dataclass
class Job:
    """One arm × seed: a run directory and the ``sila-train`` arguments that fill it."""

    arm: str  # sila, alone_h<k>, ship, distill, ship_distill
    seed: int
    run: RunDir
    argv: list[str]
    head: int | None = None  # alone: the head whose sub-network trains


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
                   help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--alone-heads", default=None, help="heads whose sub-network trains alone "
                   "(default 2..M; 1 = the base network alone, the IND baseline)")
    p.add_argument("--alone-lr", type=float, default=None,
                   help="also train the alone sub-networks at this lr (arm alone_lr)")
    p.add_argument("--ship-head", type=int, default=None, help="K of the ship arms (default M)")
    # W = 1 diverged at lr 0.1 with T = 3 and T = 1 in our CPU-scale runs; W = 0.1, T = 1 trained
    # (docs/heads.md).
    p.add_argument("--distill", type=float, default=0.1, help="W of the distill arms")
    p.add_argument("--distill-t", type=float, default=1.0, help="T of the distill arms")
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
    return s


def common_argv(args, s: dict) -> list[str]:
    argv = ["--epochs", str(s["epochs"]), "--lr", str(s["lr"]), "--milestones", s["milestones"],
            "--gamma", str(s["gamma"]), "--batch-size", str(s["batch_size"]), "--verbose", "0"]
    for k in ("limit_train", "limit_test"):
        if s[k] is not None:
            argv += [f"--{k.replace('_', '-')}", str(s[k])]
    return argv + args.train_args.split()


def plan(args, s: dict) -> list[Job]:
    """Every arm × seed of the benchmark, in the order they train."""
    out = StudyDir(args.out)
    base = common_argv(args, s)
    sila = ["--heads", str(s["heads"]), "--beta", str(s["beta"]), "--lam", str(s["lam"])]
    ship = ["--ship-head", str(s["ship_head"])]
    kd = ["--distill", str(args.distill), "--distill-t", str(args.distill_t)]
    arm_flags = {"sila": sila, "ship": sila + ship, "distill": sila + kd,
                 "ship_distill": sila + ship + kd}
    jobs = []
    for seed in s["seeds"]:
        for arm in s["arms"]:
            if arm == "alone":
                for k in s["alone_heads"]:
                    run = out.run(f"alone_h{k}", seed)
                    argv = [args.dataset, str(out.model_file(k, seed).resolve()), "--heads", "1"]
                    jobs.append(Job(f"alone_h{k}", seed, run, argv + base + _where(run, seed), k))
                    if args.alone_lr:  # the same sub-network and seed at another lr
                        run = out.run(f"alone_lr_h{k}", seed)
                        jobs.append(Job(f"alone_lr_h{k}", seed, run, argv + base + [
                            "--lr", str(args.alone_lr), *_where(run, seed)], k))
                continue
            run = out.run(arm, seed)
            jobs.append(Job(arm, seed, run, [args.dataset, args.model, *arm_flags[arm], *base,
                                             *_where(run, seed)]))
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


def write_subnetwork(args, s: dict, head: int, seed: int) -> Path:
    """Head k's re-initialised sub-network for one seed (kept when it already exists, so a
    resumed alone run finds the MODEL its config names)."""
    path = StudyDir(args.out).model_file(head, seed)
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
                            mean=mean, std=std)
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
        print(f"[{job.arm} seed {job.seed}] done: skipped", flush=True)
        return state
    if job.head is not None:
        write_subnetwork(args, s, job.head, job.seed)
    argv = job.argv + (["--resume"] if state == "partial" else [])
    print(f"[{job.arm} seed {job.seed}] {'resuming' if state == 'partial' else 'training'}: "
          f"sila-train {' '.join(argv)}", flush=True)
    t = time.time()
    rc = train(argv)
    keras.backend.clear_session()
    if rc != 0:
        raise SystemExit(f"head_vs_alone: error: run {job.run.path} failed (exit {rc}); fix it "
                         "and rerun the same command (finished runs are kept)")
    print(f"[{job.arm} seed {job.seed}] finished in {time.time() - t:.0f} s", flush=True)
    return state


def collect(args, s: dict, jobs: list[Job]) -> dict:
    """The study (see :mod:`sila_keras.reports.study`) from the finished runs."""
    from sila_keras.reports.study import recipe_of, table_rows

    results: dict[str, dict[int, list[float]]] = {}
    params: dict[int, int] = {}
    test_images, config = None, {}
    for job in jobs:
        run = job.run.load(finished=True)
        heads = run.summary["heads"]
        test_images = (run.summary.get("data") or {}).get("test_examples", test_images)
        if job.head is not None:  # alone: its only head is head k's sub-network
            arm = "alone_lr" if job.arm.startswith("alone_lr") else "alone"
            results.setdefault(arm, {}).setdefault(job.head, []).append(
                heads["head_1"]["final_acc"])
            params.setdefault(job.head, heads["head_1"]["params"])
            continue
        config = config or run.config
        for name, h in heads.items():
            k = int(name.split("_")[1])
            results.setdefault(job.arm, {}).setdefault(k, []).append(h["final_acc"])
            params[k] = h["params"]
    if not config:  # only alone arms: the recipe from one of them, with the backbone's name
        config = {**jobs[0].run.read_config(), "model": args.model}
    return {"backbone": args.model, "dataset": args.dataset, "recipe": recipe_of(config),
            "sila": {"heads": s["heads"], "beta": s["beta"], "lam": s["lam"]},
            "ship": {"ship_head": s["ship_head"], "distill": args.distill,
                     "distill_t": args.distill_t},
            "seeds": s["seeds"], "arms": s["arms"], "test_images": test_images,
            "alone_lr": args.alone_lr,
            "runs": {f"{j.arm}-s{j.seed}": str(j.run.path) for j in jobs},
            "table": table_rows(results, params)}


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
    from sila_keras.reports.study import markdown, write_study

    study = collect(args, s, jobs)
    out = write_study(args.out, study)
    print(markdown({"kind": "", **study}))
    print(f"Written: {out / StudyDir.TABLE}, {out / StudyDir.TABLE_CSV}, {out / StudyDir.PLOT}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
