"""`python -m train.predict --workdir=DIR IMAGE...`: the top-5 classes of image files under a trained model.

`python -m train.predict --model=resnet50 --init_from=torchvision photo.jpg` does the same with published
ImageNet weights (jaxcnn.pretrained): ImageNet class names, and torchvision's eval transform (jaxcnn.imagenet).

The model, class count and input shape come from the workdir's newest checkpoint (its metadata); images go
through the same steps as the training data (`jaxcnn.data`: channels, size, normalization), so the model
sees what it saw in training. Class names come from the run's dataset. Output, per image:

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
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before tensorflow is imported anywhere
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TOP_K = 5


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained model restored from a workdir, with what its input pipeline needs."""

    model: Any  # flax.linen.Module
    variables: dict  # {'params', 'batch_stats'}
    metadata: dict  # the checkpoint's metadata (model, num_classes, image_shape, dataset, ...)
    step: int
    config: Any  # the model's recipe, with the checkpoint's dataset / class count / image size
    source: Any  # jaxcnn.data.Source of the run's validation split: class names, source shape, statistics

    image_shape = property(lambda self: tuple(self.metadata["image_shape"]))
    class_names = property(lambda self: tuple(self.source.class_names))

    @functools.cached_property
    def softmax(self):
        """jit(variables, images -> class probabilities), compiled once per input shape."""
        import jax

        return jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, x, train=False), axis=-1))


def restore_run(workdir: str | Path, split: str | None = None) -> Run:
    """The newest checkpoint of `workdir` as a Run (ValueError with one line when there is none).

    What the metadata does not record (normalization, data_dir, model kwargs) comes from the model's recipe
    (train/configs), so a run with such overrides should record them in its checkpoint metadata.
    """
    from jaxcnn import checkpoint as ckpt

    restored = ckpt.restore_variables(workdir)
    if restored is None:
        raise ValueError(f"no checkpoint in {ckpt.checkpoint_dir(workdir)} (train first: python -m train.main)")
    return build_run(*restored, split)


def pretrained_run(init_from: str, model_name: str) -> Run:
    """A Run of `--init_from` variables (torchvision, keras, a .pth/.h5 file or saved variables) for `model_name`."""
    from jaxcnn import pretrained

    variables, metadata = pretrained.load_init(init_from, model_name)
    return build_run(variables, metadata, 0)


def build_run(variables: dict, metadata: dict, step: int, split: str | None = None) -> Run:
    """A Run of variables and their metadata; published ImageNet weights (metadata 'preprocessing') get the
    ImageNet class names and torchvision's eval transform instead of a dataset pipeline."""
    from jaxcnn import imagenet, models
    from train.configs import recipe_for

    config = recipe_for(metadata["model"])
    config.dataset = metadata.get("dataset", config.dataset)
    config.num_classes = int(metadata["num_classes"])
    config.image_size = int(metadata["image_shape"][0])
    for field in ("normalize", "data_dir"):
        if field in metadata:
            config[field] = metadata[field]
    model = models.get_model(metadata["model"], num_classes=int(metadata["num_classes"]),
                             **dict(metadata.get("model_kwargs", config.model_kwargs)))
    if "preprocessing" in metadata:
        names = imagenet.class_names() if config.num_classes == len(imagenet.class_names()) else ()
        source = types.SimpleNamespace(class_names=names or tuple(map(str, range(config.num_classes))),
                                       image_shape=tuple(metadata["image_shape"]))
        return Run(model, variables, metadata, step, config, source)
    from jaxcnn.data.pipeline import make_source  # tensorflow: only for runs that read a dataset

    source = make_source(config.dataset, split or config.eval_split, data_dir=config.data_dir or None,
                         download=False)
    if len(source.class_names) != config.num_classes:  # a run with its own class count: names are numbers
        source = dataclasses.replace(source, class_names=tuple(str(i) for i in range(config.num_classes)))
    return Run(model, variables, metadata, step, config, source)


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
    import tensorflow as tf

    from jaxcnn.data import pipeline as data

    height, width, channels = run.image_shape
    image = tf.convert_to_tensor(pixels, tf.float32) / 255.0
    src_h, src_w, src_c = run.source.image_shape
    image = data.match_channels(image, src_c)
    if src_h and src_w:  # a fixed-size dataset: first look like one of its images
        image, crop = data.fit_to_size(image, (src_h, src_w)), 1.0
    else:
        crop = data.CROP_FRACTION
    image = data.match_channels(image, channels)
    image = data.fit_to_size(image, (height, width), crop)
    mean, std = data.normalization(run.config.normalize, run.source.stats, channels)
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
    parser.add_argument("--workdir", help="a training workdir (its newest checkpoint is used)")
    parser.add_argument("--init_from", help="instead of --workdir: torchvision, keras, a .pth/.h5 file or saved "
                        "variables (with --model)")
    parser.add_argument("--model", help="the model of --init_from")
    parser.add_argument("--top", type=int, default=TOP_K, help="classes to print per image")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    args = parser.parse_args(argv)
    if bool(args.workdir) == bool(args.init_from) or bool(args.init_from) != bool(args.model):
        parser.error("give --workdir, or --init_from with --model")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # Every image is read before the model: a bad file fails in a second, not after the restore.
        pixels = [read_image(path) for path in args.images]
        run = pretrained_run(args.init_from, args.model) if args.init_from else restore_run(args.workdir)
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
