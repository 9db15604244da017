"""The model zoo. Importing this package registers every family."""

from jaxcnn.models.registry import ModelSpec, get_model, get_spec, list_models, model_options, register  # noqa: F401

# Each family module registers its models on import.
from jaxcnn.models import (  # noqa: F401,E402
    alexnet,
    densenet,
    googlenet,
    inception,
    lenet,
    nin,
    resnet,
    vgg,
)

__all__ = ["ModelSpec", "get_model", "get_spec", "list_models", "model_options", "register"]
