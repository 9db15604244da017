"""VGG (Simonyan & Zisserman 2014) as torchvision builds it, plain and with BatchNorm.

All eight variants come from one table of channel counts with 'M' marking a 2x2 max pool (configurations
A, B, D, E of the paper). The layout is torchvision's: 3x3 convs with padding 1, adaptive average pooling to
7x7, NCHW flatten, and a 4096-4096 classifier with dropout 0.5, so `features_{i}` / `classifier_{i}` match
torchvision's state_dict keys.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from jaxcnn.models.alexnet import BatchNorm, Conv, PlainCNN, Pool, ReLU, classifier_dropout_after
from jaxcnn.models.registry import register

CONFIGS: dict[int, tuple] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}

PARAMS = {  # torchvision's counts at 1000 classes: (plain, with BatchNorm)
    11: (132_863_336, 132_868_840),
    13: (133_047_848, 133_053_736),
    16: (138_357_544, 138_365_992),
    19: (143_667_240, 143_678_248),
}


def vgg_features(config: tuple, bn: bool) -> tuple:
    """The feature table: each number a 3x3 conv (+ BatchNorm) + ReLU, each 'M' a 2x2/2 max pool."""
    layers = []
    for entry in config:
        if entry == "M":
            layers.append(Pool(2, 2))
        else:
            layers += [Conv(entry, 3, padding=1), *([BatchNorm()] if bn else []), ReLU()]
    return tuple(layers)


class VGG(PlainCNN):
    # Five 2x2 poolings: 32 -> 1; the adaptive pool then spreads the 1x1 map over 7x7.
    min_size: ClassVar[int] = 32


def _register(depth: int, bn: bool) -> None:
    name = f"vgg{depth}{'_bn' if bn else ''}"

    @register(name, input_shape=(224, 224, 3), min_size=32, num_classes=1000, year=2014, family="vgg",
              paper="Simonyan & Zisserman 2014, Very deep convolutional networks for large-scale image "
                    "recognition" + (" (with BatchNorm, torchvision)" if bn else ""),
              params=PARAMS[depth][bn])
    def build(dropout: float = 0.5, **kw) -> nn.Module:
        return VGG(features=vgg_features(CONFIGS[depth], bn), classifier=classifier_dropout_after(dropout),
                   head="nchw", pool_size=7, **kw)

    build.__name__ = build.__qualname__ = name
    globals()[name] = build  # vgg16(...) etc. importable like any other builder


for _depth in CONFIGS:
    for _bn in (False, True):
        _register(_depth, _bn)
