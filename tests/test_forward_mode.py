"""Forward-mode and higher-order autodiff through the CPU formulations (jaxcnn.conv, layers.max_pool).

The reference is the same model in plain lax ops: `conv.FAST_PLATFORMS = ()` makes every convolution
`lax.conv_general_dilated` and every max pool `reduce_window`, under JAX's own differentiation rules.
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import conv, layers
from jaxcnn.models import get_model, get_spec, list_models


@contextlib.contextmanager
def plain_lax():
    """Models traced inside trace to plain lax ops (what GPU and TPU get)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv, "FAST_PLATFORMS", ())
        yield


def relative_error(ours, reference) -> float:
    return float(jnp.max(jnp.abs(ours - reference)) / jnp.max(jnp.abs(reference)))


# In the default suite: every distinct block (basic and bottleneck residual, grouped, dense, inception, LRN and
# grouped AlexNet, BatchNorm VGG, ceil-mode pooling in googlenet, the 1998 LeNet...). The others repeat those
# parts (vgg11 is vgg11_bn without its BN; zfnet's convolutions and ceil-mode pools are AlexNet's and GoogLeNet's;
# googlenet_2014 is googlenet's branches with alexnet_2012's LRN) or are deeper variants of the same code, slow to
# run op by op (densenet161 alone 11 min on a loaded 2-core box): they run with `-m variants`.
DEFAULT_SUITE = ("mlp", "lenet5", "lenet5_1998", "alexnet", "alexnet_2012", "alexnet_bn", "nin", "vgg11_bn",
                 "googlenet", "inception_v3", "resnet18", "resnet50", "resnext50_32x4d", "densenet121")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in DEFAULT_SUITE else [pytest.mark.variants])
                                  for n in list_models()])
def test_jvp_through_every_model_equals_plain_lax(name):
    """jax.jvp in the input at the smallest size, batch 1, ours and the plain-lax model. Run op by op, not
    jitted: the operations' compilations are cached across the models, whose layers repeat (compiling each
    model's jvp twice cost several times as much). Tangents in the weights go through the same rules and are
    checked layer by layer in test_conv.py and on a whole network below."""
    spec = get_spec(name)
    model = get_model(name)
    x = jax.random.normal(jax.random.key(0), (1, spec.min_size, spec.min_size, spec.input_shape[2]))
    tangent = jax.random.normal(jax.random.key(1), x.shape)
    variables = model.init(jax.random.key(2), x)

    def jvp():
        return jax.jvp(lambda x: model.apply(variables, x, train=False), (x,), (tangent,))

    out, tangent_out = jvp()
    with plain_lax():
        plain_out, plain_tangent_out = jvp()
    # Outputs of at most conv.TINY_OUTPUT positions (VGG's last block at 32x32) are GEMMs on CPU, summed in another
    # order than lax's convolution: logits move by a few 1e-6 of their largest (measured 3e-6, 4e-6 on vgg11).
    np.testing.assert_allclose(out, plain_out, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(plain_out))))
    assert float(jnp.max(jnp.abs(plain_tangent_out))) > 0
    assert relative_error(tangent_out, plain_tangent_out) < 1e-5  # ~1e-7-1e-6 measured


class SmallNet(nn.Module):
    """Every CPU formulation once: a stride-1 and a strided convolution on >= 3 channels, a padded max pool."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(conv.Conv(4, (3, 3), padding=((1, 1), (1, 1)))(x))
        x = layers.max_pool(x, 3, 2, padding=1)
        x = jnp.tanh(conv.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def small():
    model = SmallNet()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    params = model.init(jax.random.key(1), x)["params"]
    direction = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)

    def loss(params, x):
        return jnp.sum(jnp.sin(model.apply({"params": params}, x)))
    return model, x, params, direction, loss


def derivatives(small):
    """jacfwd in the input and in the weights, and Hessian-vector products forward-over-reverse and
    reverse-over-reverse, traced with whatever formulation is in force."""
    model, x, params, direction, loss = small
    apply = lambda params, x: model.apply({"params": params}, x)  # noqa: E731

    def hvp_forward_over_reverse(params):
        return jax.jvp(jax.grad(loss), (params, x), (direction, jnp.zeros_like(x)))[1]

    def hvp_reverse_over_reverse(params):
        return jax.grad(lambda p: tree_vdot(jax.grad(loss)(p, x), direction))(params)

    return jax.jit(lambda params, x: {
        "jacfwd_input": jax.jacfwd(apply, argnums=1)(params, x),
        "jacrev_input": jax.jacrev(apply, argnums=1)(params, x),
        "jacfwd_weights": jax.jacfwd(apply)(params, x),
        "hvp_fwd_rev": hvp_forward_over_reverse(params),
        "hvp_rev_rev": hvp_reverse_over_reverse(params),
    })(params, x)


def tree_vdot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_jacfwd_and_hessian_vector_products_equal_plain_lax(small):
    ours = derivatives(small)
    with plain_lax():
        plain = derivatives(small)
    for key in ours:
        for a, b in zip(jax.tree.leaves(ours[key]), jax.tree.leaves(plain[key])):
            assert a.shape == b.shape
            assert float(jnp.max(jnp.abs(b))) > 0, key
            assert relative_error(a, b) < 1e-5, (key, relative_error(a, b))
    # Forward and reverse mode of our formulations agree with each other too.
    assert relative_error(ours["jacfwd_input"], ours["jacrev_input"]) < 1e-5
    for a, b in zip(jax.tree.leaves(ours["hvp_fwd_rev"]), jax.tree.leaves(ours["hvp_rev_rev"])):
        assert relative_error(a, b) < 1e-5


def _op_counts(small, platform: str) -> dict:
    """Operations in the StableHLO of the loss's gradient, lowered for `platform` (no such device needed)."""
    _, x, params, _, loss = small
    text = jax.jit(jax.grad(loss)).trace(params, x).lower(lowering_platforms=(platform,)).as_text()
    return {op: text.count(f"stablehlo.{op}") for op in ("convolution", "dot_general", "select_and_scatter")}


def test_fast_formulations_only_where_lowered_for_cpu(small, monkeypatch):
    """Reverse mode on CPU runs the im2col GEMMs and the per-tap pool gradient; code lowered for GPU or TPU,
    even on this CPU host, runs lax's convolutions and select-and-scatter. (The formulations without oneDNN;
    tests/test_onednn.py counts oneDNN's calls.)"""
    monkeypatch.setattr(conv, "ONEDNN", False)
    # The gradient in the weights: both convolutions' weight gradients, and the second's (strided) input
    # gradient; the first's input gradient is not needed. The Dense layer adds three matrix products.
    # CPU: the first forward convolution; the second's output is 2x2, a tiny one (conv.TINY_OUTPUT), so its
    # forward is a GEMM over the patches as well; the three gradients as GEMMs.
    assert _op_counts(small, "cpu") == {"convolution": 1, "dot_general": 3 + 3 + 1, "select_and_scatter": 0}
    for platform in ("cuda", "tpu"):  # two forward and three gradient convolutions
        assert _op_counts(small, platform) == {"convolution": 2 + 3, "dot_general": 3, "select_and_scatter": 1}
