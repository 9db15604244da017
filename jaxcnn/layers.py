"""The few layers flax lacks, written to match torch (and TF where they differ) to fp32 rounding.

Everything here works on NHWC arrays. Paddings follow torch: an int `p` pads `p` on both sides of each
spatial axis, which is what torchvision weights expect (flax's 'SAME' pads (0, 1) for stride 2 on even
inputs and silently breaks equivalence).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.conv import Conv, on_fast_platforms, window_taps

ModuleDef = Any
Padding = int | str | Sequence[tuple[int, int]]


def pairs(value: int | Sequence[int]) -> tuple[int, int]:
    """`3` -> (3, 3); `(3, 5)` -> (3, 5)."""
    return (value, value) if isinstance(value, int) else tuple(value)


def torch_padding(padding: int | Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """torch's symmetric `padding=p` (or (ph, pw)) as flax's explicit ((ph, ph), (pw, pw))."""
    ph, pw = pairs(padding)
    return ((ph, ph), (pw, pw))


# --- Local response normalization -------------------------------------------------------------------------


def local_response_norm(x: jnp.ndarray, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0, alpha_over_size: bool = True) -> jnp.ndarray:
    """LRN across channels (last axis).

    `alpha_over_size=True` is torch's `LocalResponseNorm`: a / (k + alpha/n * sum a^2)^beta over `size`
    zero-padded neighbouring channels. `alpha_over_size=False` is the AlexNet paper's and TF's form
    a / (k + alpha * sum a^2)^beta (TF's depth_radius = (size - 1) / 2, bias = k).
    """
    squares = jnp.square(x.astype(jnp.float32))
    # torch's window for channel c is [c - size//2, c + (size-1)//2]: pad the channel axis accordingly.
    window_sum = lax.reduce_window(squares, 0.0, lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                   ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
    scale = alpha / size if alpha_over_size else alpha
    return (x * (k + scale * window_sum) ** (-beta)).astype(x.dtype)


class LRN(nn.Module):
    """Local response normalization (see `local_response_norm`); AlexNet 2012 defaults: the paper's form."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0
    alpha_over_size: bool = False

    @nn.compact
    def __call__(self, x):
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.alpha_over_size)


# --- Pooling ----------------------------------------------------------------------------------------------


def _pool_pads(size: int, window: int, stride: int, pad: int, ceil_mode: bool) -> tuple[int, int]:
    """(left, right) padding of one spatial axis, torch's rule for `ceil_mode` included.

    With ceil_mode torch adds one more output when a window would start inside the input or left padding,
    which needs extra right padding beyond `pad`.
    """
    if pad > window // 2:  # torch refuses too: such a window could lie entirely in the padding
        raise ValueError(f"pooling padding {pad} is more than half the window {window}")
    span = size + 2 * pad - window
    if span < 0:
        raise ValueError(f"pooling window {window} is larger than the padded input {size + 2 * pad}")
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return pad, max(pad, (out - 1) * stride + window - size - pad)


def _resolve_padding(x, window, strides, padding: Padding, ceil_mode: bool):
    """Explicit ((top, bottom), (left, right)) pads, plus the symmetric part torch counts as padding."""
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
        return tuple(pads), tuple(pads)
    if isinstance(padding, int) or (len(padding) == 2 and all(isinstance(p, int) for p in padding)):
        sym = pairs(padding)
        pads = tuple(_pool_pads(x.shape[1 + i], window[i], strides[i], sym[i], ceil_mode) for i in range(2))
        return pads, tuple((p, p) for p in sym)
    pads = tuple(tuple(p) for p in padding)
    return pads, pads


def max_pool(x: jnp.ndarray, window: int | Sequence[int], strides: int | Sequence[int] | None = None,
             padding: Padding = 0, ceil_mode: bool = False, per_tap_gradient: bool = True) -> jnp.ndarray:
    """torch `MaxPool2d(window, strides, padding, ceil_mode=...)` on NHWC; padding may be 'SAME'/'VALID'.

    On the platforms where it was measured faster (`conv.FAST_PLATFORMS`: CPU) the pool is computed per tap
    (`_max_pool`); elsewhere, and with `per_tap_gradient=False`, it is `reduce_window` under XLA's autodiff
    (the reference the per-tap pool is tested and benchmarked against).
    """
    window = pairs(window)
    strides = window if strides is None else pairs(strides)
    pads, _ = _resolve_padding(x, window, strides, padding, ceil_mode)
    plain = functools.partial(_reduce_window_max, window=window, strides=strides, pads=pads)
    if not per_tap_gradient:
        return plain(x)
    return on_fast_platforms(functools.partial(_max_pool, window=window, strides=strides, pads=pads), plain, x)


def _reduce_window_max(x, window, strides, pads):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0)))


def _padded_taps(x, window, strides, pads, fill):
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    out_hw = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:3], window, strides)]
    return window_taps(xp, window, strides, out_hw)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
    # The maximum of the window's strided slices: one elementwise fusion, 1.8x faster on XLA:CPU than
    # reduce_window (a 3x3 stride-2 pool of 32x112x112x64: 62 -> 35 ms), and exactly the same values.
    return functools.reduce(jnp.maximum, _padded_taps(x, window, strides, pads, -jnp.inf))


@_max_pool.defjvp
def _max_pool_jvp(window, strides, pads, primals, tangents):
    (x,), (dx,) = primals, tangents
    first_max = jax.checkpoint(functools.partial(_first_max_tangent, window=window, strides=strides, pads=pads))
    return _max_pool(x, window, strides, pads), first_max(x, dx)


def _first_max_tangent(x, dx, window, strides, pads):
    """Each output's tangent is that of the first maximum of its window in row-major order, as in torch.

    Linear in dx, and transposed by reverse mode into the gradient that sends each output's cotangent to that
    element: compares, selects and pads that fuse into a few loops. Autodiff of reduce_window would do the same
    through select-and-scatter, which XLA:CPU runs as a reduce-window carrying argmax indices: 3-7% of a
    ResNet-18 step (benchmarks/NOTES.md). Under `jax.checkpoint` (see `_max_pool_jvp`) the comparisons are
    redone in the backward pass from x rather than kept from the forward.
    """
    taps = _padded_taps(x, window, strides, pads, -jnp.inf)
    # The maximum again, from the very slices compared below: the forward output may come from a fusion that
    # recomputed x with other rounding, and an equality test against it would then miss.
    y = functools.reduce(jnp.maximum, taps)
    taken = jnp.zeros(y.shape, bool)
    tangent = jnp.zeros_like(y)
    for seen, moved in zip(taps, _padded_taps(dx, window, strides, pads, 0)):
        first = (seen == y) & ~taken
        taken = taken | first
        tangent = tangent + jnp.where(first, moved, 0)
    return tangent


def avg_pool(x: jnp.ndarray, window: int | Sequence[int], strides: int | Sequence[int] | None = None,
             padding: Padding = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> jnp.ndarray:
    """torch `AvgPool2d` on NHWC.

    `count_include_pad=True` (torch's default) divides by the window clipped to the explicitly padded input;
    False divides by the real pixels only. A string padding never counts the padding: 'SAME' is TF/Keras
    'same' average pooling.
    The extra right padding of ceil_mode is never counted, as in torch.
    """
    window = pairs(window)
    strides = window if strides is None else pairs(strides)
    pads, counted = _resolve_padding(x, window, strides, padding, ceil_mode)
    full = ((0, 0), *pads, (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, (1, *window, 1), (1, *strides, 1), full)
    # The divisor, per output position: pool a map of ones that is 1 over what torch counts.
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad and not isinstance(padding, str):
        ones = jnp.pad(ones, ((0, 0), *counted, (0, 0)), constant_values=1.0)
        rest = tuple((p[0] - c[0], p[1] - c[1]) for p, c in zip(pads, counted))
    else:
        rest = pads
    count = lax.reduce_window(ones, 0.0, lax.add, (1, *window, 1), (1, *strides, 1), ((0, 0), *rest, (0, 0)))
    return total / count


def _adaptive_bins(size: int, out: int) -> np.ndarray:
    """(out, size) averaging matrix with torch's bins: floor(i*size/out) .. ceil((i+1)*size/out)."""
    matrix = np.zeros((out, size), np.float64)  # cast to the input's dtype by the caller
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jnp.ndarray, output_size: int | Sequence[int]) -> jnp.ndarray:
    """torch `AdaptiveAvgPool2d(output_size)` on NHWC.

    Written as two small matmuls with constant bin matrices: exact torch bins for any input size, and
    fusion-friendly for XLA (an identity when the input already has the output size).
    """
    oh, ow = pairs(output_size)
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:  # equal bins: a plain reshape-mean
        return x.reshape(x.shape[0], oh, h // oh, ow, w // ow, x.shape[3]).mean(axis=(2, 4))
    rows = jnp.asarray(_adaptive_bins(h, oh), x.dtype)
    cols = jnp.asarray(_adaptive_bins(w, ow), x.dtype)
    return jnp.einsum("oh,nhwc,pw->nopc", rows, x, cols, precision=lax.Precision.HIGHEST)


class PooledDense(nn.Module):
    """`nn.Dense(features)` on `flatten_nchw(adaptive_avg_pool(x, pool_size))`, as one dense layer on x itself.

    The pool is linear, so it folds into the kernel: each input cell's rows are the pool-weighted sum of the
    rows of the output cells it feeds. Where x is smaller than the pool's output (torchvision VGG's 1x1 map
    copied over 7x7 at a 32x32 input, AlexNet's over 6x6 at 63x63) the dense layer then does h*w / pool_size^2
    of the multiply-adds (1/49 for VGG at 32x32). Parameters are nn.Dense's on the pooled input: the same
    names, shapes and initial values, so weights convert and checkpoints load either way.
    """

    features: int
    pool_size: int | Sequence[int]
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        (oh, ow), (h, w), channels = pairs(self.pool_size), x.shape[1:3], x.shape[3]
        kernel = self.param("kernel", self.kernel_init, (channels * oh * ow, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        rows = jnp.asarray(_adaptive_bins(h, oh), jnp.float32)  # (oh, h)
        cols = jnp.asarray(_adaptive_bins(w, ow), jnp.float32)  # (ow, w)
        folded = jnp.einsum("iy,jx,cijo->cyxo", rows, cols, kernel.reshape(channels, oh, ow, self.features),
                            precision=lax.Precision.HIGHEST)  # in fp32 whatever the compute dtype
        x, folded, bias = nn.dtypes.promote_dtype(flatten_nchw(x), folded.reshape(-1, self.features), bias,
                                                  dtype=self.dtype)
        return x @ folded + bias


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over the spatial axes: NHWC -> NC."""
    return jnp.mean(x, axis=(1, 2))


def flatten_nchw(x: jnp.ndarray) -> jnp.ndarray:
    """Flatten NHWC in torch's NCHW order, so a torch dense kernel maps 1:1 onto the following Dense."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


# --- Conv + BatchNorm + activation ------------------------------------------------------------------------


def batch_norm(train: bool, *, axis_name: str | None = None, epsilon: float = 1e-5, momentum: float = 0.9,
               dtype: Any = jnp.float32) -> ModuleDef:
    """A BatchNorm constructor as torchvision uses it (flax momentum 0.9 == torch momentum 0.1).

    `axis_name` comes from the model's creator, so the same model runs on one device and under pmap.
    """
    return lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                                     axis_name=axis_name, dtype=dtype, **kw)


class ConvBN(nn.Module):
    """Conv -> optional norm -> optional activation, with torch-style explicit padding.

    `norm` is a constructor from the parent (e.g. `batch_norm(train, ...)`), or None for no normalization;
    the conv has a bias only when there is no norm (unless `use_bias` says otherwise).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] | str = 0
    groups: int = 1
    norm: ModuleDef | None = None
    act: Callable | None = nn.relu
    use_bias: bool | None = None
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()  # flax's default; families pass torch's init

    @nn.compact
    def __call__(self, x):
        pad = self.padding if isinstance(self.padding, str) else torch_padding(self.padding)
        use_bias = self.norm is None if self.use_bias is None else self.use_bias
        x = Conv(self.features, pairs(self.kernel_size), pairs(self.strides), padding=pad,
                 feature_group_count=self.groups, use_bias=use_bias, dtype=self.dtype,
                 kernel_init=self.kernel_init, name="conv")(x)
        if self.norm is not None:
            x = self.norm(name="bn")(x)
        return x if self.act is None else self.act(x)


def scaled_tanh(x: jnp.ndarray) -> jnp.ndarray:
    """LeCun's 1998 squashing function 1.7159 * tanh(2x/3)."""
    return 1.7159 * jnp.tanh(2.0 * x / 3.0)


__all__ = [
    "LRN", "ConvBN", "adaptive_avg_pool", "avg_pool", "batch_norm", "flatten_nchw", "global_avg_pool",
    "local_response_norm", "max_pool", "pairs", "scaled_tanh", "torch_padding",
]
