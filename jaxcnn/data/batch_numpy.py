"""The pipeline's batch ops in numpy, for splits held in memory: fitting to the model's input (28 -> 32 padding,
antialiased bilinear resizing, grey -> RGB tiling) and the augmentations of `jaxcnn.data.augment`.

The embedded MNIST then trains without TensorFlow, whose import is ~4 s of the README's first command. Same
parameters (`augment.draw`'s tables) and the same pixels as the TensorFlow ops (tests/test_data.py compares the
two pipelines batch by batch: bit for bit, and the resize to fp32 rounding). Pad-and-crop and the flip move whole
pixels, one gather for both; the rotation reads its four taps per pixel as four more; a resize is two small
matrix products, one per axis.

Colour jitter's saturation (RGB images) needs TensorFlow's HSV conversion: `supports` says no, and such
pipelines keep the tf.data graph.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxcnn.data.augment import AFFINE, COLOR, CROP_PAD, FLIP, PCA


def supports(augment: Mapping[str, Any], channels: int) -> bool:
    """Whether `apply_batch` covers `augment` (see augment.DEFAULTS) on images of `channels`; the crops that
    change the size are the pipeline's, not a batch op."""
    return not (augment["color_jitter"] and channels == 3)


def fit(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Float images [B, h, w, c] brought to the model's (H, W, C) as pipeline.fit_to_size and match_channels
    bring a batch of one size: 28x28 -> 32x32 by zero padding, another size by the antialiased bilinear resize,
    grey -> RGB by tiling."""
    (height, width, channels), (h, w) = shape, images.shape[1:3]
    if (h, w) == (28, 28) and (height, width) == (32, 32):
        images = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    elif (h, w) != (height, width):
        images = np.einsum("Hh,bhwc,Ww->bHWc", _resize_weights(h, height), images, _resize_weights(w, width),
                           optimize=True).astype(np.float32)
    return np.repeat(images, channels // images.shape[3], axis=3)


@functools.cache
def _resize_weights(size: int, new_size: int) -> np.ndarray:
    """[new_size, size] weights of tf.image.resize(method='bilinear', antialias=True) along one axis (TensorFlow's
    scale_and_translate with its triangle kernel): output pixel i samples the input at (i + 0.5) / scale, the
    kernel widened by 1 / scale where it shrinks, taps outside the image left out and the rest renormalized."""
    scale = np.float32(new_size / size)
    inv_scale, kernel_scale = np.float32(1) / scale, max(np.float32(1) / scale, np.float32(1))
    weights = np.zeros((new_size, size), np.float32)
    for i in range(new_size):
        sample = (np.float32(i) + np.float32(0.5)) * inv_scale
        start = min(max(int(np.ceil(sample - kernel_scale - np.float32(0.5))), 0), size - 1)
        end = min(max(int(np.floor(sample + kernel_scale - np.float32(0.5))), 0), size - 1) + 1
        taps = np.arange(start, end, dtype=np.float32) + np.float32(0.5) - sample
        row = np.maximum(np.float32(0), np.float32(1) - np.abs(taps / kernel_scale))
        weights[i, start:end] = row / row.sum(dtype=np.float32)
    return weights


def apply_batch(images: np.ndarray, params: Mapping[int, np.ndarray], augment: Mapping[str, Any]) -> np.ndarray:
    """augment.apply_batch in numpy: float32 images [B, H, W, C] in [0, 1], `params` the rows of
    augment.draw's tables for the batch's examples."""
    if augment["random_crop_padding"] or augment["horizontal_flip"]:
        images = _moved(images, params, augment)
    if augment["rotation_degrees"] or augment["zoom"]:
        images = _bilinear(images, params[AFFINE])
    if augment["color_jitter"]:
        images = _brightness_contrast(images, params[COLOR])
    if augment["pca_lighting"] and images.shape[3] == 3:
        images = images + params[PCA][:, None, None, :]
    return images


@functools.cache
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The row and column of every pixel, [1, H, W] int each."""
    ys, xs = np.mgrid[:height, :width]
    return ys[None], xs[None]


def _moved(images: np.ndarray, params: Mapping[int, np.ndarray], augment: Mapping[str, Any]) -> np.ndarray:
    """Pad-and-crop, then the flip, as one gather: whole pixels move, and zeros come in at the edges."""
    batch, height, width, channels = images.shape
    y, x = _grid(height, width)
    if augment["horizontal_flip"]:  # applied after the crop: undone first
        x = np.where(params[FLIP][:, None, None], width - 1 - x, x)
    inside = True
    if augment["random_crop_padding"]:  # its transform's whole-pixel shift: [1, 0, dx, 0, 1, dy, 0, 0]
        shift = params[CROP_PAD].astype(np.intp)
        y, x = y + shift[:, 5, None, None], x + shift[:, 2, None, None]
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    index = np.where(inside, (np.arange(batch)[:, None, None] * height + y) * width + x, batch * height * width)
    flat = np.concatenate([images.reshape(-1, channels), np.zeros((1, channels), images.dtype)])  # last: the zero
    return np.take(flat, index, axis=0)


def _bilinear(images: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Bilinear resampling at augment.transform's transforms ([B, 8]; zero outside the image), with the
    float32 arithmetic of TensorFlow's ImageProjectiveTransformV3, in its order. The image gets a border of
    zeros one pixel wide, where every tap outside it is clipped to."""
    batch, height, width, channels = images.shape
    ys, xs = (a.astype(np.float32) for a in _grid(height, width))
    t = transforms.astype(np.float32)[:, :, None, None]
    x = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    y = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    x0, y0 = np.floor(x), np.floor(y)
    x1, y1 = x0 + 1, y0 + 1
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)]).reshape(-1, channels)
    first_row = np.arange(batch)[:, None, None] * (height + 2)
    row = lambda v: (first_row + np.clip(v, -1, height).astype(np.intp) + 1) * (width + 2)
    col = lambda v: np.clip(v, -1, width).astype(np.intp) + 1
    row0, row1, col0, col1 = row(y0), row(y1), col(x0), col(x1)
    read = lambda r, c: np.take(padded, r + c, axis=0)
    w = lambda a: a[..., None]  # (a weight [B, H, W] for every channel)
    top = w(x1 - x) * read(row0, col0) + w(x - x0) * read(row0, col1)
    bottom = w(x1 - x) * read(row1, col0) + w(x - x0) * read(row1, col1)
    return w(y1 - y) * top + w(y - y0) * bottom


def _brightness_contrast(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """augment.color_jitter without saturation: brightness + factors[:, 0], contrast x factors[:, 1] about
    each image's per-channel mean (summed in float64, as there), clipped to [0, 1]."""
    brightness, contrast = (factors[:, i, None, None, None] for i in (0, 1))
    images = images + brightness
    mean = images.astype(np.float64).mean(axis=(1, 2), keepdims=True).astype(np.float32)
    images = (images - mean) * contrast + mean
    return np.clip(images, np.float32(0), np.float32(1))
