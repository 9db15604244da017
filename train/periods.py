"""How often a run logs and evaluates where its recipe leaves the period at -1: sized to the run.

Logging: about every LOG_FRACTION of the run's steps (a hundred lines whatever its length), but not more often
than every MIN_LOG_STEPS steps: each logged line fetches the window's metrics from the device and writes
metrics.jsonl and TensorBoard, host work that shows beside steps of a few milliseconds.

Evaluation: once per epoch, as Keras's `fit(validation_data=...)` does, unless evaluating the whole split every
epoch would cost more than EVAL_BUDGET of the training compute (a forward pass is about FORWARD_SHARE of a
training step's work per image); then every k epochs, the smallest k within the budget. The embedded MNIST
subset (2,000 validation images per 10,000 training images: 6.7% an epoch) is evaluated every 2 epochs;
ImageNet, CIFAR and full MNIST (1-4%) every epoch. Runs scheduled on the validation loss (reduce-on-plateau)
keep one evaluation per epoch: their patience counts evaluations. The loop also logs and evaluates at the
last step, whatever the period.

Several steps per host call (config.steps_per_call = k): a call never runs past a step where the loop logs,
evaluates, checkpoints or ends; where fewer than k steps are left before one, they run one by one (two compiled
programs in all, not one per call length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LOG_FRACTION = 0.01
MIN_LOG_STEPS = 10
EVAL_BUDGET = 0.05
FORWARD_SHARE = 1 / 3


def log_every(config, num_steps: int) -> int:
    """The logging period in steps: `config.log_every_steps` when > 0, else sized to a run of `num_steps`."""
    if config.log_every_steps > 0:
        return int(config.log_every_steps)
    return max(MIN_LOG_STEPS, round(num_steps * LOG_FRACTION))


def eval_every(config, steps_per_epoch: int, eval_split_size: int) -> int:
    """The evaluation period in steps: `config.eval_every_steps` when > 0, else a whole number of epochs,
    sized so that an evaluation costs at most EVAL_BUDGET of the training between two (one epoch under a
    plateau schedule). `eval_split_size`: the examples of the evaluation split (config.eval_steps may take
    fewer)."""
    if config.eval_every_steps > 0:
        return int(config.eval_every_steps)
    if config.schedule == "plateau":
        return steps_per_epoch
    evaluated = eval_split_size if config.eval_steps <= 0 else min(eval_split_size,
                                                                   config.eval_steps * config.eval_batch_size)
    cost_per_epoch = FORWARD_SHARE * evaluated / (steps_per_epoch * config.batch_size)
    return max(1, math.ceil(cost_per_epoch / EVAL_BUDGET - 1e-9)) * steps_per_epoch


def call_length(step: int, steps_per_call: int, periods: Sequence[int], end: int) -> int:
    """Steps in the host call after `step`: `steps_per_call` when that many reach neither past the next
    multiple of any of `periods` (the steps where the loop logs, evaluates, checkpoints) nor past `end`, else 1."""
    to_next = min([end - step] + [p - step % p for p in periods])
    return steps_per_call if steps_per_call <= to_next else 1
