"""Inception-v3 as torchvision builds it, weight-compatible 1:1.

Szegedy et al. 2015, "Rethinking the Inception Architecture for Computer Vision". Every conv is torchvision's
BasicConv2d: conv without bias + BatchNorm(eps 1e-3) + relu, passed to the blocks by the parent. One block
class per idea of the paper:

- `InceptionA` (35x35, Fig. 5): the 5x5 factorised into two 3x3 in one branch (torchvision keeps a real 5x5 in
  another, as Google's released graph does);
- `InceptionB` / `InceptionD` (grid reductions, Fig. 10): strided convs beside a strided max pool;
- `InceptionC` (17x17, Fig. 6): n x n factorised into 1x7 and 7x1;
- `InceptionE` (8x8, Fig. 7): expanded filter banks, 1x3 and 3x1 side by side.

The branch pools of A/C/E are torch's `avg_pool2d(3, 1, padding=1)`, which counts the zero padding
(count_include_pad=True); B and D max pool 3/2 without padding. The network's stem uses valid convs, so
299 -> 149 -> 147 -> 73 -> 71 -> 35 -> 17 -> 8. Head: global average pool, dropout 0.5, fc.

The auxiliary classifier (`aux_logits=True`, off by default so the registered count is the inference
network's: 23,834,568; 27,161,264 with it) sits after Mixed_6e: average pool 5/3 -> 1x1 conv 128 -> 5x5 conv
768 -> global average -> fc. It runs only with `train=True` and sows its logits into 'aux' (as
`aux/AuxLogits/logits`). Its 5x5 conv needs a 17x17 Mixed_6e map, i.e. input of at least 299x299 (torch fails
there too), so training with it at smaller sizes raises a ValueError that says so.

Parameter names are torchvision's module names (`Conv2d_1a_3x3/conv`, `Mixed_5b/branch5x5_2/bn`,
`AuxLogits/conv1/conv`, `fc`).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import ConvBN, avg_pool, batch_norm, global_avg_pool, max_pool
from jaxcnn.models.common import check_input
from jaxcnn.models.registry import register

ModuleDef = Any

# torchvision's initialisation: conv and linear kernels ~ N(0, 0.1) (truncation at +-2 is 20 std: none in
# practice), except the aux head's 5x5 conv (0.01) and fc (0.001). BN starts at scale 1, bias 0.
def _normal(std: float):
    return nn.initializers.normal(std)


def _branch_pool(x):
    """torch `F.avg_pool2d(x, 3, stride=1, padding=1)`: the padding counts in the divisor."""
    return avg_pool(x, 3, 1, padding=1, count_include_pad=True)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1 (`pool_features`)."""

    pool_features: int
    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        conv = self.conv
        b1 = conv(64, 1, name="branch1x1")(x)
        b5 = conv(48, 1, name="branch5x5_1")(x)
        b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = conv(64, 1, name="branch3x3dbl_1")(x)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, 1, name="branch_pool")(_branch_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """35 -> 17 grid reduction: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3/2."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        conv = self.conv
        b3 = conv(384, 3, 2, name="branch3x3")(x)
        bd = conv(64, 1, name="branch3x3dbl_1")(x)
        bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = conv(96, 3, 2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with 7x7 factorised into 1x7 and 7x1; `c7` is the inner width."""

    c7: int
    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        conv, c7 = self.conv, self.c7
        row, col = {"kernel_size": (1, 7), "padding": (0, 3)}, {"kernel_size": (7, 1), "padding": (3, 0)}
        b1 = conv(192, 1, name="branch1x1")(x)
        b7 = conv(c7, 1, name="branch7x7_1")(x)
        b7 = conv(c7, **row, name="branch7x7_2")(b7)
        b7 = conv(192, **col, name="branch7x7_3")(b7)
        bd = conv(c7, 1, name="branch7x7dbl_1")(x)
        bd = conv(c7, **col, name="branch7x7dbl_2")(bd)
        bd = conv(c7, **row, name="branch7x7dbl_3")(bd)
        bd = conv(c7, **col, name="branch7x7dbl_4")(bd)
        bd = conv(192, **row, name="branch7x7dbl_5")(bd)
        bp = conv(192, 1, name="branch_pool")(_branch_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """17 -> 8 grid reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3/2."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        conv = self.conv
        b3 = conv(192, 1, name="branch3x3_1")(x)
        b3 = conv(320, 3, 2, name="branch3x3_2")(b3)
        b7 = conv(192, 1, name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, 3, 2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks: 1x3 and 3x1 side by side after a 1x1 and after a 3x3."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        conv = self.conv
        row, col = {"kernel_size": (1, 3), "padding": (0, 1)}, {"kernel_size": (3, 1), "padding": (1, 0)}
        b1 = conv(320, 1, name="branch1x1")(x)
        b3 = conv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3),
                              conv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, 1, name="branch3x3dbl_1")(x)
        bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, **row, name="branch3x3dbl_3a")(bd),
                              conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        bp = conv(192, 1, name="branch_pool")(_branch_pool(x))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """The auxiliary classifier after Mixed_6e: avg pool 5/3 -> 1x1 conv 128 -> 5x5 conv 768 -> fc."""

    num_classes: int
    conv: ModuleDef
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = avg_pool(x, 5, 3)
        x = self.conv(128, 1, name="conv0")(x)
        x = self.conv(768, 5, kernel_init=_normal(0.01), name="conv1")(x)
        x = global_avg_pool(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_normal(0.001), name="fc")(x)
        logits = logits.astype(jnp.float32)
        if train:
            self.sow("aux", "logits", logits)
        return logits


# The body after the stem, as data: (torchvision's module name, block class, its widths).
INCEPTION_V3_LAYOUT = (
    ("Mixed_5b", InceptionA, {"pool_features": 32}),
    ("Mixed_5c", InceptionA, {"pool_features": 64}),
    ("Mixed_5d", InceptionA, {"pool_features": 64}),
    ("Mixed_6a", InceptionB, {}),
    ("Mixed_6b", InceptionC, {"c7": 128}),
    ("Mixed_6c", InceptionC, {"c7": 160}),
    ("Mixed_6d", InceptionC, {"c7": 160}),
    ("Mixed_6e", InceptionC, {"c7": 192}),
    ("Mixed_7a", InceptionD, {}),
    ("Mixed_7b", InceptionE, {}),
    ("Mixed_7c", InceptionE, {}),
)
AUX_AFTER = "Mixed_6e"


class InceptionV3(nn.Module):
    """Inception-v3 as torchvision's `Inception3` (transform_input=False: no normalisation inside)."""

    num_classes: int = 1000
    aux_logits: bool = False
    dropout: float = 0.5
    dtype: Any = jnp.float32
    axis_name: str | None = None
    min_size: ClassVar[int] = 75  # torchvision's; the last grid reduction needs a 3x3 map
    aux_min_size: ClassVar[int] = 299  # the aux head's 5x5 conv needs a 17x17 Mixed_6e map

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        run_aux = self.aux_logits and (train or self.is_initializing())
        if run_aux and min(x.shape[1:3]) < self.aux_min_size:
            raise ValueError(
                f"{self.name or 'inception_v3'} with aux_logits=True needs input of at least "
                f"{self.aux_min_size}x{self.aux_min_size} to train (its auxiliary classifier's 5x5 conv needs a "
                f"17x17 Mixed_6e map), got {x.shape[1]}x{x.shape[2]}: resize the images or set aux_logits=False")
        norm = batch_norm(train, axis_name=self.axis_name, epsilon=1e-3, dtype=self.dtype)
        conv = functools.partial(ConvBN, norm=norm, dtype=self.dtype, kernel_init=_normal(0.1))

        x = x.astype(self.dtype)
        x = conv(32, 3, 2, name="Conv2d_1a_3x3")(x)
        x = conv(32, 3, name="Conv2d_2a_3x3")(x)
        x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = max_pool(x, 3, 2)
        x = conv(80, 1, name="Conv2d_3b_1x1")(x)
        x = conv(192, 3, name="Conv2d_4a_3x3")(x)
        x = max_pool(x, 3, 2)
        for name, block, widths in INCEPTION_V3_LAYOUT:
            x = block(conv=conv, name=name, **widths)(x)
            if run_aux and name == AUX_AFTER:
                InceptionAux(self.num_classes, conv, self.dtype, name="AuxLogits")(x, train)
        x = global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_normal(0.1), name="fc")(x)
        return x.astype(jnp.float32)


@register("inception_v3", input_shape=(299, 299, 3), min_size=InceptionV3.min_size, num_classes=1000,
          paper="Szegedy et al. 2015, Rethinking the Inception Architecture for Computer Vision", year=2015,
          params=23_834_568, has_aux=True, family="inception")
def inception_v3(**kw) -> nn.Module:
    """torchvision's Inception-v3; `aux_logits=True` adds the auxiliary head (27,161,264 parameters)."""
    return InceptionV3(**kw)
