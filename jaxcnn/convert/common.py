"""Tensor-level helpers the weight converters share: layouts, and shape checks that name the layer."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class ShapeMismatch(ValueError):
    """A converted tensor does not fit the flax model; the message names the layer and both shapes."""


def to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor, tf variable or array as a float32/int numpy array."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    elif hasattr(tensor, "numpy"):
        tensor = tensor.numpy()
    return np.asarray(tensor)


def conv_kernel(w: Any) -> np.ndarray:
    """torch conv weight (O, I/groups, kH, kW) -> flax kernel (kH, kW, I/groups, O)."""
    return np.transpose(to_numpy(w), (2, 3, 1, 0))


def dense_kernel(w: Any) -> np.ndarray:
    """torch linear weight (out, in) -> flax kernel (in, out)."""
    return np.transpose(to_numpy(w))


def check_shapes(converted: Mapping, reference: Mapping, path: str = "") -> None:
    """Raise ShapeMismatch at the first leaf whose shape differs from the flax model's, or a missing key."""
    for key in reference:
        where = f"{path}/{key}" if path else str(key)
        if key not in converted:
            raise ShapeMismatch(f"converted weights lack {where}")
        ref, got = reference[key], converted[key]
        if isinstance(ref, Mapping):
            check_shapes(got, ref, where)
        elif tuple(np.shape(got)) != tuple(np.shape(ref)):
            raise ShapeMismatch(f"layer {where}: the weights have shape {tuple(np.shape(got))}, "
                                f"the model expects {tuple(np.shape(ref))}")
    extra = set(converted) - set(reference)
    if extra:
        raise ShapeMismatch(f"converted weights have entries the model lacks under '{path or '/'}': "
                            f"{sorted(map(str, extra))[:5]}")


def expected_variables(model, input_shape, **init_kw) -> dict:
    """The model's variable shapes (no FLOPs spent: jax.eval_shape), for `check_shapes`."""
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                               jnp.zeros((1, *input_shape), jnp.float32), **init_kw))
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
