"""Dynamic SiLa: SiLa on the early exits of a multi-exit network (paper B §3.3, Fig. 2, Eq. 11).

The C classifiers of an early-exit network (MSDNet, :mod:`sila_keras.models.msdnet`)
are concatenated into the Siamese Labels ``z̄ = concat(f_1 … f_C)`` and trained with

    L_msd_sila = Σ_c β_c · CE(z̄, y + (c-1)·N)        (Eq. 11, β_c = 1 by default)

``--no-sila`` trains the original MSDNet instead: Σ_c β_c · CE_N(f_c, y).

**Head numbering differs from SilaNet**: here ``head_1`` is the *shallowest*
exit and ``head_C`` the deepest (the full network), in the order a test image
reaches them. (In a SilaNet, ``head_1`` is the base classifier.)

After training, :func:`evaluate_dynamic` writes the two test protocols of the
MSDNet paper (Figs. 4–5 of paper B):

* ``anytime.csv`` / ``anytime.png`` — anytime prediction: for every exit, the
  FLOPs of its own path and its test Top-1;
* ``budgeted.csv`` / ``budgeted.png`` — budgeted batch classification: for a
  range of average-FLOPs budgets, confidence thresholds on the max-softmax of
  each exit are chosen on a held-out slice of the training data, and test Top-1
  is plotted against the average FLOPs per test image.

FLOPs are counted as multiply-accumulates of the convolution and dense layers
(the MSDNet paper's convention; BN, activations and pooling are not counted),
from the layer shapes of the exit's sub-graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers

HOLDOUT_FRACTION = 0.1


def build_dynamic_model(backbone: str, num_classes: int, input_shape: Sequence[int] = (32, 32, 3),
                        mean=None, std=None, name: str | None = None,
                        **backbone_kwargs) -> keras.Model:
    """A multi-exit backbone with its exits as ``head_1 … head_C`` (shallow → deep).

    Args:
        backbone: a registered backbone whose builder returns ``exits`` (``msdnet``).
        num_classes: N.
        input_shape: ``(H, W, C)``.
        mean: per-channel mean of the training pixels.
        std: per-channel std of the training pixels.
        name: model name (default ``dynamic_<backbone>``).
        **backbone_kwargs: passed to the builder (e.g. ``blocks=5``).

    Returns:
        A functional model, input ``image`` (raw pixels), output ``sila_logits`` ``(B, C·N)``.

    Raises:
        ValueError: unknown backbone, input too small, or a backbone without exits.

    Example:
        >>> import sila_keras.models.msdnet
        >>> m = build_dynamic_model("msdnet", 10, blocks=2, base=1, step=1)
        >>> m.output.shape
        (None, 20)
    """
    from sila_keras.heads import build_backbone

    inputs, out = build_backbone(backbone, num_classes, input_shape, mean, std, **backbone_kwargs)
    if not out.exits:
        raise ValueError(
            f"--mode dynamic needs a multi-exit backbone (one with early-exit classifiers, "
            f"e.g. msdnet); backbone '{backbone}' has none. Received: model={backbone}"
        )
    heads = [layers.Identity(name=f"head_{c}")(z) for c, z in enumerate(out.exits, start=1)]
    sila_logits = layers.Concatenate(axis=-1, name="sila_logits", dtype="float32")(heads)
    return keras.Model(inputs, sila_logits, name=name or f"dynamic_{backbone}")


def dynamic_loss(num_classes: int, num_exits: int, betas: Sequence[float] | None = None,
                 sila: bool = True) -> keras.losses.Loss:
    """Eq. 11 (``SilaLoss`` with β_c, default all 1) or, with ``sila=False``, Σ_c β_c·CE_N.

    Raises:
        ValueError: ``len(betas) != num_exits``.
    """
    from sila_keras.losses import SilaLoss
    from sila_keras.mutual import MutualLoss

    betas = [1.0] * num_exits if betas is None else [float(b) for b in betas]
    if len(betas) != num_exits:
        raise ValueError(
            f"--mode dynamic trains {num_exits} classifiers (exits), so --betas needs {num_exits} "
            f"weights. Received: betas={betas}"
        )
    if sila:
        return SilaLoss(num_classes, betas=betas)
    return MutualLoss(num_classes, betas=betas, sila=False, dml=False, name="exits_ce")


# --------------------------------------------------------------------------- FLOPs


def layer_macs(layer) -> int:
    """Multiply-accumulates of one call of ``layer`` (conv, depthwise/separable conv, dense).

    Nested models are counted layer by layer; layers without weights count 0.
    """
    if isinstance(layer, keras.Model):
        return count_macs(layer)
    kinds = (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv2D, layers.Dense,
             layers.SeparableConv2D)
    if not isinstance(layer, kinds):
        return 0
    out_shape = tuple(layer.output.shape)
    positions = math.prod(int(d) for d in out_shape[1:-1]) if len(out_shape) > 2 else 1
    if isinstance(layer, layers.SeparableConv2D):
        return positions * (math.prod(layer.depthwise_kernel.shape)
                            + math.prod(layer.pointwise_kernel.shape))
    return positions * math.prod(layer.kernel.shape)


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of ``model`` (what the MSDNet paper calls FLOPs)."""
    return int(sum(layer_macs(layer) for layer in model.layers))


def exit_flops(model: keras.Model) -> list[dict]:
    """Per exit c: ``flops`` of its own path and ``cumulative_flops`` of exits 1..c together.

    The cumulative count is what an image costs when it leaves at exit c after
    exits 1..c−1 were evaluated (MSDNet's budgeted batch cost).
    """
    from sila_keras.heads import num_heads_of

    outs = [model.get_layer(f"head_{c}").output for c in range(1, num_heads_of(model) + 1)]
    rows = []
    for c in range(1, len(outs) + 1):
        path = keras.Model(model.input, outs[c - 1])
        upto = keras.Model(model.input, outs[:c])
        rows.append({"exit": c, "flops": count_macs(path), "cumulative_flops": count_macs(upto)})
    return rows


# --------------------------------------------------------------------------- evaluation


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def exit_proportions(q: float, num_exits: int) -> np.ndarray:
    """Geometric exit distribution π_c ∝ q^(c−1) (MSDNet's budgeted batch scheme)."""
    logits = np.arange(num_exits, dtype=np.float64) * math.log(q)
    p = np.exp(logits - logits.max())
    return p / p.sum()


def proportions_for_budget(budget: float, costs: Sequence[float]) -> np.ndarray:
    """Exit proportions whose expected cost Σ π_c·cost_c equals ``budget`` (bisection on log q)."""
    costs = np.asarray(costs, np.float64)
    c = len(costs)
    if budget <= costs[0]:
        return np.eye(c)[0]
    if budget >= costs[-1]:
        return np.eye(c)[-1]
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if exit_proportions(math.exp(mid), c) @ costs < budget:
            lo = mid
        else:
            hi = mid
    return exit_proportions(math.exp((lo + hi) / 2), c)


def fit_thresholds(confidence: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """Per-exit max-softmax thresholds that make ``proportions`` of the held-out set exit there.

    Exits are visited in order; at exit c the most confident of the remaining
    images leave. The last exit takes everything left (threshold −inf).
    """
    n, c = confidence.shape
    targets = np.round(np.cumsum(proportions) * n).astype(int)
    remaining = np.ones(n, bool)
    thresholds = np.full(c, -np.inf)
    taken = 0
    for k in range(c - 1):
        want = int(targets[k] - taken)
        conf = confidence[remaining, k]
        if want <= 0 or conf.size == 0:
            thresholds[k] = np.inf
            continue
        thresholds[k] = np.sort(conf)[::-1][min(want, conf.size) - 1]
        leave = remaining & (confidence[:, k] >= thresholds[k])
        taken += int(leave.sum())
        remaining &= ~leave
    return thresholds


def route(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The exit (0-based) each image leaves at: the first whose confidence reaches its threshold."""
    hit = confidence >= thresholds[None, :]
    hit[:, -1] = True
    return hit.argmax(axis=1)


def check_budgets(budgets: Sequence[float], costs: Sequence[float]) -> list[float]:
    """Validate explicit budgets against the model's FLOPs range [first exit, all exits].

    Raises:
        ValueError: a budget outside the range (naming the range and the fix).
    """
    lo, hi = float(costs[0]), float(costs[-1])
    bad = [b for b in budgets if not lo * (1 - 1e-9) <= float(b) <= hi * (1 + 1e-9)]
    if bad:
        raise ValueError(
            f"Budgets must lie within the model's average FLOPs range per image "
            f"[{lo:.4g}, {hi:.4g}] (all images leave at exit 1 … all reach the last exit). "
            f"Received: budgets={[float(b) for b in bad]}"
        )
    return [float(b) for b in budgets]


def budgeted_batch(holdout_logits: list[np.ndarray], test_logits: list[np.ndarray],
                   test_y: np.ndarray, costs: Sequence[float], budgets: Sequence[float]) -> list[dict]:
    """Budgeted batch classification: thresholds from the held-out set, evaluated on test.

    Args:
        holdout_logits: per exit, logits ``(n_val, N)`` of the held-out images.
        test_logits: per exit, logits ``(n_test, N)`` of the test images.
        test_y: test labels.
        costs: cumulative FLOPs of leaving at each exit.
        budgets: target average FLOPs per image.

    Returns:
        One row per budget: budget, test avg FLOPs, test Top-1, held-out avg FLOPs,
        thresholds and exit fractions.
    """
    costs = np.asarray(costs, np.float64)
    val_conf = np.stack([softmax(z).max(axis=1) for z in holdout_logits], axis=1)
    test_conf = np.stack([softmax(z).max(axis=1) for z in test_logits], axis=1)
    test_pred = np.stack([z.argmax(axis=1) for z in test_logits], axis=1)
    rows = []
    for budget in check_budgets(budgets, costs):
        thresholds = fit_thresholds(val_conf, proportions_for_budget(budget, costs))
        val_exit, test_exit = route(val_conf, thresholds), route(test_conf, thresholds)
        pred = test_pred[np.arange(len(test_exit)), test_exit]
        frac = np.bincount(test_exit, minlength=len(costs)) / max(1, len(test_exit))
        rows.append({
            "budget_flops": budget,
            "test_avg_flops": float(costs[test_exit].mean()) if len(test_exit) else float("nan"),
            "test_top1": float(np.mean(pred == np.asarray(test_y))) if len(test_exit) else float("nan"),
            "holdout_avg_flops": float(costs[val_exit].mean()) if len(val_exit) else float("nan"),
            "thresholds": " ".join(f"{t:.4f}" for t in thresholds),
            "exit_fractions": " ".join(f"{f:.3f}" for f in frac),
        })
    return rows


def default_budgets(costs: Sequence[float], num: int = 12) -> list[float]:
    """``num`` budgets evenly spaced over [cost of exit 1, cost of all exits]."""
    return [float(b) for b in np.linspace(costs[0], costs[-1], num)]


def evaluate_dynamic(model: keras.Model, data, run_dir, *, holdout=None, budgets=None,
                     num_budgets: int = 12, batch_size: int = 256, title: str = "",
                     threshold_source: str = "holdout") -> dict:
    """Anytime prediction and budgeted batch classification of a multi-exit model.

    Writes ``anytime.csv``/``.png`` and ``budgeted.csv``/``.png`` into ``run_dir``.

    Args:
        model: a model from :func:`build_dynamic_model` (``head_1`` = first exit).
        data: an ``ImageData`` (its test split is evaluated).
        run_dir: output folder.
        holdout: ``(x, y)`` images for choosing the thresholds (uint8 NHWC, labels).
        budgets: average FLOPs per image to evaluate (default: ``num_budgets`` evenly
            spaced over the model's range).
        num_budgets: number of default budgets.
        batch_size: prediction batch size.
        title: plot title prefix.
        threshold_source: recorded in the output: where ``holdout`` came from.

    Returns:
        ``{"exits": [...], "budgeted": [...], "threshold_source": ...}``.

    Raises:
        ValueError: no held-out images, or a budget outside the model's FLOPs range.
    """
    from sila_keras import io
    from sila_keras.heads import num_heads_of
    from sila_keras.pipeline import eval_dataset

    run_dir = Path(run_dir)
    flops = exit_flops(model)
    costs = [r["cumulative_flops"] for r in flops]
    budgets = check_budgets(budgets, costs) if budgets is not None else default_budgets(costs, num_budgets)
    if holdout is None or len(holdout[1]) == 0:
        raise ValueError("Budgeted batch classification needs held-out images to choose thresholds. "
                         "Received: holdout=None (pass holdout=(x, y) from the training data).")
    n, c = data.num_classes, num_heads_of(model)

    def per_exit(x, y):
        logits = model.predict(eval_dataset(x, y, batch_size), verbose=0)
        return [logits[:, k * n:(k + 1) * n] for k in range(c)]

    test_logits = per_exit(data.test_x, data.test_y)
    test_y = np.asarray(data.test_y).reshape(-1)
    anytime = [{**r, "test_top1": float(np.mean(test_logits[r["exit"] - 1].argmax(1) == test_y))}
               for r in flops]
    io.write_csv(run_dir / "anytime.csv", anytime, ["exit", "flops", "cumulative_flops", "test_top1"])
    budgeted = budgeted_batch(per_exit(*holdout), test_logits, test_y, costs, budgets)
    for row in budgeted:
        row["threshold_source"] = threshold_source
    io.write_csv(run_dir / "budgeted.csv", budgeted)
    plot_anytime(anytime, run_dir / "anytime.png", title)
    plot_budgeted(budgeted, anytime, run_dir / "budgeted.png", title)
    return {"exits": anytime, "budgeted": budgeted, "threshold_source": threshold_source,
            "holdout_examples": int(len(holdout[1]))}


def plot_anytime(anytime: list[dict], path, title: str = "") -> None:
    """Test Top-1 of each exit vs the FLOPs of its path (paper B Fig. 5)."""
    from sila_keras import io
    from sila_keras.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    x = [r["flops"] / 1e6 for r in anytime]
    y = [100 * r["test_top1"] for r in anytime]
    ax.plot(x, y, marker="o", ms=4)
    for r, xi, yi in zip(anytime, x, y):
        ax.annotate(f"exit {r['exit']}", (xi, yi), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.set_xlabel("FLOPs of the exit's path (×10⁶ multiply-adds)")
    ax.set_ylabel("test Top-1 (%)")
    ax.set_title(f"{title} anytime prediction".strip())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with io.atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_budgeted(budgeted: list[dict], anytime: list[dict], path, title: str = "") -> None:
    """Test Top-1 vs average FLOPs per test image (paper B Fig. 4)."""
    from sila_keras import io
    from sila_keras.plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    pts = sorted((r["test_avg_flops"] / 1e6, 100 * r["test_top1"]) for r in budgeted)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label="dynamic exits (thresholds)")
    ax.plot([r["cumulative_flops"] / 1e6 for r in anytime], [100 * r["test_top1"] for r in anytime],
            ls=":", marker="x", color="grey", label="single exit for all images")
    ax.set_xlabel("average FLOPs per test image (×10⁶ multiply-adds)")
    ax.set_ylabel("test Top-1 (%)")
    ax.set_title(f"{title} budgeted batch classification".strip())
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with io.atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def holdout_for(data, seed: int = 0, fraction: float = HOLDOUT_FRACTION):
    """``((x, y), source)``: the held-out slice set aside before training, else a training slice.

    :func:`sila_keras.modes.prepare_data_for_mode` stores a truly held-out slice in
    ``data.holdout``; without it, a class-balanced ``fraction`` of the training
    images (seen in training, so the thresholds are optimistic) is used.
    """
    from sila_keras.data import holdout_split

    if getattr(data, "holdout", None) is not None:
        return data.holdout, "held-out training slice (not trained on)"
    if len(data.train_y) < 2:
        return (data.train_x, data.train_y), "training images (seen in training)"
    _, _, x_val, y_val = holdout_split(data.train_x, data.train_y, fraction, seed)
    return (x_val, y_val), "training slice (seen in training)"


def after_dynamic_training(config, model, data, run_dir, rows, summary: dict) -> dict:
    """Run both evaluations after ``--mode dynamic`` training; add ``dynamic`` to the summary."""
    holdout, source = holdout_for(data, config.seed)
    result = evaluate_dynamic(model, data, run_dir, holdout=holdout, batch_size=config.batch_size,
                              title=config.model, threshold_source=source)
    return {**summary, "method": "MSDNet (sum of exit CE)" if config.no_sila else "Dynamic SiLa (Eq. 11)",
            "dynamic": result}
