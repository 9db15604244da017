"""Train state, loss, metrics, and the per-device train and eval steps: pure functions, no I/O.

Public API (what `train.loop` uses)
-----------------------------------
`model_dtype(config)` -> the computation dtype for `get_model(..., dtype=...)` (params stay float32).
`create_train_state(model, config, rng, input_shape, steps_per_epoch, trainable=None, variables=None)`
    -> TrainState. Initializes the variables (`init_variables`: a jitted `model.init` on a zeros batch of
    shape (1, *input_shape) in train mode, so auxiliary heads get their params) unless `variables` are given
    (pretrained weights), and the optimizer from `jaxcnn.optim.build_optimizer` (`trainable` freezes parts).
    `rng` is a typed key (`jax.random.key`); the state keeps a derived key for dropout. The state lives on the host;
    hand it to `driver.put_state` (`jaxcnn.parallel`).
`step_functions(config, num_classes) -> (train_fn, eval_fn)`
    `train_step` / `eval_step` with the config's loss settings bound, ready for `parallel.make_driver`.
`train_step(state, batch, *, axis_name=None, num_classes=None, label_smoothing=0., aux_loss_weight=0.,
    map_loss_j=0.)` -> `(state, metrics)`. Per-device code: under a driver, `axis_name` names the device axis
    and gradients, BatchNorm statistics and metrics are averaged over it. Metrics (float32 scalars, means over
    the global batch): 'loss' (the optimized objective: smoothed CE, or LeNet-5 1998's MAP loss with
    `map_loss_j`, + aux_loss_weight x aux CE), 'top1', 'top5', 'grad_norm', plus 'aux_loss' for models with
    auxiliary heads and 'skipped' (non-finite updates skipped so far) with `config.skip_nonfinite`.
`scanned(train_fn)` -> `steps(state, batches)`: k train steps over batches stacked [k, B, ...] in one program
    (lax.scan); metrics come back stacked [k] (config.steps_per_call; the 'single' driver).
`eval_step(state, batch, axis_name=None)` -> sums {'loss_sum', 'top1_sum', 'top5_sum', 'count'} over the
    examples with `batch['mask'] == 1` (all when there is no mask), summed over devices. Add them up over the
    eval set and call `summarize(sums)` for means: padded final batches are exact.
`update_plateau(state, val_loss)` -> state with the reduce-on-plateau scale moved by one evaluation
    (a no-op without schedule='plateau'). Call it after every evaluation (the drivers wrap it).
`learning_rate(state, schedule_fn)` -> the effective learning rate at `state.step` (schedule x plateau scale).

Batches are dicts of arrays: 'image' float [B, H, W, C], 'label' int [B], optionally 'mask' float [B].
Randomness: the dropout key of a step is fold_in(fold_in(state.rng, state.step), device index), so a run
is reproducible, steps differ, and devices draw different masks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxcnn import optim

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # no float16: it would need loss scaling


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes. Only the array fields are pytree leaves (checkpointed)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    # The data (uint32) of the root key of the per-step dropout keys: a plain array, which the drivers' host
    # copies and the checkpoints move like every other leaf. `dropout_key` wraps it back into a typed key.
    rng: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    plateau: optax.GradientTransformationExtraArgs | None = flax.struct.field(pytree_node=False, default=None)

    def variables(self) -> dict:
        """The variables `apply_fn` takes."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def model_dtype(config) -> Any:
    """The computation dtype named by `config.dtype` ('float32' | 'bfloat16')."""
    if config.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[config.dtype]


def init_variables(model, rng: jax.Array, input_shape) -> dict:
    """`model`'s initial variables for inputs of shape (H, W, C), from a jitted `model.init` on zeros.

    Runs in train mode so that heads used only in training (auxiliary classifiers) get their params too;
    sown collections are dropped.
    """
    params_key, dropout_key = jax.random.split(rng)
    init = jax.jit(functools.partial(model.init, train=True))
    variables = init({"params": params_key, "dropout": dropout_key}, jnp.zeros((1, *input_shape), jnp.float32))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def create_train_state(model, config, rng: jax.Array, input_shape, steps_per_epoch: int, trainable=None,
                       variables: dict | None = None) -> TrainState:
    """A fresh TrainState for `model`; see the module docstring.

    `variables` ({'params', 'batch_stats'}, e.g. converted pretrained weights) skips the random init;
    the state's dropout key comes from `rng` either way.
    """
    init_key, state_key = jax.random.split(rng)
    if variables is None:
        variables = init_variables(model, init_key, input_shape)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx, _ = optim.build_optimizer(config, steps_per_epoch, trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=jax.random.key_data(state_key), apply_fn=model.apply, tx=tx,
                      plateau=optim.build_plateau(config))


# --- Loss and metrics -------------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int | None = None,
                  label_smoothing: float = 0.0, map_loss_j: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32, with targets (1 - s) * one_hot + s / num_classes.

    `map_loss_j` > 0 adds a constant competitor logit -j that is never a target: with logits -y_i (LeNet-5
    1998's RBF distances) the loss becomes that paper's MAP criterion (eq. 9), y_D + log(e^-j + sum_i e^-y_i).
    Unlike the plain cross-entropy it keeps pulling the correct output towards its RBF centre once the example
    is classified with a wide margin (the log term stays near -j while every y_i is well above j).
    """
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1] if num_classes is None else num_classes
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    if map_loss_j:
        logits = jnp.concatenate([logits, jnp.full(logits.shape[:-1] + (1,), -map_loss_j, jnp.float32)], -1)
        targets = jnp.concatenate([targets, jnp.zeros(targets.shape[:-1] + (1,), jnp.float32)], -1)
    return optax.softmax_cross_entropy(logits, targets)


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the true class is among the k largest logits, else 0.0.

    Pessimistic, so that a broken network cannot look good: a class tied with the true one ranks above it
    (all-equal logits score 0, not 1), and an example with any NaN logit counts as wrong.
    """
    true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rivals = jnp.sum(logits >= true_logit, axis=-1) - 1  # the classes at least as likely, the true one aside
    finite = ~jnp.any(jnp.isnan(logits), axis=-1)
    return ((rivals < k) & finite).astype(jnp.float32)


def _per_example(logits, labels, num_classes=None, label_smoothing=0.0) -> dict:
    logits = logits.astype(jnp.float32)
    k = min(5, logits.shape[-1])  # top-5 of fewer than 5 classes would always be 1
    return {"loss": cross_entropy(logits, labels, num_classes, label_smoothing),
            "top1": top_k_correct(logits, labels, 1), "top5": top_k_correct(logits, labels, k)}


def compute_metrics(logits: jax.Array, labels: jax.Array, num_classes: int | None = None,
                    label_smoothing: float = 0.0) -> dict:
    """Batch means of loss, top-1 and top-5 accuracy (top-min(5, classes))."""
    return jax.tree.map(jnp.mean, _per_example(logits, labels, num_classes, label_smoothing))


def summarize(sums: dict) -> dict:
    """Means {'loss', 'top1', 'top5'} from eval sums accumulated over batches."""
    count = max(float(sums["count"]), 1.0)
    return {name: float(sums[f"{name}_sum"]) / count for name in ("loss", "top1", "top5")}


# --- Steps ------------------------------------------------------------------------------------------------


def _pmean(tree, axis_name):
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def _psum(tree, axis_name):
    return tree if axis_name is None else lax.psum(tree, axis_name)


def dropout_key(state: TrainState, axis_name: str | None = None) -> jax.Array:
    """fold_in(fold_in(state.rng, step), device index): new masks every step and on every device."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    return key if axis_name is None else jax.random.fold_in(key, lax.axis_index(axis_name))


def train_step(state: TrainState, batch: dict, *, axis_name: str | None = None, num_classes: int | None = None,
               label_smoothing: float = 0.0, aux_loss_weight: float = 0.0,
               frozen_backbone: bool = False, map_loss_j: float = 0.0) -> tuple[TrainState, dict]:
    """One SGD step on this device's part of the batch; see the module docstring.

    With `frozen_backbone` (config.freeze_backbone: only the head learns) the model runs in inference mode,
    as Keras runs a base model with trainable=False: BatchNorm normalizes with its running statistics and
    leaves them as they are, dropout is off, auxiliary heads are silent. The frozen part is then a fixed
    feature extractor, and its statistics do not drift towards the new data.
    """
    images, labels = batch["image"], batch["label"]

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, new_vars = state.apply_fn(variables, images, train=not frozen_backbone,
                                          rngs={"dropout": dropout_key(state, axis_name)},
                                          mutable=["batch_stats", "aux"])
        loss = jnp.mean(cross_entropy(logits, labels, num_classes, label_smoothing, map_loss_j))
        # Each leaf of the sown 'aux' collection is one auxiliary head's logits (none outside GoogLeNet/Inception).
        aux_losses = [jnp.mean(cross_entropy(a, labels, num_classes, label_smoothing))
                      for a in jax.tree.leaves(new_vars.get("aux", {}))]
        total = loss + aux_loss_weight * sum(aux_losses, jnp.zeros((), jnp.float32))
        return total, (logits, new_vars.get("batch_stats", {}), aux_losses)

    (loss, (logits, batch_stats, aux_losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = _pmean(grads, axis_name)
    # Each device normalized with the cross-device statistics already (BatchNorm's axis_name); averaging
    # the running averages as well keeps replicas identical whatever the model does.
    batch_stats = _pmean(batch_stats, axis_name)
    # A step whose gradients are not finite must not poison the running statistics either (the optimizer's
    # apply_if_finite decides about the params). The norm is finite exactly when every gradient is, except where
    # the squares overflow (gradients past ~1e19: the statistics then skip a step the optimizer still takes), and
    # the metrics need it anyway: one reduction over the gradients instead of two compiles in about half the time
    # (densenet121's step; benchmarks/NOTES.md row 35).
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm)
    batch_stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), batch_stats, state.batch_stats)
    if frozen_backbone:  # as loaded, bit for bit (the average over devices of equal values can round)
        batch_stats = state.batch_stats
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    metrics = compute_metrics(logits, labels, num_classes)
    metrics.update(loss=loss, grad_norm=grad_norm)
    if aux_losses:
        metrics["aux_loss"] = sum(aux_losses)
    metrics = _pmean(metrics, axis_name)
    skipped = optim.skipped_updates(opt_state)
    if skipped is not None:
        metrics["skipped"] = skipped
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics


def scanned(step_fn: Callable) -> Callable:
    """`step_fn` (a train step) over a stack of k batches ([k, B, ...] each) in one program (`lax.scan`):
    (state after the k steps, each step's metrics stacked [k]). The same k steps as k calls, in one host
    call: for steps of a few milliseconds, the dispatch and the loop's per-step host work shrink k-fold."""

    def steps(state, batches: dict, **kwargs):
        # Unrolled: XLA:CPU runs a rolled loop's body ~2.5x slower (lenet5, batch 32: 23 ms of CPU a step
        # against 9 ms alone, benchmarks/NOTES.md row 33); unrolled, 8 steps take 8% less than 8 calls.
        return lax.scan(functools.partial(step_fn, **kwargs), state, batches, unroll=True)

    return steps


def eval_step(state: TrainState, batch: dict, axis_name: str | None = None) -> dict:
    """Masked sums of loss (plain CE), top-1 and top-5 hits and the example count, summed over devices."""
    logits = state.apply_fn(state.variables(), batch["image"], train=False)
    per_example = _per_example(logits, batch["label"])
    mask = batch.get("mask")
    mask = jnp.ones(logits.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    sums = {f"{name}_sum": jnp.sum(value * mask) for name, value in per_example.items()}
    sums["count"] = jnp.sum(mask)
    return _psum(sums, axis_name)


def step_functions(config, num_classes: int) -> tuple[Callable, Callable]:
    """`train_step` and `eval_step` with the config's loss settings bound (axis_name is left to the driver)."""
    train_fn = functools.partial(train_step, num_classes=num_classes, label_smoothing=config.label_smoothing,
                                 aux_loss_weight=config.aux_loss_weight,
                                 frozen_backbone=bool(config.freeze_backbone),
                                 map_loss_j=float(config.get("map_loss_j", 0.0)))
    return train_fn, eval_step


# --- Reduce on plateau ------------------------------------------------------------------------------------


def update_plateau(state: TrainState, val_loss) -> TrainState:
    """Feed one validation loss to reduce-on-plateau: the lr scale drops by `plateau_factor` after
    `plateau_patience` evaluations without improvement. Only the plateau state moves (zero updates)."""
    if state.plateau is None:
        return state

    def move(node):
        if not isinstance(node, optim.PlateauState):
            return node
        return state.plateau.update((), node, value=jnp.asarray(val_loss, jnp.float32))[1]

    opt_state = jax.tree.map(move, state.opt_state, is_leaf=lambda x: isinstance(x, optim.PlateauState))
    return state.replace(opt_state=opt_state)


def learning_rate(state: TrainState, schedule_fn: optax.Schedule) -> jax.Array:
    """The effective learning rate at `state.step`: the schedule times the plateau scale."""
    return schedule_fn(state.step) * optim.plateau_scale(state.opt_state)


__all__ = [
    "TrainState", "compute_metrics", "create_train_state", "cross_entropy", "dropout_key", "eval_step",
    "init_variables",
    "learning_rate", "scanned", "model_dtype", "step_functions", "summarize", "top_k_correct", "train_step",
    "update_plateau",
]
