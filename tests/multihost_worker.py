"""One process of the tests in test_multihost.py: `python tests/multihost_worker.py [--reference] FLAGS...`.

Registers `tiny_bn` (conv -> BatchNorm synced over the device axis -> dense: seconds to compile) and runs
`train.main` with FLAGS. With --reference (a single process), the loop's train and eval pipelines are
replaced by the global batches a 2-process run assembles: process 0's local batch, then process 1's.
With --psum_loop it only joins the job (`initialize_distributed` with the process flags) and sums over all
devices until killed, printing `step N/` lines: a job without tensorflow's seconds of start-up.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn
import numpy as np
from absl import app

from jaxcnn import layers
from jaxcnn.models import register

NUM_PROCESSES = 2  # of the run the reference imitates


class TinyBN(nn.Module):
    num_classes: int = 10
    axis_name: str | None = None
    dtype: object = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = layers.batch_norm(train, axis_name=self.axis_name)
        x = layers.ConvBN(8, 3, padding=1, norm=norm, name="block")(x)
        return nn.Dense(self.num_classes, name="head")(layers.global_avg_pool(x))


@register("tiny_bn", input_shape=(12, 12, 1), min_size=12, num_classes=10, paper="test model", year=2026,
          params=None, family="test")
def tiny_bn(num_classes: int = 10, **kw):
    return TinyBN(num_classes=num_classes, **kw)


class Concatenated:
    """Batches of several per-process pipelines concatenated in process order: one global batch a step."""

    def __init__(self, parts):
        self.parts = parts
        self.steps_per_epoch = parts[0].steps_per_epoch

    def __getattr__(self, name):  # what the parts share (image shape, normalization, class names...)
        return getattr(self.parts[0], name)

    def epoch(self, epoch: int, skip_batches: int = 0):
        for batches in zip(*(p.epoch(epoch, skip_batches) for p in self.parts)):
            yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def reference_pipeline(config, split, *, train, image_shape, batch_size):
    from jaxcnn import data

    return Concatenated([data.make_pipeline(
        config.dataset, split, batch_size=batch_size // NUM_PROCESSES, image_shape=tuple(image_shape),
        train=train, seed=int(config.seed), augment=config.augment if train else None,
        normalize=config.normalize, process_index=p, process_count=NUM_PROCESSES,
        shuffle_buffer=int(config.shuffle_buffer)) for p in range(NUM_PROCESSES)])


def psum_loop(argv: list[str]) -> None:
    import jax

    from jaxcnn import parallel

    given = dict(arg[2:].split("=", 1) for arg in argv if "=" in arg)
    parallel.initialize_distributed(given["coordinator_address"], int(given["num_processes"]),
                                    int(given["process_id"]), peer_timeout=float(given.get("peer_timeout", 60)))
    total = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")
    for step in range(1, 10**9):
        assert float(total(np.ones(jax.local_device_count()))[0]) == jax.device_count()
        print(f"step {step}/", file=sys.stderr, flush=True)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--psum_loop" in argv:
        psum_loop(argv)
    if "--reference" in argv:
        argv.remove("--reference")
        from train import loop

        loop.make_pipeline = reference_pipeline
    from train import main

    app.run(main.main, argv=["train.main", *argv])
