"""train.progress: the bar writes to the stderr of the moment it is made."""

import io
import re
import sys

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


def test_the_first_rate_is_written_at_the_second_call_and_leaves_compilation_out(monkeypatch):
    """A log file (a non-terminal stream, one line per 5 s) gets its first rate at the second host call, 0.1 s
    after the first returned from a 30 s compilation, not 5 s later; the rate counts from the first return:
    8 steps in 0.1 s is 80 steps/s (counting the compilation would say 16 in 30.1 s, 0.53)."""
    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    stream = io.StringIO()
    bar = ProgressBar(3120, initial=40, stream=stream)
    clock[0] += 30.0
    bar.step(48)
    assert stream.getvalue().split("\r")[-1].startswith("compiling")  # no rate yet: one call is no measure
    clock[0] += 0.1
    bar.step(56)
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith("training") and "56/3120" in last
    rate = float(re.search(r"([\d.]+)step/s", last).group(1))
    assert 79.0 < rate < 81.0
    bar.close()
