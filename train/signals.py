"""SIGTERM and SIGINT as a flag the training loop polls, so that it saves a checkpoint and stops cleanly.

train.main exits 0 after SIGTERM (a preempted job counts as a clean stop) and 130 after Ctrl-C, the shell's
convention; a second Ctrl-C interrupts at once. SIGKILL cannot be caught: the rerun resumes from the last
complete checkpoint (see jaxcnn.checkpoint). In multi-process runs SIGTERM goes to JAX's preemption service,
which picks one step at which every process stops and saves; SIGINT stops at once without a checkpoint
(processes cannot agree on a step for it).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopSignals:
    """Turn SIGTERM/SIGINT into a flag the loop polls (`check(step)`) ; a second SIGINT raises
    KeyboardInterrupt at once.

    With `synchronized` (multi-process runs) it installs no handler: SIGTERM stays with JAX's preemption
    notifier, and `check(step)` reports it at the step all processes agreed on
    (`multihost_utils.reached_preemption_sync_point`), so that they stop and save together; SIGINT keeps
    Python's KeyboardInterrupt.
    """

    def __init__(self, synchronized: bool = False):
        self.received: str | None = None
        self.synchronized = synchronized
        self._previous: dict = {}

    def check(self, step: int) -> str | None:
        """The stop signal received (None to go on); call it once after every step."""
        if self.synchronized and self.received is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.received = "SIGTERM"
        return self.received

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        self.received = self.received or name
        log.warning("%s received: saving a checkpoint at the current step and stopping", name)

    def __enter__(self) -> "StopSignals":
        if not self.synchronized and threading.current_thread() is threading.main_thread():  # only there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

