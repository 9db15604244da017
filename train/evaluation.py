"""Evaluation: `run_eval` (loss, top-1, top-5 over a split, for the loop and for `evaluate`) and `evaluate`
(`--mode=eval`: saved weights on a split, their input prepared as they were trained with).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import checkpoint as ckpt
from jaxcnn import training, weights
from train.errors import TrainingError
from train.setup import is_primary, make_pipeline, setup
from train.state import merge_variables


def run_eval(driver, device_state, pipeline, max_batches: int = -1) -> dict:
    """Loss, top-1, top-5 over a split, or its first `max_batches` batches when > 0 (padded examples carry
    mask 0 and do not count)."""
    sums = {}
    for i, batch in enumerate(pipeline.epoch(0)):
        if 0 < max_batches <= i:
            break
        out = jax.device_get(driver.eval_step(device_state, batch))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
    if not sums:
        raise TrainingError("the evaluation split has no examples")
    return dict(training.summarize(sums), count=int(round(sums["count"])))


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path, split: str | None = None) -> dict:
    """Evaluate on `split` the weights of `config.init_from` when given, else the newest checkpoint in
    `workdir`; writes `<workdir>/eval_<split>.json`.

    Only params and batch_stats are read, so a checkpoint evaluates under any optimizer settings. Images are
    prepared as the checkpoint recorded (dataset, image size, normalization, crop fraction), whatever the
    config says; a line on stderr names the fields where the two differ.
    """
    workdir = Path(workdir).absolute()
    if not config.init_from and not ckpt.list_steps(workdir):
        raise TrainingError(f"no checkpoint to evaluate in {ckpt.checkpoint_dir(workdir)} "
                            f"(train first, or pass --init_from=SAVED_WEIGHTS)")
    variables, metadata = weights.load_init_variables(config.init_from or workdir, config.model)
    if metadata.get("model", config.model) != config.model:
        raise ValueError(f"{config.init_from or workdir} holds weights of {metadata['model']!r}, not "
                         f"{config.model!r}: pass --model={metadata['model']}")
    config = as_recorded(config, metadata)
    split = split or config.eval_split
    s = setup(config, workdir)
    pipeline = make_pipeline(config, split, train=False, image_shape=s.image_shape,
                             batch_size=config.eval_batch_size)
    shapes = jax.eval_shape(lambda: training.init_variables(s.model, jax.random.key(0), s.image_shape))
    variables = merge_variables(shapes, {k: variables.get(k, {}) for k in ("params", "batch_stats")})
    step = int(metadata.get("step", 0))
    state = training.TrainState(step=jnp.asarray(step, jnp.int32), params=variables["params"],
                                batch_stats=variables["batch_stats"], opt_state=(),
                                rng=jax.random.key_data(jax.random.key(0)), apply_fn=s.model.apply, tx=None)
    driver = s.driver
    result = run_eval(driver, driver.put_state(state), pipeline, config.eval_steps)
    result = dict(result, step=step, split=split, model=config.model)
    if not is_primary():
        return result
    workdir.mkdir(parents=True, exist_ok=True)  # a fresh workdir when evaluating --init_from weights
    (workdir / f"eval_{split}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{split}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  loss {result['loss']:.4f}  "
          f"({result['count']} images, step {result['step']})")
    return result


# Config fields that shape the model's input, from the input record a checkpoint carries.
RECORDED_INPUT = ("dataset", "normalize", "crop_fraction")


def as_recorded(config, metadata: dict) -> ml_collections.ConfigDict:
    """`config` with the class count, image size and input preparation the weights were made with (when
    their metadata records them); a line on stderr names the fields that differed."""
    config = ml_collections.ConfigDict(config.to_dict())
    recorded = dict(metadata.get("input", {}))
    if "num_classes" in metadata:
        recorded["num_classes"] = int(metadata["num_classes"])
    if "preprocessing" in metadata:  # published weights: their publisher's transform
        recorded.update(publisher_input(metadata["preprocessing"]))
        if config.image_size != -1:  # they take any size: an asked-for one keeps the publisher's resize ratio
            del recorded["image_size"]
    elif "image_shape" in metadata:
        recorded["image_size"] = int(metadata["image_shape"][0])
    changed = []
    for field in (*RECORDED_INPUT, "num_classes", "image_size"):
        if field in recorded and config[field] != recorded[field]:
            if config[field] != -1:  # -1 ("the dataset's", "the model's") is no disagreement
                changed.append(f"{field} {recorded[field]!r} (not {config[field]!r})")
            config[field] = type(config[field])(recorded[field])
    if changed and is_primary():
        print(f"evaluating with the weights' own settings: {', '.join(changed)}", file=sys.stderr)
    return config


def publisher_input(preprocessing: dict) -> dict:
    """The config fields that make the pipeline prepare images as `jaxcnn.imagenet.eval_transform(image,
    **preprocessing)` does: the crop as the image size, crop / resize as the crop fraction, the publisher's
    mean, std and channel order."""
    from jaxcnn import data

    return dict(image_size=int(preprocessing["crop"]),
                crop_fraction=int(preprocessing["crop"]) / int(preprocessing["resize"]),
                normalize=data.explicit_normalize(preprocessing["mean"], preprocessing["std"],
                                                  preprocessing.get("channels", "RGB")))
