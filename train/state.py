"""The train state at step 0: fresh, or started from saved weights (`config.init_from`).

`merge_variables` puts the loaded values into the model's own structure, shapes and dtypes, with a one-line error
for a missing or misshapen entry; `freeze_backbone` and `reinit_head` choose what is trained and what starts
fresh (fine-tuning on another class count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import optim, training, weights
from train.setup import Setup


def initial_state(s: Setup, steps_per_epoch: int):
    """The train state at step 0: fresh, or from `config.init_from` saved variables.

    With `freeze_backbone` only the classifier head (the last top-level module) is trained; with
    `reinit_head` the head keeps a fresh initialization (for a different class count).
    """
    config = s.config
    rng = jax.random.key(int(config.seed))
    trainable = optim.head_trainable if config.freeze_backbone else None
    if not config.init_from:
        return training.create_train_state(s.model, config, rng, s.image_shape, steps_per_epoch,
                                           trainable=trainable)
    loaded, meta = weights.load_init_variables(config.init_from, config.model)
    if meta.get("num_classes") != s.num_classes and not config.reinit_head:
        raise ValueError(f"--init_from {config.init_from} has {meta.get('num_classes')} classes, this run "
                         f"{s.num_classes}: pass --config.reinit_head=True for a fresh classifier head")
    if config.reinit_head:  # real initial values for the head
        fresh = training.init_variables(s.model, jax.random.split(rng)[0], s.image_shape)
        head = {"params": optim.head_trainable(fresh["params"]),
                "batch_stats": jax.tree.map(lambda _: False, fresh["batch_stats"])}
    else:  # shapes only: every value comes from the file
        fresh = jax.eval_shape(lambda: training.init_variables(s.model, rng, s.image_shape))
        head = None
    variables = merge_variables(fresh, {k: loaded[k] for k in ("params", "batch_stats")}, head)
    return training.create_train_state(s.model, config, rng, s.image_shape, steps_per_epoch,
                                       trainable=trainable, variables=variables)


def merge_variables(fresh, loaded, keep_fresh=None):
    """`loaded` values in `fresh`'s structure, shapes and dtypes (a clear error on a missing or misshapen
    entry); leaves where `keep_fresh` is True keep `fresh`'s values."""
    keep = keep_fresh if keep_fresh is not None else jax.tree.map(lambda _: False, fresh)

    def pick(path, f, k):
        if k:
            return f
        node = loaded
        for p in path:
            name = getattr(p, "key", p)
            if not isinstance(node, dict) or name not in node:
                raise ValueError(f"--init_from lacks {jax.tree_util.keystr(path)}, which the model has")
            node = node[name]
        if tuple(np.shape(node)) != tuple(f.shape):
            raise ValueError(f"--init_from {jax.tree_util.keystr(path)} has shape {tuple(np.shape(node))}, "
                             f"the model {tuple(f.shape)}")
        return jnp.asarray(node, dtype=f.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh, keep)

