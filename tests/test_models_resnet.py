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


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_train_step_is_finite_and_updates_batch_stats(name):
    """One jitted program: init, train-mode loss and gradients, then an eval-mode pass on the new stats."""
    model = get_model(name, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    labels = jnp.array([3, 7])

    @jax.jit
    def run(key, x):
        variables = model.init(key, x)

        def loss_fn(params):
            logits, state = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (logits, state)

        grads, (logits, state) = jax.grad(loss_fn, has_aux=True)(variables["params"])
        trained = {**variables, **state}
        eval_logits, eval_state = model.apply(trained, x, train=False, mutable=["batch_stats"])
        return variables, grads, logits, state, trained, eval_logits, eval_state

    variables, grads, logits, state, trained, eval_logits, eval_state = run(jax.random.key(0), x)
    assert logits.shape == eval_logits.shape == (2, 10) and logits.dtype == jnp.float32
    leaves = jax.tree_util.tree_leaves((logits, grads, eval_logits))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert float(optax.global_norm(grads)) > 0
    # Train mode moved every running statistic; eval mode left them exactly as they were.
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                                   state["batch_stats"])
    assert all(jax.tree_util.tree_leaves(moved))
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), trained["batch_stats"],
                                  eval_state["batch_stats"])
    assert all(jax.tree_util.tree_leaves(same))


@pytest.mark.parametrize("name", ["resnet152", "densenet201", "wide_resnet101_2"])
def test_deep_variants_forward_at_smallest_input(name):
    model = get_model(name)
    size = get_spec(name).min_size
    logits, _ = jax.jit(model.init_with_output)(jax.random.key(0), jnp.ones((1, size, size, 3)))
    assert logits.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
@pytest.mark.parametrize("hw", [(31, 31), (64, 31)])
def test_too_small_input_raises_naming_model_and_minimum(name, hw):
    model = get_model(name)
    with pytest.raises(ValueError, match=rf"{name}.*32x32"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3)))


def test_zero_init_residual_starts_blocks_as_identity():
    """torchvision's zero_init_residual: the last BN of every residual branch starts at scale 0."""
    from jaxcnn.models.resnet import resnet18

    model = resnet18(num_classes=10, zero_init_residual=True)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    blocks = [k for k in params if k.startswith("layer")]
    assert len(blocks) == 8
    assert all(float(jnp.abs(params[k]["bn2"]["scale"]).max()) == 0.0 for k in blocks)
    assert all(float(params[k]["bn1"]["scale"].min()) == 1.0 for k in blocks)
