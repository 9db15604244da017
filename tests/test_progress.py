"""train.progress: the bar writes to the stderr of the moment it is made."""

import io
import sys

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
