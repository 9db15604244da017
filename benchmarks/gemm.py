"""f32 matrix product GFLOP/s, XLA (`jnp.dot`) and torch (`torch.mm`) alternated in one process.

    python benchmarks/gemm.py [--n=2048] [--rounds=10]

Each round times one product of each (after a warm-up of both); reported: the best and the median round of
each, and the load average, since on a shared machine only the ratio of the two is steady.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from jaxcnn import hugepages, xla_flags

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # the same malloc as the other benchmarks

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    import torch

    n = args.n
    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    ja, ta = jax.device_put(a), torch.from_numpy(a)
    dot = jax.jit(jnp.dot)

    def run_jax():
        dot(ja, ja).block_until_ready()

    def run_torch():
        torch.mm(ta, ta)

    run_jax(), run_torch()
    times = {"jax": [], "torch": []}
    for _ in range(args.rounds):
        for name, fn in (("jax", run_jax), ("torch", run_torch)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    flop = 2 * n**3
    result = {f"{k}_gflops_best": flop / min(v) / 1e9 for k, v in times.items()}
    result.update({f"{k}_gflops_median": flop / statistics.median(v) / 1e9 for k, v in times.items()})
    result.update(n=n, torch_threads=torch.get_num_threads(), load_average=os.getloadavg())
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
