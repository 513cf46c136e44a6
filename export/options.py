"""How a head is exported: the settings of :func:`export.export_head`, checked once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from export import artifacts as art
from export import deps, parity
from sila_keras.utils.errors import ConfigError

DEFAULT_QUANTIZE = ("none",)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Which artifacts to write, how to convert them and how to check them.

    Validated and normalized on construction (cheap: build it before loading anything), so
    every step of an export reads settings that are already known to be good.

    Attributes:
        formats: subset of ``keras, savedmodel, tflite, onnx`` (list or comma string).
        quantize: TFLite variants, subset of ``none, float16, dynamic, int8``.
        opset: ONNX opset (9–18).
        tolerances: overrides of :data:`export.parity.DEFAULT_TOLERANCES` (afterwards: the
            full table).
        tflite_outputs: outputs of the TFLite files, from ``logits, probabilities``
            (default: ``probabilities`` only, the one output phone classifiers read).
        int8_io: input/output type of the full-integer model: ``uint8`` (default: raw
            pixels, scale 1, zero point 0, what MediaPipe takes), ``int8`` or ``float32``.
        allow_flex: accept TFLite files that need Flex (TF) ops (they do not run on stock
            mobile LiteRT); by default such a model fails naming the ops and layers.
        metadata: write the TFLite metadata (:mod:`export.metadata`): RGB image input,
            normalization, labels, score semantics. Needs an RGB input.
        latency_runs: timed batch-1 calls per artifact (median reported).
        parity_samples: at most this many parity images (eval images are all used).

    Raises:
        ValueError: unknown format/quantization, quantization without TFLite, bad opset or
            tolerance, unknown ``--tflite-outputs`` or ``--int8-io``.
        export.deps.MissingDependencyError: a package the formats need is not installed.

    Example:
        >>> ExportOptions(formats="keras", opset=15).formats
        ('keras',)
    """

    formats: str | Sequence[str] = art.FORMATS
    quantize: str | Sequence[str] = DEFAULT_QUANTIZE
    opset: int = 17
    tolerances: Mapping[str, float] | None = None
    tflite_outputs: str | Sequence[str] = art.DEFAULT_TFLITE_OUTPUTS
    int8_io: str = "uint8"
    allow_flex: bool = False
    metadata: bool = True
    latency_runs: int = 30
    parity_samples: int = 200

    def __post_init__(self):
        def normalize(**values):
            for name, value in values.items():
                object.__setattr__(self, name, value)

        normalize(tflite_outputs=art.parse_outputs(self.tflite_outputs))
        if self.int8_io not in art.INT8_IO:
            raise ConfigError(f"Unknown --int8-io value {self.int8_io!r}. Available: "
                              f"{', '.join(art.INT8_IO)} (uint8: raw pixels, what MediaPipe and "
                              f"NNAPI-style accelerators take). Received: --int8-io {self.int8_io}")
        normalize(formats=art.parse_choices(self.formats, art.FORMATS, "--formats"),
                  quantize=art.parse_choices(self.quantize, art.QUANTIZATIONS, "--quantize"))
        if self.quantize != DEFAULT_QUANTIZE and "tflite" not in self.formats:
            raise ConfigError(f"--quantize applies to TFLite artifacts: add tflite to --formats. "
                              f"Received: formats={','.join(self.formats)}, "
                              f"quantize={','.join(self.quantize)}")
        opset = self.opset
        if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
                or not art.MIN_OPSET <= opset <= art.MAX_OPSET:
            raise ConfigError(f"`--opset` must be an integer in {art.MIN_OPSET}..{art.MAX_OPSET} "
                              f"(tf2onnx 1.17 supports opsets up to 18). Received: opset={opset}")
        normalize(opset=int(opset), tolerances=parity.resolve_tolerances(self.tolerances),
                  allow_flex=bool(self.allow_flex), metadata=bool(self.metadata))
        deps.require(sorted({f for f in self.formats if f in deps.REQUIREMENTS}))
        if self.writes_metadata:
            deps.require(["tflite_metadata"])

    @property
    def plan(self) -> list[art.ArtifactSpec]:
        """The artifacts to write, in order (:func:`export.artifacts.plan`)."""
        return art.plan(self.formats, self.quantize)

    @property
    def needs_calibration(self) -> bool:
        """Whether an int8 TFLite file is planned (it needs calibration images)."""
        return any(spec.quantization == "int8" for spec in self.plan)

    @property
    def writes_metadata(self) -> bool:
        """Whether TFLite files get metadata (which needs an RGB input)."""
        return self.metadata and "tflite" in self.formats
