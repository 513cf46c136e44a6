"""Export one head of a SiLa model to Keras, SavedModel, TFLite (fp32/fp16/dynamic/int8) and ONNX.

SilaNet's compression result (Gan et al.) is a smaller head-k model; this
package turns it into deployable artifacts and proves that each computes what
the Keras head computes, in its own runtime (TensorFlow, LiteRT, onnxruntime).

Public API::

    from export import export_head, export_heads, load_source

    src = load_source("runs/cifar10-resnet20-…")           # run dir or .keras file
    manifest = export_head(src.model, 2, "out/head_2", formats="savedmodel,tflite,onnx",
                           quantize="none,int8", calibration=images_uint8)
    assert manifest["ok"], manifest["failed"]

CLI: ``python -m export SOURCE --head K|all …`` (see :mod:`export.cli`, ``docs/export.md``).
"""

from export.artifacts import ARTIFACTS, FORMATS, QUANTIZATIONS, ArtifactSpec
from export.deps import INSTALL_HINT, MissingDependencyError
from export.exporter import ExportFailed, export_head, export_heads
from export.parity import DEFAULT_TOLERANCES
from export.source import ExportSource, load_source

__all__ = [
    "ARTIFACTS", "DEFAULT_TOLERANCES", "FORMATS", "INSTALL_HINT", "QUANTIZATIONS", "ArtifactSpec",
    "ExportFailed", "ExportSource", "MissingDependencyError", "export_head", "export_heads",
    "load_source",
]
