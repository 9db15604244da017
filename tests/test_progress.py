"""train.progress: the bar writes to the stderr of the moment it is made."""

import io
import re
import sys

import pytest
import tqdm.std

from train.progress import ProgressBar


def test_the_bar_writes_to_the_current_stderr_not_the_one_at_import(monkeypatch):
    """The default stream used to be bound when the module was imported: once that stream was closed (pytest's
    capture of an earlier test), every later training run in the process died with 'I/O operation on closed
    file'. Two streams in turn, the first closed before the second bar is made: each bar writes to its own."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    bar = ProgressBar(10)
    bar.update(3, loss=0.5)
    bar.close()
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    bar = ProgressBar(10)
    bar.update(7, loss=0.25)
    bar.close()
    assert "7/10" in second.getvalue() and "loss=0.25" in second.getvalue()


class Dispatched:
    """A call's output as the host holds it after dispatch: ready once the fake clock reaches `done_at`."""

    def __init__(self, clock: list, done_at: float):
        self.clock, self.done_at = clock, done_at

    def block_until_ready(self):
        self.clock[0] = max(self.clock[0], self.done_at)
        return self


@pytest.mark.parametrize("logged_at_first_call", [False, True])
def test_the_first_rate_is_the_devices_written_at_the_second_call_and_leaves_compilation_out(monkeypatch,
                                                                                          logged_at_first_call):
    """A log file (a non-terminal stream, one line per 5 s) gets its first rate when the second host call's steps
    are done, not 5 s later; the rate counts from the first call's steps done, after a 30 s compilation: the
    device does 8 steps in 0.1 s, 80 steps/s. The host dispatches the second call 1 ms after the first returns,
    before either has run: timing dispatches would say 8,000 steps/s, and counting the compilation 0.53. A logging
    window that ends at the first call (its metrics shown) must not take the second call's place."""
    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    stream = io.StringIO()
    bar = ProgressBar(3120, initial=40, stream=stream)
    clock[0] += 30.0  # the first call returns once compiled; its steps run for 0.05 s more
    bar.step(48, outputs=Dispatched(clock, done_at=clock[0] + 0.05))
    if logged_at_first_call:
        bar.update(48, loss=0.5)
    else:
        assert stream.getvalue().split("\r")[-1].startswith("compiling")  # nothing written since
    assert not re.search(r"[\d.]+step/s", stream.getvalue())  # no rate yet: one call is no measure
    clock[0] += 0.001  # the second call is dispatched at once; its steps are done 0.1 s after the first's
    bar.step(56, outputs=Dispatched(clock, done_at=1030.15))
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith("training") and "56/3120" in last
    rate = float(re.search(r"([\d.]+)step/s", last).group(1))
    assert 79.0 < rate < 81.0
    bar.close()


def test_a_finished_run_rerun_is_not_said_to_be_compiling():
    """A rerun on the workdir of a finished run (initial = total) trains nothing: 16/16, "trained", no "compiling"."""
    stream = io.StringIO()
    ProgressBar(16, initial=16, stream=stream).close()
    lines = [line for line in stream.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("trained") and "16/16" in line for line in lines)
