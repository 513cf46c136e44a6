"""Optional dependencies of the exporter, checked before any work starts.

TFLite artifacts are checked in LiteRT (``ai-edge-litert``) and get their metadata
from MediaPipe's schema classes (``mediapipe``, which also runs the ImageClassifier
check), ONNX artifacts are
written by ``tf2onnx`` and checked in ``onnxruntime``. They come with the
``export`` extra of the package.
"""

from __future__ import annotations

import importlib.util

from sila_keras.utils.errors import DependencyError

INSTALL_HINT = "pip install 'sila-keras[export]'"

# artifact family → modules it needs (import names).
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "tflite": ("ai_edge_litert",),
    "onnx": ("tf2onnx", "onnx", "onnxruntime"),
    # TFLite metadata (schema classes) and the ImageClassifier check: MediaPipe Tasks.
    "tflite_metadata": ("mediapipe", "flatbuffers"),
}


class MissingDependencyError(DependencyError):
    """An optional package needed for the requested formats is not installed (exit 2)."""


def missing_modules(family: str) -> list[str]:
    """The modules ``family`` needs that cannot be imported here."""
    missing = []
    for module in REQUIREMENTS.get(family, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def require(families) -> None:
    """Raise :class:`MissingDependencyError` naming the install command if anything is missing.

    Args:
        families: artifact families about to be written (``"tflite"``, ``"onnx"``, …).

    Raises:
        MissingDependencyError: with the exact ``pip install`` line.
    """
    for family in families:
        missing = missing_modules(family)
        if missing:
            raise MissingDependencyError(
                f"Exporting to {family} needs the optional package(s) {', '.join(missing)}, "
                f"which are not installed. Received: formats including {family!r}. "
                f"Install them with: {INSTALL_HINT}"
                + (" (or pass --no-metadata)" if family == "tflite_metadata" else "")
            )
