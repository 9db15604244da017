"""The MNIST-era networks: the seeds' MLP baseline, the seeds' Keras LeNet-5, and LeNet-5 as in 1998."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import avg_pool
from jaxcnn.models.common import check_input
from jaxcnn.models.registry import register


class MLP(nn.Module):
    """A plain multilayer perceptron on flattened images (the seeds' 784-512-512-10 baseline)."""

    num_classes: int = 10
    hidden: Sequence[int] = (512, 512)
    dropout: float = 0.0
    dtype: Any = jnp.float32
    axis_name: str | None = None
    min_size: ClassVar[int] = 28
    fixed_size: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class LeNet5(nn.Module):
    """The seeds' Keras LeNet-5: 28x28, C1 6@5x5 'same', tanh, 2x2 average pooling, C5 120, F6 84."""

    num_classes: int = 10
    dtype: Any = jnp.float32
    axis_name: str | None = None
    min_size: ClassVar[int] = 28
    fixed_size: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        x = x.astype(self.dtype)
        x = nn.tanh(nn.Conv(6, (5, 5), padding="SAME", dtype=self.dtype, name="c1")(x))
        x = avg_pool(x, 2)
        x = nn.tanh(nn.Conv(16, (5, 5), padding="VALID", dtype=self.dtype, name="c3")(x))
        x = avg_pool(x, 2)
        x = nn.tanh(nn.Conv(120, (5, 5), padding="VALID", dtype=self.dtype, name="c5")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.tanh(nn.Dense(84, dtype=self.dtype, name="f6")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="output")(x).astype(jnp.float32)


MNIST_FACTS = dict(input_shape=(28, 28, 1), min_size=28, num_classes=10, fixed_size=True, family="lenet")


@register("mlp", paper="Multilayer perceptron baseline (the seeds' Keras MLP)", year=1986, params=669_706,
          **MNIST_FACTS)
def mlp(**kw) -> nn.Module:
    return MLP(**kw)


@register("lenet5", paper="LeCun et al. 1998, as the seeds' Keras code writes it", year=1998, params=61_706,
          **MNIST_FACTS)
def lenet5(**kw) -> nn.Module:
    return LeNet5(**kw)
