"""Loss, metrics, steps, optimizers and schedules, checked against hand-computed numbers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import layers, optim, parallel, training
from jaxcnn.models import get_model
from train.configs.default import get_config


def make_config(**overrides):
    config = get_config()
    config.update(overrides)
    return config


class AuxHead(nn.Module):
    """An auxiliary classifier, nested like GoogLeNet's (its Dense is one level down)."""

    num_classes: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


class TinyNet(nn.Module):
    """Dense -> ReLU -> Dropout -> BatchNorm -> Dense, plus an auxiliary head sown in training.

    Returns logits in the computation dtype (no float32 cast), so the bf16 test sees bf16 logits.
    """

    num_classes: int = 4
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        h = nn.relu(nn.Dense(8, dtype=self.dtype, name="hidden")(x))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = layers.batch_norm(train, dtype=self.dtype)(name="bn")(h)
        if train:
            self.sow("aux", "aux1", AuxHead(self.num_classes, self.dtype, name="aux_classifier")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(h)


def tiny_batch(size=8, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(size, 4, 4, 1)).astype(np.float32),
            "label": rng.integers(0, num_classes, size).astype(np.int32)}


@pytest.fixture(scope="module")
def tiny_vars():
    """TinyNet's variables, initialized once (random initializers are slow to compile on CPU)."""
    return training.init_variables(TinyNet(), jax.random.key(0), (4, 4, 1))


def tiny_state(variables, config, model=None, trainable=None):
    return training.create_train_state(model or TinyNet(), config, jax.random.key(0), (4, 4, 1),
                                       steps_per_epoch=10, trainable=trainable, variables=variables)


def hand_ce(logits, labels):
    """Mean softmax cross-entropy in float64 numpy."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def jit_step(**kw):
    return jax.jit(functools.partial(training.train_step, num_classes=4, **kw))


def leaves_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


# --- LeNet-5 learns; bf16 -----------------------------------------------------------------------------------


def patterned_mnist_like(size=32, seed=0):
    """Random 28x28 images with a fixed random pattern per label added: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(10, 28, 28, 1))
    labels = np.arange(size) % 10
    images = 0.5 * rng.normal(size=(size, 28, 28, 1)) + patterns[labels]
    return {"image": images.astype(np.float32), "label": labels.astype(np.int32)}


@pytest.fixture(scope="module")
def lenet_losses():
    config = make_config(optimizer="adam", learning_rate=3e-3)
    train_fn, eval_fn = training.step_functions(config, 10)
    driver = parallel.make_driver("single", train_fn, eval_fn)
    state = driver.put_state(training.create_train_state(get_model("lenet5"), config, jax.random.key(0),
                                                         (28, 28, 1), steps_per_epoch=1))
    batch, losses = patterned_mnist_like(), []
    for _ in range(30):
        state, metrics = driver.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, driver.eval_step(state, batch)


def test_lenet5_loss_falls_on_a_fixed_batch(lenet_losses):
    losses, sums = lenet_losses
    assert 2.0 < losses[0] < 3.0  # about ln(10) at initialization
    assert losses[-1] < 0.2 * losses[0]
    assert float(sums["top1_sum"]) / float(sums["count"]) == 1.0


def test_bfloat16_runs_and_keeps_params_float32(tiny_vars):
    config = make_config(optimizer="adam", learning_rate=3e-3, dtype="bfloat16")
    assert training.model_dtype(config) == jnp.bfloat16
    model, batch = TinyNet(dtype=training.model_dtype(config)), tiny_batch()
    state = tiny_state(tiny_vars, config, model=model)
    bf16_logits, _ = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats", "aux"]),
                                    tiny_vars, batch["image"])
    assert bf16_logits.dtype == jnp.bfloat16  # the model really computes in bf16
    new, metrics = jit_step()(state, batch)
    assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(new.opt_state) if x.dtype.kind == "f"} == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32
    # bf16 rounding moves the loss of the same weights a little, not a lot.
    fp32_logits, _ = TinyNet().apply(tiny_vars, batch["image"], train=True, mutable=["batch_stats", "aux"])
    assert 0 < abs(float(metrics["loss"]) - hand_ce(fp32_logits, batch["label"])) < 0.05


# --- Loss and metrics ---------------------------------------------------------------------------------------


def test_label_smoothing_changes_the_loss_by_the_hand_computed_amount():
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
    log_p = logits - np.log(np.sum(np.exp(logits)))
    plain = -log_p[0, 2]
    smoothing = 0.1
    # targets (1 - s) one_hot + s / K: the loss moves by s * (mean_k(-log p_k) - (-log p_y)).
    expected = plain + smoothing * (-np.mean(log_p[0]) - plain)
    labels = np.array([2])
    np.testing.assert_allclose(training.cross_entropy(logits, labels), [plain], rtol=1e-6)
    np.testing.assert_allclose(training.cross_entropy(logits, labels, 4, smoothing), [expected], rtol=1e-6)


def test_map_loss_is_lecun_1998_eq_9_by_hand():
    distances = np.array([[3.0, 0.5, 7.0], [0.2, 4.0, 9.0]], np.float32)  # RBF outputs y_i; logits are -y_i
    labels, j = np.array([1, 0]), 0.1
    # Eq. 9: y_D + log(e^-j + sum_i e^-y_i), with y_D the correct class's distance.
    expected = [y[d] + np.log(np.exp(-j) + np.sum(np.exp(-y))) for y, d in zip(distances.astype(np.float64), labels)]
    np.testing.assert_allclose(training.cross_entropy(-distances, labels, map_loss_j=j), expected, rtol=1e-6)
    # A well-classified example keeps a gradient towards its centre: d loss / d y_D stays near
    # 1 - e^-y_D / (e^-j + sum_i e^-y_i) ~ 0.5 here, where the plain cross-entropy's has almost vanished.
    grad = jax.grad(lambda y: training.cross_entropy(-y, labels[:1], map_loss_j=j)[0])(distances[:1])
    plain = jax.grad(lambda y: training.cross_entropy(-y, labels[:1])[0])(distances[:1])
    np.testing.assert_allclose(grad[0, 1], 1 - np.exp(-0.5) / (np.exp(-j) + np.exp(-distances[0]).sum()), rtol=1e-5)
    assert float(grad[0, 1]) > 0.4 and float(plain[0, 1]) < 0.1


def test_top1_top5_counts():
    logits = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5, 6]], np.float32)
    labels = np.array([6, 5, 1])  # rank 0, rank 5, rank 5
    metrics = training.compute_metrics(logits, labels)
    np.testing.assert_allclose(metrics["top1"], 1 / 3)
    np.testing.assert_allclose(metrics["top5"], 1 / 3)
    # With 3 classes "top-5" is top-3: always right.
    assert float(training.compute_metrics(logits[:, :3], np.array([0, 1, 2]))["top5"]) == 1.0


def test_ties_and_nans_count_against_the_true_class():
    labels = np.array([0, 3, 2])
    constant = np.zeros((3, 10), np.float32)  # a dead network: every class equally likely
    metrics = training.compute_metrics(constant, labels)
    assert float(metrics["top1"]) == 0.0 and float(metrics["top5"]) == 0.0
    # The true class tied with 1 rival: top-1 wrong, top-2 right; tied with 5 rivals: out of the top 5.
    tied = np.array([[3, 3, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 2, 2, 0, 0]], np.float32)
    np.testing.assert_array_equal(training.top_k_correct(tied, labels, 1), [0, 0, 0])
    np.testing.assert_array_equal(training.top_k_correct(tied, labels, 2), [1, 0, 1])
    np.testing.assert_array_equal(training.top_k_correct(tied, labels, 5), [1, 0, 1])
    # One NaN anywhere in an example's logits makes it wrong, even where the true class is otherwise ahead.
    nan = np.array([[9, np.nan, 0, 0], [np.nan] * 4, [0, 0, 9, 0]], np.float32)
    np.testing.assert_array_equal(training.top_k_correct(nan, labels, 1), [0, 0, 1])
    metrics = training.compute_metrics(np.full((3, 10), np.nan, np.float32), labels)
    assert float(metrics["top1"]) == 0.0 and float(metrics["top5"]) == 0.0


def test_aux_loss_adds_weighted_aux_cross_entropy(tiny_vars):
    state = tiny_state(tiny_vars, make_config(learning_rate=0.1))
    batch = tiny_batch()
    main, sown = TinyNet().apply(tiny_vars, batch["image"], train=True, mutable=["batch_stats", "aux"])
    main_ce, aux_ce = hand_ce(main, batch["label"]), hand_ce(sown["aux"]["aux1"][0], batch["label"])
    assert abs(aux_ce - main_ce) > 0.01  # so that the weighting is visible
    _, metrics = jit_step(aux_loss_weight=0.3)(state, batch)
    np.testing.assert_allclose(metrics["loss"], main_ce + 0.3 * aux_ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["aux_loss"], aux_ce, rtol=1e-5)


# --- Schedules ----------------------------------------------------------------------------------------------


def test_piecewise_schedule_by_epoch():
    config = make_config(schedule="piecewise", piecewise_boundaries=[2, 5, 8],
                         piecewise_values=[5e-4, 2e-4, 5e-5, 1e-5])
    schedule = optim.build_schedule(config, steps_per_epoch=100)
    for step, lr in [(0, 5e-4), (199, 5e-4), (200, 2e-4), (499, 2e-4), (500, 5e-5), (799, 5e-5), (800, 1e-5),
                     (5000, 1e-5)]:
        np.testing.assert_allclose(schedule(step), lr, rtol=1e-6, err_msg=f"step {step}")
    with pytest.raises(ValueError, match="one more value than boundaries"):
        optim.build_schedule(make_config(schedule="piecewise", piecewise_boundaries=[2], piecewise_values=[1.0]), 10)


def test_warmup_cosine_and_step_schedules():
    cosine = optim.build_schedule(make_config(schedule="cosine", learning_rate=0.1, warmup_epochs=1, num_epochs=5),
                                  steps_per_epoch=10)
    for step, lr in [(0, 0.0), (5, 0.05), (10, 0.1), (30, 0.05), (50, 0.0)]:
        np.testing.assert_allclose(cosine(step), lr, atol=1e-7, err_msg=f"step {step}")
    step_decay = optim.build_schedule(make_config(schedule="step", learning_rate=0.1, step_decay_epochs=3,
                                                  step_decay_factor=0.1), steps_per_epoch=10)
    for step, lr in [(0, 0.1), (29, 0.1), (30, 0.01), (60, 0.001)]:
        np.testing.assert_allclose(step_decay(step), lr, rtol=1e-6, err_msg=f"step {step}")
    warm_constant = optim.build_schedule(make_config(learning_rate=0.2, warmup_epochs=1), steps_per_epoch=10)
    np.testing.assert_allclose([warm_constant(0), warm_constant(5), warm_constant(10), warm_constant(99)],
                               [0.0, 0.1, 0.2, 0.2], atol=1e-7)


# --- Optimizers ---------------------------------------------------------------------------------------------


def _params():
    return {"dense": {"kernel": jnp.full((2, 3), 0.5), "bias": jnp.full((3,), 0.25)},
            "bn": {"scale": jnp.ones((3,)), "bias": jnp.zeros((3,))}}


LR, GRAD = 0.1, -2.0
ADAM_STEP = -LR * GRAD / (abs(GRAD) + 1e-8)
FIRST_STEP = {  # (config, first update, extra on kernels) for a constant gradient GRAD, by hand
    "sgd": ({}, -LR * GRAD, 0.0),
    "nesterov": ({"nesterov": True}, -LR * (1 + 0.9) * GRAD, 0.0),
    "adam": ({"optimizer": "adam"}, ADAM_STEP, 0.0),
    "rmsprop": ({"optimizer": "rmsprop"}, -LR * GRAD / np.sqrt(0.1 * GRAD**2 + 1e-8), 0.0),
    "adamw": ({"optimizer": "adamw", "weight_decay": 0.01}, ADAM_STEP, -LR * 0.01 * 0.5),  # decoupled decay
}


@pytest.mark.parametrize("name", list(FIRST_STEP))
def test_every_optimizer_takes_its_first_step(name):
    overrides, update, kernel_extra = FIRST_STEP[name]
    tx, _ = optim.build_optimizer(make_config(learning_rate=LR, **overrides), steps_per_epoch=10)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, GRAD), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], update + kernel_extra, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["bias"], update, rtol=1e-5)
    np.testing.assert_allclose(updates["bn"]["scale"], update, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_touches_kernels_only(optimizer):
    tx, _ = optim.build_optimizer(make_config(optimizer=optimizer, momentum=0.0, learning_rate=LR,
                                              weight_decay=5e-4), steps_per_epoch=10)
    params = _params()
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["dense"]["kernel"], 0.5 * (1 - LR * 5e-4), rtol=1e-7)
    for path in (("dense", "bias"), ("bn", "scale"), ("bn", "bias")):
        assert np.array_equal(new[path[0]][path[1]], params[path[0]][path[1]]), path
    assert optim.kernel_mask(params) == {"dense": {"kernel": True, "bias": False},
                                         "bn": {"scale": False, "bias": False}}


def test_lr_multipliers_scale_the_named_modules_updates_only():
    """config.lr_multipliers: the named top-level module steps at factor x the rate (Adam's first step is
    -lr x sign(grad)), the others as before; the optimizer state's structure grows only when it is set."""
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, GRAD), params)
    tx, _ = optim.build_optimizer(make_config(optimizer="adam", learning_rate=LR, lr_multipliers={"dense": 0.25}), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    for leaf in updates["dense"].values():
        np.testing.assert_allclose(leaf, 0.25 * ADAM_STEP, rtol=1e-5)
    for leaf in updates["bn"].values():
        np.testing.assert_allclose(leaf, ADAM_STEP, rtol=1e-5)
    plain, _ = optim.build_optimizer(make_config(optimizer="adam", learning_rate=LR), 10)
    assert len(jax.tree.leaves(tx.init(params))) == len(jax.tree.leaves(plain.init(params)))  # stateless
    misnamed, _ = optim.build_optimizer(make_config(optimizer="adam", lr_multipliers={"classifier_0": 0.5}), 10)
    with pytest.raises(ValueError, match="lr_multipliers names classifier_0, which the model lacks; its top-level "
                                         "modules: bn, dense"):
        misnamed.update(grads, misnamed.init(params), params)


def test_gradient_clipping_bounds_the_global_norm():
    tx, _ = optim.build_optimizer(make_config(momentum=0.0, learning_rate=1.0, grad_clip_norm=1.0), 10)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)  # global norm 3 * sqrt(15)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)


def test_reduce_on_plateau_divides_lr_after_patience_evaluations(tiny_vars):
    config = make_config(schedule="plateau", learning_rate=0.1, momentum=0.0, plateau_patience=2)
    state = tiny_state(tiny_vars, config)
    schedule = optim.build_schedule(config, 10)
    lrs = []
    for val_loss in [1.0, 0.5, 0.6, 0.55, 0.7]:
        state = training.update_plateau(state, val_loss)
        lrs.append(float(training.learning_rate(state, schedule)))
    # 1.0 and 0.5 improve; 0.6 and 0.55 are two evaluations without improvement (patience 2) -> lr / 10.
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    # The training step uses the reduced rate and leaves the plateau state where the evaluations put it.
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    np.testing.assert_allclose(updates["head"]["bias"], -0.01, rtol=1e-6)
    assert leaves_equal(optim.find_states(opt_state, optim.PlateauState),
                        optim.find_states(state.opt_state, optim.PlateauState))
    # Without the plateau schedule update_plateau is a no-op.
    plain = tiny_state(tiny_vars, make_config())
    assert training.update_plateau(plain, 5.0) is plain


# --- Freezing, non-finite updates, dropout ------------------------------------------------------------------


def test_freezing_leaves_frozen_params_bit_identical(tiny_vars):
    config = make_config(optimizer="adam", learning_rate=0.1, weight_decay=0.1)
    trainable = optim.head_trainable(tiny_vars["params"], num_classes=4)
    assert optim.head_trainable(tiny_vars["params"]) == trainable  # found as the layer nothing consumes
    assert trainable["head"] == {"kernel": True, "bias": True}
    assert not any(jax.tree.leaves({k: v for k, v in trainable.items() if k != "head"}))
    state = tiny_state(tiny_vars, config, trainable=trainable)
    new, _ = jit_step(aux_loss_weight=0.3)(state, tiny_batch())
    for name in ("hidden", "bn", "aux_classifier"):
        assert leaves_equal(new.params[name], state.params[name]), name
    assert float(np.max(np.abs(new.params["head"]["kernel"] - state.params["head"]["kernel"]))) > 0.05


def test_freeze_backbone_freezes_its_batchnorm_statistics_too():
    """resnet18 with freeze_backbone: two steps on batches far from the init statistics move the head and
    nothing else, params or batch_stats (BatchNorm runs in inference mode, as Keras's trainable=False)."""
    model = get_model("resnet18", num_classes=4)
    config = make_config(freeze_backbone=True, learning_rate=0.1, momentum=0.9)
    state = training.create_train_state(model, config, jax.random.PRNGKey(0), (32, 32, 3), 10,
                                        trainable=optim.head_trainable)
    step = jax.jit(training.step_functions(config, 4)[0])
    rng = np.random.default_rng(0)
    new = state
    for _ in range(2):
        batch = {"image": (3.0 + 2.0 * rng.normal(size=(8, 32, 32, 3))).astype(np.float32),
                 "label": rng.integers(0, 4, size=8).astype(np.int32)}
        new, metrics = step(new, batch)
        assert np.isfinite(float(metrics["loss"]))
    assert state.batch_stats and set(new.params) - {"fc"}
    for collection in ("params", "batch_stats"):
        before, after = getattr(state, collection), getattr(new, collection)
        for name in before:
            if collection == "params" and name == "fc":
                continue
            assert leaves_equal(after[name], before[name]), (collection, name)
    for leaf in ("kernel", "bias"):
        assert float(np.max(np.abs(new.params["fc"][leaf] - state.params["fc"][leaf]))) > 1e-4, leaf


def test_apply_if_finite_skips_a_nan_update_and_counts_it(tiny_vars):
    state = tiny_state(tiny_vars, make_config(learning_rate=0.1, skip_nonfinite=True))
    step = jit_step()
    bad = tiny_batch()
    bad["image"][0, 0, 0, 0] = np.nan
    skipped, metrics = step(state, bad)
    assert int(metrics["skipped"]) == 1 and int(skipped.step) == 1
    assert leaves_equal(skipped.params, state.params)
    assert leaves_equal(skipped.batch_stats, state.batch_stats)
    good, metrics = step(skipped, tiny_batch())
    assert int(metrics["skipped"]) == 1
    assert float(np.max(np.abs(good.params["head"]["bias"] - state.params["head"]["bias"]))) > 1e-3
    assert not leaves_equal(good.batch_stats, state.batch_stats)


def test_dropout_key_depends_on_step_and_is_reproducible(tiny_vars):
    state = tiny_state(tiny_vars, make_config(learning_rate=0.1), model=TinyNet(dropout=0.5))
    step, batch = jit_step(), tiny_batch()
    first, again = step(state, batch)[0], step(state, batch)[0]
    later = step(state.replace(step=jnp.ones((), jnp.int32)), batch)[0]
    assert leaves_equal(first.params, again.params)
    assert float(np.max(np.abs(first.params["hidden"]["kernel"] - later.params["hidden"]["kernel"]))) > 1e-4
    assert not np.array_equal(training.dropout_key(state), training.dropout_key(first))


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="sgd, adam, adamw, rmsprop"):
        optim.build_optimizer(make_config(optimizer="lion"), 10)
    with pytest.raises(ValueError, match="constant, piecewise"):
        optim.build_schedule(make_config(schedule="linear"), 10)
    with pytest.raises(ValueError, match="float32, bfloat16"):
        training.model_dtype(make_config(dtype="int8"))


def test_k_steps_in_one_call_equal_k_single_steps(tiny_vars):
    """config.steps_per_call: k steps in one jitted call (lax.scan over stacked batches) give the parameters
    of k calls of one step. A warm-up changes the learning rate every step and the dropout keys fold in the
    step number: both must advance per step, not per call."""
    config = make_config(schedule="cosine", learning_rate=0.1, warmup_epochs=0.5, num_epochs=1)
    model = TinyNet(dropout=0.3)
    batches = [tiny_batch(seed=i) for i in range(4)]
    driver = parallel.make_driver("single", *training.step_functions(config, 4))
    singles, losses = driver.put_state(tiny_state(tiny_vars, config, model)), []
    for batch in batches:
        singles, metrics = driver.train_step(singles, batch)
        losses.append(float(metrics["loss"]))
    stacked = {key: np.stack([b[key] for b in batches]) for key in batches[0]}
    one_call, metrics = driver.train_steps(driver.put_state(tiny_state(tiny_vars, config, model)), stacked)
    assert int(one_call.step) == 4 and metrics["loss"].shape == (4,)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-6)
    assert len(set(losses)) == 4  # four different steps, not one repeated
    for name in ("params", "batch_stats", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(singles, name)), jax.tree.leaves(getattr(one_call, name))):
            # XLA fuses the scanned program's reductions differently from the single step's: with jax 0.10.2
            # one momentum entry of 0.027 ended 1.6e-7 (6e-6 relative) apart after the four steps, fp32 rounding.
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7, err_msg=name)
    # Two calls of two steps continue where the first call left off.
    halves = driver.put_state(tiny_state(tiny_vars, config, model))
    for part in (slice(0, 2), slice(2, 4)):
        halves, _ = driver.train_steps(halves, {key: v[part] for key, v in stacked.items()})
    for a, b in zip(jax.tree.leaves(singles.params), jax.tree.leaves(halves.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
