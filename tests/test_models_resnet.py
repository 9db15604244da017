"""ResNet / ResNeXt / Wide ResNet / DenseNet: counts against torchvision's, forward/backward, BN modes, input size.

Everything runs at the smallest input (32x32) with batch 1-2 and one jitted program per model, so the whole
file stays cheap on a shared CPU; numerical equivalence with torchvision lives in test_convert_resnet.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.models import get_model, get_spec, list_models

FAMILIES = ("resnet", "densenet")
NAMES = [name for name in list_models() if get_spec(name).family in FAMILIES]


def he_variables(model, x) -> dict:
    """Variables drawn in numpy: He-normal kernels (fan_in), BN scale 1 / bias 0, running mean 0 / var 1.

    Compiling a deep model's ~150-600 initializers costs several times its forward pass on CPU, so the
    forward/backward tests skip `model.init`; `test_initializers_follow_torchvision` covers it once.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_every_variant_is_registered():
    expected = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
                "densenet121", "densenet161", "densenet169", "densenet201"}
    assert set(NAMES) == expected


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_reference(name):
    spec = get_spec(name)
    model = get_model(name)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, spec.min_size, spec.min_size, 3)))
    assert sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes["params"])) == spec.params


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_train_step_is_finite_and_updates_batch_stats(name):
    """Train-mode loss and gradients at the smallest input: finite, nonzero, and every running stat moved."""
    model = get_model(name, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    labels = jnp.array([3, 7])
    variables = he_variables(model, x)

    def grads_and_stats(params, batch_stats, x):
        def loss_fn(params):
            logits, state = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                        mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (logits, state)

        return jax.grad(loss_fn, has_aux=True)(params)

    args = (variables["params"], variables["batch_stats"], x)
    grads, (logits, state) = jax.jit(grads_and_stats)(*args)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves((logits, grads)))
    assert float(optax.tree.norm(grads)) > 0
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                                   state["batch_stats"])
    assert all(jax.tree_util.tree_leaves(moved))


def test_eval_mode_leaves_batch_stats_alone():
    model = get_model("resnet18", num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = he_variables(model, x)
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a + 0.5, variables["batch_stats"])
    _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))(variables, x)
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), variables["batch_stats"],
                                  state["batch_stats"])
    assert all(jax.tree_util.tree_leaves(same))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet152", "densenet201", "wide_resnet101_2"])
def test_deep_variants_forward_at_smallest_input(name):
    model = get_model(name)
    size = get_spec(name).min_size
    x = jnp.ones((1, size, size, 3))
    variables = he_variables(model, x)
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
@pytest.mark.parametrize("hw", [(31, 31), (64, 31)])
def test_too_small_input_raises_naming_model_and_minimum(name, hw):
    model = get_model(name)
    with pytest.raises(ValueError, match=rf"{name}.*32x32"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3)))


def test_initializers_follow_torchvision():
    """Kaiming-normal (fan_out) convs, zero-initialised last BN per block with zero_init_residual, BN scale 1."""
    from jaxcnn.models.resnet import resnet18

    model = resnet18(num_classes=10, zero_init_residual=True)
    # 'unsafe_rbg' keys: the same initializers, far cheaper to compile than threefry on CPU.
    params = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, 32, 32, 3)))["params"]
    blocks = [k for k in params if k.startswith("layer")]
    assert len(blocks) == 8
    assert all(float(jnp.abs(params[k]["bn2"]["scale"]).max()) == 0.0 for k in blocks)
    assert all(float(params[k]["bn1"]["scale"].min()) == 1.0 for k in blocks)
    kernel = params["layer4_0"]["conv1"]["kernel"]  # 3x3x256x512: fan_out 9 * 512 (fan_in would be 9 * 256)
    assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2.0 / (9 * 512)), rel=0.02)
    bound = 1.0 / np.sqrt(512)  # torch nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(jnp.abs(params["fc"]["kernel"]).max()) == pytest.approx(bound, rel=0.01)
