"""No idle start: seconds from `python -m train.main --model=M` to its first progress line with a rate, and how
many of them went to compilation.

    python benchmarks/first_progress.py [--models=lenet5,resnet18,alexnet,densenet121|all] [--runs=cold,warm]

Each model runs twice on a fresh workdir with the same, initially empty, compilation cache ($JAXCNN_HOME): the
cold run is a user's first (start-up, compilation, first steps), the warm run a user's second, whose compiled
programs come from the cache. Progress lines go to stderr; the first one counts once it names a step done with
a rate ("16/20 [00:01<00:00, 12.3step/s]").

The child is train.main itself, started through a few lines that first register a listener for JAX's own
compilation events (`jax.monitoring`: tracing, lowering to MLIR, XLA's compilation or the cache's load of its
result) and write them out at exit. `compile_s` is the wall time those events cover (nested ones once) before
the first progress line; `rest_s` = first progress - compile_s is what the issue bounds: "the first progress
line appears within 15 s of the program's start plus its compilation time".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from host import report
from main_job import PROGRESS, child_env  # the same progress-line pattern and child environment

sys.path.insert(0, ROOT)
from jaxcnn.models import list_models

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

# train.main under a listener for JAX's compilation events. Its first lines are train.main's own (XLA flags, the
# huge-page re-exec) so that jax is imported once, in the process that trains.
CHILD = """
import atexit, json, os, runpy, sys, time
from jaxcnn import hugepages, xla_flags
xla_flags.set_defaults()
hugepages.reexec_with_huge_pages()
from jax import monitoring
events = []
monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: events.append((event, time.time(), seconds)))
atexit.register(lambda: json.dump(events, open(os.environ["COMPILE_EVENTS_FILE"], "w")))
sys.argv = ["train.main", *sys.argv[1:]]
runpy.run_module("train.main", run_name="__main__")
"""


def covered_seconds(intervals: list[tuple[float, float]], until: float) -> float:
    """Seconds of (start, end) intervals before `until`, overlaps counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, until)
        if end > start:
            total += end - start
        reach = max(reach, end)
    return total


def first_progress(model: str, steps: int, cache_home: str) -> dict:
    """Seconds to the first progress line with a rate, the compilation before it, and the whole run."""
    with tempfile.TemporaryDirectory() as workdir:
        events_file = os.path.join(workdir, "compile_events.json")
        cmd = [sys.executable, "-c", CHILD, f"--model={model}", f"--workdir={workdir}/run",
               f"--num_train_steps={steps}"]
        start, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(JAXCNN_HOME=cache_home,
                                                             COMPILE_EVENTS_FILE=events_file),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first, seen = None, ""
        while chunk := os.read(proc.stderr.fileno(), 65536).decode(errors="replace"):
            seen = (seen + chunk)[-4096:]
            if first is None and PROGRESS.search(seen):
                first = time.perf_counter() - t0
        proc.stdout.read()
        proc.wait()
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or first is None:
            raise RuntimeError(f"{' '.join(cmd[3:])} failed (exit {proc.returncode}, progress line "
                               f"{'seen' if first else 'never seen'}): {seen[-500:]}")
        with open(events_file) as f:
            events = json.load(f)
    intervals = [(end - seconds, end) for event, end, seconds in events if event in COMPILE_EVENTS]
    compile_s = covered_seconds(intervals, until=start + first)
    return {"first_progress_s": first, "compile_s": compile_s, "rest_s": first - compile_s, "wall_s": wall}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet18,alexnet,densenet121",
                        help="comma-separated names, or 'all' for every registered model")
    parser.add_argument("--runs", default="cold,warm", help="cold (empty cache), warm (the cache cold filled), or both")
    parser.add_argument("--steps", type=int, default=20, help="--num_train_steps of each run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not set(args.runs.split(",")) <= {"cold", "warm"}:
        parser.error(f"--runs={args.runs}: give cold, warm or cold,warm")
    runs = [run for run in ("cold", "warm") if run in args.runs.split(",")]  # a warm run needs the cold one first
    models = list_models() if args.models == "all" else args.models.split(",")
    if unknown := [m for m in models if m not in list_models()]:
        parser.error(f"unknown model(s) {', '.join(unknown)}: give names from `python -m train.main --list_models` "
                     "or 'all'")
    results = {}
    for model in models:
        with tempfile.TemporaryDirectory() as cache_home:
            if runs == ["warm"]:  # fill the cache first, unmeasured
                first_progress(model, args.steps, cache_home)
            results[model] = {run: first_progress(model, args.steps, cache_home) for run in runs}
        print(f"{model}: " + "; ".join(f"{run} first progress line at {r['first_progress_s']:.1f} s, of which "
                                       f"{r['compile_s']:.1f} s compiling: {r['rest_s']:.1f} s else"
                                       for run, r in results[model].items()), file=sys.stderr, flush=True)
    results["load_average"] = os.getloadavg()
    return report(results, args.json)


if __name__ == "__main__":
    main()
