"""Parameter sizes of the zoo, SilaNet Table 3 style: ``python -m sila_keras.params``.

For every registered backbone (or the ones named with ``--models``), builds the
SiLa model on a small symbolic input (no training, no data) and reports:

* base: the backbone alone (``head_1``), in trainable parameters and MiB;
* train: the whole SiLa model with its M heads (what is trained);
* per head k: the extracted model ``input → head_k`` and its compression ratio
  CR = 1 − head/base (SilaNet §3.2; Table 3's "test" column is head 2);
* MMACs: millions of multiply-accumulates of one image through the base and each extracted
  head, at the input size used (:func:`sila_keras.core.sizes.count_macs`).

MiB = trainable parameters × 4 / 2^20 (float32; BatchNorm moving statistics are
not counted — the papers' convention). The paper's value is shown beside ours
where known.

Examples::

    python -m sila_keras.params                       # every model, CIFAR-10, 3 heads
    python -m sila_keras.params --dataset cifar100 --models vgg19,resnet18
    python -m sila_keras.params --heads 4 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from sila_keras.core.sizes import float32_mib
from sila_keras.utils.cli import Command, HelpFormatter, run_command
from sila_keras.utils.errors import ConfigError

# SilaNet Table 3 (CIFAR-10, M = 3), the one copy (tests/test_zoo.py reads it too): the
# paper's printed sizes — params size in MB (= MiB of float32) and CR in % — and the exact
# trainable-parameter counts of the same definitions and placement (base = head 1, train =
# the M = 3 model; ../shared/reference/paper-architectures.md).
TABLE3 = {
    "vgg19": {"base_params": 38_958_922, "train_params": 39_028_062,
              "base_mib": 148.62, "train_mib": 148.88, "head_2_mib": 40.58, "head_2_cr": 72.70},
    "resnet18": {"base_params": 11_173_962, "train_params": 11_208_542,
                 "base_mib": 42.63, "train_mib": 42.76, "head_2_mib": 10.67, "head_2_cr": 74.97},
    "wrn40_10": {"base_params": 55_856_330, "train_params": 55_900_510,
                 "base_mib": 213.07, "train_mib": 213.24, "head_2_mib": 50.57, "head_2_cr": 76.26},
    "mobilenetv1": {"base_params": 3_223_178, "train_params": 3_292_318,
                    "base_mib": 12.30, "train_mib": 12.56, "head_2_mib": 6.34, "head_2_cr": 48.46},
    "densenet121": {"base_params": 6_956_298, "train_params": 7_026_974,
                    "base_mib": 26.54, "train_mib": 26.81, "head_2_mib": 18.44, "head_2_cr": 30.52},
    "inceptionv3": {"base_params": 22_133_738, "train_params": 22_228_798,
                    "base_mib": 84.43, "train_mib": 84.86, "head_2_mib": 35.72, "head_2_cr": 57.69},
}
# The columns the paper prints: the reference shown beside ours (``"paper"`` in --json).
PAPER_COLUMNS = ("base_mib", "train_mib", "head_2_mib", "head_2_cr")
PAPER_TABLE3 = {name: {k: row[k] for k in PAPER_COLUMNS} for name, row in TABLE3.items()}
# CIFAR-100 (N = 100): the paper gives no sizes; these are the counts of the same
# definitions and placement (../shared/reference/paper-architectures.md).
REFERENCE_CIFAR100 = {
    "vgg19": {"base_mib": 150.02, "head_2_mib": 42.16},
    "resnet18": {"base_mib": 42.80, "head_2_mib": 11.47},
    "wrn40_10": {"base_mib": 213.30, "head_2_mib": 51.56},
    "mobilenetv1": {"base_mib": 12.65, "head_2_mib": 7.93},
    "densenet121": {"base_mib": 26.89, "head_2_mib": 20.02},
    "inceptionv3": {"base_mib": 85.14, "head_2_mib": 38.09},
}
# Cells where our count differs from the paper beyond rounding, and why.
KNOWN_DIFFERENCES = {
    ("inceptionv3", "train_mib"): (
        "InceptionV3 train: module C after Mixed_6e and module D after Mixed_5d give 84.80 MiB; "
        "the paper's 84.86 matches no M=3 placement of 3×3-conv modules on this network."),
}
DATASETS = {"cifar10": 10, "cifar100": 100}


def reference(model_name: str, num_classes: int, num_heads: int) -> dict:
    """The published (N=10) or reference (N=100) MiB values for a model, or ``{}``.

    ``train_mib`` is only meaningful for the paper's M = 3; base and head 2 do not
    depend on M (head 2 always sits at the deepest tap).
    """
    table = {10: PAPER_TABLE3, 100: REFERENCE_CIFAR100}.get(int(num_classes), {})
    ref = dict(table.get(model_name, {}))
    if num_heads != 3:
        ref.pop("train_mib", None)
    if num_heads < 2:
        ref = {k: v for k, v in ref.items() if not k.startswith("head_2")}
    return ref


def param_table(model_name: str, num_classes: int, num_heads: int = 3,
                image_size: int | None = None, head_module: str = "conv") -> dict:
    """Trainable-parameter sizes of a registered backbone's SiLa model.

    Builds the model on a small symbolic input (32×32×3, or the backbone's
    minimum size if larger); nothing is trained and no data is read.

    Args:
        model_name: a registered backbone (see ``list_backbones()``).
        num_classes: N.
        num_heads: M.
        image_size: input side in pixels (default 32, or the backbone's minimum if larger);
            it moves the heads' attach points of a ``keras:<Name>`` model, not the counts
            of the zoo's all-convolutional backbones.
        head_module: the module of heads 2..M (``--head-module``;
            :mod:`sila_keras.core.head_modules`).

    Returns:
        ``{"base_params", "base_mib", "base_macs", "train_params", "train_mib",
        "heads": {"head_k": {"params", "mib", "cr_percent", "macs"}}}``; MiB rounded to
        0.01, CR = 100·(1 − head/base) rounded to 0.01, MACs of one image at the input size
        used.

    Raises:
        ValueError: unknown model, N < 2, or more heads than the model can place
            (the message gives the maximum).

    Example:
        >>> param_table("resnet20", 10, 3)["heads"]["head_2"]["params"]
        68442
    """
    import keras

    from sila_keras.core.heads import build_sila_model, head_table, trainable_params
    from sila_keras.models import get_backbone, is_application

    spec = get_backbone(model_name)
    size = max(32, spec.min_input_size) if image_size is None else int(image_size)
    extra = {"weights": "none"} if is_application(model_name) else {}  # counting needs no download
    try:
        model = build_sila_model(model_name, int(num_classes), int(num_heads), (size, size, 3),
                                 head_module=head_module, **extra)
        heads = head_table(model)
        train = trainable_params(model)
    finally:
        keras.backend.clear_session()
    base = heads["head_1"]["params"]
    return {"base_params": base, "base_mib": round(float32_mib(base), 2),
            "base_macs": heads["head_1"]["macs"], "train_params": train,
            "train_mib": round(float32_mib(train), 2), "heads": heads}


def num_classes_of(dataset: str) -> int:
    """N for ``cifar10``, ``cifar100`` or a plain integer ≥ 2.

    Raises:
        ValueError: anything else.
    """
    text = str(dataset).strip().lower()
    if text in DATASETS:
        return DATASETS[text]
    if text.isdigit() and int(text) >= 2:
        return int(text)
    raise ConfigError(
        "`--dataset` must be cifar10, cifar100 or a number of classes >= 2. "
        f"Received: dataset={dataset!r}"
    )


def format_table(rows: dict, num_classes: int, num_heads: int, head_module: str = "conv") -> str:
    """A Table-3-style text table; the paper/reference value follows ours in parentheses (for
    the paper's head module only)."""
    refs = {name: reference(name, num_classes, num_heads) if head_module == "conv" else {}
            for name in rows}
    source = {10: "SilaNet Table 3", 100: "reference counts (paper-architectures.md)"}
    heads = [f"head_{k}" for k in range(2, num_heads + 1)]
    header = ["model", "base MiB", "base MMACs", "train MiB"] + [
        c for h in heads for c in (f"{h} MiB", "CR %", f"{h} MMACs")]
    lines, notes = [], []
    for name, row in rows.items():
        ref = refs[name]
        cells = [name, _cell(row["base_mib"], ref.get("base_mib")), _mmacs(row["base_macs"]),
                 _cell(row["train_mib"], ref.get("train_mib"))]
        for h in heads:
            entry = row["heads"][h]
            cells += [_cell(entry["mib"], ref.get(f"{h}_mib")),
                      _cell(entry["cr_percent"], ref.get(f"{h}_cr"), tolerance=0.1),
                      _mmacs(entry["macs"])]
        lines.append(cells)
        for (model, key), why in KNOWN_DIFFERENCES.items():
            if model == name and key in ref and num_classes == 10:
                notes.append(f"* {why}")
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    module = "" if head_module == "conv" else f", head module {head_module}"
    out = [f"Trainable parameters, N={num_classes}, M={num_heads} heads{module} (MiB = "
           "params·4/2^20; MMACs = millions of multiply-accumulates per image at the input size "
           "used)"]
    if any(refs.values()):
        out.append(f"(in parentheses: {source.get(num_classes, 'reference')}; "
                   "'*' marks a difference beyond rounding)")
    out += [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)]
    return "\n".join(out + notes)


def _mmacs(macs: int) -> str:
    return f"{macs / 1e6:.2f}"


def _cell(ours: float, ref: float | None, tolerance: float = 0.011) -> str:
    # The paper computes CR from MB values rounded to 0.01: allow 0.1 points there.
    if ref is None:
        return f"{ours:.2f}"
    mark = "*" if abs(ours - ref) > tolerance else ""
    return f"{ours:.2f} ({ref:.2f}){mark}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sila-params",
        description="Parameter sizes (MiB of float32 trainable weights) of the SiLa model zoo: "
                    "base model, SiLa training model, and every extracted head with its "
                    "compression ratio, as in SilaNet Table 3.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", default="cifar10",
                   help="cifar10, cifar100, or the number of classes N")
    p.add_argument("--heads", type=int, default=3, help="M heads (1 = base model only)")
    p.add_argument("--models", default=None,
                   help="comma-separated backbone names (default: every registered one)")
    p.add_argument("--model", dest="models", default=None,
                   help="alias of --models (e.g. --model keras:MobileNetV2 --image-size 224)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default 32; 224 for a phone keras: model)")
    from sila_keras.core.head_modules import list_head_modules

    p.add_argument("--head-module", default="conv", metavar="{" + ",".join(list_head_modules()) + "}",
                   help="the module of heads 2..M (sila-train --head-module; SilaNet's conv by "
                        "default, whose sizes the paper's columns are)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object keyed by model name instead of a table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns 0, or 2 on bad input (one line on stderr; :mod:`sila_keras.utils.cli`)."""
    return run_command(Command("sila-params", build_parser, _main), argv)


def _main(args: argparse.Namespace) -> int:
    rows = collect(args.dataset, args.heads, args.models, args.image_size, args.head_module)
    n = num_classes_of(args.dataset)
    paper = args.head_module == "conv"  # the paper's sizes are those of its module
    if args.json:
        out = {}
        for name, row in rows.items():
            ref = reference(name, n, args.heads) if paper else {}
            out[name] = {**row, "paper": ref} if ref else row
        print(json.dumps(out, indent=2))
    else:
        print(format_table(rows, n, args.heads, args.head_module))
    return 0


def collect(dataset: str, num_heads: int, models: str | None = None,
            image_size: int | None = None, head_module: str = "conv") -> dict:
    """``param_table`` for each named (or every registered) model; inputs checked first."""
    from sila_keras.core.head_modules import get_head_module

    n = num_classes_of(dataset)
    if num_heads < 1:
        raise ConfigError(f"`--heads` must be >= 1 (1 = the base model). Received: heads={num_heads}")
    get_head_module(head_module)  # an unknown name fails before any model is built
    from tqdm import tqdm

    from sila_keras.models import get_backbone, list_backbones

    names = list_backbones() if not models else [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"`--models` names no model. Received: models={models!r}")
    for name in names:
        get_backbone(name)  # unknown names fail before any model is built
    rows, skipped = {}, []
    for name in tqdm(names, desc="building", unit="model", file=sys.stderr, disable=None, leave=False):
        try:
            rows[name] = param_table(name, n, num_heads, image_size, head_module)
        except ValueError as e:
            if models or "can place at most" not in str(e):
                raise  # a model the user named must fit
            skipped.append(name)
    if skipped:
        print(f"sila-params: note: skipped {', '.join(skipped)} (fewer than {num_heads - 1} "
              "attach points; name them with --models to see each maximum)", file=sys.stderr)
    if not rows:
        raise ConfigError(f"No registered model can place {num_heads} heads. Received: heads={num_heads}")
    return rows
