"""Same-process A/B of one of our CPU formulations against plain flax/XLA, on the full train step.

    python benchmarks/ab.py --model=resnet18 --change=conv    # jaxcnn.conv's im2col gradients vs nn.Conv
    python benchmarks/ab.py --model=lenet5 --image_size=28 --batch_size=32 --change=conv --steps=300
                                    # and its sum of taps for a grey input
    python benchmarks/ab.py --model=resnet18 --change=pool    # the per-tap max pool vs reduce_window + autodiff
    python benchmarks/ab.py --model=vgg16_bn --image_size=32 --batch_size=32 --change=fold
                                    # the adaptive pool folded into the first dense layer vs pool + flatten + Dense
    python benchmarks/ab.py --model=lenet5 --image_size=28 --batch_size=32 --change=narrow --steps=300
                                    # col2im input gradients for narrow inputs (LeNet's C3) vs XLA's convolution
    python benchmarks/ab.py --model=resnet18 --change=onednn  # oneDNN's convolutions vs XLA's (jaxcnn.conv)

Both variants are compiled in one process and timed alternately, step by step, so a busy machine slows both
alike and the ratio stays meaningful: of the median steps (`speedup`) and of the fastest ones
(`speedup_of_fastest_steps`). Also printed: the largest parameter difference after one step from the same state
(the two must agree to fp32 rounding).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

from jaxcnn import hugepages, xla_flags

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # before jax is imported: XLA's buffers on 2 MiB pages

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxcnn.models.alexnet
import jaxcnn.models.densenet
import jaxcnn.models.googlenet
import jaxcnn.models.lenet
import jaxcnn.models.resnet
from jaxcnn import conv, layers

try:
    from benchmarks.train_step import compile_step, random_batch
except ImportError:  # run as a script from benchmarks/
    from train_step import compile_step, random_batch

# Where the models look the two formulations up (alexnet/vgg/nin reach Conv through the jaxcnn.conv module).
PlainCNN = jaxcnn.models.alexnet.PlainCNN
USERS = {"conv": (conv, layers, jaxcnn.models.resnet, jaxcnn.models.densenet, jaxcnn.models.lenet),
         "pool": (jaxcnn.models.resnet, jaxcnn.models.densenet, jaxcnn.models.alexnet, jaxcnn.models.googlenet),
         "fold": (PlainCNN,), "narrow": (conv,), "onednn": (conv,)}
# (attribute, ours, plain) per change.
FORMULATIONS = {"conv": ("Conv", conv.Conv, nn.Conv),
                "pool": ("max_pool", layers.max_pool, functools.partial(layers.max_pool, per_tap_gradient=False)),
                # plain: never fold, so the adaptive pool copies the map and the dense layer reads every copy
                "fold": ("_pool_folds_into", PlainCNN._pool_folds_into, lambda self, x, train: None),
                # plain: every stride-1 input gradient as XLA's convolution of dy with the flipped kernel
                "narrow": ("NARROW_INPUT", conv.NARROW_INPUT, 0),
                # plain: XLA's convolutions with this module's formulations, as without oneDNN
                "onednn": ("ONEDNN", True, False)}


def use_plain(change: str, plain: bool) -> None:
    """Point the models at the plain (True) or our (False) formulation; they look it up when traced."""
    attribute, ours, reference = FORMULATIONS[change]
    for user in USERS[change]:
        setattr(user, attribute, reference if plain else ours)


def compiled_step(model_name: str, batch: dict, plain: bool, change: str):
    """(compiled step, state after its first step) with the plain or our formulation."""
    use_plain(change, plain)
    try:
        compiled, _, state, _ = compile_step(model_name, batch)
        return compiled, state
    finally:
        use_plain(change, False)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--change", choices=sorted(FORMULATIONS), default="conv")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)

    batch = jax.device_put(random_batch(args.model, args.batch_size, args.image_size))
    # Both start from the same initial state and have taken one step on the same batch.
    variants = {name: list(compiled_step(args.model, batch, plain, args.change))
                for name, plain in (("plain", True), ("ours", False))}
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(variants["plain"][1].params),
                                                               jax.tree.leaves(variants["ours"][1].params)))
    times = {name: [] for name in variants}
    for _ in range(args.steps + 1):  # the first round is a warm-up
        for name, variant in variants.items():
            t0 = time.perf_counter()
            variant[1], metrics = variant[0](variant[1], batch)  # the state is donated: carry it on
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - t0)
    batch_size = batch["image"].shape[0]
    rate = {name: batch_size / statistics.median(t[1:]) for name, t in times.items()}
    result = {"model": args.model, "change": args.change, "plain_images_per_sec": rate["plain"],
              "ours_images_per_sec": rate["ours"], "speedup": rate["ours"] / rate["plain"],
              "speedup_of_fastest_steps": min(times["plain"][1:]) / min(times["ours"][1:]),
              "max_param_diff_after_one_step": diff}
    print(result)
    return result


if __name__ == "__main__":
    main()
