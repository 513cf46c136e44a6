"""A model's early-exit cascade: its order and costs, calibration images, the measured
trade-off, the run files it writes and the summary over seeds.

The M heads share one trunk; the routing and threshold calibration over their probabilities
are :mod:`sila_keras.reports.cascade_routing`.

* **Order**: heads sorted by the multiply-accumulates of their own path (cheapest first).
  For a SilaNet that is ``head_M … head_1``; for ``--mode dynamic`` ``head_1 … head_C``.
* **Cost**: an image leaving at step k costs the MACs of the union of the paths of steps
  1..k (the shared trunk counted once, :func:`cascade_costs`), counted per segment with the
  one MACs counter :func:`sila_keras.modes.anytime.count_macs`.
* **Results**: ``cascade.json``, ``cascade.csv`` and ``cascade.png`` in the run directory
  (:class:`~sila_keras.utils.rundir.RunDir`, :func:`write_results`); their latency columns
  are filled by ``python -m export RUN --cascade`` (:func:`with_latency`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sila_keras.reports.cascade_routing import (
    DEFAULT_TARGET_DROP,
    SWEEP_POINTS,
    calibrate,
    mean_cost,
    reach_fractions,
    route,
    softmax,
)
from sila_keras.utils.errors import DataError, ModelError
from sila_keras.utils.rundir import RunDir

DEFAULT_CALIBRATION_SIZE = 5000


# --------------------------------------------------------------------------- the model's cascade


def cascade_order(model) -> list[int]:
    """Head numbers (1-based) cheapest first: sorted by the MACs of each head's own path.

    Raises:
        ModelError: a model with one head (nothing to cascade).
    """
    from sila_keras.core.heads import extract_head, num_heads_of
    from sila_keras.modes.anytime import count_macs

    m = num_heads_of(model)
    if m < 2:
        raise ModelError("A cascade needs a model with at least 2 heads (it stops early at a "
                         f"cheaper head). Received: heads={m} in model '{model.name}'")
    own = {k: count_macs(extract_head(model, k)) for k in range(1, m + 1)}
    order = sorted(own, key=lambda k: (own[k], -k))
    if order[-1] != 1 and own[1] >= own[order[-1]]:
        order.remove(1)
        order.append(1)  # head 1 (the base) last when it costs as much as the deepest
    return order


def cascade_costs(model, order: Sequence[int]) -> list[int]:
    """Cumulative MACs per step: an image leaving at step k runs the paths of steps 1..k
    (shared layers once)."""
    import keras

    from sila_keras.core.heads import head_names_of
    from sila_keras.modes.anytime import count_macs

    names = head_names_of(model)
    outs = [model.get_layer(names[k - 1]).output for k in order]
    return [count_macs(keras.Model(model.input, outs[:i])) for i in range(1, len(outs) + 1)]


def head_probs(model, x: np.ndarray, order: Sequence[int], batch_size: int = 256) -> list:
    """Probabilities ``(B, N)`` of each head in ``order`` on images ``x`` (one forward pass)."""
    from sila_keras.core.heads import num_heads_of
    from sila_keras.data.pipeline import eval_dataset

    logits = model.predict(eval_dataset(x, np.zeros(len(x), np.int64), batch_size), verbose=0)
    n = logits.shape[-1] // num_heads_of(model)
    return [softmax(logits[:, (k - 1) * n:k * n]) for k in order]


# --------------------------------------------------------------------------- calibration images


def unused_training_positions(config: dict, train_y: np.ndarray) -> tuple[np.ndarray, str]:
    """Positions in the *full* training split that the run did not train on, and what they are.

    A run with ``--limit-train`` trained on a class-balanced subset (the rest is unused); a
    ``--mode dynamic`` run also set a hold-out of that subset aside.
    """
    from sila_keras.data import balanced_subset, holdout_indices
    from sila_keras.modes.dynamic import HOLDOUT_FRACTION, needs_holdout

    seed = int(config.get("seed", 0))
    trained = balanced_subset(train_y, config.get("limit_train"), seed)
    mask = np.ones(len(train_y), bool)
    mask[trained] = False
    parts = []
    if mask.any():
        parts.append(f"{int(mask.sum())} training images outside --limit-train")
    if config.get("mode") == "dynamic" and needs_holdout(config) and len(trained) >= 4:
        _, val = holdout_indices(train_y[trained], HOLDOUT_FRACTION, seed)
        mask[trained[val]] = True
        parts.append(f"the {len(val)}-image --mode dynamic hold-out")
    return np.flatnonzero(mask), " + ".join(parts)


def calibration_images(config: dict, image_size, calibration: str | None = None,
                       calibration_split: str | None = None, size: int = DEFAULT_CALIBRATION_SIZE,
                       seed: int = 0, data_dir: str | None = None):
    """``(x, y, source)``: class-balanced calibration images that are never the test split.

    With ``calibration``: that dataset's training split (``calibration_split`` picks a tfds
    split). Without: the run's training images it did not train on
    (:func:`unused_training_positions`).

    Raises:
        DataError: the run trained on every training image and no ``calibration`` is given.
    """
    from sila_keras.data import balanced_subset, load_dataset, run_dataset_kwargs

    kw = run_dataset_kwargs(config)
    common = dict(image_size=tuple(int(v) for v in image_size), resize=kw.get("resize", "squash"),
                  limit_test=1, download="never", cache="none", seed=seed)
    if calibration:
        data = load_dataset(calibration, data_dir=data_dir, train_split=calibration_split,
                            **common)
        pick = balanced_subset(data.train_y, size, seed)
        where = f"{calibration} ({data.split_info.get('train_split', 'train')} split)"
        return data.train.take(pick).to_array(), data.train_y[pick], where
    kw.update(common)
    kw.pop("seed", None)
    full = load_dataset(config["dataset"], seed=int(config.get("seed", 0)),
                        **{k: v for k, v in kw.items() if k != "seed"})
    unused, what = unused_training_positions(config, full.train_y)
    if not len(unused):
        raise DataError(
            f"This run trained on all {len(full.train_y)} training images of "
            f"{config['dataset']}, so none are held out and calibrating on them would be "
            "biased (the test split is never used). Pass --calibration DATASET: a folder:PATH "
            "or tfds name whose training split holds images not trained on (tfds: add "
            "--calibration-split, e.g. 'train[90%:]' for a run trained on 'train[:90%]'). "
            f"Received: dataset={config['dataset']}, limit_train={config.get('limit_train')}")
    pick = unused[balanced_subset(full.train_y[unused], size, seed)]
    return (full.train.take(pick).to_array(), full.train_y[pick],
            f"{config['dataset']}: {what} (not trained on)")


# --------------------------------------------------------------------------- evaluation


def evaluate_cascade(model, calib: tuple, test: tuple, *, target_drop: float | None = None,
                     budget_macs: float | None = None, kind: str = "max",
                     batch_size: int = 256, num_points: int = SWEEP_POINTS) -> dict:
    """Calibrate on ``calib = (x, y)``, measure on ``test = (x, y)``: the ``cascade.json`` dict.

    Returns:
        ``{"order", "heads", "costs", "confidence", "calibration", "cascade", "sweep",
        "single"}``: ``cascade`` and each ``sweep`` point carry test ``accuracy``, ``mean_macs``,
        ``thresholds`` and ``reach`` (share of test images running each segment; mean latency
        is ``Σ reach_k · latency_k``); ``single`` is each head alone (cascade order).
    """
    from sila_keras.core.heads import head_names_of

    order = cascade_order(model)
    costs = cascade_costs(model, order)
    names = head_names_of(model)
    cal = calibrate(head_probs(model, calib[0], order, batch_size), calib[1], costs,
                    target_drop=target_drop, budget_macs=budget_macs, kind=kind,
                    num_points=num_points)
    probs = head_probs(model, test[0], order, batch_size)
    y = np.asarray(test[1]).reshape(-1)

    def point(thresholds):
        pred, steps = route(probs, thresholds, kind)
        return {"thresholds": [float(t) for t in thresholds],
                "accuracy": float(np.mean(pred == y)), "mean_macs": mean_cost(steps, costs),
                "reach": reach_fractions(steps, len(order))}

    from sila_keras.core.heads import extract_head
    from sila_keras.modes.anytime import count_macs

    single = [{"head": k, "name": names[k - 1],
               "accuracy": float(np.mean(p.argmax(-1) == y)),
               "macs": int(count_macs(extract_head(model, k)))} for k, p in zip(order, probs)]
    return {"order": list(order), "heads": [names[k - 1] for k in order],
            "costs": [int(c) for c in costs], "confidence": kind,
            "target": ({"budget_macs": budget_macs} if budget_macs is not None
                       else {"target_drop": DEFAULT_TARGET_DROP if target_drop is None
                             else target_drop}),
            "calibration": {"examples": int(len(calib[1])), "accuracy": cal.accuracy,
                            "mean_macs": cal.mean_macs, "head1_accuracy": cal.head1_accuracy},
            "test_examples": int(len(y)),
            "cascade": point(cal.thresholds),
            "sweep": [point(p["thresholds"]) for p in cal.sweep],
            "single": single}


def with_latency(result: dict, segment_ms: Sequence[float], runtime: str = "LiteRT",
                 head_ms: dict | None = None) -> dict:
    """``result`` with ``mean_latency_ms`` on the cascade and sweep points, from per-segment
    latencies (segment k runs for the share ``reach_k`` of the images), and on each single
    head: ``latency_ms``, its own file's (``head_ms = {head: ms}``: only the layers it needs),
    and ``latency_ms_via_segments``, the segments up to its own."""
    import copy

    ms = [float(v) for v in segment_ms]
    out = dict(copy.deepcopy(result), segment_latency_ms=ms, latency_runtime=runtime)
    for p in [out["cascade"], *out["sweep"]]:
        p["mean_latency_ms"] = float(np.dot(p["reach"], ms))
    cumulative = np.cumsum(ms)
    own = {int(k): float(v) for k, v in (head_ms or {}).items()}
    for i, s in enumerate(out["single"]):
        s["latency_ms_via_segments"] = float(cumulative[i])
        if int(s["head"]) in own:
            s["latency_ms"] = own[int(s["head"])]
    return out


def single_latency(s: dict) -> float | None:
    """A head alone's latency: its own file's when measured, else via the segments."""
    return s.get("latency_ms", s.get("latency_ms_via_segments"))


CSV_FIELDS = ["kind", "head", "accuracy", "mean_macs", "mean_latency_ms", "thresholds"]


def csv_rows(result: dict) -> list[dict]:
    """``cascade.csv``: the calibrated cascade, the sweep points and each head alone."""
    def row(kind, p, head=""):
        return {"kind": kind, "head": head, "accuracy": p["accuracy"],
                "mean_macs": p.get("mean_macs", p.get("macs")),
                "mean_latency_ms": p.get("mean_latency_ms", single_latency(p) or ""),
                "thresholds": " ".join(f"{t:.6g}" for t in p.get("thresholds", []))}
    rows = [row("cascade", result["cascade"])]
    rows += [row("sweep", p) for p in result["sweep"]]
    rows += [row("head", s, s["name"]) for s in result["single"]]
    return rows


def write_results(run_dir, result: dict, title: str = "") -> list[Path]:
    """Write ``cascade.json``, ``cascade.csv`` and ``cascade.png`` into ``run_dir``."""
    from sila_keras.utils import files
    from sila_keras.utils.plots import plot_cascade

    run = RunDir(run_dir)
    paths = [run / RunDir.CASCADE_JSON, run / RunDir.CASCADE_CSV, run / RunDir.CASCADE_PLOT]
    files.write_json(paths[0], result)
    files.write_csv(paths[1], csv_rows(result), CSV_FIELDS)
    plot_cascade(result, paths[2], title)
    return paths


def report_lines(run_dir) -> list[str]:
    """Markdown lines on a run's ``cascade.json`` for ``sila-report`` (none if absent)."""
    from sila_keras.utils import files

    path = RunDir(run_dir) / RunDir.CASCADE_JSON
    if not path.is_file():
        return []
    r = files.read_json_object(path)
    c, head1 = r["cascade"], r["single"][-1]
    lat = c.get("mean_latency_ms")
    return [f"- {Path(run_dir).name}: cascade {' → '.join(r['heads'])} ({r['confidence']} "
            f"confidence): Top-1 {100 * c['accuracy']:.2f}% at {c['mean_macs'] / 1e6:.3g} M MACs"
            + (f", {lat:.3g} ms" if lat is not None else "")
            + f" vs {head1['name']} alone {100 * head1['accuracy']:.2f}% at "
            f"{head1['macs'] / 1e6:.3g} M MACs"]


# --------------------------------------------------------------------------- over seeds


def savings(result: dict) -> dict:
    """The calibrated cascade of one ``cascade.json`` against head 1 alone: Top-1 points lost,
    % of mean MACs and % of LiteRT latency saved (None where not timed)."""
    head1 = next(s for s in result["single"] if int(s["head"]) == 1)
    c = result["cascade"]
    lat, lat1 = c.get("mean_latency_ms"), single_latency(head1)
    chain = head1.get("latency_ms_via_segments")
    return {"drop_points": 100.0 * (head1["accuracy"] - c["accuracy"]),
            "macs_saved_pct": 100.0 * (1.0 - c["mean_macs"] / head1["macs"]),
            "latency_saved_pct": (100.0 * (1.0 - lat / lat1) if lat is not None and lat1
                                  else None),
            # against every segment run (head 1 reached through the chain): the same files,
            # so it isolates what the early exits save from how one file compiles vs several
            "latency_saved_vs_chain_pct": (100.0 * (1.0 - lat / chain) if lat is not None
                                           and chain else None)}


def seeds_table(run_dirs: Sequence) -> dict:
    """Mean ± std over runs (seeds) of each head alone and the calibrated cascade: Top-1 (%),
    mean MACs (M) and mean LiteRT latency (ms), from each run's ``cascade.json``.

    Returns:
        ``{"runs", "rows": [{"what", "top1", "macs_m", "latency_ms"}], "markdown"}``.
    """
    from sila_keras.utils import files

    results = [files.read_json_object(RunDir(p) / RunDir.CASCADE_JSON) for p in run_dirs]

    def stat(values):
        v = np.asarray([x for x in values if x is not None], np.float64)
        if not len(v):
            return "–"
        return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"

    rows = []
    for i, name in enumerate(results[0]["heads"] if results else []):
        singles = [r["single"][i] for r in results]
        rows.append({"what": f"{name} alone",
                     "top1": stat([100 * s["accuracy"] for s in singles]),
                     "macs_m": stat([s["macs"] / 1e6 for s in singles]),
                     "latency_ms": stat([single_latency(s) for s in singles])})
    if results:
        cs = [r["cascade"] for r in results]
        rows.append({"what": f"cascade ({results[0]['confidence']}, "
                             f"{results[0].get('target')})",
                     "top1": stat([100 * c["accuracy"] for c in cs]),
                     "macs_m": stat([c["mean_macs"] / 1e6 for c in cs]),
                     "latency_ms": stat([c.get("mean_latency_ms") for c in cs])})
        saved = [savings(r) for r in results]
        rows.append({"what": "cascade vs head_1 alone: points lost; % saved",
                     "top1": stat([v["drop_points"] for v in saved]),
                     "macs_m": stat([v["macs_saved_pct"] for v in saved]),
                     "latency_ms": stat([v["latency_saved_pct"] for v in saved])})
        rows.append({"what": "… % saved vs all segments run (head 1 through the chain)",
                     "top1": "", "macs_m": "",
                     "latency_ms": stat([v["latency_saved_vs_chain_pct"] for v in saved])})
    md = ["| | Top-1 (%) | mean MACs (M) | mean LiteRT latency (ms) |", "|---|---|---|---|"]
    md += [f"| {r['what']} | {r['top1']} | {r['macs_m']} | {r['latency_ms']} |" for r in rows]
    md += ["", f"{len(results)} run(s): " + ", ".join(str(p) for p in run_dirs) + ". Mean ± "
           "std over runs. A head alone's latency is that of its own file (only the layers it "
           "needs) where `export --cascade` timed it, else of the segments up to it. The last "
           "row: head 1's Top-1 minus the cascade's (points), and the share of head 1's MACs "
           "and latency the cascade saves (%)."]
    return {"runs": [str(p) for p in run_dirs], "rows": rows, "markdown": "\n".join(md) + "\n"}
