"""Where a train step's time goes: thread time per XLA operation, from a `jax.profiler` trace.

    python benchmarks/profile_step.py --model=resnet18 [--batch_size=32] [--image_size=224] [--top=25]

Runs our compiled step (as `train_step.py` builds it) `--steps` times under `jax.profiler.trace`, then sums the
durations of the XLA:CPU events by operation name over all threads, and prints them largest first with the
output shape each operation writes (its name in the HLO dump). Thread time, not wall time: on 2 cores the
step's wall time is about half the total when both threads are busy.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
from pathlib import Path

from jaxcnn import hugepages, xla_flags

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # before jax is imported: XLA's buffers on 2 MiB pages

import jax
from jax.profiler import ProfileData

try:
    from benchmarks.train_step import compile_step, random_batch
except ImportError:  # run as a script from benchmarks/
    from train_step import compile_step, random_batch


def op_shapes(hlo_text: str) -> dict[str, str]:
    """Instruction name -> the shape it writes, from the optimized HLO's text."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ",
                                                        hlo_text, re.MULTILINE)}


def thread_times(trace_dir: str) -> collections.Counter:
    """Seconds per event name, summed over the host plane's threads (XLA:CPU's per-operation events)."""
    path = next(Path(trace_dir).rglob("*.xplane.pb"))
    totals = collections.Counter()
    for plane in ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            for event in line.events:
                totals[event.name] += event.duration_ns / 1e9
    return totals


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    batch = jax.device_put(random_batch(args.model, args.batch_size, args.image_size))
    compiled, _, state, _ = compile_step(args.model, batch)
    shapes = op_shapes(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
        totals = thread_times(trace_dir)
    ops = {name: t for name, t in totals.items() if name in shapes}
    per_step = sum(ops.values()) / args.steps
    print(f"{args.model}: {per_step:.3f} s of XLA thread time per step ({len(ops)} operations)")
    for name, seconds in sorted(ops.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{seconds / args.steps:8.3f} s {100 * seconds / args.steps / per_step:5.1f}%  {name:45s} {shapes[name]}")


if __name__ == "__main__":
    main()
