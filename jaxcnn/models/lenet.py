"""The MNIST-era networks: the seeds' MLP baseline, the seeds' Keras LeNet-5, and LeNet-5 as in 1998."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.conv import Conv, conv_general_dilated
from jaxcnn.layers import avg_pool, scaled_tanh
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
        x = nn.tanh(Conv(6, (5, 5), padding="SAME", dtype=self.dtype, name="c1")(x))
        x = avg_pool(x, 2)
        x = nn.tanh(Conv(16, (5, 5), padding="VALID", dtype=self.dtype, name="c3")(x))
        x = avg_pool(x, 2)
        x = nn.tanh(Conv(120, (5, 5), padding="VALID", dtype=self.dtype, name="c5")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.tanh(nn.Dense(84, dtype=self.dtype, name="f6")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="output")(x).astype(jnp.float32)


MNIST_FACTS = {"input_shape": (28, 28, 1), "min_size": 28, "num_classes": 10, "fixed_size": True, "family": "lenet"}


@register("mlp", paper="Multilayer perceptron baseline (the seeds' Keras MLP)", year=1986, params=669_706,
          **MNIST_FACTS)
def mlp(**kw) -> nn.Module:
    return MLP(**kw)


@register("lenet5", paper="LeCun et al. 1998, as the seeds' Keras code writes it", year=1998, params=61_706,
          **MNIST_FACTS)
def lenet5(**kw) -> nn.Module:
    return LeNet5(**kw)


# --- LeNet-5 exactly as in LeCun, Bottou, Bengio & Haffner 1998 -------------------------------------------

# Table I of the paper: the S2 maps (rows 0-5) each C3 map (0-15) is connected to. Breaking the symmetry this
# way forces the C3 maps to learn different features and keeps the layer at 1,516 parameters.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

# The RBF output units' fixed centres: stylized 7x12 digit bitmaps ('#' = +1, '.' = -1), drawn here after the
# paper's Fig. 3 (the paper's exact pixels are not published as data). They are constants, not parameters.
DIGIT_BITMAPS: tuple[tuple[str, ...], ...] = (
    (".......", "..###..", ".##.##.", "##...##", "##...##", "##...##", "##...##", "##...##", ".##.##.",
     "..###..", ".......", "......."),
    (".......", "...##..", "..###..", ".####..", "...##..", "...##..", "...##..", "...##..", "...##..",
     ".######", ".......", "......."),
    (".......", ".#####.", "##...##", ".....##", "....##.", "...##..", "..##...", ".##....", "##.....",
     "#######", ".......", "......."),
    (".......", "######.", ".....##", ".....##", "..####.", ".....##", ".....##", ".....##", ".....##",
     "######.", ".......", "......."),
    (".......", "....##.", "...###.", "..#.##.", ".#..##.", "#...##.", "#######", "....##.", "....##.",
     "....##.", ".......", "......."),
    (".......", "#######", "##.....", "##.....", "######.", ".....##", ".....##", ".....##", "##...##",
     ".#####.", ".......", "......."),
    (".......", "..####.", ".##....", "##.....", "######.", "##...##", "##...##", "##...##", "##...##",
     ".#####.", ".......", "......."),
    (".......", "#######", ".....##", "....##.", "...##..", "...##..", "..##...", "..##...", "..##...",
     "..##...", ".......", "......."),
    (".......", ".#####.", "##...##", "##...##", ".#####.", "##...##", "##...##", "##...##", "##...##",
     ".#####.", ".......", "......."),
    (".......", ".#####.", "##...##", "##...##", "##...##", ".######", ".....##", ".....##", "....##.",
     ".####..", ".......", "......."),
)


def rbf_centers() -> np.ndarray:
    """The (10, 84) matrix of +-1 RBF centres, one flattened 7x12 bitmap per digit (row-major, 12 rows of 7)."""
    return np.array([[1.0 if c == "#" else -1.0 for c in "".join(rows)] for rows in DIGIT_BITMAPS], np.float32)


def paper_uniform(fan_in: int) -> nn.initializers.Initializer:
    """The 1998 paper's initialization: uniform in +-2.4 / F_in, F_in the fan-in of the unit the weight feeds
    (section II.A and appendix C: it keeps the sigmoid units in their linear range at the start)."""
    bound = 2.4 / fan_in

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Subsampling(nn.Module):
    """The paper's S-layer: the sum of each 2x2 window, times one trainable coefficient per map, plus one
    trainable bias per map (2 parameters per map). The coefficient starts at 1/4, i.e. as average pooling
    (with `paper_init`: both uniform in +-2.4/4, a unit's four inputs being its fan-in)."""

    dtype: Any = jnp.float32
    paper_init: bool = False

    @nn.compact
    def __call__(self, x):
        maps = x.shape[-1]
        paper = paper_uniform(4) if self.paper_init else None
        coef = self.param("coef", paper or nn.initializers.constant(0.25), (maps,))
        bias = self.param("bias", paper or nn.initializers.zeros, (maps,))
        window_sum = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return window_sum * coef.astype(self.dtype) + bias.astype(self.dtype)


class SparseConv(nn.Module):
    """A 'valid' convolution in which output map j sees only the input maps `table[j]`.

    Only the connected 5x5 kernels are parameters: `kernel` holds them side by side, (k, k, connections),
    and is scattered into a zero-masked dense (k, k, in, out) kernel for one ordinary convolution, so the
    gradient of the missing connections never exists.
    """

    table: Sequence[Sequence[int]]
    kernel_size: int = 5
    dtype: Any = jnp.float32
    paper_init: bool = False  # uniform +-2.4/F_in, F_in = 25 x the output map's input maps

    @nn.compact
    def __call__(self, x):
        k, maps_in, maps_out = self.kernel_size, x.shape[-1], len(self.table)
        src = np.array([i for ins in self.table for i in ins])
        dst = np.array([j for j, ins in enumerate(self.table) for _ in ins])
        if src.max() >= maps_in:
            raise ValueError(f"connection table needs {src.max() + 1} input maps, got {maps_in}")
        fan_in = np.array([k * k * len(self.table[j]) for j in dst], np.float32)

        map_fan_in = np.array([k * k * len(ins) for ins in self.table], np.float32)

        def init(key, shape, dtype=jnp.float32):  # LeCun normal with each output map's own fan-in
            if self.paper_init:
                return (jax.random.uniform(key, shape, dtype, -1.0, 1.0) * (2.4 / fan_in)).astype(dtype)
            return (jax.random.normal(key, shape, dtype) / np.sqrt(fan_in)).astype(dtype)

        def bias_init(key, shape, dtype=jnp.float32):
            if self.paper_init:
                return (jax.random.uniform(key, shape, dtype, -1.0, 1.0) * (2.4 / map_fan_in)).astype(dtype)
            return jnp.zeros(shape, dtype)

        kernel = self.param("kernel", init, (k, k, len(src)))
        bias = self.param("bias", bias_init, (maps_out,))
        dense = jnp.zeros((k, k, maps_in, maps_out), self.dtype).at[:, :, src, dst].set(kernel.astype(self.dtype))
        y = conv_general_dilated(x, dense, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


class LeNet5_1998(nn.Module):
    """LeNet-5 as in LeCun et al. 1998: 32x32x1 input, squashing 1.7159 tanh(2a/3) after every layer,
    trainable subsampling (S2, S4), the sparse C3 of Table I, C5 120, F6 84 and a Euclidean RBF output.

    The RBF units have fixed +-1 centres (`rbf_centers`, not in 'params'); the logits are the negative squared
    distances -sum_j (x_j - w_ij)^2, so a softmax cross-entropy on them trains the net (the paper's own loss
    is a variant of the MSE on these distances). The RBF is defined for the ten digit bitmaps only, so the
    model refuses `num_classes != 10` rather than silently becoming another network.
    """

    num_classes: int = 10
    dtype: Any = jnp.float32
    axis_name: str | None = None
    # The paper's uniform +-2.4/F_in for every trainable parameter (biases and S-layer coefficients too: the
    # paper counts them among the connections). Off by default, where LeCun-normal kernels, zero biases and
    # 1/4 coefficients train faster with plain SGD; the MNIST paper recipe turns it on.
    paper_init: bool = False
    min_size: ClassVar[int] = 32
    fixed_size: ClassVar[bool] = True

    def _init(self, fan_in: int) -> dict:
        if not self.paper_init:
            return {}
        return dict(kernel_init=paper_uniform(fan_in), bias_init=paper_uniform(fan_in))

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        if self.num_classes != 10:
            raise ValueError(f"{self.name or 'lenet5_1998'}: the RBF output has one fixed bitmap per digit, so "
                             f"num_classes must be 10, got {self.num_classes} (use 'lenet5' for other counts)")
        x = x.astype(self.dtype)
        paper = self.paper_init
        x = scaled_tanh(Conv(6, (5, 5), padding="VALID", dtype=self.dtype, name="c1", **self._init(25))(x))
        x = scaled_tanh(Subsampling(self.dtype, paper, name="s2")(x))
        x = scaled_tanh(SparseConv(C3_TABLE, dtype=self.dtype, paper_init=paper, name="c3")(x))
        x = scaled_tanh(Subsampling(self.dtype, paper, name="s4")(x))
        x = scaled_tanh(Conv(120, (5, 5), padding="VALID", dtype=self.dtype, name="c5", **self._init(400))(x))
        x = scaled_tanh(nn.Dense(84, dtype=self.dtype, name="f6", **self._init(120))(x.reshape(x.shape[0], -1)))
        centers = jnp.asarray(rbf_centers(), jnp.float32)
        distances = jnp.sum(jnp.square(x.astype(jnp.float32)[:, None, :] - centers), axis=-1)
        return -distances


@register("lenet5_1998", input_shape=(32, 32, 1), min_size=32, num_classes=10, fixed_size=True, family="lenet",
          paper="LeCun et al. 1998, Gradient-based learning applied to document recognition", year=1998,
          params=60_000)
def lenet5_1998(**kw) -> nn.Module:
    return LeNet5_1998(**kw)
