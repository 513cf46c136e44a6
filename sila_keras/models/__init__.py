"""Backbone families. Importing this package registers every family once."""

from sila_keras.models import (  # noqa: F401  (registration side effects)
    densenet,
    inception,
    mobilenet,
    msdnet,
    resnet,
    resnet_cifar,
    vgg,
    wrn,
)
from sila_keras.models.registry import (
    BackboneOutput,
    BackboneSpec,
    Tap,
    get_backbone,
    list_backbones,
    register_backbone,
)

__all__ = ["BackboneOutput", "BackboneSpec", "Tap", "get_backbone", "list_backbones",
           "register_backbone"]
