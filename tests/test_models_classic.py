"""The pre-ResNet classics: LeNet-5 (1998 and the seeds'), MLP, AlexNet variants, ZFNet, VGG, NiN.

Counts are compared with docs/reference.md (and, for models without a library twin, with totals derived here by
hand); forward/backward, input-size checks, dropout and BatchNorm behaviour are checked on small inputs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers import max_pool, scaled_tanh
from jaxcnn.models import get_model, get_spec, list_models
from jaxcnn.models.lenet import C3_TABLE, SparseConv, Subsampling, rbf_centers

CLASSIC_FAMILIES = ("lenet", "alexnet", "vgg", "nin")
CLASSIC = [n for n in list_models() if get_spec(n).family in CLASSIC_FAMILIES]
VGGS = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
KEY = jax.random.key(0)


def conv(k: int, cin: int, cout: int, groups: int = 1) -> int:
    """Parameters of a k x k conv with bias."""
    return k * k * (cin // groups) * cout + cout


def dense(cin: int, cout: int) -> int:
    return cin * cout + cout


def variable_shapes(name: str, **kw):
    """The model and its variables' shapes at the default input (jax.eval_shape: no FLOPs)."""
    model = get_model(name, **kw)
    x = jnp.zeros((1, *get_spec(name).input_shape))
    return model, jax.eval_shape(lambda: model.init({"params": KEY, "dropout": KEY}, x))


def count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def test_every_classic_model_is_registered():
    expected = {"mlp", "lenet5", "lenet5_1998", "alexnet", "alexnet_2012", "alexnet_bn", "zfnet", "nin", *VGGS}
    assert set(CLASSIC) == expected


@pytest.mark.parametrize("name", CLASSIC)
def test_param_count_matches_reference(name):
    _, variables = variable_shapes(name)
    assert count(variables["params"]) == get_spec(name).params


def test_counts_derived_by_hand():
    """The models without a library twin, counted layer by layer from the papers."""
    lenet_1998 = (conv(5, 1, 6)  # C1: 156
                  + 2 * 6  # S2: a coefficient and a bias per map
                  + sum(5 * 5 * len(ins) for ins in C3_TABLE) + 16  # C3: 60 connected 5x5 kernels + 16 biases
                  + 2 * 16  # S4
                  + conv(5, 16, 120)  # C5: 48,120
                  + dense(120, 84))  # F6: 10,164; the RBF's 84x10 centres are fixed
    assert sum(5 * 5 * len(ins) for ins in C3_TABLE) + 16 == 1_516
    assert lenet_1998 == 60_000 == get_spec("lenet5_1998").params

    fc = dense(6 * 6 * 256, 4096) + dense(4096, 4096) + dense(4096, 1000)
    assert fc == 58_631_144
    alexnet_2012 = (conv(11, 3, 96) + conv(5, 96, 256, 2) + conv(3, 256, 384) + conv(3, 384, 384, 2)
                    + conv(3, 384, 256, 2))
    assert alexnet_2012 == 2_334_080
    assert alexnet_2012 + fc == get_spec("alexnet_2012").params

    # AlexNet without groups (the seeds' Keras variant) + BatchNorm scale/bias on the five conv outputs.
    ungrouped = conv(11, 3, 96) + conv(5, 96, 256) + conv(3, 256, 384) + conv(3, 384, 384) + conv(3, 384, 256)
    bn = 2 * (96 + 256 + 384 + 384 + 256)
    assert ungrouped + bn + fc == get_spec("alexnet_bn").params == 62_381_096
    _, variables = variable_shapes("alexnet_bn")
    assert count(variables["batch_stats"]) == 2_752  # Keras' non-trainable moving mean/variance

    # ZFNet: the ungrouped AlexNet convs except a 7x7 first layer; 6x6x256 reach the same classifier.
    zfnet = conv(7, 3, 96) + conv(5, 96, 256) + conv(3, 256, 384) + conv(3, 384, 384) + conv(3, 384, 256) + fc
    assert zfnet == 3_726_464 + 58_631_144 == get_spec("zfnet").params

    def mlpconv(k, cin, cout):
        return conv(k, cin, cout) + 2 * conv(1, cout, cout)

    nin = mlpconv(11, 3, 96) + mlpconv(5, 96, 256) + mlpconv(3, 256, 384) + mlpconv(3, 384, 1000)
    assert nin == 53_568 + 746_240 + 1_180_800 + 5_459_000 == get_spec("nin").params


def test_num_classes_changes_only_the_output_layer():
    for name in ("alexnet", "vgg11"):
        _, ten = variable_shapes(name, num_classes=10)
        assert get_spec(name).params - count(ten["params"]) == dense(4096, 1000) - dense(4096, 10)
    _, ten = variable_shapes("nin", num_classes=10)  # NiN's last mlpconv is num_classes wide
    last = conv(3, 384, 1000) + 2 * conv(1, 1000, 1000) - conv(3, 384, 10) - 2 * conv(1, 10, 10)
    assert get_spec("nin").params - count(ten["params"]) == last


def random_variables(model, x, seed: int = 0):
    """Variables for `model` on input `x`, drawn with numpy: LeCun-uniform kernels, small biases, unit scales
    and variances. On CPU, compiling `model.init`'s random number generation costs seconds even for the MLP,
    and running it tens of millions of draws more; numpy does it in a fraction. (`model.init` itself is
    traced by every `jax.eval_shape` count above.)"""
    shapes = jax.eval_shape(lambda: model.init({"params": KEY, "dropout": KEY}, x))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind = path[-1].key
        if kind == "kernel":
            bound = np.sqrt(3.0 / np.prod(leaf.shape[:-1]))
            return (rng.random(leaf.shape, dtype=np.float32) * 2 - 1) * bound
        if kind in ("scale", "var", "coef"):
            return np.ones(leaf.shape, np.float32)
        return rng.uniform(-0.1, 0.1, leaf.shape).astype(np.float32)  # biases, running means

    return jax.tree_util.tree_map_with_path(draw, shapes)


def smallest_input(name: str, batch: int) -> np.ndarray:
    spec = get_spec(name)
    shape = (batch, spec.min_size, spec.min_size, spec.input_shape[2])
    return np.random.default_rng(1).standard_normal(shape, np.float32)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "lenet5_1998", "alexnet", "alexnet_2012", "alexnet_bn",
                                  "zfnet", "nin", "vgg11", "vgg11_bn"])
def test_forward_backward_at_smallest_input(name):
    """Logits of the right shape, finite loss and gradients reaching every parameter, in train mode.

    The VGGs differ only in their tables (counted above for all eight); vgg11 and vgg11_bn run both paths."""
    batch = 2
    model = get_model(name, num_classes=10)
    x = smallest_input(name, batch)

    @jax.jit  # one compilation: loss, gradients and their norms
    def run(variables):
        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                    rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return value, logits, jax.tree_util.tree_map(jnp.linalg.norm, grads)

    value, logits, norms = run(random_variables(model, x))
    assert logits.shape == (batch, 10) and logits.dtype == jnp.float32
    assert np.isfinite(value)
    norms = np.array(jax.tree_util.tree_leaves(norms))
    assert np.all(np.isfinite(norms)) and np.all(norms > 0)


@pytest.mark.parametrize("name", CLASSIC)
def test_too_small_input_names_model_and_size(name):
    spec = get_spec(name)
    model = get_model(name)
    x = jnp.zeros((1, spec.min_size - 1, spec.min_size - 1, spec.input_shape[2]))
    with pytest.raises(ValueError, match=rf"{name}.*{spec.min_size}x{spec.min_size}"):
        jax.eval_shape(lambda: model.init(KEY, x))


@pytest.mark.parametrize("name", ["alexnet", "nin", "vgg11"])
def test_min_size_is_tight(name, monkeypatch):
    """One pixel less and the network itself breaks (a pooling window outgrows its input); at min_size and
    non-square larger inputs it runs."""
    spec = get_spec(name)
    model = get_model(name)
    jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, spec.min_size, spec.min_size + 17, 3))))
    monkeypatch.setattr(type(model), "min_size", 1)
    small = jnp.zeros((1, spec.min_size - 1, spec.min_size - 1, 3))
    with pytest.raises(ValueError, match="pooling window"):
        jax.eval_shape(lambda: model.init(KEY, small))


@pytest.mark.parametrize("name", ["mlp", "lenet5", "lenet5_1998", "alexnet_2012", "alexnet_bn", "zfnet"])
def test_fixed_size_models_refuse_other_sizes(name):
    spec = get_spec(name)
    x = jnp.zeros((1, spec.min_size + 5, spec.min_size + 5, spec.input_shape[2]))
    with pytest.raises(ValueError, match="fixes the size"):
        jax.eval_shape(lambda: get_model(name).init(KEY, x))


@pytest.mark.parametrize("name", ["alexnet", "nin"])  # dropout in the classifier / in the features
def test_dropout_depends_on_key_only(name):
    model = get_model(name, num_classes=10)
    x = smallest_input(name, 2)

    @jax.jit
    def run(variables):
        train = [model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(k)}) for k in (3, 3, 4)]
        evals = [model.apply(variables, x, rngs={"dropout": jax.random.key(k)}) for k in (3, 4)]
        return train, evals

    (a, b, c), (e1, e2) = run(random_variables(model, x))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-6
    np.testing.assert_array_equal(e1, e2)  # eval ignores dropout keys


def first_bn_input(name: str, params, x):
    """What the first BatchNorm sees: vgg11_bn's first conv; alexnet_bn's first conv -> ReLU -> 3x3/2 pool."""
    conv0 = params["features_0"]
    stride, pad = ((4, 4), "VALID") if name == "alexnet_bn" else ((1, 1), ((1, 1), (1, 1)))
    y = jax.lax.conv_general_dilated(x, conv0["kernel"], stride, pad,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv0["bias"]
    return max_pool(nn.relu(y), 3, 2) if name == "alexnet_bn" else y


@pytest.mark.parametrize("name, first_bn, momentum, eps", [("alexnet_bn", "features_3", 0.99, 1e-3),
                                                            ("vgg11_bn", "features_1", 0.9, 1e-5)])
def test_batchnorm_stats_update_in_train_only(name, first_bn, momentum, eps):
    """Train mode moves the running statistics by (1 - momentum) towards the batch's (Keras' 0.99 for the
    Keras-born alexnet_bn, torch's 0.1 == flax 0.9 for VGG); eval mode leaves them alone."""
    model = get_model(name, num_classes=10)
    x = smallest_input(name, 2)

    @jax.jit
    def run(variables):
        _, updated = model.apply(variables, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats"])
        _, unchanged = model.apply(variables, x, train=False, mutable=["batch_stats"])
        return updated, unchanged, first_bn_input(name, variables["params"], x)

    variables = random_variables(model, x)
    variables["batch_stats"] = jax.tree_util.tree_map(lambda v: v * 1.5, variables["batch_stats"])
    updated, unchanged, y = run(variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, unchanged["batch_stats"], variables["batch_stats"])
    old, new = variables["batch_stats"][first_bn], updated["batch_stats"][first_bn]
    np.testing.assert_allclose(new["mean"], momentum * old["mean"] + (1 - momentum) * y.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], momentum * old["var"] + (1 - momentum) * y.var(axis=(0, 1, 2)),
                               rtol=1e-4)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), updated["batch_stats"],
                                     variables["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))
    assert model.bn_epsilon == eps


# --- LeNet-5, 1998 ----------------------------------------------------------------------------------------


def test_c3_connects_only_table_i():
    """Output map j of C3 responds to input map i exactly when i is in the paper's Table I column j."""
    layer = SparseConv(C3_TABLE)
    variables = random_variables(layer, np.zeros((1, 9, 9, 6), np.float32))
    assert count(variables["params"]) == 1_516
    apply = jax.jit(layer.apply)
    rng = np.random.default_rng(0)
    for i in range(6):
        x = np.zeros((1, 9, 9, 6), np.float32)
        x[..., i] = rng.standard_normal((1, 9, 9))
        response = apply(variables, x) - apply(variables, np.zeros_like(x))
        touched = {j for j in range(16) if float(jnp.abs(response[..., j]).max()) > 0}
        assert touched == {j for j, ins in enumerate(C3_TABLE) if i in ins}
    assert [len(ins) for ins in C3_TABLE] == [3] * 6 + [4] * 9 + [6]


def test_subsampling_is_window_sum_times_coefficient_plus_bias():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    params = {"coef": jnp.array([1.0, 0.5, -2.0]), "bias": jnp.array([0.0, 1.0, 3.0])}
    out = Subsampling().apply({"params": params}, x)
    xn = np.asarray(x)
    sums = xn.reshape(2, 2, 2, 2, 2, 3).sum(axis=(2, 4))
    np.testing.assert_allclose(out, sums * np.array([1.0, 0.5, -2.0]) + np.array([0.0, 1.0, 3.0]))


def test_lenet5_1998_logits_are_negative_rbf_distances():
    model = get_model("lenet5_1998")
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 1), np.float32)
    variables = random_variables(model, x)
    logits, state = jax.jit(lambda v: model.apply(v, x, capture_intermediates=True))(variables)
    f6 = scaled_tanh(state["intermediates"]["f6"]["__call__"][0])
    centers = rbf_centers()
    expected = -((np.asarray(f6)[:, None, :] - centers[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)
    # fixed +-1 bitmaps, one distinct 7x12 per digit, outside the trainable params
    assert centers.shape == (10, 84) and set(np.unique(centers)) == {-1.0, 1.0}
    assert len({c.tobytes() for c in centers}) == 10
    assert count(variables["params"]) == 60_000 and set(variables) == {"params"}


def test_lenet5_1998_refuses_other_class_counts():
    with pytest.raises(ValueError, match="num_classes must be 10"):
        jax.eval_shape(lambda: get_model("lenet5_1998", num_classes=12).init(KEY, jnp.zeros((1, 32, 32, 1))))
