"""Images/sec the input pipeline delivers, against what a train step consumes, in the same run.

    python benchmarks/input_pipeline.py [--consumer=resnet18] [--json=FILE]

Two settings, both through `jaxcnn.data.make_pipeline` with training augmentation on:
  * CIFAR-size: the embedded MNIST set brought to 32x32x3, random crop with 4-pixel padding, flip.
  * ImageNet-size: JPEG files of varying sizes (written once to a temp folder, real decoding), random
    resized crop to 224x224, flip, colour jitter.
The consumer is `benchmarks/train_step.py`'s measurement of our train step (batch 32 at 224 for ImageNet-size,
batch 128 at 32 for CIFAR-size), so the ratio says whether input ever starves training on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from jaxcnn import hugepages, xla_flags

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # before jax is imported: XLA's buffers on 2 MiB pages

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import train_step  # the sibling benchmark

from jaxcnn.data import make_pipeline


def write_jpeg_folder(root: str, num_images: int, num_classes: int = 10, seed: int = 0) -> str:
    """`root/train/<class>/*.jpg` of random sizes around ImageNet's (smooth noise, so JPEG sizes are realistic)."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        h, w = rng.integers(300, 500, size=2)
        small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        folder = os.path.join(root, "train", f"class{i % num_classes}")
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, f"{i}.jpg"), quality=90)
    return root


def images_per_sec(pipe, epochs: int = 2) -> float:
    """Throughput over `epochs` epochs after one warm-up epoch (tf.data's first pass builds its graph)."""
    for _ in pipe.epoch(0):
        pass
    count, t0 = 0, time.perf_counter()
    for e in range(1, epochs + 1):
        for batch in pipe.epoch(e):
            count += batch["image"].shape[0]
    return count / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumer", default="resnet18")
    parser.add_argument("--num_jpegs", type=int, default=640)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    cifar = make_pipeline("embedded_mnist", "train", batch_size=128, image_shape=(32, 32, 3), train=True, seed=0,
                          augment={"random_crop_padding": 4, "horizontal_flip": True})
    with tempfile.TemporaryDirectory() as root:
        write_jpeg_folder(root, args.num_jpegs)
        imagenet = make_pipeline(f"folder:{root}", "train", batch_size=32, image_shape=(224, 224, 3), train=True,
                                 seed=0, augment={"random_resized_crop": True, "horizontal_flip": True,
                                                  "color_jitter": 0.4})
        result = {"cifar_images_per_sec": images_per_sec(cifar, epochs=1),
                  "imagenet_images_per_sec": images_per_sec(imagenet)}

    rng = np.random.default_rng(0)
    consumed = {}
    for key, (batch_size, size) in {"imagenet": (32, 224), "cifar": (128, 32)}.items():
        batch = {"image": rng.standard_normal((batch_size, size, size, 3), np.float32),
                 "label": rng.integers(0, 10, batch_size).astype(np.int32)}
        seconds = train_step.bench_ours(args.consumer, batch, steps=5)["seconds"]
        consumed[key] = batch_size / seconds
        result[f"{args.consumer}_{key}_step_images_per_sec"] = consumed[key]
        result[f"{key}_ratio"] = result[f"{key}_images_per_sec"] / consumed[key]
    result["cores"] = os.cpu_count()
    return train_step.report(result, args.json)


if __name__ == "__main__":
    main()
