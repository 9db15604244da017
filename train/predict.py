"""`python -m train.predict --workdir=DIR IMAGE...`: the top-5 classes of image files under a trained model.

`python -m train.predict --model=resnet50 --init_from=torchvision photo.jpg` does the same with published
ImageNet weights (jaxcnn.pretrained): ImageNet class names, and their publisher's eval transform
(jaxcnn.imagenet).

The weights come from the workdir's newest checkpoint (or `--init_from`: a workdir, saved variables or
published weights, through `jaxcnn.weights.load_init_variables`), with the model, class count and input
record in their metadata; images go through the same steps as the training data (channels, size, crop
fraction and the run's normalization), so the model sees what it saw in training. Class names come from the
checkpoint. Output, per image:

    digit.png
      1. 7                     0.9731
      2. 9                     0.0112
      ...

An unreadable image, a workdir without a checkpoint or a dataset that is not at hand ends the program with
one line on stderr and exit status 1, before anything heavy is loaded where possible.

`restore_run(workdir)` and `prepare_image(image, run)` are what `train.visualize` and the notebooks reuse.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before tensorflow is imported anywhere
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TOP_K = 5


@dataclasses.dataclass(frozen=True)
class Run:
    """Trained weights with what their input pipeline needs."""

    model: Any  # flax.linen.Module
    variables: dict  # {'params', 'batch_stats'}
    metadata: dict  # the weights' metadata (model, num_classes, image_shape, config, input, ...)
    step: int | None
    config: Any  # the model's recipe, with the weights' dataset / class count / input settings
    inputs: dict  # what shapes the input: see `train.loop.input_record`

    image_shape = property(lambda self: tuple(self.inputs["image_shape"]))
    class_names = property(lambda self: tuple(self.inputs["class_names"]))

    @functools.cached_property
    def softmax(self):
        """jit(variables, images -> class probabilities), compiled once per input shape."""
        import jax

        return jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, x, train=False), axis=-1))


# Recorded config fields that inference takes over from the weights' own run.
RUN_FIELDS = ("dataset", "data_dir", "normalize", "crop_fraction", "seed", "eval_split")


def restore_run(source: str | Path, split: str | None = None, model_name: str | None = None) -> Run:
    """The weights of `source` (a workdir's newest checkpoint, or saved variables: `--init_from`) as a Run;
    ValueError with one line when there are none.

    The input is prepared as the checkpoint recorded it (its "input": image shape, source shape,
    normalization, crop fraction, class names), so the dataset need not be at hand. Weights without that
    record (converted ones, older checkpoints) take it from the model's recipe and the dataset.
    """
    from jaxcnn import models
    from jaxcnn.weights import load_init_variables
    from train.configs import recipe_for

    variables, metadata = load_init_variables(source, model_name)
    config = recipe_for(metadata["model"])
    recorded = metadata.get("config", {})
    for field in RUN_FIELDS:
        if field in recorded:
            config[field] = recorded[field]
    config.dataset = metadata.get("dataset", config.dataset)
    config.num_classes = int(metadata["num_classes"])
    config.image_size = int(metadata["image_shape"][0])
    model_kwargs = recorded.get("model_kwargs", metadata.get("model_kwargs", dict(config.model_kwargs)))
    model = models.get_model(metadata["model"], num_classes=config.num_classes, **model_kwargs)
    if "preprocessing" in metadata:  # published ImageNet weights: their publisher's transform, no dataset
        inputs = published_inputs(config.num_classes, tuple(metadata["image_shape"]))
    else:
        inputs = metadata.get("input") or inputs_from_dataset(config, tuple(metadata["image_shape"]), split)
    return Run(model, variables, metadata, metadata.get("step"), config, inputs)


def published_inputs(num_classes: int, image_shape: tuple[int, int, int]) -> dict:
    """The input record of published ImageNet weights: their shape and ImageNet's class names."""
    from jaxcnn import imagenet

    names = imagenet.class_names()
    if len(names) != num_classes:
        names = tuple(str(i) for i in range(num_classes))
    return dict(dataset="imagenet2012", image_shape=list(image_shape), class_names=list(names))


def inputs_from_dataset(config, image_shape: tuple[int, int, int], split: str | None = None) -> dict:
    """The input record (as training writes it) rebuilt from the recipe and the dataset, for weights
    without one; class names are numbers when the dataset has another class count."""
    from jaxcnn.data.pipeline import make_source, normalization

    source = make_source(config.dataset, split or config.eval_split, data_dir=config.data_dir or None,
                         download=False)
    names = source.class_names
    if len(names) != config.num_classes:
        names = tuple(str(i) for i in range(config.num_classes))
    mean, std = normalization(config.normalize, source.stats, image_shape[-1])
    return dict(dataset=config.dataset, image_shape=list(image_shape), source_shape=list(source.image_shape),
                normalize=config.normalize, mean=mean.tolist(), std=std.tolist(),
                crop_fraction=float(config.crop_fraction) if None in source.image_shape[:2] else 1.0,
                class_names=list(names))


# ---------------------------------------------------------------------------------------------- images


def read_image(path: str | Path) -> np.ndarray:
    """uint8 pixels [h, w, 1] of a grey image file or [h, w, 3] of any other (alpha dropped); ValueError
    with one line for a missing, corrupt or unsupported file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            pixels = np.asarray(image.convert("L" if grey else "RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:  # PIL's ways of saying "not an image"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read image {path}: {reason}") from None
    return pixels.reshape(*pixels.shape[:2], -1)


def prepare_image(pixels: np.ndarray, run: Run) -> np.ndarray:
    """uint8 pixels [h, w, 1 or 3] (`read_image`) -> the model's normalized float32 input [H, W, C].

    First the image is made to look like one of the dataset's own (its channels, and its size for fixed-size
    datasets: MNIST is 28x28), then it takes the training pipeline's steps in their order: [0, 1] scaling,
    channel matching, fitting to the model's size (28 -> 32 padding for LeNet-5 1998; centre crop for
    datasets of varying size, as in evaluation) and the run's normalization.
    """
    if "preprocessing" in run.metadata:  # published ImageNet weights: their publisher's transform
        from jaxcnn import imagenet

        return imagenet.eval_transform(pixels, **run.metadata["preprocessing"])
    from jaxcnn.data import pipeline as data
    from jaxcnn.data.tensorflow_import import tf

    height, width, channels = run.image_shape
    image = tf.convert_to_tensor(pixels, tf.float32) / 255.0
    src_h, src_w, src_c = run.inputs["source_shape"]
    image = data.match_channels(image, src_c)
    if src_h and src_w:  # a fixed-size dataset: first look like one of its images
        image = data.fit_to_size(image, (src_h, src_w))
    image = data.match_channels(image, channels)
    image = data.fit_to_size(image, (height, width), run.inputs["crop_fraction"])
    if data.channel_order(run.inputs.get("normalize", "dataset")) == "BGR":
        image = image[..., ::-1]
    mean, std = np.float32(run.inputs["mean"]), np.float32(run.inputs["std"])
    return ((image - mean) / std).numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------- model


def probabilities(run: Run, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax class probabilities [N, classes] of prepared images [N, H, W, C] (eval mode)."""
    out = [np.asarray(run.softmax(run.variables, images[i: i + batch_size]))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(run.class_names)), np.float32)


def top_k(probs: np.ndarray, k: int = TOP_K) -> list[tuple[int, float]]:
    """(class, probability) of the k most probable classes of one image, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(c), float(probs[c])) for c in order]


def format_prediction(path: str, ranked: Sequence[tuple[int, float]], class_names: Sequence[str]) -> str:
    lines = [str(path)]
    lines += [f"  {i}. {class_names[c]:<20} {p:.4f}" for i, (c, p) in enumerate(ranked, start=1)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- program


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__.split("\n")[0])
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--workdir", help="a training workdir (its newest checkpoint is used)")
    weights.add_argument("--init_from", help="a workdir, saved variables (python -m jaxcnn.convert), or "
                         "torchvision, keras, a .pth/.h5 file (with --model)")
    parser.add_argument("--model", help="the model of published --init_from weights")
    parser.add_argument("--top", type=int, default=TOP_K, help="classes to print per image")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # Every image is read before the model: a bad file fails in a second, not after the restore.
        pixels = [read_image(path) for path in args.images]
        if args.top < 1:
            raise ValueError(f"invalid --top={args.top}: must be an integer of at least 1")
        run = restore_run(args.init_from or args.workdir, model_name=args.model)
        images = np.stack([prepare_image(p, run) for p in pixels])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 1
    probs = probabilities(run, images)
    for path, p in zip(args.images, probs):
        print(format_prediction(path, top_k(p, args.top), run.class_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
