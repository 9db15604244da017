"""AlexNet and its kin: plain stacks of conv / pool / dense layers, written as tables.

`PlainCNN` runs a table of layer entries (`Conv`, `Pool`, `LRN`, `BatchNorm`, `ReLU`, `Dropout`, `Dense`)
and names each parametrized layer by its index in the table, as torch's `nn.Sequential` does: torchvision's
`features.3.weight` is our `features_3/kernel`, so converters map names 1:1. VGG (vgg.py) and NiN (nin.py)
are tables for the same module.

Models here:
- `alexnet_2012`: Krizhevsky, Sutskever & Hinton 2012 as written: 227x227, conv2/4/5 split in two groups
  (the two GPUs), the paper's LRN (k=2, n=5, alpha=1e-4, beta=0.75, alpha not divided by n) after conv1 and
  conv2, overlapping 3x3/2 max pooling, dropout on the first two dense layers.
- `alexnet_bn`: the seeds' Keras AlexNet with BatchNorm (no groups, no LRN, BN after the pools and convs,
  Keras BN epsilon 1e-3 / momentum 0.99, NHWC flatten as Keras) so Keras weights convert exactly.
- `alexnet`: torchvision's (Krizhevsky 2014, "One weird trick"): 64-192-384-256-256, adaptive 6x6 average
  pooling, NCHW flatten, dropout before the first two dense layers.
- `zfnet`: Zeiler & Fergus 2013: 7x7/2 first layer, 5x5/2 second, Caffe-style (ceil mode) pooling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn import conv
from jaxcnn.layers import (
    PooledDense,
    adaptive_avg_pool,
    batch_norm,
    flatten_nchw,
    global_avg_pool,
    local_response_norm,
    max_pool,
    torch_padding,
)
from jaxcnn.models.common import check_input, kernel_init
from jaxcnn.models.registry import register

# --- The layer table ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution with torch's symmetric padding; `features=None` means `num_classes` (NiN's last layer)."""

    features: int | None
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1


@dataclasses.dataclass(frozen=True)
class Dense:
    """A fully connected layer; `features=None` means `num_classes`."""

    features: int | None


@dataclasses.dataclass(frozen=True)
class Pool:
    """Max pooling; `ceil_mode=True` is Caffe's (and ZFNet's) output-size rounding."""

    window: int = 3
    stride: int = 2
    ceil_mode: bool = False


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float = 0.5


@dataclasses.dataclass(frozen=True)
class ReLU:
    pass


@dataclasses.dataclass(frozen=True)
class LRN:
    """Local response normalization, the 2012 paper's form and constants (see `layers.local_response_norm`)."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    pass


def flatten_nhwc(x: jnp.ndarray) -> jnp.ndarray:
    """Flatten in NHWC order, as Keras' Flatten does."""
    return x.reshape(x.shape[0], -1)


# How the feature maps meet the classifier table.
HEADS = {"nchw": flatten_nchw, "nhwc": flatten_nhwc, "gap": global_avg_pool}


class PlainCNN(nn.Module):
    """A feature table, an optional adaptive average pool, a flatten (or global average pool), a classifier table.

    Layers with variables are named `features_{i}` / `classifier_{i}` after their index in the table.
    Subclasses set `min_size` (and `fixed_size` when the dense head fixes the input).
    """

    num_classes: int
    features: Sequence[Any] = ()
    classifier: Sequence[Any] = ()
    head: str = "nchw"  # a key of HEADS
    pool_size: int | None = None  # torchvision's AdaptiveAvgPool2d before the flatten
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9  # flax convention: 0.9 is torch's 0.1
    dtype: Any = jnp.float32
    axis_name: str | None = None
    weight_init: str = "lecun"  # a key of common.KERNEL_INITS: how every kernel starts (`init` is a Module method)
    kernel_init: Callable | None = None  # a callable instead (alexnet_2012's paper initialization)
    ones_bias: Sequence[str] = ()  # names of the layers whose biases start at 1 (the rest at 0)
    min_size: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        x = self._run(self.features, "features", x.astype(self.dtype), train)
        first = self._pool_folds_into(x, train)
        if first is not None:  # the pool and flatten go into that dense layer's kernel (layers.PooledDense)
            name = f"classifier_{first}"
            x = PooledDense(self._width(self.classifier[first].features), self.pool_size, dtype=self.dtype,
                            name=name, **self._inits(name))(x)
            return self._run(self.classifier, "classifier", x, train, start=first + 1).astype(jnp.float32)
        if self.pool_size is not None:
            x = adaptive_avg_pool(x, self.pool_size)
        x = HEADS[self.head](x)
        return self._run(self.classifier, "classifier", x, train).astype(jnp.float32)

    def _pool_folds_into(self, x, train: bool) -> int | None:
        """The index of the classifier's first dense layer where the adaptive pool would only spread a smaller
        map over more cells for it (VGG at 32x32: 1x1 -> 7x7) with nothing between them but inactive dropout;
        else None."""
        if self.pool_size is None or self.head != "nchw" or x.shape[1] * x.shape[2] >= self.pool_size ** 2:
            return None
        for i, layer in enumerate(self.classifier):
            if isinstance(layer, Dense):
                return i
            if not (isinstance(layer, Dropout) and (layer.rate == 0 or not train)):
                return None
        return None

    def _run(self, table: Sequence[Any], prefix: str, x, train: bool, start: int = 0):
        for i, layer in enumerate(table[start:], start):
            x = self._layer(layer, f"{prefix}_{i}", x, train)
        return x

    def _width(self, features: int | None) -> int:
        return self.num_classes if features is None else features

    def _inits(self, name: str) -> dict:
        return dict(bias_init=nn.initializers.ones if name in self.ones_bias else nn.initializers.zeros,
                    kernel_init=self.kernel_init or kernel_init(self.weight_init))

    def _layer(self, layer: Any, name: str, x, train: bool):
        width, init = self._width, self._inits(name)
        match layer:
            case Conv():
                return conv.Conv(width(layer.features), (layer.kernel, layer.kernel), (layer.stride, layer.stride),
                                 padding=torch_padding(layer.padding), feature_group_count=layer.groups,
                                 dtype=self.dtype, name=name, **init)(x)
            case Dense():
                return nn.Dense(width(layer.features), dtype=self.dtype, name=name, **init)(x)
            case Pool():
                return max_pool(x, layer.window, layer.stride, ceil_mode=layer.ceil_mode)
            case ReLU():
                return nn.relu(x)
            case Dropout():
                return nn.Dropout(layer.rate, deterministic=not train)(x)
            case LRN():
                return local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k, alpha_over_size=False)
            case BatchNorm():
                norm = batch_norm(train, axis_name=self.axis_name, epsilon=self.bn_epsilon,
                                  momentum=self.bn_momentum, dtype=self.dtype)
                return norm(name=name)(x)
        raise TypeError(f"unknown layer entry {layer!r}")


# --- AlexNet variants --------------------------------------------------------------------------------------


def conv_relu(features: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1) -> list:
    return [Conv(features, kernel, stride, padding, groups), ReLU()]


def classifier_dropout_after(dropout: float, hidden: int = 4096) -> tuple:
    """Dense-ReLU-Dropout twice, then the output: the 2012 paper's (and Caffe's, VGG's, Keras') order."""
    return (Dense(hidden), ReLU(), Dropout(dropout), Dense(hidden), ReLU(), Dropout(dropout), Dense(None))


def classifier_dropout_before(dropout: float, hidden: int = 4096) -> tuple:
    """Dropout-Dense-ReLU twice, then the output: torchvision AlexNet's order."""
    return (Dropout(dropout), Dense(hidden), ReLU(), Dropout(dropout), Dense(hidden), ReLU(), Dense(None))


ALEXNET_2012 = (*conv_relu(96, 11, 4), LRN(), Pool(),
                *conv_relu(256, 5, padding=2, groups=2), LRN(), Pool(),
                *conv_relu(384, 3, padding=1),
                *conv_relu(384, 3, padding=1, groups=2),
                *conv_relu(256, 3, padding=1, groups=2), Pool())

ALEXNET_BN = (*conv_relu(96, 11, 4), Pool(), BatchNorm(),
              *conv_relu(256, 5, padding=2), Pool(), BatchNorm(),
              *conv_relu(384, 3, padding=1), BatchNorm(),
              *conv_relu(384, 3, padding=1), BatchNorm(),
              *conv_relu(256, 3, padding=1), Pool(), BatchNorm())

ALEXNET_TORCHVISION = (*conv_relu(64, 11, 4, 2), Pool(),
                       *conv_relu(192, 5, padding=2), Pool(),
                       *conv_relu(384, 3, padding=1),
                       *conv_relu(256, 3, padding=1),
                       *conv_relu(256, 3, padding=1), Pool())


def zfnet_features(normalize: bool = True) -> tuple:
    """ZFNet's layers 1-5; `normalize` adds the paper's contrast normalization across maps after layers 1-2.

    Sizes follow the paper's Fig. 3: 224 -> 110 (7x7/2, pad 1) -> 55 (3x3/2 pool, ceil) -> 26 (5x5/2) -> 13 ->
    13 -> 13 -> 6 (3x3/2 pool).
    """
    norm = [LRN()] if normalize else []
    return (*conv_relu(96, 7, 2, 1), *norm, Pool(ceil_mode=True),
            *conv_relu(256, 5, 2), *norm, Pool(ceil_mode=True),
            *conv_relu(384, 3, padding=1),
            *conv_relu(384, 3, padding=1),
            *conv_relu(256, 3, padding=1), Pool(ceil_mode=True))


class AlexNet2012(PlainCNN):
    min_size: ClassVar[int] = 227
    fixed_size: ClassVar[bool] = True


class AlexNetBN(PlainCNN):
    min_size: ClassVar[int] = 227
    fixed_size: ClassVar[bool] = True


class AlexNet(PlainCNN):
    # 63 is the smallest side whose third pooling still sees a 3x3 window: 63 -> 15 -> 7 -> 7 -> 3 -> 3 -> 1.
    min_size: ClassVar[int] = 63


class ZFNet(PlainCNN):
    min_size: ClassVar[int] = 224
    fixed_size: ClassVar[bool] = True


IMAGENET = {"num_classes": 1000, "family": "alexnet"}


# The 2012 paper's initialization (section 5): weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the
# hidden dense layers ("accelerates the early stages of learning by providing the ReLUs with positive inputs"),
# 0 elsewhere. Names are indices in ALEXNET_2012 and classifier_dropout_after.
ALEXNET_2012_ONES_BIAS = ("features_4", "features_10", "features_12", "classifier_0", "classifier_3")


@register("alexnet_2012", input_shape=(227, 227, 3), min_size=227, fixed_size=True, year=2012,
          paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet classification with deep convolutional neural "
                "networks", params=60_965_224, **IMAGENET)
def alexnet_2012(dropout: float = 0.5, paper_init: bool = False, **kw) -> nn.Module:
    """`paper_init=True`: the paper's N(0, 0.01) weights and unit biases (its ImageNet recipe turns it on).

    Off by default: from N(0, 0.01) the signal shrinks ~100x through eight layers, so the first thousands of
    steps barely move (the paper spent 90 epochs); LeCun-normal weights train in minutes on small data.
    """
    if paper_init:
        if kw.get("weight_init", "lecun") != "lecun":  # the paper's start would silently replace it
            raise ValueError(f"paper_init=True starts from the paper's N(0, 0.01) weights, which would replace "
                             f"weight_init={kw['weight_init']!r}: set weight_init='lecun' (the default) with it, "
                             f"or paper_init=False")
        kw = dict(kernel_init=nn.initializers.normal(0.01), ones_bias=ALEXNET_2012_ONES_BIAS, **kw)
    return AlexNet2012(features=ALEXNET_2012, classifier=classifier_dropout_after(dropout), head="nchw", **kw)


@register("alexnet_bn", input_shape=(227, 227, 3), min_size=227, fixed_size=True, year=2012,
          paper="Krizhevsky et al. 2012 with BatchNorm (Ioffe & Szegedy 2015), as the seeds' Keras code writes it",
          params=62_381_096, **IMAGENET)
def alexnet_bn(dropout: float = 0.5, **kw) -> nn.Module:
    # Keras' BatchNormalization defaults (epsilon 1e-3, momentum 0.99) and NHWC flatten: Keras weights map 1:1.
    return AlexNetBN(features=ALEXNET_BN, classifier=classifier_dropout_after(dropout), head="nhwc",
                     bn_epsilon=1e-3, bn_momentum=0.99, **kw)


@register("alexnet", input_shape=(224, 224, 3), min_size=63, year=2014,
          paper="Krizhevsky 2014, One weird trick for parallelizing convolutional neural networks (torchvision)",
          params=61_100_840, **IMAGENET)
def alexnet(dropout: float = 0.5, **kw) -> nn.Module:
    return AlexNet(features=ALEXNET_TORCHVISION, classifier=classifier_dropout_before(dropout), head="nchw",
                   pool_size=6, **kw)


@register("zfnet", input_shape=(224, 224, 3), min_size=224, fixed_size=True, year=2013,
          paper="Zeiler & Fergus 2013, Visualizing and understanding convolutional networks",
          params=62_357_608, **IMAGENET)
def zfnet(dropout: float = 0.5, normalize: bool = True, **kw) -> nn.Module:
    return ZFNet(features=zfnet_features(normalize), classifier=classifier_dropout_after(dropout), head="nchw",
                 **kw)
