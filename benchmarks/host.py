"""Where a figure was taken: hosts here differ by up to ~2x in speed, so every benchmark names its CPU."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The host's CPU model, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"
