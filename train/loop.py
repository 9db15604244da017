"""The training loop: `train_and_evaluate(config, workdir)`; `evaluate(config, workdir, split)` lives in
train/evaluation.py and is importable from here too.

Set up (train/setup.py) -> restore or start the state (train/state.py) -> a loop of step / log
(train/train_metrics.py, train/metrics_log.py, train/progress.py) / evaluate (train/evaluation.py) / checkpoint
(jaxcnn.checkpoint), stopping cleanly on a signal (train/signals.py).

Reproducibility: one root key from `config.seed`; the train step derives each step's key with
`fold_in(key, step)`, and the data order is a pure function of (seed, epoch). A checkpoint stores the
state and the data position (epoch, batch), so a resumed run replays exactly the batches and keys an
uninterrupted run would have seen and ends bit-identical to it.

Several steps per host call (`config.steps_per_call`, the 'single' driver): `calls` stacks k batches for one
jitted call of k steps; calls end where the loop logs, evaluates or checkpoints (train/periods.py), so every
period, the data position and the resume are as with one step per call.

Interruptions: SIGTERM and SIGINT make the loop save a checkpoint at the current step and return with
`interrupted` set (train/signals.py).

Resuming: checkpoints record the config they were made with; a rerun whose config would change the
training is refused before any step (`check_resume`). Unreadable checkpoints are skipped but kept, and
metrics.jsonl keeps the lines of every checkpoint that still exists (`MetricsLog`).

Multi-process runs (after `jaxcnn.parallel.initialize_distributed`): every process runs this same loop on
its own shard of the data (`config.batch_size` stays the global batch; each process reads
batch_size / process_count examples a step) and takes part in every step, evaluation and checkpoint save or
restore; the workdir must be one directory all processes see. Only process 0 writes metrics.jsonl,
TensorBoard and the progress lines (the metrics are global already: the steps average them over all
devices).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxcnn import checkpoint as ckpt
from jaxcnn import optim
from train import periods
from train.errors import ConfigChanged, TrainingError
from train.evaluation import as_recorded, evaluate, run_eval
from train.metrics_log import MetricsLog
from train.prefetch import prefetch_to_device
from train.progress import ProgressBar
from train.setup import check_resume, image_shape_for, input_record, is_primary, make_pipeline, setup
from train.signals import StopSignals
from train.state import initial_state
from train.train_metrics import TrainMetrics

# What callers (train.main, tests, notebooks, benchmarks) import from here; the rest lives in the modules above.
__all__ = ["train_and_evaluate", "evaluate", "setup", "make_pipeline", "initial_state", "input_record",
           "image_shape_for", "as_recorded", "TrainingError", "ConfigChanged"]


def poisoned(batch: dict) -> dict:
    """The batch with NaN images (config.debug_nan_step)."""
    return {**batch, "image": batch["image"] * np.float32(np.nan)}


def batches(pipeline, position: ckpt.Position, steps_per_epoch: int) -> Iterator[tuple[ckpt.Position, dict]]:
    """(position after the batch, batch) forever from `position` on, epoch after epoch."""
    epoch, skip = position.epoch, position.batch
    while True:
        for i, batch in enumerate(pipeline.epoch(epoch, skip_batches=skip), start=skip):
            after = ckpt.Position(epoch, i + 1) if i + 1 < steps_per_epoch else ckpt.Position(epoch + 1, 0)
            yield after, batch
        epoch, skip = epoch + 1, 0


def calls(items: Iterator[tuple[ckpt.Position, dict]], step: int, length: Callable[[int], int],
          debug_nan_step: int = -1) -> Iterator[tuple[tuple[ckpt.Position, int], dict]]:
    """((position after the call, its step count), its batch) for host calls from `step` on: `length(step)`
    batches of `items` per call, one as it is or several stacked [k, B, ...]; the batch of step
    `debug_nan_step` poisoned."""
    while True:
        count = length(step)
        taken = [next(items) for _ in range(count)]
        parts = [poisoned(b) if step + i + 1 == debug_nan_step else b for i, (_, b) in enumerate(taken)]
        batch = parts[0] if count == 1 else {key: np.stack([b[key] for b in parts]) for key in parts[0]}
        yield (taken[-1][0], count), batch
        step += count


def restore(checkpoints: ckpt.Checkpoints, state) -> tuple[object, ckpt.Position]:
    """The newest complete checkpoint's state and data position, else `state` at the start of the data."""
    restored = checkpoints.restore_latest(state)
    if restored is None:
        return state, ckpt.Position()
    state, position, _ = restored
    if is_primary():
        print(f"resuming from step {int(state.step)} (epoch {position.epoch}, batch {position.batch})",
              file=sys.stderr)
    return state, position


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train `config.model` on `config.dataset`, evaluating and checkpointing into `workdir`.

    Resumes from the newest complete checkpoint in `workdir`. Returns a dict with best_top1, best_step,
    final_step, last validation metrics (validation), skipped_nonfinite and interrupted (None, 'SIGTERM'
    or 'SIGINT').
    """
    workdir = Path(workdir).absolute()
    s = setup(config, workdir)
    check_resume(config, workdir)
    train_data = make_pipeline(config, config.train_split, train=True, image_shape=s.image_shape,
                               batch_size=config.batch_size)
    eval_data = make_pipeline(config, config.eval_split, train=False, image_shape=s.image_shape,
                              batch_size=config.eval_batch_size)
    s.metadata["input"] = input_record(config, train_data)
    steps_per_epoch = int(train_data.steps_per_epoch)
    num_steps = optim.total_steps(config, steps_per_epoch)
    eval_every = periods.eval_every(config, steps_per_epoch, eval_data.num_examples)
    log_every = periods.log_every(config, num_steps)

    state = initial_state(s, steps_per_epoch)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = ckpt.Checkpoints(workdir, keep=config.keep_checkpoints)
    state, position = restore(checkpoints, state)
    step = int(jax.device_get(state.step))
    primary = is_primary()
    metrics_log = MetricsLog(workdir, resumed_step=step, write=primary,
                             keep_through=max(checkpoints.steps(), default=0))
    driver = s.driver
    device_state = driver.put_state(state)
    del state  # the driver's copy is the one trained; the start state's buffers go (VGG-16 with Adam: 1.6 GB)
    progress = ProgressBar(num_steps, initial=step, enabled=primary)
    train_metrics = TrainMetrics(metrics_log, progress, step, batch_size=config.batch_size,
                                 skip_nonfinite=config.skip_nonfinite,
                                 last_checkpoint=lambda: max(checkpoints.steps(), default=0))
    last_eval, interrupted = None, None
    call_length = functools.partial(periods.call_length, steps_per_call=s.steps_per_call, end=num_steps,
                                    periods=(log_every, eval_every, config.checkpoint_every_steps))

    with StopSignals(synchronized=jax.process_count() > 1) as stop:
        try:
            stream = prefetch_to_device(calls(batches(train_data, position, steps_per_epoch), step, call_length,
                                              config.debug_nan_step), driver.put_batch)
            while step < num_steps and not stop.received:
                (position, count), batch = next(stream)
                if count == 1:
                    device_state, metrics = driver.train_step(device_state, batch)
                else:
                    device_state, metrics = driver.train_steps(device_state, batch)
                step += count
                progress.step(step, outputs=(device_state, metrics))
                train_metrics.add(metrics, steps=count)
                is_last = step == num_steps
                stopping = stop.check(step)  # every call: multi-process runs agree on the step to stop at
                if step % log_every == 0 or is_last or stopping:
                    train_metrics.flush(step)
                if step % eval_every == 0 or is_last:
                    train_metrics.flush(step)
                    last_eval = run_eval(driver, device_state, eval_data, config.eval_steps)
                    metrics_log.write(step, "validation", **last_eval)
                    device_state = driver.update_plateau(device_state, last_eval["loss"])
                    checkpoints.save(driver.get_state(device_state), position, s.metadata, last_eval)
                elif step % config.checkpoint_every_steps == 0:
                    train_metrics.flush(step)
                    checkpoints.save(driver.get_state(device_state), position, s.metadata)
            train_metrics.flush(step)
            if stop.received:
                interrupted = stop.received
                checkpoints.save(driver.get_state(device_state), position, s.metadata)
                checkpoints.wait()  # on disk before we say so
                if primary:
                    print(f"{interrupted}: saved a checkpoint at step {step}; rerun to resume", file=sys.stderr)
        finally:
            progress.close()
            metrics_log.close()
            checkpoints.close()

    best = metrics_log.best()
    result = dict(best_top1=best[0] if best else None, best_step=best[1] if best else None, final_step=step,
                  validation=last_eval, skipped_nonfinite=train_metrics.skipped, interrupted=interrupted)
    if best and primary:
        print(f"best validation top-1: {best[0]:.4f} at step {best[1]}")
    return result
