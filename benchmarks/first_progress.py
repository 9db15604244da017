"""No idle start: seconds from `python -m train.main --model=M` to its first progress line with a rate.

    python benchmarks/first_progress.py [--models=lenet5,resnet18,alexnet,densenet121] [--steps=20]

Each model runs twice on a fresh workdir with the same, initially empty, compilation cache ($JAXCNN_HOME): the
cold run is a user's first (start-up, compilation, first steps), the warm run a user's second, whose compiled
programs come from the cache. Cold minus warm is about the compilation; warm alone is what the issue's "within
15 s of the program's start plus its compilation time" leaves: imports, data, tracing, the first steps until the
first logged one. Progress lines go to stderr; the first one counts once it names a step done ("8/20").
"""

from __future__ import annotations

import argparse
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


def first_progress(model: str, steps: int, cache_home: str) -> dict:
    """Seconds to the first progress line that names a finished step, and to the end, of one run."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "train.main", f"--model={model}", f"--workdir={workdir}",
               f"--num_train_steps={steps}"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(JAXCNN_HOME=cache_home), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first, seen = None, ""
        while chunk := os.read(proc.stderr.fileno(), 65536).decode(errors="replace"):
            seen = (seen + chunk)[-4096:]
            if first is None and PROGRESS.search(seen):
                first = time.perf_counter() - t0
        proc.stdout.read()
        proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {seen[-500:]}")
        return {"first_progress_s": first, "wall_s": time.perf_counter() - t0}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet18,alexnet,densenet121")
    parser.add_argument("--steps", type=int, default=20, help="--num_train_steps of each run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = {}
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as cache_home:
            cold = first_progress(model, args.steps, cache_home)
            warm = first_progress(model, args.steps, cache_home)
        results[model] = {"cold": cold, "warm": warm,
                          "compile_s_about": cold["first_progress_s"] - warm["first_progress_s"]}
        print(f"{model}: first progress line at {cold['first_progress_s']:.1f} s cold, "
              f"{warm['first_progress_s']:.1f} s warm (compilation ~{results[model]['compile_s_about']:.1f} s)",
              file=sys.stderr, flush=True)
    results["load_average"] = os.getloadavg()
    return report(results, args.json)


if __name__ == "__main__":
    main()
