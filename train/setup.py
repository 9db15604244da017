"""Everything built from the config before the first step: model, class count, image shape, driver, pipelines.

`setup` runs the checks that need no data first (an unknown model, an image size the model cannot take, a batch
that does not divide over the devices, processes with different configs), so that bad input fails before
tensorflow is imported. `check_resume` refuses a rerun whose config would change the training its workdir's
checkpoints were made with (train.config_check decides which fields are safe to change) and prints the safe
changes.

Multi-process runs: every process builds the same setup; `make_pipeline` gives each its own shard of the data
(`config.batch_size` stays the global batch), and only process 0 (`is_primary`) writes logs and messages.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import checkpoint as ckpt
from jaxcnn import models, parallel, training
from train import config_check
from train.errors import ConfigChanged


@dataclasses.dataclass
class Setup:
    """Everything built from the config before the first step."""

    config: ml_collections.ConfigDict
    spec: models.ModelSpec
    model: Any
    num_classes: int
    image_shape: tuple[int, int, int]
    metadata: dict
    driver: Any  # jaxcnn.parallel driver around the jitted steps
    steps_per_call: int = 1  # train steps per host call (config.steps_per_call resolved for the driver)


def image_shape_for(config, spec: models.ModelSpec) -> tuple[int, int, int]:
    """(H, W, C): `config.image_size` square (-1: the model's default) with the model's channel count."""
    h, w, c = spec.input_shape
    size = int(config.image_size)
    return (h, w, c) if size <= 0 else (size, size, c)


def setup(config, workdir: str | Path) -> Setup:
    """Resolve the model, class count and image shape, and check the workdir, before any data or step.

    Raises ValueError with a one-line message for an unknown model, an image size the model cannot take, a
    batch that does not divide over the devices, a dataset that cannot be had, and a workdir holding another
    model's checkpoints (nothing is written). The checks that need no data run before tensorflow is imported,
    so these errors come quickly.
    """
    check_same_config(config)
    spec = models.get_spec(config.model)
    image_shape = image_shape_for(config, spec)
    # The loss takes its class count from the logits, so the steps need no num_classes.
    driver = parallel.make_driver(driver_kind(config.parallel, jax.device_count()),
                                  *training.step_functions(config, None))
    for size, flag in ((config.batch_size, "batch_size"), (config.eval_batch_size, "eval_batch_size")):
        parallel.check_divisible(int(size), driver.num_devices, flag)
    steps_per_call = resolve_steps_per_call(int(config.get("steps_per_call", 1)), driver)

    def build(num_classes):
        return models.get_model(config.model, num_classes=num_classes, dtype=training.model_dtype(config),
                                axis_name=driver.axis_name, **dict(config.model_kwargs))

    # Trace the model once (no FLOPs) so that a size it cannot take fails here with its own message.
    jax.eval_shape(functools.partial(build(spec.num_classes).init, train=False), jax.random.key(0),
                   jnp.zeros((1, *image_shape), jnp.float32))
    from jaxcnn import data  # tensorflow: imported only once the quick checks have passed

    dataset_classes, _ = data.dataset_info(config.dataset, data_dir=config.data_dir or None)
    num_classes = int(config.num_classes) if config.num_classes > 0 else int(dataset_classes)
    metadata = dict(model=config.model, num_classes=num_classes, image_shape=list(image_shape),
                    dataset=config.dataset, config=config_check.plain(config))
    ckpt.check_compatible(workdir, metadata)
    return Setup(config, spec, build(num_classes), num_classes, image_shape, metadata, driver, steps_per_call)


# Steps per host call where config.steps_per_call is -1 and the driver can: lenet5's step (batch 32) costs ~9 ms
# of CPU alone and ~8% less in calls of 8 (benchmarks/NOTES.md row 33); more buys little and compiles longer.
AUTO_STEPS_PER_CALL = 8


def resolve_steps_per_call(asked: int, driver) -> int:
    """Train steps per host call: `asked`, or for -1 AUTO_STEPS_PER_CALL where the driver runs several steps
    in one call (the 'single' driver), else 1. Raises ValueError (one line) for k > 1 on another driver."""
    can = hasattr(driver, "train_steps")
    if asked == -1:
        return AUTO_STEPS_PER_CALL if can else 1
    if asked > 1 and not can:
        raise ValueError(f"--config.steps_per_call={asked} runs on one device only (the 'single' driver), not "
                         f"under {driver.kind!r} over {driver.num_devices} devices: use --config.steps_per_call=1 "
                         f"(or -1: several where the driver can)")
    return asked


def driver_kind(kind: str, device_count: int) -> str:
    """The jaxcnn.parallel driver for `config.parallel`: 'single' (plain jit) where 'pmap' would span one
    device, the same step without pmap's dispatch and per-metric slicing (+0.5 ms a step, benchmarks/NOTES.md
    session 5); any other choice as it is."""
    return "single" if kind == "pmap" and device_count == 1 else kind


def check_resume(config, workdir: Path) -> None:
    """Refuse a rerun on `workdir` whose config would change the training its newest checkpoint was made
    with (ConfigChanged, one line naming the fields and the ways on; nothing written); print the safe changes
    (periods, a longer run, evaluation settings) it accepts."""
    found = ckpt.read_metadata(workdir)
    if found is None or "config" not in found[1]:  # a fresh workdir, or checkpoints that predate the record
        return
    step, saved = found
    changed, safe = config_check.training_changes(saved["config"], config)
    if changed:
        raise ConfigChanged(
            f"{workdir} was trained with other settings ({config_check.describe_changes(changed)}; "
            f"checkpoint step {step}): a resume would not continue it exactly. Rerun with the old values, "
            f"use another --workdir, or start a new one from its weights with --init_from={workdir}")
    if safe and is_primary():
        print(f"resuming with changed settings: {config_check.describe_changes(safe, limit=100)}",
              file=sys.stderr)


def input_record(config, pipeline) -> dict:
    """What shapes the model's input, for the checkpoint: evaluation, train.predict and train.visualize
    prepare images with it, whatever the recipe says today."""
    return dict(dataset=config.dataset, image_shape=list(pipeline.image_shape),
                source_shape=list(pipeline.source.image_shape), normalize=config.normalize,
                mean=[float(v) for v in pipeline.mean], std=[float(v) for v in pipeline.std],
                crop_fraction=float(pipeline.crop_fraction), class_names=list(pipeline.class_names))


def is_primary() -> bool:
    """Whether this process writes the logs (process 0; the only one outside multi-process runs)."""
    return jax.process_index() == 0


def check_same_config(config) -> None:
    """Refuse a multi-process run whose processes got different configs (flags): their batches, shapes or
    step counts would disagree, silently or in a hang. `data_dir` may differ (a host-local copy)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    text = json.dumps({k: v for k, v in config.to_dict().items() if k != "data_dir"}, sort_keys=True, default=str)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
    if differ:
        raise ValueError(f"process {differ[0]} runs another config than process 0: give every process the "
                         f"same flags")


def make_pipeline(config, split: str, *, train: bool, image_shape, batch_size: int):
    """This process's pipeline of `split` for the GLOBAL `batch_size`: it yields batch_size / process_count
    examples a step from its own shard, and the driver assembles the processes' parts into the global batch."""
    from jaxcnn import data

    local_batch = int(batch_size) // jax.process_count()  # setup() checked it divides over all devices
    return data.make_pipeline(
        config.dataset, split, batch_size=local_batch, image_shape=tuple(image_shape), train=train,
        seed=int(config.seed), augment=config.augment if train else None, normalize=config.normalize,
        data_dir=config.data_dir or None, process_index=jax.process_index(),
        process_count=jax.process_count(), shuffle_buffer=int(config.shuffle_buffer),
        crop_fraction=float(config.crop_fraction))


