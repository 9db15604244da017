"""Every registered model as a Flax NNX module, for users who write NNX.

The models are written once, in Linen (jaxcnn.models); `flax.nnx.bridge.ToNNX` turns one into a stateful
NNX module that holds the very same variables (`params`, and `batch_stats` with BatchNorm, under the Linen
names) and runs the very same computation::

    model = jaxcnn.nnx.get_model("resnet18", rngs=nnx.Rngs(0), num_classes=10)   # eval mode
    logits = model(images)                                  # NHWC float, like the Linen model
    model.train()                                           # BatchNorm batch statistics, dropout on
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

Mode follows NNX's convention: `model.train()` / `model.eval()` (the `deterministic` attribute), instead of
Linen's `train=` argument. In train mode a call updates the BatchNorm running statistics in place and draws
its dropout key from the module's `rngs` ('dropout' stream, else 'default').

Weights move both ways in Linen's form, `{'params': ..., 'batch_stats': ...}`: `load_variables(model,
variables)` puts converted (jaxcnn.convert) or saved weights into the module, `linen_variables(model)` takes
them out (for `Model.apply`, checkpoints or jaxcnn.convert's savers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from jaxcnn import models

# The Linen collections that make up a model's weights, and the NNX variable type of each under the bridge.
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


class LinenModel(nnx.Module):
    """A registered Linen model as an NNX module; `deterministic` (`.train()` / `.eval()`) picks the mode.

    `net` is the bridged Linen module: its attributes are the Linen submodules, holding `nnx.Param` and
    `nnx.BatchStat` variables. `mutable` overrides which Linen collections a train-mode call updates
    (default: 'batch_stats'), e.g. to also collect what a model sows (auxiliary logits).
    """

    def __init__(self, module, *, rngs: nnx.Rngs):
        self.net = bridge.ToNNX(module, rngs=rngs)
        self.rngs = rngs
        self.deterministic = True

    def __call__(self, x: jax.Array, *, mutable: Sequence[str] = ("batch_stats",), **kwargs) -> Any:
        if self.deterministic:
            return self.net(x, train=False, **kwargs)
        # A fresh key every call: the stream's counter is module state (it moves under nnx.jit too).
        dropout = nnx.Rngs(dropout=self.rngs.dropout())
        return self.net(x, train=True, rngs=dropout, mutable=list(mutable), **kwargs)

    def initialize(self, x: jax.Array, rngs: nnx.Rngs) -> None:
        """Create the variables for sample `x` (under `bridge.lazy_init`), in train mode as
        `jaxcnn.training.init_variables` does, so auxiliary heads get theirs too."""
        self.net(x, train=True, rngs=rngs)


def get_model(name: str, *, rngs: nnx.Rngs, input_shape: Sequence[int] | None = None, **kwargs) -> LinenModel:
    """Registered model `name` as an NNX module in eval mode, its variables initialized from `rngs`.

    `input_shape` (H, W, C) is the sample the variables are built for (default: the model's own input
    shape); `kwargs` go to `jaxcnn.models.get_model` (num_classes, dtype, aux_logits...).
    """
    shape = tuple(input_shape or models.get_spec(name).input_shape)
    module = models.get_model(name, **kwargs)

    @nnx.jit  # one compiled initialization instead of op-by-op dispatch (seconds for the deep models)
    def build(rngs: nnx.Rngs) -> LinenModel:
        model = LinenModel(module, rngs=rngs)
        init_rngs = nnx.Rngs(params=rngs.params(), dropout=rngs.dropout())
        bridge.lazy_init(model.initialize, jnp.zeros((1, *shape), jnp.float32), init_rngs)
        # Initializing ran in train mode, so the auxiliary heads sowed their logits: not part of the model.
        nnx.pop(model.net, nnx.Not(nnx.Any(*COLLECTIONS.values(), nnx.RngState)))
        return model

    return build(rngs)


def _variable_type(collection: str) -> type:
    """The NNX variable type the bridge gives Linen collection `collection` (registered on first use)."""
    return nnx.variable_type_from_name(collection, allow_register=True)


def collection(model: LinenModel, name: str) -> dict:
    """Linen collection `name` of the module as nested dicts of arrays ({} when it holds none)."""
    # The bridge keeps each Linen submodule as an attribute; the variable type tells the collection.
    return nnx.to_pure_dict(nnx.state(model.net, _variable_type(name)))


def pop_sown(model: LinenModel, name: str) -> dict:
    """Take what the model sowed into Linen collection `name` out of it, e.g. 'aux' after a train-mode call
    with `mutable=['batch_stats', 'aux']` (GoogLeNet's auxiliary logits). Sown values pile up call after call
    (Linen's `sow` appends) until popped, as NNX's own intermediates do."""
    return nnx.to_pure_dict(nnx.pop(model.net, _variable_type(name)))


def linen_variables(model: LinenModel) -> dict:
    """The module's variables in Linen's form: `{'params': ..., 'batch_stats': ...}` of arrays."""
    found = {name: collection(model, name) for name in COLLECTIONS}
    return {name: tree for name, tree in found.items() if tree}


def load_variables(model: LinenModel, variables: dict) -> None:
    """Put Linen-form `variables` (converted, pretrained, or from a checkpoint) into `model`, in place.

    Raises ValueError naming the first leaf whose path or shape differs from the module's (a model built
    for another class count, or another model's weights): nothing is changed then.
    """
    current = linen_variables(model)
    given = {k: v for k, v in variables.items() if k in COLLECTIONS}
    want = {jax.tree_util.keystr(p): jnp.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(current)}
    have = {jax.tree_util.keystr(p): jnp.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(given)}
    for path in sorted(want.keys() | have.keys()):
        if want.get(path) != have.get(path):
            raise ValueError(f"variables do not fit the model at {path}: the model has "
                             f"{want.get(path, 'nothing')}, the weights have {have.get(path, 'nothing')}")
    for collection, kind in COLLECTIONS.items():
        if collection in given:
            state = nnx.state(model.net, kind)
            nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, given[collection]))
            nnx.update(model.net, state)


__all__ = ["COLLECTIONS", "LinenModel", "collection", "get_model", "linen_variables", "load_variables",
           "pop_sown"]
