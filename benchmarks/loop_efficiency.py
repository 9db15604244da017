"""Loop efficiency: images/s of the whole `train_and_evaluate` loop against the bare jitted step, one process.

    python benchmarks/loop_efficiency.py [--cases=lenet5:32:28,resnet18:128:32] [--rounds=2] [--json=F]

For each case (model:batch:image size) on the embedded MNIST subset (grey tiled to RGB for RGB models), in
turn, `--rounds` times:
* the loop: `train.loop.train_and_evaluate` with the model's recipe (train/configs) on a fresh workdir, once
  for one epoch and once for two. The difference between the two runs is one more epoch as the loop runs
  it (data pipeline, steps, logging, progress line, one evaluation, one checkpoint), with start-up
  cancelled out (a 2-step run first puts every compiled program in the persistent cache, as train.main's);
* the bare step: `jax.jit(training.train_step, donate_argnums=0)` on one device (the 'single' driver of
  jaxcnn.parallel) on one real batch already on the device, `--steps` calls after warm-up.
Where the loop runs k steps per host call (config.steps_per_call), the bare step is also timed in calls of k.
Efficiency = bare seconds per image / the loop's marginal seconds per image (the issue's target: >= 0.9),
in wall time (medians over the rounds) and in CPU time of the process (all threads: steadier than wall time
when other jobs share the cores, and it charges the loop for the input pipeline's threads too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from jaxcnn import hugepages, xla_flags

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # as train.main does: the loop and the step on the same malloc

import jax
import numpy as np

from train import compile_cache, loop
from train.configs import recipe_for

CASES = "lenet5:32:28,resnet18:128:32"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_step(config, steps: int, steps_per_call: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds per image of the jitted train step alone (one device, plain jit, the state donated)
    on a real batch already on the device; with steps_per_call > 1, of calls of that many steps (the batch
    stacked k times, as config.steps_per_call runs them), per image."""
    config = config.copy_and_resolve_references()
    config.parallel = "single"  # jaxcnn.parallel.SingleDriver: jax.jit of training.train_step
    with tempfile.TemporaryDirectory() as workdir:
        s = loop.setup(config, Path(workdir))
    pipeline = loop.make_pipeline(config, config.train_split, train=True, image_shape=s.image_shape,
                                  batch_size=config.batch_size)
    batch = next(iter(pipeline.epoch(0)))
    step = s.driver.train_step
    if steps_per_call > 1:
        batch, step = {k: np.stack([v] * steps_per_call) for k, v in batch.items()}, s.driver.train_steps
    batch = s.driver.put_batch(batch)
    state = s.driver.put_state(loop.initial_state(s, pipeline.steps_per_epoch))
    for _ in range(3):  # compile and warm up
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    calls = max(1, steps // steps_per_call)
    times, cpu0 = [], cpu_seconds()
    for _ in range(calls):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    images = config.batch_size * steps_per_call
    return statistics.median(times) / images, (cpu_seconds() - cpu0) / calls / images


def run_loop(config, epochs: int) -> tuple[float, float, dict]:
    """(wall, CPU) seconds of a whole `train_and_evaluate` of `epochs` epochs on a fresh workdir, and its result."""
    config = config.copy_and_resolve_references()
    config.num_epochs, config.num_train_steps = epochs, -1
    with tempfile.TemporaryDirectory() as workdir:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        result = loop.train_and_evaluate(config, workdir)
        return time.perf_counter() - t0, cpu_seconds() - cpu0, result


def measure(config, rounds: int, steps: int) -> dict:
    images_per_epoch = (10_000 // config.batch_size) * config.batch_size  # embedded_mnist: 10,000 train images
    with tempfile.TemporaryDirectory() as workdir:  # the steps per call the loop runs (config.steps_per_call)
        steps_per_call = loop.setup(config.copy_and_resolve_references(), Path(workdir)).steps_per_call
    warm = config.copy_and_resolve_references()
    # Compiles (into the persistent cache) every program the measured runs use: one step, and k in one call.
    warm.num_train_steps = 2 * steps_per_call
    with tempfile.TemporaryDirectory() as workdir:
        loop.train_and_evaluate(warm, workdir)
    loop_wall, loop_cpu, bare_wall, bare_cpu, top1, bare_k_cpu = [], [], [], [], [], []
    for _ in range(rounds):
        w1, c1, _ = run_loop(config, 1)
        w2, c2, result = run_loop(config, 2)
        loop_wall.append((w2 - w1) / images_per_epoch)
        loop_cpu.append((c2 - c1) / images_per_epoch)
        top1.append(result["best_top1"])
        w, c = bare_step(config, steps)
        bare_wall.append(w)
        bare_cpu.append(c)
        if steps_per_call > 1:
            bare_k_cpu.append(bare_step(config, steps, steps_per_call)[1])
    lw, lc, bw, bc = (statistics.median(v) for v in (loop_wall, loop_cpu, bare_wall, bare_cpu))
    return {"loop_images_per_sec": 1 / lw, "bare_images_per_sec": 1 / bw, "efficiency_wall": bw / lw,
            "loop_cpu_s_per_image": lc, "bare_cpu_s_per_image": bc, "efficiency_cpu": bc / lc,
            "steps_per_call": steps_per_call,
            # The bare step in calls of k steps too, where the loop runs them (efficiency against it, by CPU).
            "bare_k_cpu_s_per_image": statistics.median(bare_k_cpu) if bare_k_cpu else None,
            "efficiency_cpu_vs_bare_k": statistics.median(bare_k_cpu) / lc if bare_k_cpu else None,
            "rounds": {"loop_wall": loop_wall, "loop_cpu": loop_cpu, "bare_wall": bare_wall, "bare_cpu": bare_cpu,
                       "bare_k_cpu": bare_k_cpu, "best_top1_two_epochs": top1}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=CASES, help="model:batch:image_size, comma separated")
    parser.add_argument("--rounds", type=int, default=2, help="loop and bare measurements, in turn")
    parser.add_argument("--steps", type=int, default=30, help="timed bare steps per round")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    compile_cache.enable()  # as train.main: each fresh loop finds its steps compiled, as a rerun would
    results = []
    for case in args.cases.split(","):
        model, batch, size = case.split(":")
        config = recipe_for(model)
        config.dataset, config.batch_size, config.image_size = "embedded_mnist", int(batch), int(size)
        r = dict(model=model, batch_size=int(batch), image_size=int(size), **measure(config, args.rounds, args.steps))
        results.append(r)
        print(f"{model} batch {batch} @ {size}: loop {r['loop_images_per_sec']:.0f} img/s, bare step "
              f"{r['bare_images_per_sec']:.0f} img/s: efficiency {r['efficiency_wall']:.2f} (wall), "
              f"{r['efficiency_cpu']:.2f} (CPU time)", flush=True)
    out = {"cases": results, "load_average": os.getloadavg(), "device": str(jax.devices()[0])}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
