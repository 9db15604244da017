"""jaxcnn.nnx: every registered model as an NNX module with the Linen model's variables and outputs.

Every model at its minimum input size, traced without compiling: the NNX module built from `rngs` holds the
variables (collections, names, shapes) of the Linen init and gives logits of the same shape; with the same
variables loaded into both it gives the Linen model's logits (batch 1, eval mode, uncompiled). One model of each
kind also from its own initialization (a compiled function each). Train mode (BatchNorm statistics moving in place, dropout, auxiliary heads) on ResNet-18 and GoogLeNet;
converted torchvision weights load into the NNX ResNet-18 and give torchvision's logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcnn.nnx as jnnx
from jaxcnn import models, training

NAMES = models.list_models()
NUM_CLASSES = 7  # not the registry's default, so a head built for the wrong count shows


def min_shape(name: str) -> tuple[int, int, int]:
    spec = models.get_spec(name)
    return spec.min_size, spec.min_size, spec.input_shape[2]


def shapes(tree) -> dict:
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def random_variables(tree, seed: int = 0) -> dict:
    """Values for every leaf of the abstract `tree` (Linen-form variables), drawn on the host without tracing:
    kernels scaled by their fan-in (so that even the deepest model's logits stay finite without BatchNorm
    normalizing anything in eval mode), BatchNorm variances and scales near 1, everything else small."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            return rng.standard_normal(leaf.shape, np.float32) / np.float32(np.sqrt(np.prod(leaf.shape[:-1])))
        if name in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return 0.1 * rng.standard_normal(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(value, tree)


def make_rngs_real(model) -> None:
    """Concrete rng streams in an abstract (`nnx.eval_shape`) module: an eval-mode call draws no numbers from
    them, but the bridge splits every stream at each call."""
    def real(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        return jnp.zeros(leaf.shape, leaf.dtype)
    nnx.update(model, jax.tree.map(real, nnx.state(model, nnx.RngState)))


@pytest.mark.parametrize("name", NAMES)
def test_nnx_model_holds_the_linen_variables(name):
    """Every model, abstractly (traced, never compiled): the same collections, names and shapes as the Linen
    init, and logits of the same shape."""
    shape, classes = min_shape(name), models.get_spec(name).num_classes
    linen = models.get_model(name, num_classes=classes)
    expected = jax.eval_shape(lambda: training.init_variables(linen, jax.random.PRNGKey(0), shape))
    model = nnx.eval_shape(lambda: jnnx.get_model(name, rngs=nnx.Rngs(0), input_shape=shape, num_classes=classes))
    got = jnnx.linen_variables(model)
    assert sorted(got) == sorted(k for k, tree in expected.items() if tree)  # params (and batch_stats with BN)
    for collection in got:
        assert shapes(got[collection]) == shapes(expected[collection]), collection
    logits = nnx.eval_shape(lambda m: m(jnp.zeros((2, *shape))), model)
    assert logits.shape == (2, classes)


# The numbers cost a compilation per model (the five below: 33 s of test time on one core of the loaded 2-core
# machine, densenet121 alone 17 s; most of the other 28 are deeper or larger): the default suite checks the
# models whose parts the compiled test below does not reach (LRN, grouped convolutions, BatchNorm without
# residuals, inception branches, dense blocks), the rest run with -m variants.
SAME_OUTPUTS_QUICK = ("lenet5", "alexnet_2012", "alexnet_bn", "googlenet_2014", "densenet121")


@pytest.mark.parametrize("name", [name if name in SAME_OUTPUTS_QUICK else
                                  pytest.param(name, marks=pytest.mark.variants) for name in NAMES])
def test_nnx_model_gives_the_linen_outputs_on_the_same_variables(name):
    """At its minimum input size, batch 1, eval mode: random variables loaded into the NNX module (built
    abstractly: no initialization to compile) give the Linen model's logits on the same variables. One
    compilation holds both."""
    shape, classes = min_shape(name), models.get_spec(name).num_classes
    linen = models.get_model(name, num_classes=classes)
    model = nnx.eval_shape(lambda: jnnx.get_model(name, rngs=nnx.Rngs(0), input_shape=shape, num_classes=classes))
    variables = random_variables(jnnx.linen_variables(model))
    jnnx.load_variables(model, variables)
    make_rngs_real(model)
    graphdef, state = nnx.split(model)
    images = np.random.default_rng(1).standard_normal((1, *shape), np.float32)

    @jax.jit
    def outputs(state, variables, images):
        return nnx.merge(graphdef, state)(images), linen.apply(variables, images, train=False)

    got, expected = outputs(state, variables, images)
    assert np.all(np.isfinite(expected)) and float(jnp.std(expected)) > 0  # the variables are not degenerate
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# One model of each kind of part: dense only, the 1998 RBF output, 1x1 "mlpconv" stacks with dropout,
# BatchNorm with residual blocks (GoogLeNet's branches below). Compiling every model would cost minutes.
@pytest.mark.parametrize("name", ["mlp", "lenet5_1998", "nin", "resnet18"])
def test_nnx_model_gives_the_linen_outputs(name):
    shape, classes = min_shape(name), models.get_spec(name).num_classes
    linen = models.get_model(name, num_classes=classes)
    images = jax.random.normal(jax.random.key(1), (2, *shape))

    @jax.jit  # one compilation: build the NNX module, run it and the Linen model on its variables
    def outputs(images):
        model = jnnx.get_model(name, rngs=nnx.Rngs(0), input_shape=shape, num_classes=classes)
        return model(images), linen.apply(jnnx.linen_variables(model), images, train=False)

    got, expected = outputs(images)
    assert float(jnp.std(expected)) > 0  # the variables are not degenerate
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_train_mode_moves_batch_stats_in_place_as_linen_does():
    shape = min_shape("resnet18")
    linen = models.get_model("resnet18", num_classes=NUM_CLASSES)
    images = jax.random.normal(jax.random.key(1), (4, *shape))
    model = jnnx.get_model("resnet18", rngs=nnx.Rngs(0), input_shape=shape, num_classes=NUM_CLASSES)
    before = jnnx.linen_variables(model)
    expected_logits, updates = linen.apply(before, images, train=True, mutable=["batch_stats"])
    model.train()
    logits = model(images)
    after = jnnx.linen_variables(model)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-6)
    assert shapes(after["batch_stats"]) == shapes(updates["batch_stats"])
    for got, want, old in zip(*(jax.tree.leaves(t["batch_stats"]) for t in (after, updates, before))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(before["batch_stats"]), jax.tree.leaves(after["batch_stats"]))) > 1e-3
    model.eval()
    np.testing.assert_allclose(model(images), linen.apply(after, images, train=False), rtol=1e-5, atol=1e-6)


def test_train_mode_draws_dropout_from_the_rngs_and_sows_aux_logits():
    """GoogLeNet with its auxiliary heads: dropout on in train mode (a new mask every call, the same masks
    from the same rngs), off in eval mode; the heads' logits come back on request, as Linen sows them."""
    shape = min_shape("googlenet")
    images = jax.random.normal(jax.random.key(1), (2, *shape))

    model = jnnx.get_model("googlenet", rngs=nnx.Rngs(0), input_shape=shape, num_classes=NUM_CLASSES,
                           aux_logits=True)
    model.train()
    twin = nnx.clone(model)  # the same variables and the same rngs
    # Popping the sown logits inside the step keeps the module's structure the same call after call.
    call = nnx.jit(lambda m, x: (m(x, mutable=["batch_stats", "aux"]), jnnx.pop_sown(m, "aux")))
    (first, aux), (second, _) = call(model, images), call(model, images)
    assert float(jnp.max(jnp.abs(first - second))) > 1e-4  # a new dropout mask every call
    np.testing.assert_array_equal(call(twin, images)[0], first)  # the same rngs, the same masks
    assert sorted(aux) == ["aux1", "aux2"]
    assert [np.shape(x) for x in jax.tree.leaves(aux)] == [(2, NUM_CLASSES)] * 2
    assert jnnx.collection(model, "aux") == {}
    model.eval()
    evaluate = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(evaluate(model, images), evaluate(model, images))  # no dropout in eval mode


def test_load_variables_refuses_weights_of_another_shape():
    model = jnnx.get_model("lenet5", rngs=nnx.Rngs(0))
    other = jnnx.linen_variables(jnnx.get_model("lenet5", rngs=nnx.Rngs(1), num_classes=12))
    kept = jnnx.linen_variables(model)
    expected = r"at \['params'\]\['output'\]\['bias'\]: the model has \(10,\), the weights have \(12,\)"
    with pytest.raises(ValueError, match=expected):
        jnnx.load_variables(model, other)
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(jnnx.linen_variables(model))):
        np.testing.assert_array_equal(a, b)  # nothing changed


def test_converted_torchvision_weights_load_and_match_torchvision():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from jaxcnn.convert import torchvision_to_flax
    from test_convert_resnet import nchw, rel_err, torch_model

    reference = torch_model("resnet18")
    images = np.random.RandomState(0).randn(2, 32, 48, 3).astype(np.float32)
    with torch.no_grad():
        expected = reference(nchw(images)).numpy()
    model = jnnx.get_model("resnet18", rngs=nnx.Rngs(0), input_shape=(32, 48, 3))
    assert rel_err(model(images), expected) > 0.5  # random NNX weights: far from torchvision's logits
    jnnx.load_variables(model, torchvision_to_flax("resnet18", reference.state_dict()))
    assert rel_err(model(images), expected) < 1e-4  # docs/conventions.md: fp32 tolerance against torch


def test_nnx_optimizer_trains_a_model():
    """The NNX way to train one: nnx.Optimizer over the Params; the loss falls on a fixed batch."""
    model = jnnx.get_model("lenet5", rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    images = jax.random.normal(jax.random.key(2), (16, 28, 28, 1))
    labels = jnp.arange(16) % 10

    @nnx.jit
    def step(model, optimizer, images, labels):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    losses = [float(step(model, optimizer, images, labels)) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses
