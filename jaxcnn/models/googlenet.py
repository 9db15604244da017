"""GoogLeNet (Inception v1): torchvision's BatchNorm variant and the 2014 paper's network.

Szegedy et al. 2014, "Going Deeper with Convolutions". One `GoogLeNet` module and one `Inception` block; the
two networks differ only in data:

| | `googlenet` (torchvision) | `googlenet_2014` (paper, Table 1 and Fig. 3) |
|---|---|---|
| convs | conv without bias + BatchNorm(eps 1e-3) + relu | conv with bias + relu |
| "5x5" branch | a 3x3 conv (torchvision's known slip, pytorch/vision#906) | a real 5x5 conv |
| LRN | none | after the first max pool and after conv3 (Caffe's form: k 1, n 5, alpha 1e-4/n, beta 0.75) |
| max pool before 5a | 2x2 / 2 | 3x3 / 2 |
| aux heads' pool | adaptive average to 4x4 (any input size) | average 5x5 / 3 (4x4 at 224) |
| input | any size >= 31 | 224x224 (Table 1's receptive field; the aux fc fixes it) |
| dropout (main / aux) | 0.2 / 0.7 | 0.4 / 0.7 |

Every max pool uses torch's ceil_mode (Caffe's rounding), so 224 -> 112 -> 56 -> 28 -> 14 -> 7 in both.
Both end in a global average pool (the paper's 7x7/1 average pool on its 7x7 map), dropout and a linear layer.

Auxiliary classifiers (`aux_logits=True`; off by default, so the registered count is the inference network's,
torchvision's 6,624,904): after 4a and 4d, pool -> 1x1 conv 128 -> fc 1024 -> relu -> dropout 0.7 -> fc.
They run only with `train=True`, each sowing its logits into the 'aux' collection under its own name
(`aux/aux1/logits`, `aux/aux2/logits`: every leaf of 'aux' is a logits array, and the model's return value
stays the main logits); their parameters are created at `init` in either mode.
Train recipes that follow the paper set `model_kwargs.aux_logits=True` and weight the aux losses by 0.3.

Parameter names mirror torchvision's modules (`conv1/conv`, `conv1/bn`, `inception3a/branch2_1/conv`,
`aux1/fc1`, `fc`), so converting torchvision weights is a renaming; each Inception block is a submodule, so
`capture_intermediates=True` records its output under `intermediates/inception3a/__call__`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import (
    LRN,
    ConvBN,
    adaptive_avg_pool,
    avg_pool,
    batch_norm,
    flatten_nchw,
    global_avg_pool,
    max_pool,
)
from jaxcnn.models.common import check_input, kernel_init
from jaxcnn.models.registry import register

ModuleDef = Any

# Table 1 of the paper (torchvision uses the same widths): each block's
# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
INCEPTION_WIDTHS: Mapping[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}

# torchvision's initialisation: every conv and linear kernel ~ N(0, 0.01) (truncated at +-2, i.e. 200 std:
# effectively untruncated). The paper's network uses Glorot ("xavier"), as the Caffe reference model does.


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> kxk | max pool 3/1 -> 1x1.

    `widths` is a Table 1 row; `branch3_kernel` is the "5x5" branch's kernel (5 in the paper, 3 in
    torchvision); `conv` (a `ConvBN` constructor from the parent) decides bias/BatchNorm/activation.
    Submodule names follow torchvision's (`branch2_1` is torch's `branch2.1`).
    """

    widths: Sequence[int]
    conv: ModuleDef
    branch3_kernel: int = 3

    @nn.compact
    def __call__(self, x):
        n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj = self.widths
        k = self.branch3_kernel
        branch1 = self.conv(n1x1, 1, name="branch1")(x)
        branch2 = self.conv(n3x3red, 1, name="branch2_0")(x)
        branch2 = self.conv(n3x3, 3, padding=1, name="branch2_1")(branch2)
        branch3 = self.conv(n5x5red, 1, name="branch3_0")(x)
        branch3 = self.conv(n5x5, k, padding=k // 2, name="branch3_1")(branch3)
        branch4 = max_pool(x, 3, 1, padding=1, ceil_mode=True)
        branch4 = self.conv(pool_proj, 1, name="branch4_1")(branch4)
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class AuxHead(nn.Module):
    """An auxiliary classifier: pool to 4x4 -> 1x1 conv 128 -> fc 1024 -> relu -> dropout -> fc.

    In training it sows its logits into the 'aux' collection as `logits` (a sown name cannot be the name of
    the head itself, which mirrors torchvision's `aux1`/`aux2`).

    `pool` maps the block output to 4x4 (torchvision: adaptive average; paper: average 5x5 / 3). The
    flatten is torch's NCHW order, so torchvision's `fc1` weights map 1:1.
    """

    num_classes: int
    conv: ModuleDef
    pool: Callable
    dropout: float
    kernel_init: Callable
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = self.conv(128, 1, name="conv")(self.pool(x))
        x = flatten_nchw(x)
        x = nn.relu(nn.Dense(1024, dtype=self.dtype, kernel_init=self.kernel_init, name="fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=self.kernel_init, name="fc2")(x)
        logits = logits.astype(jnp.float32)
        if train:
            self.sow("aux", "logits", logits)
        return logits


class GoogLeNet(nn.Module):
    """GoogLeNet as torchvision builds it (`googlenet`); the paper's network is `GoogLeNet2014` below."""

    num_classes: int = 1000
    aux_logits: bool = False
    dropout: float = 0.2
    aux_dropout: float = 0.7
    use_bn: bool = True  # conv (no bias) + BatchNorm(eps 1e-3) + relu; False: conv with bias + relu
    branch3_kernel: int = 3
    lrn: bool = False
    pool4_window: int = 2  # the max pool before 5a (stride 2)
    aux_pool: Callable = functools.partial(adaptive_avg_pool, output_size=4)
    widths: Mapping[str, Sequence[int]] | None = None  # None: INCEPTION_WIDTHS (Table 1)
    weight_init: str = "normal_0.01"  # a key of jaxcnn.models.common.KERNEL_INITS: how every kernel starts
    dtype: Any = jnp.float32
    axis_name: str | None = None
    min_size: ClassVar[int] = 31  # the smallest side at which every pool window fits its input

    def _conv(self, train: bool) -> ModuleDef:
        norm = (batch_norm(train, axis_name=self.axis_name, epsilon=1e-3, dtype=self.dtype)
                if self.use_bn else None)
        return functools.partial(ConvBN, norm=norm, dtype=self.dtype, kernel_init=kernel_init(self.weight_init))

    def _lrn(self, x):
        # Caffe's LRN (torch's form), as in the Caffe reference model of the paper's network.
        return LRN(size=5, alpha=1e-4, beta=0.75, k=1.0, alpha_over_size=True)(x) if self.lrn else x

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        conv = self._conv(train)
        widths = INCEPTION_WIDTHS if self.widths is None else self.widths
        inception = functools.partial(Inception, conv=conv, branch3_kernel=self.branch3_kernel)
        # Aux heads also run at init so that their parameters exist whichever mode `init` is called in.
        run_aux = self.aux_logits and (train or self.is_initializing())
        aux = functools.partial(AuxHead, self.num_classes, conv, self.aux_pool, self.aux_dropout,
                                kernel_init(self.weight_init), self.dtype)

        x = x.astype(self.dtype)
        x = conv(64, 7, 2, padding=3, name="conv1")(x)
        x = self._lrn(max_pool(x, 3, 2, ceil_mode=True))
        x = conv(64, 1, name="conv2")(x)
        x = self._lrn(conv(192, 3, padding=1, name="conv3")(x))
        x = max_pool(x, 3, 2, ceil_mode=True)
        for block in ("3a", "3b", "pool", "4a", "4b", "4c", "4d", "4e", "pool4", "5a", "5b"):
            if block == "pool":
                x = max_pool(x, 3, 2, ceil_mode=True)
            elif block == "pool4":
                x = max_pool(x, self.pool4_window, 2, ceil_mode=True)
            else:
                x = inception(widths[block], name=f"inception{block}")(x)
            if run_aux and block in ("4a", "4d"):
                aux(name="aux1" if block == "4a" else "aux2")(x, train)
        x = global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=kernel_init(self.weight_init), name="fc")(
            x)
        return x.astype(jnp.float32)


class GoogLeNet2014(GoogLeNet):
    """GoogLeNet as in the 2014 paper: biases and no BatchNorm, real 5x5 branches, LRN, 224x224 input."""

    dropout: float = 0.4
    use_bn: bool = False
    branch3_kernel: int = 5
    lrn: bool = True
    pool4_window: int = 3
    aux_pool: Callable = functools.partial(avg_pool, window=5, strides=3)
    weight_init: str = "glorot"
    min_size: ClassVar[int] = 224
    fixed_size: ClassVar[bool] = True


GOOGLENET_FACTS = {"num_classes": 1000, "year": 2014, "has_aux": True, "family": "googlenet"}


@register("googlenet", input_shape=(224, 224, 3), min_size=GoogLeNet.min_size,
          paper="Szegedy et al. 2014, Going Deeper with Convolutions (torchvision's BatchNorm variant)",
          params=6_624_904, **GOOGLENET_FACTS)
def googlenet(**kw) -> nn.Module:
    """torchvision's GoogLeNet; `aux_logits=True` adds both auxiliary heads (13,004,888 parameters)."""
    return GoogLeNet(**kw)


@register("googlenet_2014", input_shape=(224, 224, 3), min_size=224, fixed_size=True,
          paper="Szegedy et al. 2014, Going Deeper with Convolutions", params=6_998_552, **GOOGLENET_FACTS)
def googlenet_2014(**kw) -> nn.Module:
    """The paper's GoogLeNet (Table 1); `aux_logits=True` adds both auxiliary heads."""
    return GoogLeNet2014(**kw)
