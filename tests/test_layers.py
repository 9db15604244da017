"""jaxcnn.layers against hand-computed values, TensorFlow/Keras and torch, to fp32 rounding."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import layers

RTOL, ATOL = 1e-6, 1e-5


def random(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def close(out, ref):
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=RTOL, atol=ATOL)


def to_nchw(x):
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def to_nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow")
    return tf


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def torch_apply(torch, module, x_nhwc):
    """Run a torch module on an NHWC numpy array and return NHWC numpy."""
    with torch.no_grad():
        return to_nhwc(module(torch.from_numpy(to_nchw(x_nhwc))).numpy())


# --- Hand-computed cases -----------------------------------------------------------------------------------


def test_lrn_by_formula():
    x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    # Size 3: channel sums of squares over [c-1, c+1] are 5, 14, 13; with k=1, beta=1 this is x / (1 + s).
    expected = np.array([1 / 6, 2 / 15, 3 / 14])
    close(layers.local_response_norm(x, 3, alpha=3.0, beta=1.0, k=1.0).ravel(), expected)  # torch: alpha / n
    paper_form = layers.local_response_norm(x, 3, alpha=1.0, beta=1.0, k=1.0, alpha_over_size=False)
    close(paper_form.ravel(), expected)
    # Even size 2: torch's window is [c-1, c], sums 1, 5, 13.
    close(layers.local_response_norm(x, 2, alpha=2.0, beta=1.0, k=1.0).ravel(), [1 / 2, 2 / 6, 3 / 14])
    # The paper's AlexNet constants: k=2, alpha=1e-4, beta=0.75, alpha not divided by n.
    y = layers.LRN().apply({}, x).ravel()
    close(y, np.array([1, 2, 3]) / (2 + 1e-4 * 14) ** 0.75)  # the 5-window covers all 3 channels


def test_avg_pool_count_include_pad_by_hand():
    ones = jnp.ones((1, 3, 3, 1))
    with_pad = layers.avg_pool(ones, 3, 1, padding=1)[0, :, :, 0]
    close(with_pad, np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]) / 9)
    close(layers.avg_pool(ones, 3, 1, padding=1, count_include_pad=False), np.ones((1, 3, 3, 1)))


def test_ceil_mode_by_hand():
    x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 1, 5, 1))
    # Windows [0,1], [2,3], and with ceil_mode the partial [4]; the partial window is averaged over 1 pixel.
    assert layers.max_pool(x, 2)[0, :, 0, 0].tolist() == [1, 3]
    assert layers.max_pool(x, 2, ceil_mode=True)[0, :, 0, 0].tolist() == [1, 3, 4]
    close(layers.avg_pool(x, 2, ceil_mode=True)[0, :, 0, 0], [0.5, 2.5, 4.0])
    # torch drops a last window that would start in the right padding: 4 padded by 1, k=2, s=2 gives 3, not 4.
    assert layers.max_pool(jnp.ones((1, 4, 4, 1)), 2, 2, padding=1, ceil_mode=True).shape == (1, 3, 3, 1)


def test_adaptive_avg_pool_by_hand():
    x = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0]).reshape(1, 5, 1, 1)
    # 5 -> 3: bins [0, 2), [1, 4), [3, 5).
    out = layers.adaptive_avg_pool(x, (3, 1))[0, :, 0, 0]
    close(out, [1.5, 14 / 3, 12.0])
    # Larger output than input: 2 -> 3 gives bins [0, 1), [0, 2), [1, 2).
    out = layers.adaptive_avg_pool(jnp.array([2.0, 4.0]).reshape(1, 2, 1, 1), (3, 1))[0, :, 0, 0]
    close(out, [2.0, 3.0, 4.0])


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 7), (9, 8)])
def test_pooled_dense_is_the_dense_layer_on_the_pooled_map(hw):
    """PooledDense(x) = nn.Dense on flatten_nchw(adaptive_avg_pool(x, 7)), with the same parameters, for maps
    smaller, equal and larger than the pool's output; for a 1x1 map at under 1/40 of the FLOPs at batch 256
    (1/49 per example, plus the fold once per batch)."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(0), (4, *hw, 16))
    pooled = layers.PooledDense(5, 7)
    variables = pooled.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables["params"]) == {"kernel": (16 * 49, 5), "bias": (5,)}
    variables = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.key(2), p.shape), variables)

    def plain(v, x):
        return nn.Dense(5).apply(v, layers.flatten_nchw(layers.adaptive_avg_pool(x, 7)))

    ours, ref = jax.jit(pooled.apply)(variables, x), jax.jit(plain)(variables, x)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-6  # fp32 rounding of another summation order
    if hw == (1, 1):
        x = jax.random.normal(jax.random.key(0), (256, 1, 1, 16))
        flops = [jax.jit(f).lower(variables, x).compile().cost_analysis()["flops"] for f in (pooled.apply, plain)]
        assert flops[0] < flops[1] / 40, flops


def test_flatten_nchw_and_scaled_tanh():
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2)
    assert layers.flatten_nchw(x).tolist() == [to_nchw(x).reshape(-1).tolist()]
    close(layers.scaled_tanh(jnp.float32(1.5)), 1.7159 * math.tanh(1.0))


def test_pooling_rejects_oversized_padding():
    with pytest.raises(ValueError, match="padding"):
        layers.max_pool(jnp.ones((1, 8, 8, 1)), 2, 2, padding=2)


# --- TensorFlow / Keras ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_matches_tf(tf, size):
    x = random((2, 6, 5, 16), scale=3.0)
    alpha, beta, k = 0.05, 0.75, 2.0
    ref = tf.nn.local_response_normalization(x, depth_radius=(size - 1) // 2, bias=k, alpha=alpha, beta=beta)
    close(layers.local_response_norm(x, size, alpha, beta, k, alpha_over_size=False), ref.numpy())


@pytest.mark.parametrize("hw", [(14, 14), (15, 13)])
@pytest.mark.parametrize("window,stride", [(3, 2), (2, 2), (3, 1)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_pooling_matches_tf(tf, hw, window, stride, padding):
    x = random((2, *hw, 3))
    ref = tf.nn.max_pool2d(x, window, stride, padding).numpy()
    np.testing.assert_array_equal(layers.max_pool(x, window, stride, padding), ref)
    ref = tf.nn.avg_pool2d(x, window, stride, padding).numpy()
    close(layers.avg_pool(x, window, stride, padding, count_include_pad=False), ref)


@pytest.mark.parametrize("hw,window,stride", [((15, 15), 3, 2), ((14, 13), 2, 2), ((7, 7), 3, 1)])
def test_avg_pool_same_matches_keras(tf, hw, window, stride):
    keras = pytest.importorskip("keras")
    x = random((1, *hw, 4), seed=1)
    pool = keras.layers.AveragePooling2D(window, stride, padding="same")
    close(layers.avg_pool(x, window, stride, "SAME", count_include_pad=False), np.asarray(pool(x)))


# --- torch -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 4, 5])
def test_lrn_matches_torch(torch, size):
    x = random((2, 5, 6, 12), scale=3.0)
    alpha, beta, k = 0.1, 0.75, 1.5
    ref = torch_apply(torch, torch.nn.LocalResponseNorm(size, alpha, beta, k), x)
    close(layers.local_response_norm(x, size, alpha, beta, k), ref)


POOL_CASES = [(3, 2, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1)]  # (window, stride, padding)


@pytest.mark.parametrize("size", [14, 15, 28])
@pytest.mark.parametrize("window,stride,padding", POOL_CASES)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_matches_torch(torch, size, window, stride, padding, ceil_mode):
    x = random((1, size, size + 1, 3))
    ref = torch_apply(torch, torch.nn.MaxPool2d(window, stride, padding, ceil_mode=ceil_mode), x)
    np.testing.assert_array_equal(layers.max_pool(x, window, stride, padding, ceil_mode), ref)


@pytest.mark.parametrize("size", [14, 15])
@pytest.mark.parametrize("window,stride,padding", POOL_CASES)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_gradient_matches_torch(torch, size, window, stride, padding, ceil_mode, ties):
    """Our per-tap max-pool gradient: each window's gradient to its first maximum, exactly as torch's.

    With ties (a coarse grid of values, and the zeros ReLU leaves), torch picks the first maximum in
    row-major window order; so do we."""
    x = random((2, size, size + 1, 3))
    if ties:
        x = np.maximum(np.round(x * 2) / 2, 0).astype(np.float32)
    cotangent = random(np.shape(layers.max_pool(x, window, stride, padding, ceil_mode)), seed=1)
    ours = jax.grad(lambda v: jnp.sum(layers.max_pool(v, window, stride, padding, ceil_mode) * cotangent))(x)
    xt = torch.from_numpy(to_nchw(x)).requires_grad_(True)
    out = torch.nn.functional.max_pool2d(xt, window, stride, padding, ceil_mode=ceil_mode)
    out.backward(torch.from_numpy(to_nchw(cotangent)))
    np.testing.assert_allclose(np.asarray(ours), to_nhwc(xt.grad.numpy()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [13, 15])
@pytest.mark.parametrize("window,stride,padding", POOL_CASES)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_torch(torch, size, window, stride, padding, ceil_mode, count_include_pad):
    x = random((1, size, size - 2, 3))
    pool = torch.nn.AvgPool2d(window, stride, padding, ceil_mode, count_include_pad)
    out = layers.avg_pool(x, window, stride, padding, ceil_mode, count_include_pad)
    close(out, torch_apply(torch, pool, x))


@pytest.mark.parametrize("hw", [(7, 7), (13, 13), (15, 9), (5, 3), (1, 1), (6, 6)])
@pytest.mark.parametrize("out", [(6, 6), (7, 7), (4, 4), (1, 1)])
def test_adaptive_avg_pool_matches_torch(torch, hw, out):
    x = random((2, *hw, 3))
    ref = torch_apply(torch, torch.nn.AdaptiveAvgPool2d(out), x)
    close(layers.adaptive_avg_pool(x, out), ref)


@pytest.mark.parametrize("hw,stride,padding,groups",
                         [((16, 16), 2, 1, 1), ((15, 12), 1, 1, 2), ((9, 9), 2, 0, 1)])
def test_conv_bn_matches_torch(torch, hw, stride, padding, groups):
    cin, cout, ksize = 4, 6, 3
    x = random((2, *hw, cin), seed=2)
    conv = torch.nn.Conv2d(cin, cout, ksize, stride, padding, groups=groups, bias=False)
    bn = torch.nn.BatchNorm2d(cout).eval()
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.from_numpy(rng.standard_normal(cout).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, cout).astype(np.float32)))
    ref = torch_apply(torch, torch.nn.Sequential(conv, bn, torch.nn.ReLU()), x)

    block = layers.ConvBN(cout, ksize, stride, padding, groups=groups, norm=layers.batch_norm(train=False))
    variables = {
        "params": {"conv": {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0)},
                   "bn": {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()}},
        "batch_stats": {"bn": {"mean": bn.running_mean.numpy(), "var": bn.running_var.numpy()}},
    }
    # Shapes must agree with what flax initializes, or the names/layout above would be silently wrong.
    init = jax.eval_shape(block.init, jax.random.key(0), x)
    assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, variables)
    with jax.default_matmul_precision("float32"):
        out = block.apply(variables, x)
    close(out, ref)
