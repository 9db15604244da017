"""Training augmentations as stateless TensorFlow ops on float images in [0, 1].

The size-preserving ones (pad-and-crop, flip, rotation and zoom, colour jitter, PCA lighting) work on a batch
[B, H, W, C] at once, a few ops per batch rather than dozens per image: `draw` makes an epoch's per-image
parameters (shifts, flips, rotation transforms, colour factors) as numpy tables indexed by the examples' global
index, from the config seed, the epoch and the op only, and `apply_batch` applies them to a batch given the
rows of its examples (`jaxcnn.data.batch_numpy` does the same in numpy, for splits held in memory). An
augmented image is therefore a pure function of (image, seed, epoch, example index), whatever batch, host or
resume position it comes in; that is what makes a resumed epoch identical to an uninterrupted one.

The crops that change the size (Inception's random resized crop, VGG's scale jittering) work on one image of
any size [H, W, C] with an explicit `seed` (an int64 tensor of shape [2]) and `tf.image.stateless_*` ops; the
pipeline derives that seed from (config seed, epoch, example index).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxcnn.data.tensorflow_import import tf

# AlexNet's PCA lighting noise (Krizhevsky et al. 2012, section 4.1): principal components of the ImageNet RGB
# pixel covariance, for pixels in [0, 1] (the values fb.resnet.torch and torchvision recipes use).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))

# The augment fields of train/configs/default.py, all off.
DEFAULTS = dict(
    random_crop_padding=0,
    random_resized_crop=False,
    scale_jitter=(0, 0),  # VGG's training scale: shorter side to S in [S_min, S_max] pixels, then a random crop
    horizontal_flip=False,
    rotation_degrees=0.0,
    zoom=0.0,
    color_jitter=0.0,
    pca_lighting=0.0,
)

# One stream per op, so turning one op on never changes another's draws: the tables' generators are seeded
# with (seed, epoch, _TABLES, op id), the per-image crops' TF seeds are fold_in(seed, op id).
CROP_PAD, RESIZED_CROP, FLIP, AFFINE, COLOR, PCA, SCALE = range(7)
_TABLES = 2  # the epoch's permutation (jaxcnn.data.pipeline) is the stream (seed, epoch, 1)


def options(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """The augment config (ConfigDict, dict or None) completed with DEFAULTS; unknown keys are refused."""
    given = dict(augment or {})
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown augment options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **given}


def op_seed(seed: tf.Tensor, op: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, tf.constant(op, tf.int64))


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Inception-style crop (Szegedy et al. 2015): a box of `scale` of the area and `ratio` aspect, resized to `size`.

    After 10 failed attempts TF falls back to the whole image (torchvision falls back to a centre crop).
    """
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,  # the area range alone bounds the crop, as in torchvision
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, size, method="bilinear", antialias=True)


def random_scale_crop(image: tf.Tensor, seed: tf.Tensor, size: tuple[int, int], scale: tuple[int, int]) -> tf.Tensor:
    """Simonyan & Zisserman's scale jittering: the shorter side resized to S ~ U[scale[0], scale[1]] pixels
    (integer, inclusive; aspect kept), then a random `size` crop. S below the crop side is raised to it."""
    s = tf.random.stateless_uniform([], seed=op_seed(seed, 0), minval=int(scale[0]), maxval=int(scale[1]) + 1,
                                    dtype=tf.int32)
    s = tf.cast(tf.maximum(s, max(size)), tf.float32)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.math.ceil(hw * s / tf.reduce_min(hw)), tf.int32)
    resized = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    return tf.image.stateless_random_crop(resized, [size[0], size[1], tf.shape(image)[2]], seed=op_seed(seed, 1))


def draw(augment: Mapping[str, Any], seed: int, epoch: int, num_examples: int,
         size: tuple[int, int]) -> dict[int, np.ndarray]:
    """The per-image parameters of one epoch's size-preserving augmentations on images of `size` (H, W): per op
    of `augment` that is on, a table whose row i belongs to example i of the split (its global index).

    Each table is drawn whole from (seed, epoch, op), so an example's augmentation never depends on the batch
    it lands in, the host reading it or where a resumed epoch starts, and turning one op on never changes
    another's draws. The parameters are computed here, on the whole table, and never on a batch: vectorised
    sin and cos may round an element differently by its position in the vector.
    """

    def rng(op):
        return np.random.default_rng([seed, epoch, _TABLES, op])

    def uniform(op, width, low=-1.0, high=1.0):
        return rng(op).uniform(low, high, (num_examples, width)).astype(np.float32)

    tables = {}
    if augment["random_crop_padding"]:
        padding = int(augment["random_crop_padding"])
        offsets = rng(CROP_PAD).integers(0, 2 * padding + 1, (num_examples, 2))  # in the padded image
        tables[CROP_PAD] = crop_transforms(offsets, padding)
    if augment["horizontal_flip"]:
        tables[FLIP] = uniform(FLIP, 1, 0.0, 1.0)[:, 0] < 0.5
    if augment["rotation_degrees"] or augment["zoom"]:
        draws = uniform(AFFINE, 2)
        tables[AFFINE] = rotation_transforms(draws[:, 0] * float(augment["rotation_degrees"]),
                                             1.0 + draws[:, 1] * float(augment["zoom"]), size)
    if augment["color_jitter"]:  # brightness shift, contrast and saturation factors
        tables[COLOR] = uniform(COLOR, 3) * np.float32(augment["color_jitter"]) + np.float32([0.0, 1.0, 1.0])
    if augment["pca_lighting"]:
        alpha = rng(PCA).standard_normal((num_examples, 3)).astype(np.float32)
        tables[PCA] = pca_shifts(alpha * np.float32(augment["pca_lighting"]))
    return tables


def crop_transforms(offsets: np.ndarray, padding: int) -> np.ndarray:
    """CIFAR-style pad-and-crop as transforms (see `transform`): zero-pad `padding` pixels on every side, then
    crop back to the input size at `offsets` ([N, 2] int: top, left in the padded image, 0 .. 2 * padding)."""
    shift = (np.asarray(offsets) - padding).astype(np.float32)
    one, zero = np.ones_like(shift[:, 0]), np.zeros_like(shift[:, 0])
    return np.stack([one, zero, shift[:, 1], zero, one, shift[:, 0], zero, zero], axis=1)


def rotation_transforms(degrees: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Transforms (see `transform`) that rotate images of `size` by `degrees` and scale them by `scale` ([N]
    each) about the centre (computed in float64, stored as float32)."""
    angle = np.asarray(degrees, np.float64) * math.pi / 180.0
    scale = np.asarray(scale, np.float64)
    cx, cy = (size[1] - 1.0) / 2.0, (size[0] - 1.0) / 2.0
    # The transform maps output pixel (x, y) to the input point it samples: the inverse rotation and zoom.
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    zero = np.zeros_like(cos)
    rows = [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, zero, zero]
    return np.stack(rows, axis=1).astype(np.float32)


def pca_shifts(alpha: np.ndarray) -> np.ndarray:
    """AlexNet's lighting noise (Krizhevsky et al. 2012): the RGB shift eigvec @ (alpha * eigval) of each row of
    `alpha` ([N, 3], drawn from N(0, std))."""
    return ((alpha * np.float32(PCA_EIGVAL)) @ np.float32(PCA_EIGVEC).T).astype(np.float32)


def transform(images: tf.Tensor, transforms: tf.Tensor, interpolation: str = "BILINEAR") -> tf.Tensor:
    """Each image of [B, H, W, C] resampled at its transform: row [a0, a1, a2, b0, b1, b2, 0, 0] maps output
    pixel (x, y) to the input point (a0 x + a1 y + a2, b0 x + b1 y + b2); zero outside the image. Whole-pixel
    shifts with 'NEAREST' are exact."""
    out = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms,
                                                output_shape=tf.shape(images)[1:3], fill_value=0.0,
                                                interpolation=interpolation, fill_mode="CONSTANT")
    return tf.ensure_shape(out, images.shape)


def color_jitter(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Brightness + factors[:, 0], then contrast x factors[:, 1] and saturation x factors[:, 2], image by image
    as tf.image's adjust_*; clipped to [0, 1]. Saturation needs colour, so grey images get brightness and
    contrast only."""
    factors = factors[:, :, None, None, None]
    images = images + factors[:, 0]
    # Per image and channel, as adjust_contrast. Summed in float64: a float32 sum's rounding depends on how the
    # reduction splits the batch, so the same image would come out a few ulps apart in batches of other sizes.
    mean = tf.cast(tf.reduce_mean(tf.cast(images, tf.float64), axis=[1, 2], keepdims=True), tf.float32)
    images = (images - mean) * factors[:, 1] + mean
    if images.shape[-1] == 3:
        hsv = tf.image.rgb_to_hsv(images)
        saturation = tf.clip_by_value(hsv[..., 1:2] * factors[:, 2], 0.0, 1.0)
        images = tf.image.hsv_to_rgb(tf.concat([hsv[..., :1], saturation, hsv[..., 2:]], axis=-1))
    return tf.clip_by_value(images, 0.0, 1.0)


def apply_batch(images: tf.Tensor, params: Mapping[int, tf.Tensor], augment: Mapping[str, Any]) -> tf.Tensor:
    """The size-preserving augmentations of `augment` (see DEFAULTS) in a fixed order (pad-and-crop, flip,
    rotation and zoom, colour jitter, PCA lighting) on a batch [B, H, W, C], with `params` the rows of
    `draw`'s tables for the batch's examples.

    The random resized crop and scale jittering change the size and are applied by the pipeline, image by
    image, in place of the plain resize. PCA lighting is defined for RGB; grey images are left unchanged.
    """
    if augment["random_crop_padding"]:
        images = transform(images, params[CROP_PAD], "NEAREST")
    if augment["horizontal_flip"]:
        images = tf.where(params[FLIP][:, None, None, None], tf.reverse(images, axis=[2]), images)
    if augment["rotation_degrees"] or augment["zoom"]:
        images = transform(images, params[AFFINE], "BILINEAR")
    if augment["color_jitter"]:
        images = color_jitter(images, params[COLOR])
    if augment["pca_lighting"] and images.shape[-1] == 3:
        images = images + params[PCA][:, None, None, :]
    return images


def scale_crop_seed(seed: tf.Tensor) -> tf.Tensor:
    """The seed the pipeline gives `random_scale_crop`."""
    return op_seed(seed, SCALE)


def resized_crop_seed(seed: tf.Tensor) -> tf.Tensor:
    """The seed the pipeline gives `random_resized_crop` (its own stream, like every other op)."""
    return op_seed(seed, RESIZED_CROP)
