"""Small helpers the model families share."""

from __future__ import annotations

from collections.abc import Callable

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


# How a network's kernels start, by name (the models' `weight_init` option). LeCun normal (variance 1/fan_in,
# flax's default) halves the signal's variance at every ReLU, so after VGG-16's 16 layers the logits and
# gradients start ~2^8 too small and the first hundreds of steps barely move; He normal (variance 2/fan_in,
# He et al. 2015) keeps it level (vgg16 on embedded MNIST after 150 Adam steps: 64% with LeCun, 89% with He).
# Glorot uniform is the 2014 GoogLeNet's (Caffe's "xavier"); N(0, 0.01) torchvision's GoogLeNet's.
KERNEL_INITS = {"lecun": nn.initializers.lecun_normal(), "he": nn.initializers.he_normal(),
                "glorot": nn.initializers.xavier_uniform(), "normal_0.01": nn.initializers.normal(0.01)}


def kernel_init(name: str) -> Callable:
    """The initializer named `name` (a key of KERNEL_INITS); a ValueError naming the choices otherwise."""
    if name not in KERNEL_INITS:
        raise ValueError(f"weight_init must be one of {', '.join(KERNEL_INITS)}, not {name!r}")
    return KERNEL_INITS[name]
