"""Optimizers and learning-rate schedules as optax chains, built from a config.

Public API
----------
`build_optimizer(config, steps_per_epoch, trainable=None) -> (tx, schedule_fn)`
    The whole update rule, outermost first::

        apply_if_finite(                                  # config.skip_nonfinite
          multi_transform({train: chain, frozen: set_to_zero})   # `trainable` given (freezing)
            chain = clip_by_global_norm                   # config.grad_clip_norm > 0
                    -> add_decayed_weights(mask=kernels)  # config.weight_decay > 0 (not adamw: built in)
                    -> sgd | adam | adamw | rmsprop with schedule_fn
                    -> scale_by_plateau                   # config.schedule == 'plateau'
                    -> scale_by_module                    # config.lr_multipliers (per-module rates)
        )

    Weight decay is L2 on conv/dense kernels only, added to the gradient before the optimizer as torch's
    `weight_decay=` does (AlexNet: 5e-4); AdamW decays decoupled, also on kernels only. `schedule_fn(step)` is
    the base learning rate at an optimizer step; with 'plateau' the effective rate is
    `schedule_fn(step) * plateau_scale(opt_state)`.
`build_schedule(config, steps_per_epoch)`: the schedule alone ('constant', 'piecewise' (boundaries in epochs),
    'step', 'cosine' (linear warmup + cosine to 0), 'plateau' (constant; the plateau scale comes on top)).
    `config.warmup_epochs > 0` adds a linear warm-up from 0 to every schedule.
`build_plateau(config)`: the `optax.contrib.reduce_on_plateau` transform that *updates* the plateau state from a
    validation loss, or None. Inside the step chain `scale_by_plateau()` only multiplies by the stored scale, so
    the scale changes at evaluations (see `jaxcnn.training.update_plateau`), never at training steps.
`scale_by_module(multipliers)`: the updates of each named top-level module times its factor, i.e. that module
    trains at factor x the learning rate (torch's parameter groups); `config.lr_multipliers` holds them.
`kernel_mask(params)`: True on leaves named 'kernel' (the weight-decay mask).
`head_trainable(params, head=None, num_classes=None)`: a `trainable` tree that trains only the classifier.
`plateau_scale(opt_state)`, `skipped_updates(opt_state)`: read the plateau scale / the number of non-finite
    updates skipped by `apply_if_finite` out of a (nested) optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

PlateauState = optax.contrib.ReduceLROnPlateauState
SCHEDULES = ("constant", "piecewise", "step", "cosine", "plateau")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


# --- Schedules --------------------------------------------------------------------------------------------


def total_steps(config, steps_per_epoch: int) -> int:
    """Number of optimizer steps of the run: `num_train_steps` when > 0, else epochs x steps per epoch."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return round(config.num_epochs * steps_per_epoch)


def _epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return round(epochs * steps_per_epoch)


def _with_warmup(schedule: optax.Schedule, warmup_steps: int) -> optax.Schedule:
    """Scale `schedule` by a linear ramp 0 -> 1 over the first `warmup_steps` (absolute steps, no shift)."""
    if warmup_steps <= 0:
        return schedule
    return lambda step: schedule(step) * jnp.minimum(1.0, step / warmup_steps)


def base_learning_rate(config) -> float:
    """`config.learning_rate`, or `lr_per_256 x batch_size / 256` when `config.lr_per_256 > 0` (the linear
    scaling rule of Goyal et al. 2017, from the global batch the run actually uses)."""
    per_256 = float(config.get("lr_per_256", 0.0))
    return per_256 * int(config.batch_size) / 256 if per_256 > 0 else float(config.learning_rate)


def build_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """The base learning-rate schedule `step -> lr` named by `config.schedule` (boundaries given in epochs)."""
    lr, kind = base_learning_rate(config), config.schedule
    warmup = _epochs_to_steps(config.warmup_epochs, steps_per_epoch)
    if kind in ("constant", "plateau"):
        schedule = optax.constant_schedule(lr)
    elif kind == "piecewise":
        values, bounds = list(config.piecewise_values), list(config.piecewise_boundaries)
        if len(values) != len(bounds) + 1:
            raise ValueError(f"piecewise schedule needs one more value than boundaries, got "
                             f"{len(values)} values for {len(bounds)} boundaries")
        steps = [_epochs_to_steps(b, steps_per_epoch) for b in bounds]
        if steps != sorted(steps):
            raise ValueError(f"piecewise_boundaries must increase, got {bounds}")
        schedule = optax.join_schedules([optax.constant_schedule(v) for v in values], steps)
    elif kind == "step":
        schedule = optax.exponential_decay(lr, _epochs_to_steps(config.step_decay_epochs, steps_per_epoch),
                                           config.step_decay_factor, staircase=True)
    elif kind == "cosine":
        # optax's own warm-up + cosine: 0 -> lr over `warmup` steps, then cosine to 0 at the last step. A
        # warm-up longer than the run (a short test run of a recipe) is cut to leave one step of decay.
        total = max(total_steps(config, steps_per_epoch), 1)
        return optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, total - 1), total)
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    return _with_warmup(schedule, warmup)


# --- Masks ------------------------------------------------------------------------------------------------


def kernel_mask(params) -> Any:
    """True on conv/dense kernels (leaves named 'kernel'), False on biases, BN scales, etc."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def _find_head(params, num_classes: int | None) -> str:
    """The top-level module that holds the classifier's kernel (see `head_trainable`)."""
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
               if getattr(path[-1], "key", None) == "kernel"]
    consumed = {k.shape[-2] for k in kernels if k.ndim >= 2}  # every layer's input width
    heads = [name for name, sub in params.items() if "kernel" in sub and (
        sub["kernel"].shape[-1] == num_classes if num_classes else sub["kernel"].shape[-1] not in consumed)]
    if len(heads) != 1:
        raise ValueError(f"cannot tell the classifier among the top-level modules {', '.join(params)}: "
                         "pass head= (its name) or num_classes=")
    return heads[0]


def head_trainable(params, head: str | None = None, num_classes: int | None = None) -> Any:
    """A `trainable` tree for fine-tuning: True under the top-level module `head`, False elsewhere.

    With `head=None` the head is the one top-level module whose own kernel has `num_classes` outputs or,
    without `num_classes`, whose outputs no other layer takes as input: the classifier ('fc', 'output', ...).
    Auxiliary heads nest their classifier one level deeper, so they never qualify. (The order of modules
    is no guide: jit returns dicts with sorted keys.)
    """
    head = _find_head(params, num_classes) if head is None else head
    if head not in params:
        raise ValueError(f"no top-level module {head!r} to train; the model has {', '.join(params)}")
    return {name: jax.tree.map(lambda _, name=name: name == head, sub) for name, sub in params.items()}


# --- Plateau ----------------------------------------------------------------------------------------------


def build_plateau(config) -> optax.GradientTransformationExtraArgs | None:
    """`reduce_on_plateau` with the config's factor, patience and cooldown (None unless schedule='plateau').

    Only its `update(..., value=val_loss)` is used, to move the plateau state at evaluations; torch's
    ReduceLROnPlateau defaults (relative threshold 1e-4) are optax's too.
    """
    if config.schedule != "plateau":
        return None
    return optax.contrib.reduce_on_plateau(factor=config.plateau_factor, patience=config.plateau_patience,
                                           cooldown=config.plateau_cooldown)


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiply updates by the stored plateau scale; the state is a `ReduceLROnPlateauState` it never moves."""

    def init(params):
        return optax.contrib.reduce_on_plateau().init(params)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def find_states(opt_state, kind: type) -> list:
    """Every sub-state of type `kind` (e.g. `PlateauState`) inside a nested optimizer state."""
    found = []
    jax.tree.map(lambda x: found.append(x) if isinstance(x, kind) else None, opt_state,
                 is_leaf=lambda x: isinstance(x, kind))
    return found


def plateau_scale(opt_state) -> jax.Array:
    """The current plateau multiplier of the learning rate (1.0 when there is no plateau schedule)."""
    states = find_states(opt_state, PlateauState)
    return states[0].scale if states else jnp.ones((), jnp.float32)


def skipped_updates(opt_state) -> jax.Array | None:
    """How many non-finite updates `apply_if_finite` has skipped so far (None without `skip_nonfinite`)."""
    states = find_states(opt_state, optax.ApplyIfFiniteState)
    return states[0].total_notfinite if states else None


# --- Per-module learning rates ----------------------------------------------------------------------------


def scale_by_module(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of each top-level module named in `multipliers` by its factor; the others pass.

    A name the params lack is an error (ValueError naming the modules there are), not a silent no-op."""

    def scale(updates, params=None):
        del params
        missing = sorted(set(multipliers) - set(updates))
        if missing:
            raise ValueError(f"lr_multipliers names {', '.join(missing)}, which the model lacks; its top-level "
                             f"modules: {', '.join(sorted(updates))}")
        return {name: jax.tree.map(lambda u, f=multipliers[name]: u * f, sub) if name in multipliers else sub
                for name, sub in updates.items()}

    return optax.stateless(scale)


# --- Optimizers -------------------------------------------------------------------------------------------


def _base_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    name = config.optimizer
    if name == "sgd":
        return optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    if name == "adam":
        return optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
    if name == "adamw":
        return optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=kernel_mask)
    if name == "rmsprop":
        return optax.rmsprop(schedule, decay=config.rmsprop_decay, eps=config.eps,
                             momentum=config.momentum or None, nesterov=config.nesterov)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _labels(trainable) -> Any:
    return jax.tree.map(lambda t: "train" if t else "frozen", trainable)


def build_optimizer(config, steps_per_epoch: int,
                    trainable: Any | Callable[[Any], Any] | None = None
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by `config.optimizer` with its schedule, decay, clipping, freezing and NaN guard.

    `trainable` is None (train everything), a pytree of bools shaped like the params, or a function
    params -> such a tree (e.g. `head_trainable`); frozen leaves get zero updates and no optimizer state.
    """
    schedule = build_schedule(config, steps_per_epoch)
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay > 0 and config.optimizer != "adamw":
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=kernel_mask))
    parts.append(_base_optimizer(config, schedule))
    if config.schedule == "plateau":
        parts.append(scale_by_plateau())
    multipliers = dict(config.get("lr_multipliers", {}))
    if multipliers:  # only then: the optimizer state of every other run keeps its structure (checkpoints)
        parts.append(scale_by_module(multipliers))
    tx = optax.chain(*parts)
    if trainable is not None:
        labels = (lambda params: _labels(trainable(params))) if callable(trainable) else _labels(trainable)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if config.skip_nonfinite:
        tx = optax.apply_if_finite(tx, config.max_consecutive_nonfinite)
    return tx, schedule


__all__ = [
    "OPTIMIZERS", "SCHEDULES", "PlateauState", "base_learning_rate", "build_optimizer", "build_plateau",
    "build_schedule", "find_states",
    "head_trainable", "kernel_mask", "plateau_scale", "scale_by_module", "scale_by_plateau", "skipped_updates",
    "total_steps",
]
