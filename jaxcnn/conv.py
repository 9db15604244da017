"""A drop-in `lax.conv_general_dilated` whose gradients are plain matrix products on CPU.

XLA:CPU computes a convolution's weight gradient as another convolution with the batch as its contraction
axis, after transposing both operands (NHWC -> CHWN): on a 2-core CPU those transposes and that oddly shaped
convolution cost several times the forward pass (benchmarks/NOTES.md). Here the forward pass stays
`lax.conv_general_dilated`, and the backward pass is written as im2col:

    dW = patches(x)^T @ dy           one GEMM with the kernel taps x input channels as rows
    dx = conv(dy, flipped W)          stride 1: the transposed convolution is itself a forward convolution
    dx = col2im(dy @ W^T)             strided: a GEMM, then each tap's slice added back in place

Same sums as autodiff's, in another order: results agree with `lax.conv_general_dilated`'s gradients to
fp32 rounding (tests/test_conv.py). Used only where it pays: NHWC/HWIO, no dilation, no feature groups, on
the CPU backend; everything else goes to `lax.conv_general_dilated` unchanged. `Conv` is `nn.Conv` with
this function plugged in: same parameters, same names, same checkpoints.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Inputs with fewer channels keep XLA's own gradient: for a grey image (LeNet's C1) the concatenated patches
# are single scalars and cost more than XLA's convolution. From RGB up the GEMM wins (a 7x7 stride-2 RGB stem's
# weight gradient: 730 -> 413 ms; resnet18's step 1.09x; benchmarks/NOTES.md).
MIN_CHANNELS = 3
# The patches are the input copied kh*kw times (3.7 GB for a VGG layer at 224x224 and batch 32): above this
# size the weight gradient is summed over slices of the batch instead of built at once.
PATCH_BYTES = 256 * 2**20


def _resolve(lhs_shape, rhs_shape, window_strides, padding):
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[0:2], window_strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
    if ndim != 4 or dimension_numbers is None:
        return False
    dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
    return (dn.lhs_spec, dn.rhs_spec, dn.out_spec) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _forward(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def tap_offsets(window_hw) -> list[tuple[int, int]]:
    """(i, j) of every tap of a window, in row-major (HWIO) order."""
    return [(i, j) for i in range(window_hw[0]) for j in range(window_hw[1])]


def window_taps(xp, window_hw, strides, out_hw) -> list:
    """For each tap of the window, the strided [N, out_h, out_w, C] slice of the padded input it sees."""
    (sh, sw), (h, w) = strides, out_hw
    return [xp[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :] for i, j in tap_offsets(window_hw)]


def place_tap(values, offset, strides, padded_hw):
    """The transpose of one `window_taps` slice: `values` [N, h, w, C] put back at their input positions in a
    zero [N, *padded_hw, C] array (a pad with interior zeros, which XLA fuses with the adds around it)."""
    (i, j), (sh, sw), (hp, wp) = offset, strides, padded_hw
    h, w = values.shape[1:3]
    return lax.pad(values, jnp.zeros((), values.dtype), ((0, 0, 0), (i, hp - i - sh * (h - 1) - 1, sh - 1),
                                                         (j, wp - j - sw * (w - 1) - 1, sw - 1), (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, padding):
    return _forward(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
    return _forward(x, w, strides, padding), (x, w)


def _batch_chunk(batch: int, bytes_per_example: int) -> int:
    """The largest divisor of `batch` whose patches fit in PATCH_BYTES (at least 1)."""
    return max([c for c in range(1, batch + 1) if batch % c == 0 and c * bytes_per_example <= PATCH_BYTES] or [1])


def _weight_grad(x, w, dy, strides, padding):
    kh, kw, ci, co = w.shape

    def grad(x, dy):
        xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
        patches = jnp.concatenate(window_taps(xp, (kh, kw), strides, dy.shape[1:3]), axis=-1)
        return patches.reshape(-1, kh * kw * ci).T @ dy.reshape(-1, co)

    n = x.shape[0]
    chunk = _batch_chunk(n, dy[0].size // co * kh * kw * ci * x.dtype.itemsize)
    if chunk == n:
        dw = grad(x, dy)
    else:  # a loop over slices of the batch, so that one slice's patches are alive at a time
        dw = lax.map(lambda pair: grad(*pair), (x.reshape(n // chunk, chunk, *x.shape[1:]),
                                                dy.reshape(n // chunk, chunk, *dy.shape[1:]))).sum(0)
    return dw.reshape(kh, kw, ci, co)


def _input_grad(x, w, dy, strides, padding):
    kh, kw, ci, co = w.shape
    (pt, pb), (pl, pr) = padding
    hp, wp = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    h, wo = dy.shape[1:3]
    if strides == (1, 1):
        # The transposed stride-1 convolution: dy padded by k-1 (less the forward padding, plus the rows the
        # forward window never reached), against the flipped kernel with its channel axes swapped.
        pad = ((0, 0), (kh - 1 - pt, kh - 1 - pb + hp - kh + 1 - h), (kw - 1 - pl, kw - 1 - pr + wp - kw + 1 - wo),
               (0, 0))
        # lax.pad, not jnp.pad: a forward padding wider than k-1 makes a negative (cropping) pad.
        return _forward(lax.pad(dy, jnp.zeros((), dy.dtype), [(a, b, 0) for a, b in pad]),
                        jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), (1, 1), ((0, 0), (0, 0)))
    columns = (dy.reshape(-1, co) @ w.reshape(-1, co).T).reshape(*dy.shape[:3], kh * kw, ci)
    dxp = sum(place_tap(columns[:, :, :, t], offset, strides, (hp, wp))
              for t, offset in enumerate(tap_offsets((kh, kw))))
    return dxp[:, pt:hp - pb, pl:wp - pr, :]


def _conv_bwd(strides, padding, residuals, dy):
    x, w = residuals
    return _input_grad(x, w, dy, strides, padding), _weight_grad(x, w, dy, strides, padding)


_conv.defvjp(_conv_fwd, _conv_bwd)


def uses_matmul_gradients(x_shape, w_shape, *, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                          feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
    """Whether `conv_general_dilated` takes the im2col gradient path for these arguments."""
    return (jax.default_backend() == "cpu" and _is_nhwc(dimension_numbers, len(x_shape))
            and feature_group_count == 1 and batch_group_count == 1
            and tuple(lhs_dilation or (1, 1)) == (1, 1) and tuple(rhs_dilation or (1, 1)) == (1, 1)
            and w_shape[2] >= MIN_CHANNELS)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, with im2col gradients where `uses_matmul_gradients` says so."""
    if precision is None and preferred_element_type is None and uses_matmul_gradients(
            lhs.shape, rhs.shape, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            batch_group_count=batch_group_count):
        strides = tuple(int(s) for s in window_strides)
        return _conv(lhs, rhs, strides, _resolve(lhs.shape, rhs.shape, strides, padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)

__all__ = ["Conv", "conv_general_dilated", "place_tap", "tap_offsets", "uses_matmul_gradients", "window_taps"]
