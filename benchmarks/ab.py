"""Same-process A/B of one of our CPU formulations against plain flax/XLA, on the full train step.

    python benchmarks/ab.py --model=resnet18 --change=conv    # jaxcnn.conv's im2col gradients vs nn.Conv
    python benchmarks/ab.py --model=resnet18 --change=pool    # the per-tap max-pool gradient vs reduce_window

Both variants are compiled in one process and timed alternately, step by step, so a busy machine slows both
alike and the ratio stays meaningful. Also printed: the largest parameter difference after one step from the
same state (the two must agree to fp32 rounding).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

from jaxcnn import hugepages

if __name__ == "__main__":
    hugepages.reexec_with_huge_pages()  # before jax is imported: XLA's buffers on 2 MiB pages

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn.models.alexnet
import jaxcnn.models.densenet
import jaxcnn.models.googlenet
import jaxcnn.models.resnet
from jaxcnn import conv, layers, training
from jaxcnn.models import get_model, get_spec
from train.configs import default

# Where the models look the two formulations up (alexnet/vgg/nin reach Conv through the jaxcnn.conv module).
CONV_USERS = (conv, layers, jaxcnn.models.resnet, jaxcnn.models.densenet)
POOL_USERS = (jaxcnn.models.resnet, jaxcnn.models.densenet, jaxcnn.models.alexnet, jaxcnn.models.googlenet)


plain_max_pool = functools.partial(layers.max_pool, per_tap_gradient=False)


def use_plain(change: str, plain: bool) -> None:
    """Point the models at the plain (True) or our (False) formulation; they look it up when traced."""
    for user in CONV_USERS if change == "conv" else POOL_USERS:
        if change == "conv":
            user.Conv = nn.Conv if plain else OUR_CONV
        else:
            user.max_pool = plain_max_pool if plain else layers.max_pool


OUR_CONV = conv.Conv


def compiled_step(model_name: str, batch: dict, plain: bool, change: str):
    use_plain(change, plain)
    try:
        spec = get_spec(model_name)
        config = default.get_config()
        config.model = model_name
        model = get_model(model_name, num_classes=spec.num_classes)
        state = training.create_train_state(model, config, jax.random.key(0), batch["image"].shape[1:], 100)
        train_fn, _ = training.step_functions(config, spec.num_classes)
        return jax.jit(train_fn).lower(state, batch).compile(), state
    finally:
        use_plain(change, False)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--change", choices=["conv", "pool"], default="conv")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)

    spec = get_spec(args.model)
    rng = np.random.default_rng(0)
    batch = jax.device_put({
        "image": rng.standard_normal((args.batch_size, args.image_size, args.image_size, spec.input_shape[2]),
                                     np.float32),
        "label": rng.integers(0, spec.num_classes, args.batch_size).astype(np.int32)})
    variants = {name: compiled_step(args.model, batch, plain, args.change)
                for name, plain in (("plain", True), ("ours", False))}
    after = {name: step(state, batch)[0] for name, (step, state) in variants.items()}
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(after["plain"].params),
                                                               jax.tree.leaves(after["ours"].params)))
    times = {name: [] for name in variants}
    for _ in range(args.steps + 1):  # the first round is a warm-up
        for name, (step, state) in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(state, batch))
            times[name].append(time.perf_counter() - t0)
    rate = {name: args.batch_size / statistics.median(t[1:]) for name, t in times.items()}
    result = {"model": args.model, "change": args.change, "plain_images_per_sec": rate["plain"],
              "ours_images_per_sec": rate["ours"], "speedup": rate["ours"] / rate["plain"],
              "max_param_diff_after_one_step": diff}
    print(result)
    return result


if __name__ == "__main__":
    main()
