"""Keras models (or saved .keras / .weights.h5 files) -> flax variables.

Supported: the seeds' Keras `mlp`, `lenet5` and `alexnet_bn` (rebuilt by `keras_reference`, from the
description in docs/reference.md), and `keras.applications` VGG16 / VGG19 -> our `vgg16` / `vgg19`.

The layers with weights are matched in order: the k-th Keras layer that has weights fills the k-th flax module
that has params (both follow the forward order). Keras keeps the flax layouts for conv (kH, kW, I, O) and dense
(in, out) kernels, and BatchNormalization's gamma/beta/moving_mean/moving_variance are flax's
scale/bias/mean/var (both keep the biased variance; our `alexnet_bn` uses Keras' epsilon 1e-3 and momentum
0.99). The one layout change: Keras flattens NHWC, while our VGG flattens NCHW for torchvision, so the rows of
the first dense kernel after a Flatten are permuted from (h, w, c) to (c, h, w) order. keras.applications'
VGG has no adaptive pool; at its fixed 224x224 input our 7x7 adaptive pool is the identity, so the converted
model equals Keras there (and accepts other sizes the torchvision way).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxcnn.convert.common import ShapeMismatch, check_shapes, to_numpy
from jaxcnn.convert.tv_classic import expected_in_forward_order

# Keras weight name -> (flax collection, flax leaf)
_LEAVES = {
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}

SUPPORTED = ("mlp", "lenet5", "alexnet_bn", "vgg16", "vgg19")


def keras_reference(name: str, num_classes: int | None = None):
    """The Keras model our `name` converts from, with random weights.

    mlp, lenet5 and alexnet_bn rebuild the seeds' Keras code; vgg16/vgg19 are `keras.applications` models
    (`weights=None`). Each ends in logits: the seeds' final softmax is left off so outputs compare 1:1 (the
    weights are the same either way).
    """
    import keras
    from keras import layers

    if name in ("vgg16", "vgg19"):
        app = keras.applications.VGG16 if name == "vgg16" else keras.applications.VGG19
        return app(weights=None, classes=num_classes or 1000, classifier_activation=None)
    if name == "mlp":
        stack = [keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(512, activation="relu"),
                 layers.Dense(512, activation="relu"), layers.Dense(num_classes or 10)]
    elif name == "lenet5":
        stack = [keras.Input((28, 28, 1)),
                 layers.Conv2D(6, 5, padding="same", activation="tanh"), layers.AveragePooling2D(2),
                 layers.Conv2D(16, 5, activation="tanh"), layers.AveragePooling2D(2),
                 layers.Conv2D(120, 5, activation="tanh"), layers.Flatten(),
                 layers.Dense(84, activation="tanh"), layers.Dense(num_classes or 10)]
    elif name == "alexnet_bn":
        def conv(features, kernel, **kw):
            return layers.Conv2D(features, kernel, activation="relu", **kw)

        stack = [keras.Input((227, 227, 3)),
                 conv(96, 11, strides=4), layers.MaxPooling2D(3, 2), layers.BatchNormalization(),
                 conv(256, 5, padding="same"), layers.MaxPooling2D(3, 2), layers.BatchNormalization(),
                 conv(384, 3, padding="same"), layers.BatchNormalization(),
                 conv(384, 3, padding="same"), layers.BatchNormalization(),
                 conv(256, 3, padding="same"), layers.MaxPooling2D(3, 2), layers.BatchNormalization(),
                 layers.Flatten(),
                 layers.Dense(4096, activation="relu"), layers.Dropout(0.5),
                 layers.Dense(4096, activation="relu"), layers.Dropout(0.5),
                 layers.Dense(num_classes or 1000)]
    else:
        raise ValueError(f"no Keras reference for {name!r}; supported: {', '.join(SUPPORTED)}")
    return keras.Sequential(stack, name=name)


def load_keras(name: str, model_or_file: Any):
    """A Keras model as is; a .keras file through `keras.models.load_model`; a .h5 / .weights.h5 file loaded
    into `keras_reference(name)`."""
    import keras

    if not isinstance(model_or_file, (str, os.PathLike)):
        return model_or_file
    path = os.fspath(model_or_file)
    if path.endswith(".keras"):
        return keras.models.load_model(path, compile=False)
    if path.endswith(".h5"):
        model = keras_reference(name)
        model.load_weights(path)
        return model
    raise ValueError(f"expected a .keras model or a .weights.h5 file, got {path!r}")


def _weighted_layers(kmodel) -> list:
    """Keras layers that own weights, in forward order (nested models flattened)."""
    out = []
    for layer in kmodel.layers:
        if hasattr(layer, "layers"):
            out += _weighted_layers(layer)
        elif layer.weights:
            out.append(layer)
    return out


def _nchw_rows(kernel: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """Reorder a dense kernel's rows from Keras' NHWC flatten order to torch's NCHW order."""
    h, w, c = hwc
    return kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)


def keras_to_flax(model_name: str, keras_model_or_weights_file: Any) -> dict:
    """Convert a Keras model (or file) for our `model_name` into flax variables {'params'[, 'batch_stats']}."""
    import keras

    from jaxcnn.models import get_model, get_spec

    if model_name not in SUPPORTED:
        raise ValueError(f"no Keras converter for {model_name!r}; supported: {', '.join(SUPPORTED)}")
    kmodel = load_keras(model_name, keras_model_or_weights_file)
    klayers = _weighted_layers(kmodel)
    num_classes = int(to_numpy(klayers[-1].weights[-1]).shape[-1])
    spec = get_spec(model_name)
    model = get_model(model_name, num_classes=num_classes)
    expected = expected_in_forward_order(model, spec.input_shape)
    modules = list(expected["params"])
    if len(modules) != len(klayers):
        raise ShapeMismatch(f"{model_name}: the Keras model has {len(klayers)} layers with weights "
                            f"({', '.join(layer.name for layer in klayers)}), ours {len(modules)}")
    # The first dense kernel after a 4-d Flatten is permuted when our model flattens NCHW (VGG).
    permute_flatten = getattr(model, "head", "nhwc") == "nchw"
    previous = {id(b): a for a, b in zip(kmodel.layers, kmodel.layers[1:])}

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for module, layer in zip(modules, klayers):
        for weight in layer.weights:
            leaf_name = weight.name.split("/")[-1].split(":")[0]
            if leaf_name not in _LEAVES:
                raise ValueError(f"Keras layer {layer.name!r} has an unexpected weight {weight.name!r}")
            collection, leaf = _LEAVES[leaf_name]
            value = to_numpy(weight).astype(np.float32)
            before = previous.get(id(layer))
            if (permute_flatten and leaf == "kernel" and isinstance(layer, keras.layers.Dense)
                    and isinstance(before, keras.layers.Flatten) and len(before.input.shape) == 4):
                value = _nchw_rows(value, tuple(before.input.shape[1:]))
            variables[collection].setdefault(module, {})[leaf] = value
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    check_shapes(variables, expected)
    return variables
