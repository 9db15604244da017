"""The training progress bar: tqdm on stderr with steps, rate, ETA, and the last logged loss and accuracy.

It advances at every step (no device sync: the step count is known on the host), so rate and ETA show from the
first steps; loss and top-1 appear with each logging window. Until the first step returns, the description
says the step is compiling (a minute or more for the deep models on 2 cores). On a non-terminal stderr tqdm
still writes, throttled to one line every `mininterval` seconds. Silent with `enabled=False` (processes other
than 0 of a multi-process run).
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class ProgressBar:
    def __init__(self, total: int, initial: int = 0, enabled: bool = True, stream=None):
        self.enabled = enabled
        if not enabled:
            return
        # sys.stderr as it is now, not as it was at import: a default bound at import time kept a stream that
        # was later closed (pytest's capture), and every later run died on it.
        stream = sys.stderr if stream is None else stream
        tty = hasattr(stream, "isatty") and stream.isatty()
        self._bar = tqdm(total=total, initial=initial, desc="compiling", unit="step", file=stream,
                         dynamic_ncols=True, mininterval=0.5 if tty else 5.0, smoothing=0.1)

    def step(self, step: int) -> None:
        """The loop finished `step` (an absolute step number)."""
        if not self.enabled:
            return
        if self._bar.desc == "compiling":
            self._bar.set_description_str("training", refresh=False)
        self._bar.update(step - self._bar.n)

    def update(self, step: int, **values) -> None:
        """Show the latest logged metrics (loss, top1, img_per_s...) at `step`."""
        if not self.enabled:
            return
        text = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()}
        self._bar.set_postfix(text, refresh=False)
        self.step(step)

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
