"""Network in Network (Lin, Chen & Yan 2013), the ImageNet model as in the Caffe zoo and d2l.

Each "mlpconv" block is a spatial convolution followed by two 1x1 convolutions (a small MLP shared over
positions), all with ReLU. There are no dense layers: the last block has `num_classes` maps and global
average pooling turns them into logits, so any input from `min_size` up works.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from jaxcnn.models.alexnet import Conv, Dropout, PlainCNN, Pool, ReLU
from jaxcnn.models.registry import register


def mlpconv(features: int | None, kernel: int, stride: int = 1, padding: int = 0) -> tuple:
    """Conv k x k + ReLU, then two 1x1 conv + ReLU, all `features` wide (None: num_classes)."""
    return (Conv(features, kernel, stride, padding), ReLU(),
            Conv(features, 1), ReLU(),
            Conv(features, 1), ReLU())


def nin_features(dropout: float = 0.5) -> tuple:
    return (*mlpconv(96, 11, 4), Pool(),
            *mlpconv(256, 5, padding=2), Pool(),
            *mlpconv(384, 3, padding=1), Pool(),
            Dropout(dropout),
            *mlpconv(None, 3, padding=1))


class NiN(PlainCNN):
    # 67 -> 15 (11x11/4) -> 7 -> 7 -> 3 -> 3 -> 1 (3x3/2 pools): the last pool's smallest window.
    min_size: ClassVar[int] = 67


@register("nin", input_shape=(224, 224, 3), min_size=67, num_classes=1000, year=2013, family="nin",
          paper="Lin, Chen & Yan 2013, Network in network", params=7_439_608)
def nin(dropout: float = 0.5, **kw) -> nn.Module:
    return NiN(features=nin_features(dropout), classifier=(), head="gap", **kw)
