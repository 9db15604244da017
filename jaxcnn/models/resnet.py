"""ResNet, ResNeXt and Wide ResNet as torchvision builds them (ResNet v1.5), weight-compatible 1:1.

One `ResNet` module; the variants are data (flax ImageNet example style): `stage_sizes`, `block_cls`,
`groups` and `width_per_group`. Two block classes, one per idea: `BasicBlock` (two 3x3 convs, ResNet-18/34)
and `Bottleneck` (1x1 -> 3x3 -> 1x1, everything deeper). Blocks receive `conv`/`norm`/`act` from the parent.

torchvision details that matter for equivalence, all reproduced here:
- v1.5: a bottleneck strides on its 3x3 conv (the 2015 paper strides on the first 1x1).
- explicit torch paddings: stem conv 7x7/2 pad 3, max pool 3/2 pad 1, 3x3 convs pad 1 (flax 'SAME' would pad
  (0, 1) at stride 2 and shift every feature map by half a pixel).
- the shortcut is a 1x1 conv with stride s + BN whenever the shape changes; BN eps 1e-5, momentum 0.1.
- ResNeXt/Wide: the bottleneck width is int(planes * width_per_group / 64) * groups.

Parameter names mirror torchvision's module names: `conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/bn1`,
`layer2_0/downsample_conv`, `layer2_0/downsample_bn`, `fc`. Each block is its own submodule, so
`capture_intermediates=True` records every block's output under `intermediates/layerX_i/__call__`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.conv import Conv
from jaxcnn.layers import batch_norm, global_avg_pool, max_pool, torch_padding
from jaxcnn.models.common import check_input
from jaxcnn.models.registry import register

ModuleDef = Any

# torchvision's initialisation: kaiming normal (fan_out, relu gain) for convs; torch's nn.Linear default
# (uniform +-1/sqrt(fan_in)) for the classifier kernel. BN starts at scale 1, bias 0 (flax's default).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _shortcut(block: nn.Module, x, out_features: int):
    """The identity, or torchvision's `downsample` (1x1 conv, stride s + BN) when the shape changes."""
    if block.strides == 1 and x.shape[-1] == out_features:
        return x
    x = block.conv(out_features, (1, 1), block.strides, padding="VALID", name="downsample_conv")(x)
    return block.norm(name="downsample_bn")(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34). Output: `planes` channels."""

    planes: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    groups: int = 1
    width_per_group: int = 64
    zero_init_last: bool = False
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x):
        if self.groups != 1 or self.width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64 (as torchvision)")
        pad = torch_padding(1)
        y = self.conv(self.planes, (3, 3), self.strides, padding=pad, name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.planes, (3, 3), padding=pad, name="conv2")(y)
        y = self.norm(name="bn2", **_last_norm_kw(self.zero_init_last))(y)
        return self.act(y + _shortcut(self, x, self.planes))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided, grouped) -> 1x1 expand, with a residual connection.

    Output: `4 * planes` channels. The inner width is int(planes * width_per_group / 64) * groups, which
    covers ResNet (64, 1), ResNeXt (e.g. 32 groups of 4) and Wide ResNet (width_per_group 128).
    """

    planes: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    groups: int = 1
    width_per_group: int = 64
    zero_init_last: bool = False
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x):
        width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
        out_features = self.planes * self.expansion
        y = self.conv(width, (1, 1), padding="VALID", name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(width, (3, 3), self.strides, padding=torch_padding(1), feature_group_count=self.groups,
                      name="conv2")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(out_features, (1, 1), padding="VALID", name="conv3")(y)
        y = self.norm(name="bn3", **_last_norm_kw(self.zero_init_last))(y)
        return self.act(y + _shortcut(self, x, out_features))


def _last_norm_kw(zero_init: bool) -> dict:
    """torchvision's `zero_init_residual`: start each residual branch's last BN at scale 0 (block = identity)."""
    return {"scale_init": nn.initializers.zeros} if zero_init else {}


class ResNet(nn.Module):
    """ResNet v1.5 as torchvision: stem, four stages of `stage_sizes` blocks (64..512 planes), avg pool, fc."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int = 1000
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    axis_name: str | None = None
    min_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        conv = functools.partial(Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
        norm = batch_norm(train, axis_name=self.axis_name, dtype=self.dtype)
        act = nn.relu

        x = x.astype(self.dtype)
        x = conv(64, (7, 7), 2, padding=torch_padding(3), name="conv1")(x)
        x = act(norm(name="bn1")(x))
        x = max_pool(x, 3, 2, padding=1)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = self.block_cls(planes=64 * 2**stage, strides=2 if stage > 0 and i == 0 else 1,
                                   groups=self.groups, width_per_group=self.width_per_group,
                                   zero_init_last=self.zero_init_residual, conv=conv, norm=norm, act=act,
                                   name=f"layer{stage + 1}_{i}")(x)
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


# --- Variants: (stage sizes, block, groups, width per group, reference parameter count) ------------------

_RESNET = "He et al. 2016, Deep Residual Learning for Image Recognition (v1.5 as torchvision)"
_RESNEXT = "Xie et al. 2017, Aggregated Residual Transformations for Deep Neural Networks"
_WIDE = "Zagoruyko & Komodakis 2016, Wide Residual Networks (bottleneck form as torchvision)"

VARIANTS = {
    "resnet18": ((2, 2, 2, 2), BasicBlock, 1, 64, 11_689_512, _RESNET, 2016),
    "resnet34": ((3, 4, 6, 3), BasicBlock, 1, 64, 21_797_672, _RESNET, 2016),
    "resnet50": ((3, 4, 6, 3), Bottleneck, 1, 64, 25_557_032, _RESNET, 2016),
    "resnet101": ((3, 4, 23, 3), Bottleneck, 1, 64, 44_549_160, _RESNET, 2016),
    "resnet152": ((3, 8, 36, 3), Bottleneck, 1, 64, 60_192_808, _RESNET, 2016),
    "resnext50_32x4d": ((3, 4, 6, 3), Bottleneck, 32, 4, 25_028_904, _RESNEXT, 2017),
    "resnext101_32x8d": ((3, 4, 23, 3), Bottleneck, 32, 8, 88_791_336, _RESNEXT, 2017),
    "resnext101_64x4d": ((3, 4, 23, 3), Bottleneck, 64, 4, 83_455_272, _RESNEXT, 2017),
    "wide_resnet50_2": ((3, 4, 6, 3), Bottleneck, 1, 128, 68_883_240, _WIDE, 2016),
    "wide_resnet101_2": ((3, 4, 23, 3), Bottleneck, 1, 128, 126_886_696, _WIDE, 2016),
}


def _register_variant(name, stage_sizes, block_cls, groups, width_per_group, params, paper, year):
    def build(**kw) -> nn.Module:
        return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, groups=groups,
                      width_per_group=width_per_group, **kw)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: {paper}."
    return register(name, input_shape=(224, 224, 3), min_size=ResNet.min_size, num_classes=1000, paper=paper,
                    year=year, params=params, family="resnet")(build)


# Module-level builders (`resnet.resnet50(num_classes=10)`), registered as they are made.
globals().update({name: _register_variant(name, *variant) for name, variant in VARIANTS.items()})
