"""Images/sec of a full train step (forward, backward, optimizer update, BatchNorm update), ours vs torch.

    python benchmarks/train_step.py --model=resnet18 --vs=torch --json=out.json
    python benchmarks/train_step.py --model=resnet50 --vs=keras     # keras.applications on Keras's JAX backend

Ours is `jaxcnn.training.train_step` jitted once with the state donated, on one device, exactly as the
trainer runs it. With `--vs=torch` the same model from torchvision (a plain torch module for lenet5) takes
SGD-momentum steps on the same batch, right after ours, in a process of its own (see main); with `--vs=keras` the keras.applications model
(vgg16, resnet50, inception_v3, densenet121; weights=None) does, through `train_on_batch` on Keras's JAX
backend in this process, compiled with XLA like ours (the same-backend peer). Reported: the median over
`--steps` timed steps after warm-up, the first step's compile time, peak RSS, and MFU = achieved FLOP/s (XLA's
cost analysis of the step traced with XLA's own convolutions, `step_flops`) / the measured f32 matmul peak
(`jnp.dot` on 2048x2048).
Memory: peak RSS of the process before torch runs, against the bound params + grads + optimizer state +
BatchNorm statistics + saved activations + batch (`rss_over_bound`; the issue's target for resnet50 is <= 1.5).
XLA flags are taken from the XLA_FLAGS environment variable, as everywhere in JAX.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import time

from jaxcnn import hugepages, xla_flags

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # before jax is imported: XLA's buffers on 2 MiB pages
    os.environ.setdefault("KERAS_BACKEND", "jax")  # --vs=keras: the same backend as ours (read at keras import)

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import conv, training

try:
    from benchmarks.host import report
except ImportError:  # run as a script from benchmarks/
    from host import report
from jaxcnn.models import get_model, get_spec
from train.configs import default

DEFAULTS = {"lenet5": (256, 28)}  # model -> (batch, image size); others: batch 32 at 224


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Measured f32 matmul FLOP/s on this machine (the MFU denominator)."""
    a = jnp.ones((n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def time_steps(step, steps: int, warmup: int = 2) -> float:
    """Median seconds per call of `step()` (which must block until done) after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_batch(model_name: str, batch_size: int | None = None, image_size: int | None = None) -> dict:
    """A fixed random batch of the model's input shape (DEFAULTS, else 32 at 224x224, unless given)."""
    spec = get_spec(model_name)
    default_batch, default_size = DEFAULTS.get(model_name, (32, 224))
    batch_size, size = batch_size or default_batch, image_size or default_size
    rng = np.random.default_rng(0)
    return {"image": rng.standard_normal((batch_size, size, size, spec.input_shape[2]), np.float32),
            "label": rng.integers(0, spec.num_classes, batch_size).astype(np.int32)}


def compile_step(model_name: str, batch: dict, dtype: str = "float32", steps_per_call: int = 1):
    """Our train step for `model_name`, jitted with the state donated as in the trainer, and compiled for
    `batch` (with steps_per_call > 1: k steps in one call on `batch` stacked k times, as the trainer's
    config.steps_per_call); runs it once. Returns (compiled step, model, state after that call, seconds to
    compile and run it)."""
    spec = get_spec(model_name)
    config = default.get_config()
    config.model = model_name
    config.dtype = dtype  # bfloat16: bf16 compute, fp32 params and optimizer state (as in training)
    config.learning_rate, config.momentum = 0.01, 0.9
    num_classes = spec.num_classes
    model = get_model(model_name, num_classes=num_classes, dtype=training.model_dtype(config))
    state = training.create_train_state(model, config, jax.random.key(0), batch["image"].shape[-3:], 100)
    train_fn, _ = training.step_functions(config, num_classes)
    step = jax.jit(train_fn if steps_per_call == 1 else training.scanned(train_fn), donate_argnums=0)

    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return compiled, model, state, time.perf_counter() - t0


def step_flops(model_name: str, batch: dict, dtype: str = "float32", steps_per_call: int = 1) -> float:
    """XLA's flop count of the step traced with XLA's own convolutions: its cost analysis counts none in
    oneDNN's custom calls, which do the same multiply-adds."""
    with conv.xla_convolutions():
        spec = get_spec(model_name)
        config = default.get_config()
        config.model, config.dtype = model_name, dtype
        model = get_model(model_name, num_classes=spec.num_classes, dtype=training.model_dtype(config))
        state = jax.eval_shape(lambda: training.create_train_state(model, config, jax.random.key(0),
                                                                   batch["image"].shape[-3:], 100))
        train_fn, _ = training.step_functions(config, spec.num_classes)
        step = jax.jit(train_fn if steps_per_call == 1 else training.scanned(train_fn))
        cost = step.lower(state, batch).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def bench_ours(model_name: str, batch: dict, steps: int, dtype: str = "float32", steps_per_call: int = 1) -> dict:
    """Seconds per step (a call of `steps_per_call` steps, divided by it) and the step's cost figures."""
    if steps_per_call > 1:
        batch = {k: np.stack([v] * steps_per_call) for k, v in batch.items()}
    batch = jax.device_put(batch)
    compiled, model, state, compile_s = compile_step(model_name, batch, dtype, steps_per_call)
    flops = step_flops(model_name, batch, dtype, steps_per_call)

    holder = {"state": state}

    def run():
        holder["state"], m = compiled(holder["state"], batch)
        jax.block_until_ready(m)

    seconds = time_steps(run, steps) / steps_per_call
    if steps_per_call > 1:  # the memory bound of one step
        batch = jax.tree.map(lambda x: x[0], batch)
    return {"seconds": seconds, "compile_s": compile_s, "flops_per_step": flops / steps_per_call,
            "peak_rss_mb": peak_rss_mb(), **memory_bound(model, holder["state"], batch, compiled)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_bound(model, state, batch: dict, compiled) -> dict:
    """What a train step must hold, in MB: params, their gradients, the optimizer state and BatchNorm
    statistics, plus the activations autodiff saves for the backward pass (the residuals of `jax.vjp`,
    sized without running it), plus the batch. XLA's own temporary-buffer total is reported beside it."""
    def forward(params):
        return model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
                           rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])[0]

    residuals = jax.eval_shape(lambda p: jax.vjp(forward, p)[1], state.params)
    parts = {"params": nbytes(state.params), "grads": nbytes(state.params), "opt_state": nbytes(state.opt_state),
             "batch_stats": nbytes(state.batch_stats), "activations": nbytes(residuals), "batch": nbytes(batch)}
    memory = compiled.memory_analysis()
    mb = 2.0 ** 20
    return {"memory_bound_mb": sum(parts.values()) / mb, **{f"{k}_mb": v / mb for k, v in parts.items()},
            "xla_temp_mb": getattr(memory, "temp_size_in_bytes", 0) / mb}


def torch_model(model_name: str, num_classes: int):
    import torch.nn as tnn
    import torchvision

    if model_name == "lenet5":  # the seeds' LeNet-5, as ours
        return tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2), tnn.Tanh(), tnn.AvgPool2d(2),
            tnn.Conv2d(6, 16, 5), tnn.Tanh(), tnn.AvgPool2d(2),
            tnn.Conv2d(16, 120, 5), tnn.Tanh(), tnn.Flatten(),
            tnn.Linear(120, 84), tnn.Tanh(), tnn.Linear(84, num_classes))
    kwargs = {"aux_logits": False, "init_weights": True} if model_name in ("googlenet", "inception_v3") else {}
    return getattr(torchvision.models, model_name)(weights=None, num_classes=num_classes, **kwargs)


def bench_torch(model_name: str, batch: dict, steps: int, steps_per_call: int = 1) -> float:
    """Seconds per step; with steps_per_call > 1 each timed call is that many steps in a Python loop (the
    same k as ours)."""
    import torch

    torch.manual_seed(0)
    model = torch_model(model_name, get_spec(model_name).num_classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.from_numpy(np.transpose(batch["image"], (0, 3, 1, 2)).copy())
    y = torch.from_numpy(batch["label"].astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run():
        for _ in range(steps_per_call):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

    return time_steps(run, steps) / steps_per_call


KERAS_APPS = {"vgg16": "VGG16", "resnet50": "ResNet50", "inception_v3": "InceptionV3",
              "densenet121": "DenseNet121"}  # ours -> keras.applications (weights=None)


def bench_keras(model_name: str, batch: dict, steps: int) -> float:
    """Seconds per `train_on_batch` of the keras.applications model on Keras's JAX backend (jit-compiled,
    SGD momentum, the same batch): the same-backend peer. Keras' ResNet50 is v1 (stride on the first 1x1)
    and its InceptionV3/DenseNet121 differ from torchvision's in small details (biases, BatchNorm epsilon)."""
    if model_name not in KERAS_APPS:
        raise SystemExit(f"error: --vs=keras covers {', '.join(KERAS_APPS)}, not {model_name}")
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"error: Keras runs on {keras.backend.backend()}; the peer needs KERAS_BACKEND=jax")
    keras.utils.set_random_seed(0)
    app = getattr(keras.applications, KERAS_APPS[model_name])
    model = app(weights=None, input_shape=batch["image"].shape[1:], classes=get_spec(model_name).num_classes,
                classifier_activation=None)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = batch["image"], batch["label"]
    return time_steps(lambda: model.train_on_batch(x, y), steps)  # returns the loss: it waits for the step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--vs", default="none",
                        help="peers on the same batch in this process: torch (torchvision), keras "
                             "(keras.applications on Keras's JAX backend), torch,keras, or none")
    parser.add_argument("--json", default=None)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--steps_per_call", type=int, default=1,
                        help="ours: k steps in one jitted call (config.steps_per_call); torch: k in a Python loop")
    args = parser.parse_args(argv)
    peers = set(args.vs.split(",")) - {"none"}
    if peers - {"torch", "keras"}:
        parser.error(f"--vs takes torch, keras, torch,keras or none, not {args.vs!r}")

    batch = random_batch(args.model, args.batch_size, args.image_size)
    batch_size, size = batch["image"].shape[:2]

    baseline_rss = peak_rss_mb()  # the interpreter, jax and our imports, before any model exists
    ours = bench_ours(args.model, batch, args.steps, args.dtype, args.steps_per_call)
    peak = matmul_peak_flops()
    result = {
        "model": args.model, "dtype": args.dtype, "batch_size": batch_size, "image_size": size,
        "steps_per_call": args.steps_per_call,
        "images_per_sec": batch_size / ours["seconds"],
        "torch_images_per_sec": None, "ratio": None, "keras_images_per_sec": None, "keras_ratio": None,
        "compile_s": ours["compile_s"],
        "peak_rss_mb": ours["peak_rss_mb"],  # before torch runs: ours alone
        "baseline_rss_mb": baseline_rss,
        "memory_bound_mb": ours["memory_bound_mb"],
        "rss_over_bound": ours["peak_rss_mb"] / ours["memory_bound_mb"],
        "memory_parts_mb": {k[:-3]: ours[f"{k}"] for k in ("params_mb", "grads_mb", "opt_state_mb", "batch_stats_mb",
                                                           "activations_mb", "batch_mb", "xla_temp_mb")},
        "mfu": ours["flops_per_step"] / ours["seconds"] / peak,
        "matmul_peak_gflops": peak / 1e9,
        "device": str(jax.devices()[0]),
    }
    if "torch" in peers:
        # In a process of its own, right after ours: torch ships its own libgomp.so.1, and in a process where
        # our oneDNN has loaded the system's under that name torch is handed the system's and ran at half its
        # rate (lenet5, batch 32: 7,000-8,300 img/s alone, 3,700-4,100 beside ours; benchmarks/NOTES.md).
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            torch_seconds = pool.submit(bench_torch, args.model, batch, args.steps, args.steps_per_call).result()
        result["torch_images_per_sec"] = batch_size / torch_seconds
        result["ratio"] = result["images_per_sec"] / result["torch_images_per_sec"]
    if "keras" in peers:
        result["keras_images_per_sec"] = batch_size / bench_keras(args.model, batch, args.steps)
        result["keras_ratio"] = result["images_per_sec"] / result["keras_images_per_sec"]
    return report(result, args.json)


if __name__ == "__main__":
    main()
