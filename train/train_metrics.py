"""The train metrics between two log lines: their non-finite check, their means and the images per second.

A non-finite loss stops the run with a message naming the first bad step (the bad state is not saved, so the last
checkpoint stays the last good one); with `config.skip_nonfinite` the optimizer skips such updates
(optax.apply_if_finite) and the count it keeps is logged instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from train.errors import TrainingError


class TrainMetrics:
    """The steps' metrics since the last `flush`, written at each flush to the metrics log and the progress bar.

    The metrics stay on the device until the flush (no sync per step); `skipped` is the optimizer's count of the
    updates it skipped, as of the last flush.
    """

    def __init__(self, metrics_log, progress, step: int, *, batch_size: int, skip_nonfinite: bool,
                 last_checkpoint: Callable[[], int]):
        self.metrics_log, self.progress = metrics_log, progress
        self.batch_size, self.skip_nonfinite = int(batch_size), skip_nonfinite
        self.last_checkpoint = last_checkpoint  # named in the message of a non-finite loss
        self.skipped = 0
        self._start(step + 1, time.perf_counter())

    def _start(self, first_step: int, tick: float) -> None:
        self.window, self.first_step, self.tick, self.images = [], first_step, tick, 0

    def add(self, metrics: dict, steps: int = 1) -> None:
        """The metrics of one more host call: one step's (scalars), or `steps` steps' stacked [steps]."""
        self.window.append(metrics)
        self.images += self.batch_size * steps

    def flush(self, step: int) -> dict:
        """Check and log the pending metrics as of `step` (their means; {} when none are pending); raise
        TrainingError on a non-finite loss unless skipping."""
        if not self.window:
            return {}
        steps = per_step(self.window)
        bad = first_nonfinite(steps["loss"], self.first_step)
        if bad is not None and not self.skip_nonfinite:
            raise TrainingError(f"non-finite loss at step {bad}: stopping; the last checkpoint "
                                f"(step {self.last_checkpoint()}) holds the last good state")
        if "skipped" in steps:  # the optimizer's own count of the updates apply_if_finite skipped
            self.skipped = int(np.max(steps["skipped"]))
        finite = np.isfinite(steps["loss"])
        means = ({k: float(np.mean(v[finite])) for k, v in steps.items() if k in MEANS} if finite.any()
                 else {k: float("nan") for k in ("loss", "top1", "top5")})
        now = time.perf_counter()
        rate = self.images / max(now - self.tick, 1e-9)
        extra = {"skipped_nonfinite": self.skipped} if self.skip_nonfinite else {}
        self.metrics_log.write(step, "train", **means, images_per_sec=rate, **extra)
        self.progress.update(step, loss=means["loss"], top1=means["top1"], img_per_s=round(rate))
        self._start(step + 1, now)
        return means


MEANS = ("loss", "top1", "top5", "aux_loss")  # the metrics logged as means over the window's steps


def per_step(window: list[dict]) -> dict[str, np.ndarray]:
    """The window's metrics on the host, one value per step: host calls of one step give scalars, calls of
    k steps (config.steps_per_call) arrays [k]."""
    fetched = jax.device_get(window)
    return {k: np.concatenate([np.ravel(np.asarray(m[k])) for m in fetched]) for k in fetched[0]}


def first_nonfinite(losses: np.ndarray, first_step: int) -> int | None:
    """The step of the first non-finite loss of a window's `losses` (one a step), or None."""
    bad = np.flatnonzero(~np.isfinite(losses))
    return first_step + int(bad[0]) if len(bad) else None
