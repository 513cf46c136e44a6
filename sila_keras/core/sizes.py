"""A head's size: float32 MiB of its trainable parameters and its compression ratio.

The papers' convention (SilaNet §3.2, Table 3): size = trainable parameters × 4 bytes
(float32, BatchNorm moving statistics not counted) in MiB, and the compression ratio of
head k is CR = 1 − head/base, where the base is the backbone alone (``head_1``).

Callers round for their own output; this module imports nothing heavy, so the
TensorFlow-free ``sila-report`` can use it.

Example:
    >>> float32_mib(269_722)
    1.0289077758789062
    >>> round(compression_percent(269_722, 68_442), 2)
    74.62
"""

from __future__ import annotations


def float32_mib(params: int) -> float:
    """MiB of ``params`` float32 weights (params × 4 / 2^20), unrounded."""
    return params * 4 / 2**20


def compression_percent(base_params: int, head_params: int) -> float:
    """CR = 100 · (1 − head/base), in percent, unrounded.

    Args:
        base_params: trainable parameters of the base model (``head_1``).
        head_params: trainable parameters of the extracted head.
    """
    return 100 * (1 - head_params / base_params)
