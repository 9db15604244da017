"""The training progress bar: tqdm on stderr with steps, rate, ETA, and the last logged loss and accuracy.

It advances at every host call, as the call is dispatched (the step count is known on the host); loss and top-1
appear with each logging window. Until the first call's steps are done, the description says the step is
compiling (a minute or more for the deep models on 2 cores). The clock of rate and ETA starts then, so that neither
counts the compilation, and the first line with a rate is written when the next call's steps are done, whatever
the throttle: on a non-terminal stderr (a log file) tqdm writes one line every `mininterval` seconds, and the first
rate would otherwise show 5 s late. Those two calls are the bar's only waits on the device: a dispatch returns
before its steps run, and a first rate timed between two dispatches said hundreds of steps a second where the
device did four. Silent with `enabled=False` (processes other than 0 of a multi-process run).
"""

from __future__ import annotations

import sys

import jax
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
        # A rerun of a finished run trains (and compiles) nothing: its bar says so rather than "compiling".
        self._bar = tqdm(total=total, initial=initial, desc="compiling" if initial < total else "trained",
                         unit="step", file=stream, dynamic_ncols=True, mininterval=0.5 if tty else 5.0,
                         smoothing=0.1)
        self._waits_left = 2  # the first two calls: the clock's start, then the first rate (module docstring)

    def step(self, step: int, outputs=None) -> None:
        """The loop dispatched the steps through `step` (an absolute step number); `outputs`, that call's device
        arrays, are waited for where the bar starts its clock and where it writes its first rate."""
        if not self.enabled:
            return
        if not self._waits_left:
            self._bar.update(step - self._bar.n)
            return
        jax.block_until_ready(outputs)
        self._waits_left -= 1
        if self._waits_left:  # the first call's steps are done: the rate counts from now
            self._bar.unpause()  # the timer restarts from the last line written, the "compiling" one
            self._bar.initial = self._bar.n = self._bar.last_print_n = step
            self._bar.set_description_str("training", refresh=False)
        else:  # the second call's steps are done too: the first rate, the device's, whatever the throttle
            self._bar.update(step - self._bar.n)
            self._bar.refresh()

    def update(self, step: int, **values) -> None:
        """Show the latest logged metrics (loss, top1, img_per_s...) at `step`. Not a call of the loop: it never
        takes the place of one the bar waits for."""
        if not self.enabled:
            return
        text = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()}
        self._bar.set_postfix(text, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
