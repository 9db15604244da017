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

    def add(self, metrics: dict) -> None:
        """The metrics of one more step (the global batch)."""
        self.window.append(metrics)
        self.images += self.batch_size

    def flush(self, step: int) -> dict:
        """Check and log the pending metrics as of `step` (their means; {} when none are pending); raise
        TrainingError on a non-finite loss unless skipping."""
        if not self.window:
            return {}
        bad = first_nonfinite(self.window, self.first_step)
        if bad is not None and not self.skip_nonfinite:
            raise TrainingError(f"non-finite loss at step {bad}: stopping; the last checkpoint "
                                f"(step {self.last_checkpoint()}) holds the last good state")
        fetched = jax.device_get(self.window)
        if "skipped" in fetched[-1]:  # the optimizer's own count of the updates apply_if_finite skipped
            self.skipped = int(np.max(np.asarray(fetched[-1]["skipped"])))
        finite = [m for m in fetched if np.all(np.isfinite(np.asarray(m["loss"])))]
        means = mean_metrics(finite) if finite else {k: float("nan") for k in ("loss", "top1", "top5")}
        now = time.perf_counter()
        rate = self.images / max(now - self.tick, 1e-9)
        extra = {"skipped_nonfinite": self.skipped} if self.skip_nonfinite else {}
        self.metrics_log.write(step, "train", **means, images_per_sec=rate, **extra)
        self.progress.update(step, loss=means["loss"], top1=means["top1"], img_per_s=round(rate))
        self._start(step + 1, now)
        return means


def mean_metrics(window: list[dict]) -> dict:
    """Host means over the steps of a logging window (each value averaged over devices too)."""
    fetched = jax.device_get(window)
    keys = [k for k in fetched[0] if k in ("loss", "top1", "top5", "aux_loss")]
    return {k: float(np.mean([np.mean(np.asarray(m[k])) for m in fetched])) for k in keys}


def first_nonfinite(window: list[dict], first_step: int) -> int | None:
    """The step of the first non-finite loss in the window, or None."""
    for i, m in enumerate(jax.device_get(window)):
        if not np.all(np.isfinite(np.asarray(m["loss"]))):
            return first_step + i
    return None
