"""sila_keras: Siamese Labels (SiLa) auxiliary training for Keras 3 / TensorFlow.

Public API::

    from sila_keras import SilaLoss, build_sila_model, extract_head, list_backbones
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of CLIs

from sila_keras.attach import attach_heads, load_and_attach
from sila_keras.heads import build_sila_model, extract_head, num_heads_of, trainable_params
from sila_keras.losses import SilaLoss, set_weights, sila_loss
from sila_keras.metrics import HeadAccuracy, HeadNLL, HeadTopK, sila_metrics
from sila_keras.models import get_backbone, list_backbones, register_backbone
from sila_keras.optim import SGDL2

__version__ = "0.1.0"

__all__ = [
    "SGDL2", "attach_heads", "load_and_attach", "HeadAccuracy", "HeadNLL", "HeadTopK", "SilaLoss", "build_sila_model", "extract_head",
    "get_backbone", "list_backbones", "num_heads_of", "register_backbone", "set_weights",
    "sila_loss", "sila_metrics", "trainable_params",
]
