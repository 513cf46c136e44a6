"""``python -m export SOURCE --head K|all [options]`` (also ``sila-export``).

Exit status (:mod:`sila_keras.utils.cli`): 0 every artifact written and verified; 3 an artifact
failed its conversion or parity check (it is not left in ``--out``; ``manifest.json`` says
why); 2 bad input (one ``sila-export: error: …`` line on stderr); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sila_keras.utils.cli import Command, HelpFormatter, run_command
from sila_keras.utils.errors import ConfigError, RunFailed, SilaError

PROG = "sila-export"


class _Parser(argparse.ArgumentParser):
    """Refuses a command line that names nothing to export while parsing (exit 2, before
    TensorFlow is imported): ``--head`` is optional only because ``--cascade`` replaces it."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        if getattr(ns, "head", None) is None and not getattr(ns, "cascade", False):
            self.error("Say what to export: --head K|all, or --cascade. Received: no --head")
        return ns, rest


def build_parser() -> argparse.ArgumentParser:
    from export.artifacts import FORMATS, QUANTIZATIONS
    from export.parity import DEFAULT_TOLERANCES

    p = _Parser(
        prog=PROG,
        description="Export one head of a trained SiLa model (SilaNet, Gan et al.) to Keras, "
                    "SavedModel, TFLite (float32/float16/dynamic-range/int8) and ONNX. Each artifact "
                    "is run in its own runtime and checked against the Keras head before it is kept.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("source", help="a run directory written by sila-train (model.keras, config.json, "
                                  "labels.txt, summary.json) or a .keras file")
    p.add_argument("--head", default=None,
                   help="head to export: K in 1..M (1 = the base model, 2 = the deepest auxiliary "
                        "head) or 'all' (one subfolder per head + heads.md/heads.csv); required "
                        "unless --cascade")
    p.add_argument("--cascade", action="store_true",
                   help="export the early-exit cascade chosen by `python -m sila_keras.cascade "
                        "RUN`: one TFLite model per segment + cascade_manifest.json (default "
                        "folder <run>/export/cascade), checked in LiteRT against the Keras "
                        "cascade on the run's test images and timed (docs/export.md); with "
                        "--quantize int8: int8 segments (<run>/export/cascade_int8), each "
                        "through the int8 search and gate, the chain judged by the gate")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}")
    p.add_argument("--quantize", default="none",
                   help=f"TFLite variants, comma-separated: {', '.join(QUANTIZATIONS)} "
                        "(none = float32 model.tflite); --cascade takes one of none, int8")
    g = p.add_argument_group("data (DATASET = folder:PATH or a tfds name, as for sila-train)")
    g.add_argument("--calibration", metavar="DATASET", default=None,
                   help="int8 calibration images (its train split); default: the run's training data")
    g.add_argument("--calibration-samples", type=int, default=200,
                   help="calibration images (class-balanced)")
    g.add_argument("--eval", metavar="DATASET", default=None,
                   help="measure each format's accuracy on this dataset's test split (also used as "
                        "the parity images)")
    g.add_argument("--eval-samples", type=int, default=1000, help="eval images (class-balanced)")
    g.add_argument("--parity-samples", type=int, default=200,
                   help="parity images without --eval (test split of --calibration or of the run's data)")
    g.add_argument("--data-dir", default=None, help="tfds data_dir (when omitted: the run's)")
    g = p.add_argument_group("conversion and checks")
    g.add_argument("--opset", type=int, default=17, help="ONNX opset (9..18)")
    g.add_argument("--tolerance", default="", metavar="KIND=VALUE,…",
                   help="override parity thresholds; defaults: "
                        + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_TOLERANCES.items())
                        + " (float: max|Δlogit| / max(1, max|logit|); dynamic/int8: min top-1 agreement)")
    g.add_argument("--latency-runs", type=int, default=30, help="timed batch-1 calls per artifact")
    g.add_argument("--alone", metavar="DIR", default=None,
                   help="--head all: a benchmarks/head_vs_alone.py folder whose alone-trained "
                        "accuracies fill the trade-off table's 'alone' column (default: one "
                        "found among the run directory's parents; used only when its backbone "
                        "and recipe match the run's config.json)")
    _add_phone_flags(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help="output folder (default <run>/export/head_K, or <run>/export for --head all)")
    g.add_argument("--quiet", action="store_true", help="print only the summary table")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


INTERRUPTED_HINT = "Nothing half-written is left in the output folder."


def _add_phone_flags(p: argparse.ArgumentParser) -> None:
    """Flags for TFLite files that phone runtimes' own clients (MediaPipe) take as-is."""
    g = p.add_argument_group("phones (TFLite metadata, outputs, full-integer I/O; docs/export.md)")
    g.add_argument("--tflite-outputs", default="probabilities", metavar="OUT[,OUT]",
                   help="outputs of the TFLite files: probabilities (one output, what MediaPipe's "
                        "ImageClassifier reads), logits, or logits,probabilities")
    g.add_argument("--int8-io", default="uint8",
                   help="input/output type of model_int8.tflite: uint8 (raw pixels, scale 1, zero "
                        "point 0: phones, MediaPipe, NNAPI), int8, or float32")
    g.add_argument("--allow-flex", action="store_true",
                   help="accept TFLite files that need Flex (TF) ops; they do not run on stock "
                        "mobile LiteRT, MediaPipe or the GPU/NNAPI delegates")
    g.add_argument("--no-metadata", action="store_true",
                   help="write TFLite files without metadata (MediaPipe then refuses them)")
    g.add_argument("--labels", metavar="FILE", default=None,
                   help="class names, one per line (default: the run's labels.txt)")
    g.add_argument("--author", default=None, help="metadata author (default: sila_keras VERSION)")
    g.add_argument("--model-version", default=None,
                   help="metadata version (default: RUN/head_K)")



def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns the exit status (0 ok, 2 bad input, 3 an artifact failed,
    130 interrupted)."""
    return run_command(Command(PROG, build_parser, _main, INTERRUPTED_HINT), argv)


def _main(args: argparse.Namespace) -> None:
    result = run(args)
    if not result["ok"]:
        raise RunFailed(result["message"])


def run(args: argparse.Namespace) -> dict:
    """Validate everything, load the data, export; returns ``{"ok", "message", "result"}``."""
    from export import exporter, parity
    from export.options import ExportOptions
    from export.source import load_source

    options = ExportOptions(formats=args.formats, quantize=args.quantize, opset=args.opset,
                            tolerances=parity.parse_tolerances(args.tolerance),
                            tflite_outputs=args.tflite_outputs, int8_io=args.int8_io,
                            allow_flex=args.allow_flex, metadata=not args.no_metadata,
                            latency_runs=args.latency_runs, parity_samples=args.parity_samples)
    for flag in ("calibration_samples", "eval_samples", "parity_samples", "latency_runs"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"`--{flag.replace('_', '-')}` must be >= 1. Received: {getattr(args, flag)}")
    if args.cascade:
        return _export_cascade(args, options)
    if args.head is None:
        raise ConfigError("Say what to export: --head K|all, or --cascade. Received: no --head")
    heads = _parse_head(args.head)
    src = load_source(args.source)
    class_names = _labels(args.labels, src) if args.labels else src.class_names
    for k in heads or []:
        exporter.check_head(src.model, k)
    alone_ref = _alone_reference(args, src) if heads is None else {}  # before any write
    if options.writes_metadata:
        from export.metadata import check_channels

        check_channels(src.input_shape)  # before the output folder is created
    out = args.out or (src.default_out if heads is None else src.default_out / f"head_{heads[0]}")
    created = not Path(out).expanduser().exists()
    exporter.prepare_out_dir(out)
    try:
        return _export(args, src, options, heads, out, class_names, alone_ref)
    except SilaError:  # bad data found after the folder was made: leave nothing behind
        if created and Path(out).expanduser().is_dir() and not any(Path(out).expanduser().iterdir()):
            Path(out).expanduser().rmdir()
        raise


def _export_cascade(args, options) -> dict:
    """``--cascade``: the segments, their manifest, LiteRT parity (float32) or the int8 gate
    (``--quantize int8``), and latency."""
    from export.cascade import MANIFEST, QUANTIZATIONS, run_export
    from export.source import load_source

    if args.head is not None:
        raise ConfigError("--cascade exports every head as one cascade; drop --head. "
                          f"Received: --head {args.head} --cascade")
    if len(options.quantize) != 1 or options.quantize[0] not in QUANTIZATIONS:
        raise ConfigError("--cascade writes float32 segments (--quantize none) or int8 segments "
                          f"(--quantize int8), one kind per export. Supported: "
                          f"{', '.join(QUANTIZATIONS)}. Received: --quantize {args.quantize}")
    int8 = options.quantize == ("int8",)
    src = load_source(args.source)
    say = None if args.quiet else (lambda text: print(text, flush=True))
    manifest = run_export(src, args, tolerances=options.tolerances, say=say,
                          load_calibration=(lambda: _cascade_calibration(args, src)) if int8
                          else None)
    latency = ", ".join(f"{v:.3g}" for v in manifest["segment_latency_ms"])
    if int8:
        g = manifest["gate"]
        check = (f"int8 chain vs the float Keras cascade on {g['images']} test images: agreement "
                 f"{g['agreement']:.1%}, Top-1 {100 * g['int8_accuracy']:.1f}% vs "
                 f"{100 * g['float_accuracy']:.1f}% (drop {g['accuracy_drop']:.1f} points, "
                 f"int8-drop {g['tolerances']['int8-drop']:g}): passes the int8 gate")
    else:
        check = f"LiteRT = Keras on {manifest['parity']['images']} test images"
    print(f"Cascade {' -> '.join(manifest['heads'])}: {len(manifest['segments'])} "
          f"{'int8' if int8 else 'float32'} segments, {check}; segment latency (ms): {latency}; "
          f"{MANIFEST} written")
    return {"ok": True, "message": "cascade exported", "result": manifest}


def _cascade_calibration(args, src):
    """The int8 calibration images exactly as ``--head K --quantize int8`` takes them
    (:func:`load_data`: ``--calibration`` or the run's training data, class-balanced). Its
    held-out images are not used: the cascade's gate judges on the run's test images, as the
    float cascade's parity check samples them (``--parity-samples``)."""
    data = load_data(argparse.Namespace(**{**vars(args), "eval": None, "eval_samples": 1}),
                     src, needs_calibration=True)
    return data["calibration"]


def _export(args, src, options, heads, out, class_names, alone_ref) -> dict:
    from export import exporter

    for note in src.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    data = load_data(args, src, needs_calibration=options.needs_calibration)
    common = dict(options=options, class_names=class_names, source=str(src.run_dir or src.model_path),
                  model_info={"author": args.author, "version": args.model_version},
                  verbose=0 if args.quiet else 1, **data)
    if heads is None:
        result = exporter.export_heads(src.model, out, **alone_ref, **common)
        if args.quiet:
            print(Path(out, "heads.md").read_text(), end="")
        failed = [f"head_{mf['head']}: {', '.join(mf['failed'])}" for mf in result["manifests"]
                  if not mf["ok"]]
    else:
        result = exporter.export_head(src.model, heads[0], out, **common)
        if args.quiet:
            from export.report import summary_table

            print(summary_table(result))
        failed = [f"{k} ({v['reason']})" for k, v in result["failed"].items()]
    ok = not failed
    message = "all artifacts verified" if ok else (
        f"{len(failed)} failed, not written: {'; '.join(failed)}. Details in manifest.json; "
        "relax a threshold with --tolerance KIND=VALUE only if the drift is acceptable.")
    return {"ok": ok, "message": message, "result": result}


def _alone_reference(args, src) -> dict:
    """The alone-trained accuracies for the trade-off table, when a head-vs-alone
    benchmark for the run's backbone and recipe is found (:func:`sila_keras.reports.study.find_study`)."""
    from sila_keras.reports.study import alone_accuracy, find_study, run_head_module

    study, note = find_study(src.run_dir, getattr(args, "alone", None))
    if study is None:
        if getattr(args, "alone", None) or "another backbone" in note:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        return {}
    # the sub-networks alone of the run's own head module (the same sizes)
    return {"alone": alone_accuracy(study, module=run_head_module(src.run_dir)), "alone_note": note}


def _labels(path: str, src) -> list[str]:
    """``--labels FILE``: one class name per line, exactly one per class of the model.

    Raises:
        sila_keras.utils.errors.ConfigError: unreadable, or a count different from the model's.
    """
    from sila_keras.utils.errors import ConfigError

    try:
        names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as e:
        raise ConfigError(f"Cannot read the labels file ({e.strerror or type(e).__name__}). "
                          f"Pass a text file with one class name per line. Received: --labels {path}"
                          ) from None
    if len(names) != src.num_classes:
        raise ConfigError(
            f"The labels file must hold one class name per line for each of the model's "
            f"{src.num_classes} classes, in label order. Received: --labels {path} with "
            f"{len(names)} names")
    return names


def _parse_head(value: str) -> list[int] | None:
    """``"all"`` → None; ``"2"`` → [2]."""
    if value.strip().lower() == "all":
        return None
    try:
        return [int(value)]
    except ValueError:
        raise ConfigError(f"`--head` must be a head number (1 = base model) or 'all'. "
                         f"Received: --head {value}") from None


def load_data(args, src, needs_calibration: bool) -> dict:
    """Calibration, eval and parity images for :func:`export.export_head`.

    Raises:
        ValueError: a DATASET that cannot be loaded, images of the wrong size or class count,
            or int8 requested with no calibration data available.
    """
    from export.source import load_images

    cfg = src.config
    data_dir = args.data_dir or cfg.get("data_dir")
    out: dict = {"data_notes": {}}
    # Images at the model's input size, resized as the run was (photos of mixed sizes).
    sized = {"image_size": tuple(src.input_shape[:2]), "resize": cfg.get("resize")}
    if args.eval:
        ev = load_images(args.eval, train=1, test=args.eval_samples, data_dir=data_dir, **sized)
        _check_classes(ev, src, "--eval")
        out["eval_data"] = (ev.test_x, ev.test_y)
        out["data_notes"]["eval"] = f"{args.eval} (test split, {len(ev.test_y)} images)"
    # int8 is judged on labelled held-out images: without --eval, the test split of the
    # calibration data or of the run's own data (never the calibration images themselves)
    held_out = needs_calibration and not args.eval
    test = args.eval_samples if held_out else args.parity_samples
    if args.calibration:
        cal = load_images(args.calibration, train=args.calibration_samples, test=test,
                          data_dir=data_dir, **sized)
        _check_classes(cal, src, "--calibration")
        out["calibration"] = cal.train_x
        out["data_notes"]["calibration"] = f"{args.calibration} (train split, {len(cal.train_x)} images)"
        out["sample_images"], out["sample_note"] = cal.test_x, f"{args.calibration} test split"
        if held_out:
            _held_out(out, cal, f"{args.calibration} (test split")
        return out
    dataset = cfg.get("dataset")
    if not dataset or (args.eval and not needs_calibration):
        if needs_calibration:
            raise ConfigError(
                "int8 quantization needs calibration images and SOURCE has no run config naming its "
                "training data. Received: --quantize int8 without --calibration. Pass --calibration "
                "DATASET (folder:PATH or a tfds name) or drop int8 from --quantize.")
        return out
    try:
        run_data = load_images(dataset, train=args.calibration_samples if needs_calibration else 1,
                               test=test, data_dir=data_dir,
                               download=cfg.get("download", "auto"), seed=int(cfg.get("seed", 0)),
                               val_split=cfg.get("val_split"), train_split=cfg.get("train_split"),
                               test_split=cfg.get("test_split"), **sized)
    except ValueError as e:
        if needs_calibration:
            raise ConfigError(
                f"int8 quantization needs calibration images, and the run's training data "
                f"({dataset}) could not be loaded: {e} Pass --calibration DATASET.") from None
        print(f"{PROG}: note: the run's data ({dataset}) could not be loaded ({e}); parity is checked "
              "on random images.", file=sys.stderr)
        return out
    if needs_calibration:
        out["calibration"] = run_data.train_x
        out["data_notes"]["calibration"] = f"{dataset} (the run's train split, {len(run_data.train_x)} images)"
    out["sample_images"], out["sample_note"] = run_data.test_x, f"{dataset} test split (the run's data)"
    if held_out:
        _held_out(out, run_data, f"{dataset} (the run's test split")
    return out


def _held_out(out: dict, data, note: str) -> None:
    """The labelled held-out images the int8 gate judges (and every artifact's accuracy).

    Raises:
        sila_keras.utils.errors.ConfigError: the split has no images.
    """
    if not len(getattr(data, "test_y", ())):
        raise ConfigError(
            "The int8 gate judges accuracy on labelled held-out images, and the data has no test "
            f"split. Received: {note.split(' (')[0]} with 0 test images. Pass --eval DATASET "
            "(labelled images the model was not trained on) or drop int8 from --quantize.")
    out["eval_data"] = (data.test_x, data.test_y)
    out["data_notes"]["eval"] = f"{note}, {len(data.test_y)} held-out images)"
    out.pop("sample_images", None)
    out.pop("sample_note", None)


def _check_classes(data, src, flag: str) -> None:
    if data.num_classes != src.num_classes:
        raise ConfigError(
            f"{flag} data has {data.num_classes} classes but the model has {src.num_classes}. "
            f"Pass a dataset with the model's classes ({', '.join(src.class_names[:10])}…). "
            f"Received: {data.source}")
    if list(data.class_names) != list(src.class_names):
        print(f"{PROG}: note: {flag} class names differ from the model's; labels are matched by index.",
              file=sys.stderr)
