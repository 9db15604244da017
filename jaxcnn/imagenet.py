"""ImageNet-1k for inference with published weights: the 1000 class names and torchvision's eval transform.

`eval_transform` repeats torchvision's `Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize` step by step
with Pillow, which is what torchvision itself calls on a PIL image (bilinear resize of the shorter side,
antialiased because Pillow's resize always filters over the whole footprint when it shrinks; the crop offset
rounded with Python's `round`), so both give the same array. It returns NHWC-ready [crop, crop, 3] float32,
where torchvision returns CHW.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

CLASSES_FILE = Path(__file__).parent / "data" / "imagenet_classes.txt"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in label order (torchvision's `meta['categories']`)."""
    return tuple(CLASSES_FILE.read_text().splitlines())


def as_rgb(image) -> "PIL.Image.Image":  # noqa: F821
    """A PIL image (or uint8 array [h, w], [h, w, 1] or [h, w, 3]) as an RGB PIL image."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        pixels = np.asarray(image)
        image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    return image.convert("RGB")


def resize_shorter(image, size: int):
    """Resize so that the shorter side is `size` and the longer one int(size * long / short) (torchvision's
    `Resize(size)` on a PIL image: bilinear, antialiased)."""
    from PIL import Image

    width, height = image.size
    short, long = sorted((width, height))
    new_short, new_long = size, int(size * long / short)
    new = (new_short, new_long) if width <= height else (new_long, new_short)
    return image if new == image.size else image.resize(new, Image.BILINEAR)


def center_crop(image, size: int):
    """The centre `size` x `size` square, offsets rounded as torchvision's `CenterCrop` rounds them."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"center_crop: a {width}x{height} image is smaller than the {size}x{size} crop")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def eval_transform(image, *, resize: int = 256, crop: int = 224, mean: Sequence[float] = MEAN,
                   std: Sequence[float] = STD, channels: str = "RGB") -> np.ndarray:
    """torchvision's ImageNet evaluation transform on one image -> float32 [crop, crop, 3].

    `channels="BGR"` reverses the channel order after scaling to [0, 1] (Keras's "caffe" VGG weights); mean and
    std are then given in that order, on the [0, 1] scale.
    """
    image = center_crop(resize_shorter(as_rgb(image), int(resize)), int(crop))
    x = np.asarray(image, np.float32) / np.float32(255)
    if channels == "BGR":
        x = x[..., ::-1]
    elif channels != "RGB":
        raise ValueError(f"channels must be 'RGB' or 'BGR', not {channels!r}")
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
