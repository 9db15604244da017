"""jaxcnn.onednn: oneDNN's convolutions inside XLA:CPU programs equal lax's, in values, in every order of
derivative, under vmap, pmap and shard_map, and in a model's train step; and without oneDNN, XLA's are used.

oneDNN is a system library (`apt install libdnnl-dev`, which .ci/run does): where it is missing these tests
skip, except under CI, where its absence is the failure."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn import conv, onednn
from jaxcnn.models import get_model

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def need_onednn(request):
    if request.node.get_closest_marker("without_onednn") or onednn.available():
        return
    why = onednn._unavailable()
    if os.environ.get("CI"):
        pytest.fail(f"CI installs oneDNN (.ci/run), yet it is not available: {why}")
    pytest.skip(f"oneDNN is not installed here: {why}")


def relative_error(a, b) -> float:
    return float(jnp.linalg.norm(jnp.ravel(a - b)) / jnp.linalg.norm(jnp.ravel(b)))


CASES = [  # (input HW, in channels, out channels, kernel HW, strides, padding, groups)
    ((9, 9), 8, 5, (3, 3), (1, 1), "SAME", 1),
    ((10, 11), 16, 4, (3, 3), (2, 2), ((1, 1), (1, 1)), 1),  # ResNet's downsampling 3x3, torch's padding
    ((10, 10), 8, 6, (3, 3), (2, 2), "SAME", 1),             # SAME on an even input: pads (0, 1)
    ((13, 12), 12, 7, (5, 3), (3, 2), ((2, 1), (0, 2)), 1),  # uneven everything
    ((7, 7), 8, 3, (1, 1), (2, 2), "VALID", 1),              # the 1x1 stride-2 shortcut
    ((13, 11), 3, 4, (7, 7), (2, 2), ((3, 3), (3, 3)), 1),   # the RGB stem of ResNet and GoogLeNet
    ((28, 28), 1, 6, (5, 5), (1, 1), "SAME", 1),             # LeNet-5's grey C1
    ((14, 14), 6, 16, (5, 5), (1, 1), "VALID", 1),           # LeNet-5's C3
    ((1, 1), 16, 8, (3, 3), (1, 1), "SAME", 1),              # ResNet's last stage at 32x32
    ((6, 6), 16, 32, (3, 3), (2, 2), "SAME", 4),             # grouped: ResNeXt
    ((5, 5), 8, 8, (3, 3), (1, 1), "SAME", 8),               # depthwise
]


@pytest.mark.parametrize("hw, ci, co, kernel, strides, padding, groups", CASES)
def test_values_and_gradients_equal_lax_and_run_in_onednn(hw, ci, co, kernel, strides, padding, groups):
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, *hw, ci))
    w = jax.random.normal(kw, (*kernel, ci // groups, co)) * 0.3

    def loss(f):  # a cotangent that is not all ones, so every tap is weighted differently
        def value(x, w):
            y = f(x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups)
            return jnp.sum(jnp.sin(y) * jax.random.normal(kc, y.shape))
        return jax.jit(jax.value_and_grad(value, argnums=(0, 1)))

    assert conv.uses_onednn(x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups)
    ours, ref = loss(conv.conv_general_dilated)(x, w), loss(lax.conv_general_dilated)(x, w)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for a, b in zip(ours[1], ref[1]):
        assert a.shape == b.shape
        assert relative_error(a, b) < 1e-6
    # All three passes are oneDNN's: no convolution of XLA's is left in the compiled gradient.
    text = loss(conv.conv_general_dilated).lower(x, w).compile().as_text()
    assert text.count('custom_call_target="jaxcnn_onednn_') == 3
    assert " convolution(" not in text


def small_model_loss():
    """A loss through three convolutions (stride 1 and 2, grey and wide), for the derivative tests."""
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    ws = [jax.random.normal(jax.random.key(2 + i), shape) * 0.4
          for i, shape in enumerate([(3, 3, 1, 4), (3, 3, 4, 6), (1, 1, 6, 3)])]

    def loss(f):
        def value(ws, x):
            for w, stride in zip(ws, [1, 2, 1]):
                x = jnp.tanh(f(x, w, (stride, stride), "SAME", dimension_numbers=NHWC))
            return jnp.sum(jnp.sin(x))
        return value
    return loss, ws, x


def test_every_order_of_derivative_equals_lax():
    """jvp, jacfwd, and Hessian-vector products forward-over-reverse and reverse-over-reverse: the three
    primitives transpose into each other, so every order stays in oneDNN and agrees with lax."""
    loss, ws, x = small_model_loss()
    direction = [jnp.cos(w) for w in ws]

    def derivatives(f):
        value = loss(f)
        return jax.jit(lambda ws, x: {
            "jvp": jax.jvp(value, (ws, x), (direction, jnp.ones_like(x)))[1],
            "jacfwd_input": jax.jacfwd(value, argnums=1)(ws, x),
            "hvp_fwd_rev": jax.jvp(lambda ws: jax.grad(value)(ws, x), (ws,), (direction,))[1],
            "hvp_rev_rev": jax.grad(lambda ws: sum(jnp.vdot(g, d) for g, d in
                                                   zip(jax.grad(value)(ws, x), direction)))(ws),
        })(ws, x)

    ours, ref = derivatives(conv.conv_general_dilated), derivatives(lax.conv_general_dilated)
    for key in ours:
        for a, b in zip(jax.tree.leaves(ours[key]), jax.tree.leaves(ref[key])):
            assert float(jnp.max(jnp.abs(b))) > 0, key
            assert relative_error(a, b) < 1e-5, (key, relative_error(a, b))
    hvp = jax.jit(lambda ws: jax.jvp(lambda ws: jax.grad(loss(conv.conv_general_dilated))(ws, x), (ws,),
                                     (direction,))[1]).lower(ws).compile().as_text()
    assert " convolution(" not in hvp and "jaxcnn_onednn_" in hvp


def test_vmap_over_weights_equals_lax():
    """Per-example weights (vmap over both operands) fall back to lax's batched convolution: same values."""
    x = jax.random.normal(jax.random.key(0), (4, 2, 6, 6, 3))
    w = jax.random.normal(jax.random.key(1), (4, 3, 3, 3, 5))

    def batched(f):
        return jax.vmap(lambda x, w: f(x, w, (1, 1), "SAME", dimension_numbers=NHWC))(x, w)

    np.testing.assert_allclose(batched(conv.conv_general_dilated), batched(lax.conv_general_dilated),
                               rtol=1e-5, atol=1e-5)


def test_pmap_and_shard_map_equal_lax():
    """The devices of a pmap and of a shard_map (with its check_vma, as a user writes it, and without, as
    parallel.ShardMapDriver does) each run their slice through oneDNN (one call at a time), as lax would."""
    n = jax.device_count()
    x = jax.random.normal(jax.random.key(0), (n * 2, 8, 8, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

    def grads(f):
        return jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w, (1, 1), "SAME", dimension_numbers=NHWC))),
                        argnums=(0, 1))

    ref_x, ref_w = jax.vmap(grads(lax.conv_general_dilated), in_axes=(0, None))(x.reshape(n, 2, 8, 8, 4), w)
    pmapped = jax.pmap(grads(conv.conv_general_dilated), in_axes=(0, None))(x.reshape(n, 2, 8, 8, 4), w)
    np.testing.assert_allclose(pmapped[0], ref_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pmapped[1], ref_w, rtol=1e-5, atol=1e-5)

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    for check_vma in (True, False):  # with it, the replicated w's gradient is summed over the shards
        def sharded(f, check_vma=check_vma):
            return jax.jit(jax.shard_map(grads(f), mesh=mesh, in_specs=(P("data"), P()),
                                         out_specs=(P("data"), P() if check_vma else P("data")),
                                         check_vma=check_vma))
        ours, ref = sharded(conv.conv_general_dilated)(x, w), sharded(lax.conv_general_dilated)(x, w)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert sharded(conv.conv_general_dilated).lower(x, w).as_text().count("@jaxcnn_onednn_") == 3


def test_a_resnets_gradients_equal_xlas(monkeypatch):
    """A whole ResNet-18 (stem, strided 3x3s, 1x1 shortcuts, BatchNorm, max pool): the loss and gradients with
    oneDNN's convolutions and with XLA's, to fp32 rounding. With softplus for ReLU: an activation within
    rounding of zero flips its ReLU gate between the two (each sums in its own order), and one flipped gate moves
    a layer's weight gradient by ~1e-2 (measured, a two-block ReLU net at 16x16, batch 4)."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))  # BatchNorm over 16 values a channel at the end
    model = get_model("resnet18", num_classes=7)
    monkeypatch.setattr(nn, "relu", jax.nn.softplus)  # ResNet takes nn.relu at trace time
    variables = model.init(jax.random.key(0), x)

    def value_and_grads():
        def loss(params):
            out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(out * jnp.arange(7.0))
        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    ours = value_and_grads()
    monkeypatch.setattr(conv, "ONEDNN", False)
    xla = value_and_grads()
    np.testing.assert_allclose(ours[0], xla[0], rtol=1e-5)
    errors = [relative_error(a, b) for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(xla[1]))]
    assert max(errors) < 1e-4, max(errors)


def test_only_code_lowered_for_cpu_calls_onednn():
    """Code lowered for GPU or TPU, even on this CPU host, runs lax's convolutions."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv.conv_general_dilated(
        x, w, (2, 2), "SAME", dimension_numbers=NHWC))), argnums=(0, 1)))

    def counts(platform):
        text = grad.trace(x, w).lower(lowering_platforms=(platform,)).as_text()
        return text.count("stablehlo.convolution"), text.count("@jaxcnn_onednn_")

    assert counts("cpu") == (0, 3)
    assert counts("cuda") == counts("tpu") == (3, 0)


def test_bfloat16_and_dilation_stay_with_xla():
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    assert conv.uses_onednn(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    assert not conv.uses_onednn(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (1, 1), "SAME",
                                dimension_numbers=NHWC)
    assert not conv.uses_onednn(x, w, (1, 1), "SAME", dimension_numbers=NHWC, rhs_dilation=(2, 2))
    assert not conv.uses_onednn(x, w, (1, 1), ((-1, 0), (0, 0)), dimension_numbers=NHWC)  # a cropping pad


@pytest.mark.without_onednn
def test_switched_off_the_convolutions_are_xlas():
    """JAXCNN_ONEDNN=0: one log line says so, and the compiled program holds XLA's convolution."""
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(message)s');"
            "import jax, jax.numpy as jnp; from jaxcnn import conv, onednn;"
            "f = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'));"
            "x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4));"
            "print('available', onednn.available());"
            "print('convolutions', jax.jit(f).lower(x, w).compile().as_text().count(' convolution('))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "JAXCNN_ONEDNN": "0"}, check=False)
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout and "convolutions 1" in result.stdout
    assert "oneDNN convolutions off, XLA's are used: JAXCNN_ONEDNN=0" in result.stderr


@pytest.mark.without_onednn
@pytest.mark.parametrize("value", ["off", "2", "", "-1"])
def test_a_switch_value_other_than_0_or_1_is_refused_in_one_line(value, monkeypatch):
    monkeypatch.setenv("JAXCNN_ONEDNN", value)
    with pytest.raises(ValueError, match=f"JAXCNN_ONEDNN={value!r}: set it to 1 .* or 0"):
        onednn._unavailable()


@pytest.mark.without_onednn
def test_a_sycl_build_or_none_at_all_is_refused_with_the_reason(tmp_path, monkeypatch):
    """PyPI's `onednn` wheel is a SYCL build that finds no CPU device: it is passed over, and named."""
    include = tmp_path / "include/oneapi/dnnl"
    include.mkdir(parents=True)
    (include / "dnnl.hpp").write_text("")
    (include / "dnnl_config.h").write_text("#define DNNL_CPU_RUNTIME DNNL_RUNTIME_SYCL\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/libdnnl.so").write_text("")
    monkeypatch.setattr(onednn, "_prefixes", lambda: [tmp_path])
    why = onednn.find_onednn()
    assert isinstance(why, str) and f"{tmp_path} (a SYCL build)" in why and "apt install libdnnl-dev" in why
    monkeypatch.setattr(onednn, "_prefixes", lambda: [tmp_path / "nothing"])
    assert "no oneDNN with a CPU runtime" in onednn.find_onednn()


@pytest.mark.without_onednn
def test_a_failed_build_says_why_and_leaves_no_library(tmp_path, monkeypatch):
    found = onednn.find_onednn()
    if isinstance(found, str):
        found = (tmp_path, tmp_path)  # no oneDNN here: the compiler fails on the missing header all the same
    monkeypatch.setenv("JAXCNN_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.raises(RuntimeError, match="building the oneDNN custom calls failed"):
        onednn._build(*found)
    assert not list((tmp_path / "cache/onednn").glob("*.so"))


def test_the_library_is_built_once_and_reused(tmp_path, monkeypatch):
    """A second process (or a second worker) finds the compiled library in the cache and compiles nothing."""
    monkeypatch.setenv("JAXCNN_HOME", str(tmp_path))
    found = onednn.find_onednn()
    first = onednn._build(*found)
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(onednn.subprocess, "run", None)  # compiling again would fail
    assert onednn._build(*found) == first and first.stat().st_mtime_ns == stamp

