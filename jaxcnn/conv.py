"""A drop-in `lax.conv_general_dilated` whose gradients are plain matrix products on CPU.

XLA:CPU computes a convolution's weight gradient as another convolution with the batch as its contraction
axis, after transposing both operands (NHWC -> CHWN): on a 2-core CPU those transposes and that oddly shaped
convolution cost several times the forward pass (benchmarks/NOTES.md). Here the forward pass stays
`lax.conv_general_dilated`, and the backward pass is im2col:

    dW = patches(x)^T @ dy           one GEMM with the kernel taps x input channels as rows
    dx = conv(dy, flipped W)          stride 1: the transposed convolution is itself a forward convolution
    dx = col2im(dy @ W^T)             strided: a GEMM, then each tap's slice added back in place

A grey image's stride-1 convolution (LeNet's C1, any model's first layer on MNIST) takes no im2col: its patches
are single scalars. Its forward pass is a sum over the window's taps instead, where XLA's ran ~10x below its FLOPs;
its gradients stay XLA's own.

A grouped convolution (ResNeXt, AlexNet-2012's two towers) keeps XLA's forward and input gradient, both fast,
and takes the weight gradient as one GEMM per group: XLA:CPU's own took 50-90x as long as that GEMM (a 3x3 layer of
ResNeXt-50 with 32 groups at 8x8: 551 ms vs 6 ms; at 56x56: 7.0 s vs 0.15 s).

These are not a hand-written VJP but a `jax.custom_jvp` whose tangent is linear and written in the form whose
transpose is the list above: reverse mode (grad) transposes it into these GEMMs, forward mode (jvp, jacfwd)
evaluates it, and higher orders (Hessian-vector products) differentiate it like any JAX code.

Same sums as autodiff's, in another order: results agree with `lax.conv_general_dilated`'s gradients to
fp32 rounding (tests/test_conv.py). Used only where it pays: NHWC/HWIO, no dilation, and only in code lowered for
CPU (`on_fast_platforms`); everything else is `lax.conv_general_dilated` unchanged.
`Conv` is `nn.Conv` with this function plugged in: same parameters, same names, same checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxcnn import onednn

# oneDNN's convolutions (jaxcnn.onednn, what torch runs on the CPU) for every float32 NHWC convolution where the
# library is available: 2-6x XLA's on a 2-core CPU, the weight gradient most (benchmarks/NOTES.md). Everything
# below is the way without it.
ONEDNN = True
# Inputs with fewer channels keep XLA's own gradient: for a grey image (LeNet's C1) the concatenated patches
# are single scalars and cost more than XLA's convolution. From RGB up the GEMM wins (a 7x7 stride-2 RGB stem's
# weight gradient: 730 -> 413 ms; resnet18's step 1.09x; benchmarks/NOTES.md).
MIN_CHANNELS = 3
# Stride-1 input gradients of layers with fewer input channels than this are col2im too: XLA's convolution of dy
# with the flipped kernel ran at half the speed there (LeNet-5's C3, 6 channels in, batch 32: 1.05 -> 0.52 ms);
# at 16 channels the two are level, from 32 up XLA's is 1.3-3x faster (benchmarks/NOTES.md).
NARROW_INPUT = 8
# The patches are the input copied kh*kw times (3.7 GB for a VGG layer at 224x224 and batch 32): above this
# size the weight gradient is summed over slices of the batch instead of built at once.
PATCH_BYTES = 256 * 2**20
# Where the formulations of this module and of `layers.max_pool` were measured faster than XLA's own
# (benchmarks/NOTES.md). Nobody measured them on GPU or TPU, which get plain lax ops. An empty tuple gives
# plain lax ops everywhere (the reference the tests compare with).
FAST_PLATFORMS = ("cpu",)
# XLA:CPU's convolution falls off a cliff when its output is a few pixels: a 3x3 conv of 32x2x2x512 -> 512 ran at
# 2 GFLOP/s (310 ms; 1.2 s at batch 128) where the same product as one GEMM over the patches took 3 ms. At 1x1
# the GEMM is 4x faster, at 3x3 and up the two are level. VGG, ResNet and DenseNet at 32x32 end on such maps
# (benchmarks/NOTES.md). Outputs of at most this many positions are computed as that GEMM on FAST_PLATFORMS.
TINY_OUTPUT = 4


def on_fast_platforms(fast, plain, *args):
    """`fast(*args)` in code lowered for a platform of FAST_PLATFORMS, `plain(*args)` elsewhere.

    Decided per lowering platform (`lax.platform_dependent`), not by the host's default backend: a function
    jitted on a CPU host but placed on a GPU, or exported for several platforms, takes each path where it
    belongs. Both are traced; only the chosen one is compiled.
    """
    if not FAST_PLATFORMS:
        return plain(*args)
    return lax.platform_dependent(*args, default=plain, **dict.fromkeys(FAST_PLATFORMS, fast))


def _resolve(lhs_shape, rhs_shape, window_strides, padding):
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[0:2], window_strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
    if ndim != 4 or dimension_numbers is None:
        return False
    dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
    return (dn.lhs_spec, dn.rhs_spec, dn.out_spec) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _grey_taps(x, w, strides, padding):
    """A one-channel input's convolution as a sum over the window's taps of its shifted input times the tap's row
    of the kernel: one fused loop of multiply-adds. XLA:CPU's convolution of a grey image runs far below its
    FLOPs (LeNet-5's C1, 32x28x28x1 -> 6: 2.0 ms against 0.2 ms this way; VGG's first layer at 32x32 -> 64: 0.8
    against 0.4); strided windows (ResNet's 7x7/2 stem, AlexNet's 11x11/4) are faster in XLA's (benchmarks/NOTES.md)."""
    out_hw = onednn.output_hw(x.shape[1:3], w.shape[0:2], strides, padding)
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    taps = window_taps(xp, w.shape[0:2], strides, out_hw)
    # Channels first, so that the loop runs along the image's rows rather than over a handful of channels.
    out = functools.reduce(jnp.add, (w[i, j, 0][:, None, None, None] * tap[None, ..., 0]
                                     for tap, (i, j) in zip(taps, tap_offsets(w.shape[0:2]))))
    return out.transpose(1, 2, 3, 0)


def _is_grey(w_shape, strides, groups) -> bool:
    """Where `_grey_taps` computes the forward pass: one input channel, a stride-1 window."""
    return w_shape[2] == 1 and groups == 1 and tuple(int(s) for s in strides) == (1, 1)


def _forward(x, w, strides, padding, groups=1):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups)


def _is_tiny(x, w, strides, padding) -> bool:
    out_h, out_w = onednn.output_hw(x.shape[1:3], w.shape[0:2], strides, padding)
    return out_h >= 1 and out_w >= 1 and out_h * out_w <= TINY_OUTPUT  # an empty output is lax's to refuse


def tap_offsets(window_hw) -> list[tuple[int, int]]:
    """(i, j) of every tap of a window, in row-major (HWIO) order."""
    return [(i, j) for i in range(window_hw[0]) for j in range(window_hw[1])]


def window_taps(xp, window_hw, strides, out_hw) -> list:
    """For each tap of the window, the strided [N, out_h, out_w, C] slice of the padded input it sees."""
    (sh, sw), (h, w) = strides, out_hw
    return [xp[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :] for i, j in tap_offsets(window_hw)]


def _batch_chunk(batch: int, bytes_per_example: int) -> int:
    """The largest divisor of `batch` whose patches fit in PATCH_BYTES (at least 1)."""
    return max([c for c in range(1, batch + 1) if batch % c == 0 and c * bytes_per_example <= PATCH_BYTES] or [1])


def _patch_gemm(x, w, strides, padding, groups: int = 1):
    """x * w as one GEMM over x's patches (im2col), one per group for a grouped convolution. Transposed in w it
    is dW = patches^T @ dy; transposed in x, col2im(dy @ W^T)."""
    kh, kw, ci, co = w.shape  # ci: the input channels of one group
    out_hw = onednn.output_hw(x.shape[1:3], (kh, kw), strides, padding)
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    patches = jnp.concatenate(window_taps(xp, (kh, kw), strides, out_hw), axis=-1)
    if groups == 1:
        return (patches.reshape(-1, kh * kw * ci) @ w.reshape(-1, co)).reshape(x.shape[0], *out_hw, co)
    # Group g reads input channels [g*ci, (g+1)*ci) and writes output channels [g*co/G, (g+1)*co/G).
    patches = patches.reshape(-1, kh * kw, groups, ci)
    out = jnp.einsum("mtgc,tcgo->mgo", patches, w.reshape(kh * kw, ci, groups, co // groups))
    return out.reshape(x.shape[0], *out_hw, co)


def _weight_tangent(x, dw, strides, padding, groups):
    """The term x * dw of the convolution's tangent, written so that its transpose, the weight gradient, is
    patches^T @ dy. Under `jax.checkpoint` the patches are residuals of nothing: reverse mode builds them from x
    in the backward pass, as a hand-written VJP would, instead of keeping every layer's from the forward."""
    kh, kw, ci, co = dw.shape
    if ci < MIN_CHANNELS:  # a grey image: XLA's own weight gradient (see MIN_CHANNELS)
        return _forward(x, dw, strides, padding, groups)
    ci *= groups  # the patches hold every group's channels
    gemm = jax.checkpoint(functools.partial(_patch_gemm, strides=strides, padding=padding, groups=groups))
    n = x.shape[0]
    out_h, out_w = onednn.output_hw(x.shape[1:3], (kh, kw), strides, padding)
    chunk = _batch_chunk(n, out_h * out_w * kh * kw * ci * x.dtype.itemsize)
    if chunk == n:
        return gemm(x, dw)
    # A loop over slices of the batch, so that one slice's patches are alive at a time (in its transpose too:
    # the checkpointed body rebuilds them per slice). dw goes in once per slice, so that the transpose stacks
    # the slices' weight gradients and sums them at the end, as the tested hand-written loop did.
    parts = n // chunk
    slices = lax.map(lambda pair: gemm(*pair), (x.reshape(parts, chunk, *x.shape[1:]),
                                                jnp.broadcast_to(dw, (parts, *dw.shape))))
    return slices.reshape(n, *slices.shape[2:])


def _input_tangent(dx, w, strides, padding, groups):
    """The term dx * w of the convolution's tangent, written so that its transpose is the fast input gradient."""
    if groups > 1 or w.shape[2] < MIN_CHANNELS:  # XLA's own transpose: as fast for a grouped convolution (a
        return _forward(dx, w, strides, padding, groups)  # grouped one too); a first layer's is never computed
    if strides == (1, 1) and w.shape[2] >= NARROW_INPUT and not _is_tiny(dx, w, strides, padding):
        # The same convolution, with w read as HWOI after swapping its channel axes: transposed, this is the
        # forward convolution of dy with the flipped kernel in plain HWIO, the form measured and kept
        # (benchmarks/NOTES.md); JAX's transpose of an HWIO convolution would read the kernel as HWOI.
        return lax.conv_general_dilated(dx, w.transpose(0, 1, 3, 2), strides, padding,
                                        dimension_numbers=("NHWC", "HWOI", "NHWC"))
    # Strided, narrow or tiny: im2col of the tangent, whose transpose is col2im: a GEMM, then each tap's slice
    # added back.
    return _patch_gemm(dx, w, strides, padding)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, groups):
    if _is_grey(w.shape, strides, groups):
        return _grey_taps(x, w, strides, padding)
    if groups == 1 and _is_tiny(x, w, strides, padding):
        return _patch_gemm(x, w, strides, padding)
    return _forward(x, w, strides, padding, groups)


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(strides, padding, groups, primals, tangents):
    """The product rule of a bilinear map, d(x * w) = dx * w + x * dw, each term in the form whose transpose is
    the fast gradient. Forward mode (jvp, jacfwd) evaluates these linear maps; reverse mode transposes them; higher
    orders differentiate them like any JAX code. A zero tangent (inputs or weights not differentiated) skips
    its term."""
    (x, w), (dx, dw) = primals, tangents
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(_input_tangent(dx, w, strides, padding, groups))
    if not isinstance(dw, SymbolicZero):
        terms.append(_weight_tangent(x, dw, strides, padding, groups))
    return _conv(x, w, strides, padding, groups), functools.reduce(jnp.add, terms)


def uses_matmul_gradients(x_shape, w_shape, *, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                          feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
    """Whether `conv_general_dilated` takes the im2col gradient path for these arguments on FAST_PLATFORMS."""
    return _is_plain_nhwc(x_shape, dimension_numbers, lhs_dilation, rhs_dilation, batch_group_count) and (
        w_shape[2] >= MIN_CHANNELS)


def uses_grey_taps(x_shape, w_shape, window_strides, *, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
    """Whether `conv_general_dilated` computes the forward pass as `_grey_taps` on FAST_PLATFORMS."""
    return _is_plain_nhwc(x_shape, dimension_numbers, lhs_dilation, rhs_dilation, batch_group_count) and (
        _is_grey(w_shape, window_strides, feature_group_count))


@contextlib.contextmanager
def xla_convolutions():
    """Within: convolutions traced as XLA's own (ONEDNN off), e.g. for XLA's cost analysis, which counts no
    flops in a custom call."""
    global ONEDNN
    before, ONEDNN = ONEDNN, False
    try:
        yield
    finally:
        ONEDNN = before


def uses_onednn(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
    """Whether `conv_general_dilated` runs oneDNN's convolutions (jaxcnn.onednn) on FAST_PLATFORMS: where ONEDNN
    is on, oneDNN is available, and the operands are NHWC x HWIO float32 with no dilation and no cropping pads."""
    plain = _is_plain_nhwc(lhs.shape, dimension_numbers, lhs_dilation, rhs_dilation, batch_group_count)
    if not (ONEDNN and "cpu" in FAST_PLATFORMS and plain):
        return False
    padding = _resolve(lhs.shape, rhs.shape, tuple(int(s) for s in window_strides), padding)
    return onednn.supports(lhs, rhs, padding) and onednn.available()


def _is_plain_nhwc(x_shape, dimension_numbers, lhs_dilation, rhs_dilation, batch_group_count) -> bool:
    return (_is_nhwc(dimension_numbers, len(x_shape))
            and batch_group_count == 1
            and tuple(lhs_dilation or (1, 1)) == (1, 1) and tuple(rhs_dilation or (1, 1)) == (1, 1))


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, with im2col gradients where `uses_matmul_gradients` says so and a sum over
    the window's taps where `uses_grey_taps` does."""
    layout = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                  feature_group_count=feature_group_count, batch_group_count=batch_group_count)
    if precision is None and preferred_element_type is None and uses_onednn(lhs, rhs, window_strides, padding,
                                                                            **layout):
        strides = tuple(int(s) for s in window_strides)
        padding = _resolve(lhs.shape, rhs.shape, strides, padding)
        # No `on_fast_platforms` here: the primitives lower to oneDNN on the CPU and to lax elsewhere themselves.
        return onednn.conv(lhs, rhs, strides, padding, int(feature_group_count))
    if precision is None and preferred_element_type is None and (
            uses_matmul_gradients(lhs.shape, rhs.shape, **layout)
            or uses_grey_taps(lhs.shape, rhs.shape, window_strides, **layout)):
        strides = tuple(int(s) for s in window_strides)
        padding = _resolve(lhs.shape, rhs.shape, strides, padding)
        groups = int(feature_group_count)
        return on_fast_platforms(functools.partial(_conv, strides=strides, padding=padding, groups=groups),
                                 functools.partial(_forward, strides=strides, padding=padding, groups=groups),
                                 lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)

__all__ = ["Conv", "conv_general_dilated", "on_fast_platforms", "tap_offsets", "uses_grey_taps",
           "uses_matmul_gradients", "uses_onednn", "window_taps", "xla_convolutions"]
