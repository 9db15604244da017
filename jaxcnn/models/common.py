"""Small helpers the model families share."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def check_input(x: jnp.ndarray, model: nn.Module) -> None:
    """Raise a ValueError naming the model when NHWC input `x` is smaller than it accepts.

    The model class declares `min_size` (smallest square side) and, when its dense head fixes the input,
    `fixed_size = True`. Runs at trace time on static shapes, so it costs nothing inside jit.
    """
    name = model.name or type(model).__name__
    min_size, fixed = type(model).min_size, getattr(type(model), "fixed_size", False)
    if x.ndim != 4:
        raise ValueError(f"{name} expects NHWC input of rank 4, got shape {tuple(x.shape)}")
    h, w = x.shape[1], x.shape[2]
    if fixed and (h, w) != (min_size, min_size):
        raise ValueError(f"{name} takes {min_size}x{min_size} input (its dense head fixes the size), "
                         f"got {h}x{w}: resize the images to {min_size}x{min_size}")
    if h < min_size or w < min_size:
        raise ValueError(f"{name} needs input of at least {min_size}x{min_size}, got {h}x{w}: "
                         f"resize the images (e.g. --config.image_size={min_size})")
