"""LiteRT latency of TFLite files, measured side by side in one process.

What a phone's CPU runs is decided by LiteRT's default CPU delegate (XNNPACK), not by the
data type alone: XNNPACK takes the ops it supports and the rest run on LiteRT's reference
kernels between the delegated pieces. A full-integer graph that XNNPACK splits into many
pieces can be several times slower than its float32 twin, and an int16×8 graph runs
entirely on reference kernels (30–100× slower). So every TFLite file is timed, next to
the float32 file, the way an app calls it:

* batch 1, ``num_threads=2``, LiteRT's default delegates (XNNPACK);
* ``Interpreter.invoke()`` on one real image already in the input tensor (no Python
  conversion inside the timed call);
* the files are timed in interleaved rounds in one process, so that a busy machine slows
  them alike (:func:`time_interleaved`, which also times the cascade's segments); the median
  of all timed calls is reported, with the minimum.

:func:`delegate_pieces` counts the ``DELEGATE`` nodes XNNPACK made: 1 means the whole graph
runs in XNNPACK.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np

THREADS = 2
ROUNDS = 5
WARMUP = 3
MIN_SECONDS = 0.25  # timed per file at least (more calls for fast files: a steadier median)
MAX_CALLS = 5000
# A shipped int8 file is reported slower than float32 beyond this ratio of medians: the
# margin keeps a busy machine's jitter (a few %) from raising the warning.
SLOWER_MARGIN = 1.10


def interpreter(model: bytes | str | Path, *, delegates: bool = True, threads: int = THREADS):
    """A LiteRT interpreter, tensors allocated (``delegates=False``: reference kernels only)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if delegates else {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    if isinstance(model, (bytes, bytearray)):
        it = Interpreter(model_content=bytes(model), num_threads=threads, **kw)
    else:
        it = Interpreter(model_path=str(model), num_threads=threads, **kw)
    it.allocate_tensors()
    return it


def delegate_pieces(model) -> int:
    """How many ``DELEGATE`` nodes LiteRT's default CPU delegate (XNNPACK) made of the graph;
    ``model`` is a ``.tflite`` file or its bytes, or an interpreter already made of one."""
    it = model if hasattr(model, "_get_ops_details") else interpreter(model)
    return sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


def _set_image(it, image: np.ndarray) -> None:
    """Put one raw-pixel image into the input tensor, quantized as the model's input wants."""
    details = it.get_input_details()[0]
    x = np.asarray(image, np.float32).reshape(details["shape"])
    dtype = np.dtype(details["dtype"])
    if dtype != np.float32:
        scale, zero_point = details["quantization"]
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    it.set_tensor(details["index"], x.astype(dtype))


def time_interleaved(calls: Mapping[Hashable, Callable[[], object]], runs: int, *,
                     rounds: int = ROUNDS, warmup: int = WARMUP,
                     min_seconds: float = 0.0) -> dict[Hashable, list[float]]:
    """Time zero-argument callables side by side: ``{key: [ms of each timed call]}``.

    Each callable is first called ``warmup`` times; then each of ``rounds`` rounds times every
    callable in turn, ``ceil(runs / rounds)`` times (more with ``min_seconds``), so a busy
    machine slows them alike.

    Args:
        calls: ``{key: fn}``, ``fn()`` being one call to time.
        runs: timed calls per callable (at least, with ``min_seconds``).
        rounds: interleaved rounds.
        warmup: untimed calls first.
        min_seconds: when > 0, a callable faster than this over ``runs`` calls gets more
            (from its warm-up time; at most :data:`MAX_CALLS`): a steadier median.
    """
    per_round = {}
    for key, fn in calls.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        n = runs
        if min_seconds > 0:
            each = max((time.perf_counter() - t0) / max(warmup, 1), 1e-6)
            n = min(MAX_CALLS, max(runs, math.ceil(min_seconds / each)))
        per_round[key] = max(1, math.ceil(n / rounds))
    times: dict[Hashable, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            for _ in range(per_round[key]):
                t0 = time.perf_counter()
                fn()
                times[key].append(1000.0 * (time.perf_counter() - t0))
    return times


def median_ms(times: Sequence[float]) -> float:
    """The median of timed calls (ms), as every latency figure reports it."""
    return round(statistics.median(times), 4)


def measure(files: Mapping[str, Path], image: np.ndarray, runs: int = 30, *,
            threads: int = THREADS, rounds: int = ROUNDS) -> dict[str, dict]:
    """Time ``invoke()`` of every file in interleaved rounds; ``{name: latency block}``.

    Args:
        files: ``{name: path}`` of ``.tflite`` files.
        image: one raw-pixel image ``(H, W, C)`` or ``(1, H, W, C)``.
        runs: timed calls per file at least (fast files get more: :data:`MIN_SECONDS`).
        threads: LiteRT threads.
        rounds: each round times every file in turn.

    Returns:
        ``{name: {"median_ms", "min_ms", "runs", "batch": 1, "threads", "delegate_pieces",
        "runtime"}}``.
    """
    import ai_edge_litert

    interpreters = {}
    for name, path in files.items():
        it = interpreter(path, threads=threads)
        _set_image(it, image)
        interpreters[name] = it
    times = time_interleaved({name: it.invoke for name, it in interpreters.items()}, runs,
                             rounds=rounds, min_seconds=MIN_SECONDS)
    version = getattr(ai_edge_litert, "__version__", "")
    out = {}
    for name, it in interpreters.items():
        out[name] = {"median_ms": median_ms(times[name]),
                     "min_ms": round(min(times[name]), 4), "runs": len(times[name]), "batch": 1,
                     "threads": threads, "delegate_pieces": delegate_pieces(it),
                     "runtime": f"LiteRT {version} invoke(), default delegate (XNNPACK)".replace("  ", " ")}
    return out


def slower_than(latency: dict, reference: dict, margin: float = SLOWER_MARGIN) -> float | None:
    """``latency / reference`` (medians) when both the medians and the minimums exceed
    ``margin`` (a busy machine moves medians; the minimums confirm), else None."""
    ratio = latency["median_ms"] / max(reference["median_ms"], 1e-9)
    best = latency["min_ms"] / max(reference["min_ms"], 1e-9)
    return ratio if ratio > margin and best > margin else None
