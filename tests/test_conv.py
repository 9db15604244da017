"""jaxcnn.conv without oneDNN: the im2col-gradient convolution equals lax.conv_general_dilated and its autodiff gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn import conv, layers
from jaxcnn.models import get_model

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def without_onednn(monkeypatch):
    """These are the formulations of XLA's convolutions, used where oneDNN is not (tests/test_onednn.py)."""
    monkeypatch.setattr(conv, "ONEDNN", False)

CASES = [  # (input HW, in channels, out channels, kernel HW, strides, padding)
    ((9, 9), 8, 5, (3, 3), (1, 1), "SAME"),
    ((9, 9), 8, 5, (3, 3), (1, 1), "VALID"),
    ((10, 11), 16, 4, (3, 3), (2, 2), ((1, 1), (1, 1))),  # the ResNet downsampling 3x3
    ((8, 8), 8, 6, (3, 3), (2, 2), ((0, 0), (0, 0))),    # the window never reaches the last row and column
    ((13, 12), 12, 7, (5, 3), (3, 2), ((2, 1), (0, 2))),  # uneven everything
    ((7, 7), 8, 3, (1, 1), (2, 2), ((0, 0), (0, 0))),    # the 1x1 stride-2 shortcut
    ((11, 11), 8, 4, (7, 7), (2, 2), ((3, 3), (3, 3))),  # a stem-like 7x7
    ((13, 11), 3, 4, (7, 7), (2, 2), ((3, 3), (3, 3))),  # the RGB stem of ResNet and GoogLeNet
    ((19, 19), 3, 5, (11, 11), (4, 4), ((2, 2), (2, 2))),  # AlexNet's RGB stem
    ((2, 2), 16, 8, (3, 3), (1, 1), "SAME"),     # tiny outputs (TINY_OUTPUT): VGG's last block at 32x32, as a GEMM
    ((1, 1), 16, 8, (3, 3), (1, 1), "SAME"),     # ResNet's last stage at 32x32
    ((4, 4), 16, 8, (3, 3), (1, 1), "VALID"),    # a tiny output from a larger input
    ((3, 3), 16, 8, (3, 3), (2, 2), "SAME"),     # strided into 2x2
    ((14, 14), 6, 16, (5, 5), (1, 1), "VALID"),  # LeNet-5's C3: a narrow input (NARROW_INPUT), col2im input gradient
    ((9, 9), 4, 5, (3, 3), (1, 1), "SAME"),      # narrow and padded
]


@pytest.mark.parametrize("hw, ci, co, kernel, strides, padding", CASES)
def test_values_and_gradients_equal_lax(hw, ci, co, kernel, strides, padding):
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, *hw, ci))
    w = jax.random.normal(kw, (*kernel, ci, co)) * 0.3
    assert conv.uses_matmul_gradients(x.shape, w.shape, dimension_numbers=NHWC)

    def loss(f):  # a cotangent that is not all ones, so every tap is weighted differently
        return lambda x, w: jnp.sum(jnp.sin(f(x, w, strides, padding, dimension_numbers=NHWC)) *
                                    jax.random.normal(kc, f(x, w, strides, padding, dimension_numbers=NHWC).shape))

    ours = jax.jit(jax.value_and_grad(loss(conv.conv_general_dilated), argnums=(0, 1)))(x, w)
    ref = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, w)
    # A tiny output's forward pass is a GEMM too, summing in another order than XLA's convolution: the loss, a
    # sum of terms that cancel, moves by a few ulps of its terms (measured 2.8e-6 relative).
    tiny = conv._is_tiny(x, w, strides, conv._resolve(x.shape, w.shape, strides, padding))
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5 if tiny else 1e-6)
    for a, b in zip(ours[1], ref[1]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))))


GROUPED_CASES = [  # (input HW, in channels, out channels, groups, strides): ResNeXt's 3x3 and AlexNet's towers
    ((6, 6), 16, 16, 4, (1, 1)),
    ((7, 7), 16, 32, 4, (2, 2)),
    ((2, 2), 24, 12, 2, (1, 1)),  # a tiny output stays XLA's forward when grouped
    ((5, 5), 12, 6, 2, (1, 1)),
]


@pytest.mark.parametrize("hw, ci, co, groups, strides", GROUPED_CASES)
def test_grouped_values_and_gradients_equal_lax(hw, ci, co, groups, strides):
    kx, kw, kc = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (3, *hw, ci))
    w = jax.random.normal(kw, (3, 3, ci // groups, co)) * 0.3
    assert conv.uses_matmul_gradients(x.shape, w.shape, dimension_numbers=NHWC, feature_group_count=groups)

    def loss(f):
        def fn(x, w):
            y = f(x, w, strides, ((1, 1), (1, 1)), dimension_numbers=NHWC, feature_group_count=groups)
            return jnp.sum(jnp.sin(y) * jax.random.normal(kc, y.shape))
        return fn

    ours = jax.jit(jax.value_and_grad(loss(conv.conv_general_dilated), argnums=(0, 1)))(x, w)
    ref = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    for a, b in zip(ours[1], ref[1]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))))
    # The weight gradient is a GEMM (a dot): the one convolution left is the forward pass (sin needs it).
    def convolutions(f):
        return jax.jit(jax.grad(loss(f), argnums=1)).lower(x, w).compile().as_text().count(" convolution(")
    assert (convolutions(lax.conv_general_dilated), convolutions(conv.conv_general_dilated)) == (2, 1)


GREY_CASES = [  # (input HW, out channels, kernel HW, padding): one input channel, stride 1
    ((28, 28), 6, (5, 5), "SAME"),    # LeNet-5's C1
    ((32, 32), 6, (5, 5), "VALID"),   # LeNet-5 1998's C1
    ((10, 9), 16, (3, 3), ((1, 1), (1, 1))),  # VGG's first layer on a grey image
]


@pytest.mark.parametrize("hw, co, kernel, padding", GREY_CASES)
def test_grey_input_is_a_sum_of_taps_with_laxs_values_and_gradients(hw, co, kernel, padding):
    kx, kw, kc = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (3, *hw, 1))
    w = jax.random.normal(kw, (*kernel, 1, co)) * 0.3
    assert conv.uses_grey_taps(x.shape, w.shape, (1, 1), dimension_numbers=NHWC)
    assert not conv.uses_grey_taps(x.shape, w.shape, (2, 2), dimension_numbers=NHWC)  # strided: XLA's is faster
    assert not conv.uses_matmul_gradients(x.shape, w.shape, dimension_numbers=NHWC)

    def loss(f):
        def fn(x, w):
            y = f(x, w, (1, 1), padding, dimension_numbers=NHWC)
            return jnp.sum(jnp.sin(y) * jax.random.normal(kc, y.shape))
        return fn

    ours = jax.jit(jax.value_and_grad(loss(conv.conv_general_dilated), argnums=(0, 1)))(x, w)
    ref = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)  # the taps sum in another order than XLA's convolution
    for a, b in zip(ours[1], ref[1]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))))

    # The forward pass has no convolution left; the weight and input gradients are XLA's own convolutions.
    def convolutions(f, argnums):
        return jax.jit(jax.grad(loss(f), argnums=argnums)).lower(x, w).compile().as_text().count(" convolution(")
    assert convolutions(conv.conv_general_dilated, 1) == convolutions(lax.conv_general_dilated, 1) - 1


@pytest.mark.parametrize("ci, convolutions", [(6, 0), (16, 1)])
def test_a_narrow_inputs_gradient_is_col2im_and_a_wider_ones_xlas_convolution(ci, convolutions):
    """Below NARROW_INPUT channels a stride-1 input gradient is a GEMM and the taps added back (no convolution
    in the compiled gradient of a linear loss); from it up, XLA's convolution of dy with the flipped kernel."""
    x = jax.random.normal(jax.random.key(3), (4, 14, 14, ci))
    w = jax.random.normal(jax.random.key(4), (5, 5, ci, 16))
    cotangent = jax.random.normal(jax.random.key(5), (4, 10, 10, 16))

    def input_gradient(f):  # w and the cotangent as arguments: as constants XLA would fold the whole gradient
        return jax.grad(lambda x, w, c: jnp.sum(f(x, w, (1, 1), "VALID", dimension_numbers=NHWC) * c))

    text = jax.jit(input_gradient(conv.conv_general_dilated)).lower(x, w, cotangent).compile().as_text()
    assert text.count(" convolution(") == convolutions
    np.testing.assert_allclose(input_gradient(conv.conv_general_dilated)(x, w, cotangent),
                               input_gradient(lax.conv_general_dilated)(x, w, cotangent), rtol=1e-5, atol=1e-4)


def test_weight_gradient_summed_over_batch_slices_is_the_same(monkeypatch):
    """Patches bigger than PATCH_BYTES are built a slice of the batch at a time: the same gradient, as close to
    the exact one (float64, by numpy) as the gradient built at once. (The two differ by a few ulps: each sums 600
    products in another order, and each is ~3e-6 of the largest entry away from the exact value.)"""
    x = jax.random.normal(jax.random.key(0), (6, 10, 10, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 4))

    def weight_grad():
        return jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(conv.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=NHWC)))))(w)

    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = np.stack([xp[:, i:i + 10, j:j + 10, :] for i in range(3) for j in range(3)], axis=3).reshape(600, 72)
    exact = (patches.T @ np.cos(patches @ np.asarray(w, np.float64).reshape(72, 4))).reshape(w.shape)
    tolerance = 1e-5 * np.abs(exact).max()

    whole = weight_grad()
    monkeypatch.setattr(conv, "PATCH_BYTES", 2 * 10 * 10 * 9 * 8 * 4)  # two images' patches: 3 slices
    assert conv._batch_chunk(6, 10 * 10 * 9 * 8 * 4) == 2
    sliced = weight_grad()
    np.testing.assert_allclose(whole, exact, rtol=0, atol=tolerance)
    np.testing.assert_allclose(sliced, exact, rtol=0, atol=tolerance)
    np.testing.assert_allclose(sliced, whole, rtol=0, atol=tolerance)


def test_other_cases_go_to_lax():
    x, w = jnp.ones((1, 8, 8, 8)), jnp.ones((3, 3, 4, 8))
    assert not conv.uses_matmul_gradients(x.shape, w.shape, dimension_numbers=NHWC, batch_group_count=2)
    assert not conv.uses_matmul_gradients(x.shape, w.shape, dimension_numbers=NHWC, rhs_dilation=(2, 2))
    assert not conv.uses_matmul_gradients((1, 8, 8, 1), (5, 5, 1, 6), dimension_numbers=NHWC)  # a grey input
    assert not conv.uses_matmul_gradients(x.shape, w.shape, dimension_numbers=("NCHW", "OIHW", "NCHW"))
    dilated = conv.conv_general_dilated(x, w[:, :, :, :4], (1, 1), "SAME", dimension_numbers=NHWC,
                                        rhs_dilation=(2, 2), feature_group_count=2)
    np.testing.assert_array_equal(dilated, lax.conv_general_dilated(x, w[:, :, :, :4], (1, 1), "SAME",
                                                                    dimension_numbers=NHWC, rhs_dilation=(2, 2),
                                                                    feature_group_count=2))


plain_max_pool = functools.partial(layers.max_pool, per_tap_gradient=False)


def test_resnet_gradients_match_plain_flax(monkeypatch):
    """A whole ResNet-18: the same parameter tree, and gradients equal to those of nn.Conv and a
    reduce_window max pool under XLA's autodiff, to fp32 rounding. (A max-pool gradient that compared the
    input with the forward output went wrong here only: XLA recomputed the pool's input in another fusion.)"""
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(1), (4, 96, 96, 3))
    model = get_model("resnet18", num_classes=7)
    variables = model.init(jax.random.key(0), x)

    def grads(m):
        def loss(params):
            out, _ = m.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(out * jnp.arange(7.0))
        return jax.jit(jax.grad(loss))(variables["params"])

    ours = grads(model)
    monkeypatch.setattr(conv, "Conv", nn.Conv)  # the models look it up at trace time
    import jaxcnn.models.resnet as resnet
    monkeypatch.setattr(resnet, "Conv", nn.Conv)
    monkeypatch.setattr(resnet, "max_pool", plain_max_pool)
    plain = grads(get_model("resnet18", num_classes=7))
    assert jax.tree.structure(ours) == jax.tree.structure(plain)
    worst = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
                for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)))
    assert worst < 1e-4, worst  # ~1e-6 measured; the bad pool gradient was 60% off in bn1
