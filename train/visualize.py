"""`python -m train.visualize --workdir=DIR [--image=FILE] [--layers=c1,c3]`: pictures of a trained run.

Restores the workdir's newest checkpoint, or the weights of --init_from (a workdir or saved variables), with
the model and input record of their metadata, and writes into the workdir:
  filters.png       the first convolution's kernels
  feature_maps.png  what --layers (default: up to three spatial top-level layers) make of one image:
                    --image, or the first image of the validation split
  curves.png        loss and top-1 of train and validation from metrics.jsonl
  confusion.png     the confusion matrix on the run's validation split (--split; --eval_batches > 0 for a part)
and prints their paths. Bad input ends with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before tensorflow is imported anywhere
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def predictions(run, split: str, batch_size: int = 256, max_batches: int = -1) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """(labels, predicted classes, first image) over `split` of the run's dataset, through the evaluation
    pipeline (padded examples left out); `max_batches` > 0 stops early."""
    from jaxcnn.data import make_pipeline
    from train.predict import probabilities

    config, inputs = run.config, run.inputs
    pipe = make_pipeline(inputs["dataset"], split, batch_size=batch_size, image_shape=run.image_shape,
                         train=False, seed=int(config.seed), normalize=inputs["normalize"],
                         crop_fraction=inputs["crop_fraction"], data_dir=config.data_dir or None,
                         download=False)
    labels, preds, first = [], [], None
    for i, batch in enumerate(pipe.epoch(0)):
        if 0 < max_batches <= i:
            break
        keep = batch["mask"] > 0  # the whole padded batch goes in: one shape, one compilation
        first = batch["image"][0] if first is None else first
        labels.append(batch["label"][keep])
        preds.append(np.argmax(probabilities(run, batch["image"], batch_size), axis=-1)[keep])
    return np.concatenate(labels), np.concatenate(preds), first


def visualize(workdir: str | Path, image: str | None = None, layers: Sequence[str] | None = None,
              split: str = "validation", max_batches: int = -1, init_from: str | None = None,
              model: str | None = None) -> dict[str, Path]:
    """Write filters.png, feature_maps.png, curves.png (when metrics.jsonl exists) and confusion.png into
    `workdir`, for the weights of `init_from` (a workdir, saved variables, or published weights of `model`;
    default: `workdir` itself); returns {name: path}. Published ImageNet weights have no dataset here, so they
    need `image` and get no confusion matrix."""
    from jaxcnn import viz
    from train.predict import prepare_image, read_image, restore_run

    workdir = Path(workdir)
    pixels = read_image(image) if image else None  # a bad file fails before the restore
    run = restore_run(init_from or workdir, split, model_name=model)
    imagenet_only = "preprocessing" in run.metadata
    if imagenet_only and pixels is None:
        raise ValueError(f"--init_from={init_from} has no dataset here: give --image=FILE for the feature maps")
    workdir.mkdir(parents=True, exist_ok=True)
    labels, preds, first = predictions(run, split, max_batches=max_batches) if not imagenet_only else (None,) * 3
    example = prepare_image(pixels, run) if pixels is not None else first
    layers = list(layers) if layers else viz.default_layers(run.model, run.image_shape)

    _, kernel = viz.first_conv_kernel(run.model, run.variables, run.image_shape)
    paths = {"filters": viz.filter_grid(kernel, workdir / "filters.png"),
             "feature_maps": viz.feature_maps(run.model, run.variables, example, layers,
                                              workdir / "feature_maps.png")}
    if (workdir / "metrics.jsonl").exists():
        paths["curves"] = viz.training_curves(workdir / "metrics.jsonl", workdir / "curves.png")
    else:
        print(f"no {workdir / 'metrics.jsonl'}: curves.png not written", file=sys.stderr)
    if labels is not None:
        paths["confusion"] = viz.confusion_matrix(labels, preds, run.class_names,
                                                  workdir / "confusion.png")
    return paths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.visualize", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training workdir (its newest checkpoint is used, "
                        "unless --init_from) where the pictures go")
    parser.add_argument("--init_from", help="weights from another workdir, saved variables, or torchvision, "
                        "keras, a .pth/.h5 file (with --model)")
    parser.add_argument("--model", help="the model of published --init_from weights")
    parser.add_argument("--image", help="image file for the feature maps (default: the first validation image)")
    parser.add_argument("--layers", default="", help="comma-separated module paths, e.g. c1,c3 or layer1_0/conv1")
    parser.add_argument("--split", default="validation", help="split for the confusion matrix")
    parser.add_argument("--eval_batches", type=int, default=-1, help="> 0: only this many batches of 256")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    try:
        if args.eval_batches == 0 or args.eval_batches < -1:
            raise ValueError(f"invalid --eval_batches={args.eval_batches}: must be -1 (all) or an integer "
                             "of at least 1")
        paths = visualize(args.workdir, args.image, layers, args.split, args.eval_batches, args.init_from,
                          args.model)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
