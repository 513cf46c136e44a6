"""Export one head of a SiLa model to Keras, SavedModel, TFLite (fp32/fp16/dynamic/int8) and ONNX.

SilaNet's compression result (Gan et al.) is a smaller head-k model; this
package turns it into deployable artifacts and proves that each computes what
the Keras head computes, in its own runtime (TensorFlow, LiteRT, onnxruntime).

Public API::

    from export import ExportOptions, export_head, export_heads, load_source

    src = load_source("runs/cifar10-resnet20-…")           # run dir or .keras file
    options = ExportOptions(formats="savedmodel,tflite,onnx", quantize="none,int8")
    manifest = export_head(src.model, 2, "out/head_2", options=options,
                           calibration=images_uint8)
    assert manifest["ok"], manifest["failed"]

CLI: ``python -m export SOURCE --head K|all …`` (see :mod:`export.cli`, ``docs/export.md``).
"""

import importlib

# Name → module; imported on first use so ``sila-export --help`` does not load TensorFlow.
_EXPORTS = {
    **dict.fromkeys(("ARTIFACTS", "FORMATS", "QUANTIZATIONS", "ArtifactSpec"), "export.artifacts"),
    **dict.fromkeys(("INSTALL_HINT", "MissingDependencyError"), "export.deps"),
    **dict.fromkeys(("ExportFailed", "export_head", "export_heads"), "export.exporter"),
    "DEFAULT_TOLERANCES": "export.parity",
    "ExportOptions": "export.options",
    **dict.fromkeys(("ExportSource", "load_source"), "export.source"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute '{name}'")
