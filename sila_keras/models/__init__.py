"""Backbone families: :mod:`~sila_keras.models.registry` plus one module per family.

The registry imports the family modules on first lookup (``list_backbones()``,
``get_backbone()``), and :mod:`sila_keras.registration` as soon as Keras is imported.
"""

from sila_keras.models.registry import (
    BackboneOutput,
    BackboneSpec,
    Tap,
    get_backbone,
    is_application,
    is_model_file,
    list_backbones,
    load_families,
    model_kind,
    register_backbone,
)

__all__ = ["BackboneOutput", "BackboneSpec", "Tap", "get_backbone", "is_application",
           "is_model_file", "list_backbones", "load_families", "model_kind", "register_backbone"]
