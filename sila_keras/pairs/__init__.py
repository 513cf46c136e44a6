"""Digit-pair comparison on MNIST: weight sharing and auxiliary losses (Deng & Li, project 1).

Is the first of two 14×14 MNIST digits ≤ the second? Four Keras networks (``fc``,
``conv``, ``parallel``, ``siamese``; parameter counts as in the paper's Table 1),
trained with the shared loop :func:`sila_keras.training.train.fit`, optionally with the SiLa
loss on two comparison heads. Command line: ``python -m sila_keras.pairs --help``.

Public API::

    from sila_keras.pairs import PairConfig, build_pair_model, load_pools, run_config
    pools = load_pools("../shared/data")
    result = run_config(PairConfig("siamese", rounds=3), pools)
    result["mean_accuracy"]
"""

import importlib

# Name → module; imported on first use so ``sila-pairs --help`` does not load Keras.
_EXPORTS = {
    **dict.fromkeys(("DigitPools", "PairSet", "downsample", "load_pools", "make_pairs",
                     "read_idx_images", "read_idx_labels"), "sila_keras.pairs.data"),
    **dict.fromkeys(("PairConfig", "compile_pair_model", "run_config", "run_round"),
                    "sila_keras.pairs.experiment"),
    **dict.fromkeys(("ARCHS", "PAPER_PARAMS", "DigitComparison", "build_digit_net",
                     "build_pair_model", "trainable_count"), "sila_keras.pairs.models"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sila_keras.pairs' has no attribute '{name}'")
