"""DenseNet-BC as torchvision builds it (densenet121/161/169/201), weight-compatible 1:1.

Every layer in a dense block sees the concatenation of all earlier feature maps and adds `growth_rate` new
ones: BN-ReLU-conv1x1 (bn_size * growth_rate channels, the "B" bottleneck) then BN-ReLU-conv3x3. Between
blocks a transition (BN-ReLU-conv1x1-avgpool 2/2) halves the channels ("C", compression 0.5) and the size.
After the last block: BN, ReLU, global average pooling, a linear classifier.

Parameter names mirror torchvision's `features.*` modules without the `features.` prefix: `conv0`, `norm0`,
`denseblock1/denselayer1/norm1`, `transition1/conv`, `norm5`, `classifier`. Each block, layer and transition
is a submodule, so `capture_intermediates=True` records their outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.conv import Conv
from jaxcnn.layers import avg_pool, batch_norm, global_avg_pool, max_pool, torch_padding
from jaxcnn.models.common import check_input
from jaxcnn.models.registry import register

ModuleDef = Any

# torchvision's initialisation: kaiming normal (fan_in, relu gain) for convs; nn.Linear's default uniform
# kernel with a zero bias for the classifier; BN scale 1, bias 0.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (bn_size * growth_rate) -> BN-ReLU-conv3x3 (growth_rate): the new feature maps only."""

    growth_rate: int
    bn_size: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm(name="norm1")(x))
        y = self.conv(self.bn_size * self.growth_rate, (1, 1), padding="VALID", name="conv1")(y)
        y = self.act(self.norm(name="norm2")(y))
        return self.conv(self.growth_rate, (3, 3), padding=torch_padding(1), name="conv2")(y)


class DenseBlock(nn.Module):
    """`num_layers` dense layers; each one's output is concatenated (after its inputs, as torch) to the input."""

    num_layers: int
    growth_rate: int
    bn_size: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            new = DenseLayer(self.growth_rate, self.bn_size, self.conv, self.norm, self.act,
                             name=f"denselayer{i + 1}")(x)
            x = jnp.concatenate([x, new], axis=-1)
        return x


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to `features` channels, then 2x2 average pooling with stride 2."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, (1, 1), padding="VALID", name="conv")(self.act(self.norm(name="norm")(x)))
        return avg_pool(x, 2, 2)


class DenseNet(nn.Module):
    """DenseNet-BC: stem (conv 7x7/2 pad 3, BN, ReLU, max pool 3/2 pad 1), dense blocks with transitions."""

    block_config: Sequence[int]
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    num_classes: int = 1000
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
        x = conv(self.num_init_features, (7, 7), 2, padding=torch_padding(3), name="conv0")(x)
        x = act(norm(name="norm0")(x))
        x = max_pool(x, 3, 2, padding=1)
        for i, num_layers in enumerate(self.block_config):
            x = DenseBlock(num_layers, self.growth_rate, self.bn_size, conv, norm, act,
                           name=f"denseblock{i + 1}")(x)
            if i < len(self.block_config) - 1:
                x = Transition(x.shape[-1] // 2, conv, norm, act, name=f"transition{i + 1}")(x)
        x = act(norm(name="norm5")(x))
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, kernel_init=linear_init, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)


# --- Variants: (growth rate, block config, initial features, reference parameter count) -------------------

_PAPER = "Huang et al. 2017, Densely Connected Convolutional Networks (DenseNet-BC as torchvision)"

VARIANTS = {
    "densenet121": (32, (6, 12, 24, 16), 64, 7_978_856),
    "densenet161": (48, (6, 12, 36, 24), 96, 28_681_000),
    "densenet169": (32, (6, 12, 32, 32), 64, 14_149_480),
    "densenet201": (32, (6, 12, 48, 32), 64, 20_013_928),
}


def _register_variant(name, growth_rate, block_config, num_init_features, params):
    def build(**kw) -> nn.Module:
        return DenseNet(block_config=block_config, growth_rate=growth_rate,
                        num_init_features=num_init_features, **kw)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: growth rate {growth_rate}, blocks {block_config}; {_PAPER}."
    return register(name, input_shape=(224, 224, 3), min_size=DenseNet.min_size, num_classes=1000,
                    paper=_PAPER, year=2017, params=params, family="densenet")(build)


# Module-level builders (`densenet.densenet121(num_classes=10)`), registered as they are made.
globals().update({name: _register_variant(name, *variant) for name, variant in VARIANTS.items()})
