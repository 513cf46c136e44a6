"""TFLite model metadata for the phone runtimes' own clients (MediaPipe Tasks ``ImageClassifier``).

A phone app does not call a bare interpreter: MediaPipe's ``ImageClassifier`` (the
successor of the TFLite Task Library, same API on Android, iOS and Python) reads the
model's *metadata* to know how to turn a camera frame into the input tensor and how to
name the scores. The metadata is the standard ``TFLITE_METADATA`` flatbuffer
(``ModelMetadata`` → one ``SubGraphMetadata`` → one ``TensorMetadata`` per input and
output tensor), stored as a buffer of the model and named in its ``metadata`` list; files
it refers to (the labels) are appended to the ``.tflite`` as a zip archive (the model
stays a valid flatbuffer, and readers find the zip from its end).

What :func:`populate` writes for an exported head:

* model name, description, version, author, license;
* input ``image``: ``ImageProperties`` RGB with the default size, ``NormalizationOptions``
  mean 0 / std 1 (our models take raw 0–255 pixels and standardize inside, so the client
  must feed pixels unchanged) and ``Stats`` min 0 / max 255;
* each output: its score semantics (``probabilities``: softmax in [0, 1] summing to 1;
  ``logits``: unnormalized scores), a ``ValueRange``-free ``FeatureProperties`` content,
  ``Stats`` [0, 1] for probabilities, and the labels as an associated
  ``TENSOR_AXIS_LABELS`` file (one name per line, in class order).

The flatbuffer classes come from MediaPipe's wheel
(``mediapipe.tasks.metadata.metadata_schema_py_generated`` / ``schema_py_generated``, pure
Python on top of ``flatbuffers``). MediaPipe's own writer
(``mediapipe.tasks.python.metadata``) does not import in 1.2.2 (a missing compiled module),
and ``tflite-support`` cannot be installed beside TF 2.21; see
``shared/reference/ecosystem-notes.md`` ("Phones").

Example:
    >>> meta = ClassifierMetadata(name="cifar10 head 2", description="…", version="1",
    ...                           author="me", labels=("cat", "dog"))
    >>> data = populate(Path("model.tflite").read_bytes(), meta)  # doctest: +SKIP
    >>> read(data)["labels"]  # doctest: +SKIP
    ['cat', 'dog']
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sila_keras.utils.errors import ConfigError

METADATA_FIELD = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
# Every field written here exists since metadata schema 1.0.0 (AssociatedFile.version, 1.4.1,
# is left unset), so any metadata parser can read it.
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
BUFFER_ALIGNMENT = 16
# Outputs of an early-exit cascade segment that carry features to the next segment
# (export/cascade.py): described, with no labels.
FEATURES_PREFIX = "features_"
FEATURES_DESCRIPTION = ("intermediate features for the next segment of the early-exit cascade "
                        "(feed them, by name, to the next segment's input of the same name)")
SCORE_KINDS = {
    "probabilities": "class probabilities (softmax of the logits): each score in [0, 1], "
                     "the scores of an image sum to 1",
    "logits": "class logits (unnormalized scores, not probabilities); softmax gives the "
              "probabilities",
}
INSTALL_HINT = "pip install 'mediapipe>=1.2.2,<2'"


@dataclass(frozen=True)
class ClassifierMetadata:
    """What the metadata of an exported image classifier says.

    Attributes:
        name: model name (MediaPipe shows it as the model's name).
        description: what the model is and does.
        version: the model's version string.
        author: who made it.
        labels: one class name per output score, in class order.
        license: license text or name ("" = none given).
        mean: ``NormalizationOptions`` mean per channel (or one for all).
        std: ``NormalizationOptions`` std per channel (or one for all).
        pixel_min: input ``Stats`` min.
        pixel_max: input ``Stats`` max.
        input_description: text for the input tensor.
    """

    name: str
    description: str
    version: str
    author: str
    labels: tuple[str, ...]
    license: str = ""
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    pixel_min: float = 0.0
    pixel_max: float = 255.0
    input_description: str = ("RGB image, raw pixel values 0–255 (no scaling by the client: the "
                              "model standardizes each channel inside)")
    extra: dict = field(default_factory=dict, compare=False)


def _schema():
    """``(metadata_fb, tflite_fb, flatbuffers)``; a clear error when MediaPipe is missing."""
    try:
        import flatbuffers
        from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
        from mediapipe.tasks.metadata import schema_py_generated as tflite_fb
    except ImportError as e:
        from export.deps import MissingDependencyError

        raise MissingDependencyError(
            f"Writing TFLite metadata needs MediaPipe's schema classes ({e.name or e}), which are "
            f"not installed. Install them with: {INSTALL_HINT} (or pass --no-metadata)") from None
    return meta_fb, tflite_fb, flatbuffers


# --------------------------------------------------------------------------- model inspection


def model_io(model_bytes: bytes) -> dict:
    """Inputs and outputs of the main subgraph of a ``.tflite`` flatbuffer.

    Returns:
        ``{"inputs": [...], "outputs": [...]}``, each ``{"name", "tensor", "shape", "dtype"}``
        in subgraph order; ``name`` is the signature name (``image``, ``probabilities``)
        when the model has a signature, else the tensor name.
    """
    _, tflite_fb, _ = _schema()
    model = tflite_fb.Model.GetRootAs(model_bytes, 0)
    graph = model.Subgraphs(0)
    types = {v: k for k, v in vars(tflite_fb.TensorType).items() if not k.startswith("_")}
    sig_names: dict[tuple[str, int], str] = {}
    if model.SignatureDefsLength():
        sig = model.SignatureDefs(0)
        for i in range(sig.InputsLength()):
            sig_names[("in", sig.Inputs(i).TensorIndex())] = sig.Inputs(i).Name().decode()
        for i in range(sig.OutputsLength()):
            sig_names[("out", sig.Outputs(i).TensorIndex())] = sig.Outputs(i).Name().decode()

    def describe(kind, index):
        t = graph.Tensors(index)
        shape = [int(d) for d in (t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength()
                                  else t.ShapeAsNumpy())]
        return {"name": sig_names.get((kind, index), t.Name().decode()), "tensor": int(index),
                "shape": shape, "dtype": types.get(t.Type(), str(t.Type())).lower()}

    return {"inputs": [describe("in", graph.Inputs(i)) for i in range(graph.InputsLength())],
            "outputs": [describe("out", graph.Outputs(i)) for i in range(graph.OutputsLength())]}


def check_fits(io_info: dict, meta: ClassifierMetadata) -> None:
    """Check the classifier metadata describes this model.

    Raises:
        ConfigError: not one image input of shape (batch, H, W, 3), an output that is not
            (batch, N) with N = the number of labels, or an unknown output name.
    """
    inputs, outputs = io_info["inputs"], io_info["outputs"]
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][-1] != 3:
        shapes = [i["shape"] for i in inputs]
        raise ConfigError(
            "Image-classifier metadata needs one RGB image input (batch, H, W, 3): MediaPipe's "
            "ImageClassifier feeds RGB frames. Export an RGB model, or pass --no-metadata to "
            f"write TFLite files without metadata. Received: input shapes {shapes}")
    for out in outputs:
        if out["name"].startswith(FEATURES_PREFIX):
            continue
        if len(out["shape"]) != 2 or out["shape"][-1] != len(meta.labels):
            raise ConfigError(
                f"Output '{out['name']}' must be (batch, N) with one score per label "
                f"({len(meta.labels)} labels). Received: shape {out['shape']}")
        if out["name"] not in SCORE_KINDS:
            raise ConfigError(f"Unknown classifier output '{out['name']}'. Available: "
                              f"{', '.join(SCORE_KINDS)}. Received: outputs "
                              f"{[o['name'] for o in outputs]}")


def check_channels(input_shape: Sequence[int]) -> None:
    """Early check (before any graph is built) that the model input can carry the metadata.

    Raises:
        ConfigError: the input is not (H, W, 3).
    """
    if len(input_shape) != 3 or int(input_shape[-1]) != 3:
        raise ConfigError(
            "TFLite metadata for MediaPipe's ImageClassifier needs an RGB input (H, W, 3). "
            "Pass --no-metadata to write TFLite files without metadata (MediaPipe will then "
            f"refuse them). Received: input_shape={tuple(input_shape)}")


# --------------------------------------------------------------------------- writing


def build(meta: ClassifierMetadata, io_info: dict) -> bytes:
    """The ``ModelMetadata`` flatbuffer (file identifier ``M001``) for ``io_info``'s tensors."""
    meta_fb, _, flatbuffers = _schema()
    check_fits(io_info, meta)

    image = meta_fb.TensorMetadataT()
    image.name = io_info["inputs"][0]["name"]
    image.description = meta.input_description
    props = meta_fb.ImagePropertiesT()
    props.colorSpace = meta_fb.ColorSpaceType.RGB
    h, w = io_info["inputs"][0]["shape"][1:3]
    if h > 0 and w > 0:
        props.defaultSize = meta_fb.ImageSizeT()
        props.defaultSize.height, props.defaultSize.width = int(h), int(w)
    image.content = meta_fb.ContentT()
    image.content.contentPropertiesType = meta_fb.ContentProperties.ImageProperties
    image.content.contentProperties = props
    norm = meta_fb.NormalizationOptionsT()
    norm.mean, norm.std = [float(v) for v in meta.mean], [float(v) for v in meta.std]
    unit = meta_fb.ProcessUnitT()
    unit.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    image.processUnits = [unit]
    image.stats = meta_fb.StatsT()
    image.stats.min, image.stats.max = [float(meta.pixel_min)], [float(meta.pixel_max)]

    outputs = []
    for out in io_info["outputs"]:
        t = meta_fb.TensorMetadataT()
        t.name = out["name"]
        if out["name"].startswith(FEATURES_PREFIX):
            t.description = FEATURES_DESCRIPTION
            outputs.append(t)
            continue
        t.description = SCORE_KINDS[out["name"]]
        t.content = meta_fb.ContentT()
        t.content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
        t.content.contentProperties = meta_fb.FeaturePropertiesT()
        if out["name"] == "probabilities":
            t.stats = meta_fb.StatsT()
            t.stats.min, t.stats.max = [0.0], [1.0]
        labels = meta_fb.AssociatedFileT()
        labels.name = LABELS_FILE
        labels.description = "class names, one per line, in the order of the scores"
        labels.type = meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS
        t.associatedFiles = [labels]
        outputs.append(t)

    graph = meta_fb.SubGraphMetadataT()
    graph.name = "image_classifier"
    graph.description = meta.description
    graph.inputTensorMetadata = [image]
    graph.outputTensorMetadata = outputs
    model = meta_fb.ModelMetadataT()
    model.name, model.description, model.version = meta.name, meta.description, meta.version
    model.author = meta.author
    model.license = meta.license or None
    model.subgraphMetadata = [graph]
    model.minParserVersion = MIN_PARSER_VERSION
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), METADATA_IDENTIFIER)
    return bytes(b.Output())


def populate(model_bytes: bytes, meta: ClassifierMetadata) -> bytes:
    """``model_bytes`` with ``meta`` as its ``TFLITE_METADATA`` and the labels zipped on.

    Any earlier metadata and packed files are replaced.

    Raises:
        ConfigError: the metadata does not fit the model (see :func:`check_fits`).
    """
    _, tflite_fb, flatbuffers = _schema()
    flat = _strip_zip(model_bytes)
    io_info = model_io(flat)
    metadata = build(meta, io_info)

    model = tflite_fb.ModelT.InitFromObj(tflite_fb.Model.GetRootAs(flat, 0))
    buffer = tflite_fb.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers = model.buffers or []
    model.metadata = model.metadata or []
    entry = next((m for m in model.metadata if _text(m.name) == METADATA_FIELD), None)
    if entry is None:
        model.buffers.append(buffer)
        entry = tflite_fb.MetadataT()
        entry.name = METADATA_FIELD
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    else:
        model.buffers[entry.buffer] = buffer
    b = _aligned_builder(flatbuffers)(len(flat) + len(metadata) + 1024)
    b.Finish(model.Pack(b), TFLITE_IDENTIFIER)

    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:  # appended, uncompressed
        zf.writestr(LABELS_FILE, "\n".join(meta.labels) + "\n")
    return out.getvalue()


def _aligned_builder(flatbuffers):
    """A ``flatbuffers.Builder`` that puts byte vectors (the weight buffers) on 16-byte
    boundaries, as the TFLite converter does, so runtimes can map weights without a copy."""

    class AlignedBuilder(flatbuffers.Builder):
        def StartVector(self, elemSize, numElems, alignment):  # noqa: N802, N803 - flatbuffers API
            if elemSize == 1 and numElems >= 16:
                alignment = max(alignment, BUFFER_ALIGNMENT)
            return super().StartVector(elemSize, numElems, alignment)

    return AlignedBuilder


def write(path: Path, meta: ClassifierMetadata) -> None:
    """Populate the ``.tflite`` file at ``path`` in place (callers write into staging)."""
    path = Path(path)
    path.write_bytes(populate(path.read_bytes(), meta))


def _strip_zip(data: bytes) -> bytes:
    """The flatbuffer part of a model that may already carry a zip of associated files."""
    buf = io.BytesIO(data)
    if not zipfile.is_zipfile(buf):
        return data
    with zipfile.ZipFile(buf) as zf:
        start = min((i.header_offset for i in zf.infolist()), default=len(data))
    return data[:start]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v or "")


# --------------------------------------------------------------------------- reading


def read(model) -> dict | None:
    """The metadata of a ``.tflite`` (path or bytes) as plain data, or None when it has none.

    Returns:
        ``{"name", "description", "version", "author", "license", "min_parser_version",
        "input": {...}, "outputs": [...], "files": {name: text}, "labels": [...]}``; the
        input holds ``name``, ``description``, ``color_space``, ``default_size``,
        ``mean``, ``std``, ``stats``; each output ``name``, ``description``, ``stats``,
        ``associated_files`` (name, type, description).
    """
    meta_fb, tflite_fb, _ = _schema()
    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
    m = tflite_fb.Model.GetRootAs(data, 0)
    buf = None
    for i in range(m.MetadataLength()):
        if m.Metadata(i).Name().decode() == METADATA_FIELD:
            buf = m.Buffers(m.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    if buf is None:
        return None
    if not meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0):
        raise ConfigError("TFLITE_METADATA buffer without the M001 identifier")
    md = meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAs(buf, 0))
    graph = md.subgraphMetadata[0]
    color = {v: k for k, v in vars(meta_fb.ColorSpaceType).items() if not k.startswith("_")}
    ftype = {v: k for k, v in vars(meta_fb.AssociatedFileType).items() if not k.startswith("_")}

    def stats(t):
        return None if t.stats is None else {"min": _floats(t.stats.min), "max": _floats(t.stats.max)}

    def files(t):
        return [{"name": _text(f.name), "type": ftype.get(f.type, f.type),
                 "description": _text(f.description)} for f in (t.associatedFiles or [])]

    inputs = []
    for t in graph.inputTensorMetadata or []:
        props = t.content.contentProperties if t.content else None
        norm = next((u.options for u in (t.processUnits or [])
                     if u.optionsType == meta_fb.ProcessUnitOptions.NormalizationOptions), None)
        size = getattr(props, "defaultSize", None)
        inputs.append({
            "name": _text(t.name), "description": _text(t.description),
            "color_space": color.get(getattr(props, "colorSpace", 0), "UNKNOWN"),
            "default_size": None if size is None else [int(size.height), int(size.width)],
            "mean": None if norm is None else _floats(norm.mean),
            "std": None if norm is None else _floats(norm.std), "stats": stats(t)})
    outputs = [{"name": _text(t.name), "description": _text(t.description), "stats": stats(t),
                "associated_files": files(t)} for t in graph.outputTensorMetadata or []]
    packed = {}
    zbuf = io.BytesIO(data)
    if zipfile.is_zipfile(zbuf):
        with zipfile.ZipFile(zbuf) as zf:
            packed = {n: zf.read(n).decode("utf-8") for n in zf.namelist()}
    label_file = next((f["name"] for o in outputs for f in o["associated_files"]
                       if f["type"] == "TENSOR_AXIS_LABELS"), None)
    labels = packed.get(label_file, "").splitlines() if label_file else []
    return {"name": _text(md.name), "description": _text(md.description),
            "version": _text(md.version), "author": _text(md.author), "license": _text(md.license),
            "min_parser_version": _text(md.minParserVersion), "subgraph": _text(graph.name),
            "input": inputs[0] if len(inputs) == 1 else inputs, "outputs": outputs,
            "files": packed, "labels": labels}


def _floats(v) -> list[float] | None:
    return None if v is None else [float(x) for x in v]
