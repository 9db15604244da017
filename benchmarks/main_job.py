"""The main job against Keras: `python -m train.main --model=lenet5` beside the seeds' Keras LeNet-5 `fit`.

    python benchmarks/main_job.py [--runs=3] [--peers=ours,keras-tensorflow,keras-jax] [--json=out.json]

Every run is a whole fresh process, timed from outside from start to exit (imports, compilation, data,
training, evaluation and checkpoints included), the peers in turn (A B C A B C ...), after one untimed warm-up
round (disk caches, and our persistent compilation cache, as a user's second run finds them).

* ours: the default command on a fresh workdir each run, the recipe as train/configs/lenet5.py has it.
  `ours-cold` is the same with an empty compilation cache each run (a user's very first run).
  Also reported: the seconds from start to the first progress line.
* keras-tensorflow / keras-jax: the seeds' Keras LeNet-5 (`jaxcnn.convert.keras.keras_reference`, the
  model our converter maps from), `model.fit` on the same embedded 10,000 training images, validated on the
  same 2,000 after every epoch, with the recipe's batch, epochs, optimizer, momentum and learning-rate steps,
  no augmentation, KERAS_BACKEND set for that process. Importing our converter module pulls in JAX, which a
  Keras user would not import: its import time is measured in the child and taken off Keras's wall time.

Reported per peer: wall seconds (min, median), CPU seconds of the child, all threads (median; steadier than
wall time when other jobs share the cores), best validation top-1 (min, median), and ours' median wall and CPU
time over each Keras backend's (< 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from host import report  # beside this file: `python benchmarks/main_job.py` puts benchmarks/ on the path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EMBEDDED = os.path.join(ROOT, "jaxcnn", "data", "embedded_mnist.npz")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the 'dataset' normalization ours applies (jaxcnn.data.pipeline.STATS)
PEERS = ("ours", "ours-cold", "keras-tensorflow", "keras-jax")
BEST = re.compile(r"best validation top-1: ([0-9.]+)")
# A progress bar's line naming a step done, with a rate: '16/3120 [00:00<00:05, 80.00step/s]' (not '?step/s').
PROGRESS = re.compile(r"(?<![\d.])[1-9]\d*/\d+ \[[^\]?]*?[\d.]+(?:step/s|s/step)")


# ------------------------------------------------------------------------------------------- Keras child


def keras_fit(model_name: str = "lenet5") -> dict:
    """Train the seeds' Keras model with the recipe's settings (runs inside the child process)."""
    t0, cpu0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    from jaxcnn.convert.keras import keras_reference  # imports jax too: timed, and taken off the wall time

    helper_s, helper_cpu_s = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_SELF) - cpu0
    import keras
    import numpy as np

    from train.configs import recipe_for

    config = recipe_for(model_name)
    if config.optimizer != "sgd" or config.schedule != "piecewise":
        raise SystemExit(f"error: main_job.py knows the sgd + piecewise recipe, not {config.optimizer} + "
                         f"{config.schedule}: extend keras_fit")
    with np.load(EMBEDDED) as f:
        x_train, y_train = f["train_images"], f["train_labels"]
        x_val, y_val = f["validation_images"], f["validation_labels"]

    def prepare(x):
        return ((x[..., None].astype(np.float32) / 255.0) - MNIST_MEAN) / MNIST_STD

    batch, epochs = int(config.batch_size), int(config.num_epochs)
    steps_per_epoch = math.ceil(len(x_train) / batch)  # fit keeps the last partial batch
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(b * steps_per_epoch) for b in config.piecewise_boundaries], list(config.piecewise_values))
    model = keras_reference(model_name)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=float(config.momentum)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(prepare(x_train), y_train, batch_size=batch, epochs=epochs,
                        validation_data=(prepare(x_val), y_val), shuffle=True, verbose=0)
    return {"best_top1": max(history.history["val_accuracy"]), "helper_import_s": helper_s,
            "helper_import_cpu_s": helper_cpu_s, "backend": keras.backend.backend()}


# ----------------------------------------------------------------------------------------------- parent


def cpu_seconds(who: int = resource.RUSAGE_CHILDREN) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or of its finished children, all threads."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def child_env(**extra) -> dict:
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def run_ours(extra_args: list[str], cache_home: str) -> dict:
    """One `python -m train.main --model=lenet5` on a fresh workdir: wall, first progress line, best top-1."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "train.main", "--model=lenet5", f"--workdir={workdir}", *extra_args]
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(JAXCNN_HOME=cache_home), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first_line_s, seen = None, ""
        while chunk := os.read(proc.stderr.fileno(), 65536).decode(errors="replace"):
            seen = (seen + chunk)[-4096:]  # the progress report goes to stderr, '\n' or '\r' separated
            if first_line_s is None and PROGRESS.search(seen):
                first_line_s = time.perf_counter() - t0
        out = proc.stdout.read()
        proc.wait()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    best = BEST.search(out)
    if proc.returncode != 0 or not best:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {out[-500:]}")
    return {"wall_s": wall, "cpu_s": cpu, "best_top1": float(best.group(1)), "first_progress_s": first_line_s}


def run_keras(backend: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--keras_child"]
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(KERAS_BACKEND=backend), capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"keras ({backend}) failed: {proc.stderr[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["backend"] != backend:
        raise RuntimeError(f"asked Keras for the {backend} backend, got {result['backend']}")
    return {"wall_s": wall - result["helper_import_s"], "cpu_s": cpu - result["helper_import_cpu_s"],
            "best_top1": result["best_top1"], "helper_import_s": result["helper_import_s"]}


def run_peer(peer: str, ours_args: list[str], warm_home: str) -> dict:
    if peer == "ours":
        return run_ours(ours_args, warm_home)
    if peer == "ours-cold":
        with tempfile.TemporaryDirectory() as cold_home:
            return run_ours(ours_args, cold_home)
    return run_keras(peer.split("-", 1)[1])


def summarize(runs: list[dict]) -> dict:
    walls, tops, cpus = [r["wall_s"] for r in runs], [r["best_top1"] for r in runs], [r["cpu_s"] for r in runs]
    out = {"wall_min_s": min(walls), "wall_median_s": statistics.median(walls),
           "cpu_median_s": statistics.median(cpus),
           "top1_min": min(tops), "top1_median": statistics.median(tops), "runs": runs}
    firsts = [r["first_progress_s"] for r in runs if r.get("first_progress_s") is not None]
    if firsts:
        out["first_progress_median_s"] = statistics.median(firsts)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each peer (after one warm-up round)")
    parser.add_argument("--peers", default="ours,keras-tensorflow,keras-jax", help=f"from {', '.join(PEERS)}")
    parser.add_argument("--ours_args", default="", help="extra flags for train.main (e.g. a lever to measure)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--cache_home", default=None, help="JAXCNN_HOME of the 'ours' runs (default: a fresh "
                        "directory that the warm-up round fills)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--keras_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keras_child:
        print(json.dumps(keras_fit()))
        return {}
    peers = args.peers.split(",")
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r}; choose from {', '.join(PEERS)}")

    results: dict[str, list[dict]] = {p: [] for p in peers}
    with tempfile.TemporaryDirectory() as fresh_home:  # our compilation cache, kept across this script's runs
        warm_home = args.cache_home or fresh_home
        for round_ in range(args.warmup + args.runs):
            for peer in peers:
                r = run_peer(peer, args.ours_args.split(), warm_home)
                label = "warm-up" if round_ < args.warmup else f"run {round_ - args.warmup + 1}"
                print(f"{label} {peer}: {json.dumps(r)}", file=sys.stderr, flush=True)
                if round_ >= args.warmup:
                    results[peer].append(r)
    summary = {p: summarize(runs) for p, runs in results.items()}
    for ours in (p for p in peers if p.startswith("ours")):
        for keras_peer in (p for p in peers if p.startswith("keras")):
            summary[f"{ours}/{keras_peer}"] = (summary[ours]["wall_median_s"] /
                                               summary[keras_peer]["wall_median_s"])
            summary[f"{ours}/{keras_peer} CPU"] = summary[ours]["cpu_median_s"] / summary[keras_peer]["cpu_median_s"]
    summary["load_average"] = os.getloadavg()
    return report(summary, args.json)


if __name__ == "__main__":
    main()
