"""What every benchmark shares: where a figure was taken (hosts here differ by up to ~2x in speed, so every
benchmark names its CPU) and how it is reported."""

from __future__ import annotations

import json
import platform


def cpu_name() -> str:
    """The host's CPU model, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def report(result: dict, json_path: str | None) -> dict:
    """Print `result` as JSON, and write it to `json_path` when given."""
    print(json.dumps(result, indent=2))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return result
