"""Weights from torchvision and Keras into flax variables.

`torchvision_to_flax(name, state_dict)` dispatches on the model family; each family's converter lives in
its own module (tv_classic.py: alexnet/vgg, tv_inception.py: googlenet/inception_v3, tv_resnet.py:
resnet/resnext/wide_resnet/densenet) and registers itself in `TORCHVISION_CONVERTERS`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from jaxcnn.convert.common import ShapeMismatch  # noqa: F401

# name prefix -> converter(model_name, state_dict) -> variables; filled by the family modules below.
TORCHVISION_CONVERTERS: dict[str, Callable[[str, Mapping[str, Any]], dict]] = {}


def torchvision_to_flax(model_name: str, state_dict: Mapping[str, Any]) -> dict:
    """Convert a torchvision `state_dict` for `model_name` into flax variables {'params', 'batch_stats'}."""
    _load_families()
    for prefix in sorted(TORCHVISION_CONVERTERS, key=len, reverse=True):
        if model_name.startswith(prefix):
            return TORCHVISION_CONVERTERS[prefix](model_name, state_dict)
    raise ValueError(f"no torchvision converter for {model_name!r}; "
                     f"supported: {', '.join(sorted(TORCHVISION_CONVERTERS))}")


def keras_to_flax(model_name: str, keras_model_or_weights_file: Any) -> dict:
    """Convert a Keras model (or a saved .keras/.h5 weights file) for `model_name` into flax variables."""
    from jaxcnn.convert import keras as keras_convert

    return keras_convert.keras_to_flax(model_name, keras_model_or_weights_file)


def _load_families() -> None:
    import importlib

    for module in ("tv_classic", "tv_inception", "tv_resnet"):
        try:
            importlib.import_module(f"jaxcnn.convert.{module}")
        except ModuleNotFoundError as e:  # a family not written yet; any other import error propagates
            if e.name != f"jaxcnn.convert.{module}":
                raise
