"""The model registry: every model name, its builder and its facts.

Families register themselves with `@register(...)` on a builder function that returns a `flax.linen.Module`.
Names follow torchvision where torchvision has the model, so weights map 1:1.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The facts every registered model carries.

    `params` is the reference count of the `params` collection at `num_classes` classes (docs/reference.md);
    `min_size` is the smallest square input side the model accepts (equal to the input side for models
    whose dense head fixes the input size, `fixed_size=True`).
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]  # default (H, W, C)
    min_size: int
    num_classes: int
    paper: str
    year: int
    params: int | None
    fixed_size: bool = False
    has_aux: bool = False
    family: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, **facts) -> Callable:
    """Decorator: register `builder(**kw) -> nn.Module` under `name`; duplicates are refused."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, **facts)
        return builder

    return wrap


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_REGISTRY)


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}{hint} (`python -m train.main --list_models` lists them all)"


def get_spec(name: str) -> ModelSpec:
    """The facts of model `name`; unknown names raise ValueError naming the close matches."""
    if name not in _REGISTRY:
        raise ValueError(unknown_model_message(name))
    return _REGISTRY[name]


def get_model(name: str, *, num_classes: int | None = None, **kw) -> nn.Module:
    """Build model `name` with `num_classes` outputs (the model's default when None)."""
    spec = get_spec(name)
    kw.setdefault("name", name)  # a top-level module's name is not part of its variable paths
    return spec.builder(num_classes=spec.num_classes if num_classes is None else num_classes, **kw)


# Fields every model has that are not options of the architecture (set by the trainer or by flax).
_NOT_OPTIONS = frozenset({"num_classes", "dtype", "axis_name", "name", "parent"})
_OPTION_TYPES = (bool, int, float, str)


def model_options(name: str) -> dict[str, bool | int | float | str]:
    """The keyword options of model `name` with their defaults: the builder's own keyword arguments and the
    module's plain-valued fields (bool, int, float, str) that the builder lets a caller set.

    These are what `get_model(name, **options)` accepts beyond num_classes/dtype/axis_name (the trainer's
    `config.model_kwargs`); tables, callables and the fields a builder fixes itself are not options.
    """
    import dataclasses
    import inspect

    spec = get_spec(name)
    options = {p.name: p.default for p in inspect.signature(spec.builder).parameters.values()
               if p.default is not inspect.Parameter.empty and p.name not in _NOT_OPTIONS}
    module = spec.builder(num_classes=spec.num_classes)
    for field in dataclasses.fields(module):
        value = getattr(module, field.name, None)
        if field.name in options or field.name in _NOT_OPTIONS or not isinstance(value, _OPTION_TYPES):
            continue
        try:  # a field the builder sets itself ("got multiple values") is not the caller's to choose
            spec.builder(num_classes=spec.num_classes, **{field.name: value})
        except TypeError:
            continue
        options[field.name] = value
    return options
