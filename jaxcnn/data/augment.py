"""Training augmentations as stateless TensorFlow ops on one float image [H, W, C] in [0, 1].

Every op takes an explicit `seed` (an int64 tensor of shape [2]) and uses only `tf.random.stateless_*` /
`tf.image.stateless_random_*`, so an augmented image is a pure function of (image, seed). The pipeline derives
the seed from (config seed, epoch, example index); that is what makes a resumed epoch identical to an
uninterrupted one. Ops keep the shape and dtype of their input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

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

# One stream per op: op seeds are fold_in(example seed, op id), so turning one op on never changes another's draws.
_CROP_PAD, _RESIZED_CROP, _FLIP, _AFFINE, _BRIGHTNESS, _CONTRAST, _SATURATION, _PCA, _SCALE = range(9)


def options(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """The augment config (ConfigDict, dict or None) completed with DEFAULTS; unknown keys are refused."""
    given = dict(augment or {})
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown augment options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **given}


def op_seed(seed: tf.Tensor, op: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, tf.constant(op, tf.int64))


def random_crop_with_padding(image: tf.Tensor, seed: tf.Tensor, padding: int) -> tf.Tensor:
    """CIFAR-style: zero-pad `padding` pixels on every side, then crop back to the input size at random."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, seed=seed)


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


def horizontal_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirror left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def rotate_and_zoom(image: tf.Tensor, seed: tf.Tensor, degrees: float, zoom: float) -> tf.Tensor:
    """Rotate by U(-degrees, degrees) and scale by U(1 - zoom, 1 + zoom) about the centre; zero fill, bilinear."""
    draws = tf.random.stateless_uniform([2], seed=seed, minval=-1.0, maxval=1.0)
    angle = draws[0] * degrees * math.pi / 180.0
    scale = 1.0 + draws[1] * zoom
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    # The transform maps output pixel (x, y) to the input point it samples: the inverse rotation and zoom.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.ensure_shape(out[0], image.shape)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Brightness ± strength, contrast and saturation × U(1 - strength, 1 + strength); clipped to [0, 1].

    Saturation needs colour, so grey images get brightness and contrast only.
    """
    image = tf.image.stateless_random_brightness(image, strength, seed=op_seed(seed, _BRIGHTNESS))
    image = tf.image.stateless_random_contrast(image, 1 - strength, 1 + strength, seed=op_seed(seed, _CONTRAST))
    if image.shape[-1] == 3:
        image = tf.image.stateless_random_saturation(
            image, 1 - strength, 1 + strength, seed=op_seed(seed, _SATURATION)
        )
    return tf.clip_by_value(image, 0.0, 1.0)


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, std: float) -> tf.Tensor:
    """AlexNet's lighting noise: add eigvec @ (alpha * eigval) to every pixel, alpha ~ N(0, std) per image.

    Defined for RGB; grey images are returned unchanged.
    """
    if image.shape[-1] != 3:
        return image
    alpha = tf.random.stateless_normal([3], seed=seed, stddev=std)
    shift = tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL))
    return image + shift


def apply(image: tf.Tensor, seed: tf.Tensor, augment: Mapping[str, Any]) -> tf.Tensor:
    """The size-preserving augmentations of `augment` (see DEFAULTS) in a fixed order.

    The random resized crop changes the size and is applied by the pipeline in place of the plain resize.
    """
    if augment["random_crop_padding"]:
        image = random_crop_with_padding(image, op_seed(seed, _CROP_PAD), int(augment["random_crop_padding"]))
    if augment["horizontal_flip"]:
        image = horizontal_flip(image, op_seed(seed, _FLIP))
    if augment["rotation_degrees"] or augment["zoom"]:
        image = rotate_and_zoom(
            image, op_seed(seed, _AFFINE), float(augment["rotation_degrees"]), float(augment["zoom"])
        )
    if augment["color_jitter"]:
        image = color_jitter(image, seed, float(augment["color_jitter"]))
    if augment["pca_lighting"]:
        image = pca_lighting(image, op_seed(seed, _PCA), float(augment["pca_lighting"]))
    return image


def scale_crop_seed(seed: tf.Tensor) -> tf.Tensor:
    """The seed the pipeline gives `random_scale_crop`."""
    return op_seed(seed, _SCALE)


def resized_crop_seed(seed: tf.Tensor) -> tf.Tensor:
    """The seed the pipeline gives `random_resized_crop` (its own stream, like every other op)."""
    return op_seed(seed, _RESIZED_CROP)
