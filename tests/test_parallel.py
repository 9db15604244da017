"""One device against eight: pmap, shard_map and a single device must train the same BatchNorm model alike."""

import functools
import logging

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxcnn import layers, parallel, training
from train.configs.default import get_config

N_DEVICES = 8
GLOBAL_BATCH = 16
NUM_CLASSES = 3


class TinyBNNet(nn.Module):
    """Conv -> BatchNorm (synced over `axis_name`) -> ReLU -> global mean -> Dense."""

    num_classes: int = NUM_CLASSES
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = layers.batch_norm(train, axis_name=self.axis_name)
        x = layers.ConvBN(4, 3, padding=1, norm=norm, name="block")(x)
        return nn.Dense(self.num_classes, name="head")(layers.global_avg_pool(x))


def _config():
    config = get_config()
    config.optimizer, config.learning_rate, config.momentum = "sgd", 0.5, 0.9
    return config


def _batch(size=GLOBAL_BATCH, seed=0):
    rng = np.random.default_rng(seed)
    # Each device's shard has its own brightness, so per-device BatchNorm statistics differ clearly from the
    # global ones (what the control below must detect).
    offsets = np.linspace(-2.0, 2.0, N_DEVICES)[np.arange(size) * N_DEVICES // size][:, None, None, None]
    images = rng.normal(size=(size, 8, 8, 2)) * (1.0 + np.abs(offsets)) + offsets
    return {"image": images.astype(np.float32), "label": rng.integers(0, NUM_CLASSES, size).astype(np.int32)}


@functools.cache
def _variables():
    return training.init_variables(TinyBNNet(), jax.random.key(0), (8, 8, 2))


def _state(model, config):
    return training.create_train_state(model, config, jax.random.key(0), (8, 8, 2), steps_per_epoch=10,
                                       variables=_variables())


class CompileLog(logging.Handler):
    """Collects the 'Compiling ...' messages jax logs under `jax.log_compiles()`."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.compiled = []

    def emit(self, record):
        if record.getMessage().startswith("Compiling"):
            self.compiled.append(record.getMessage()[:80])


def _run(kind, axis_name_in_model, train_fn=None, steps=2):
    """`steps` train steps of driver `kind` from the same initial state.

    Returns (host state, host metrics of the last step, what was compiled after the first step).
    """
    config = _config()
    default_train, eval_fn = training.step_functions(config, NUM_CLASSES)
    driver = parallel.make_driver(kind, train_fn or default_train, eval_fn)
    state = driver.put_state(_state(TinyBNNet(axis_name=driver.axis_name if axis_name_in_model else None), config))
    state, metrics = driver.train_step(state, _batch(seed=0))
    log, logger = CompileLog(), logging.getLogger("jax")
    logger.addHandler(log)
    try:
        with jax.log_compiles():
            for step in range(1, steps):
                state, metrics = driver.train_step(state, _batch(seed=step))
                jax.block_until_ready(state)
    finally:
        logger.removeHandler(log)
    return driver.get_state(state), jax.device_get(metrics), log.compiled


@pytest.fixture(scope="module")
def reference():
    assert jax.device_count() == N_DEVICES  # conftest forces 8 CPU devices
    return _run("single", axis_name_in_model=False)


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_data_parallel_step_equals_single_device(kind, reference):
    ref_state, ref_metrics, _ = reference
    state, metrics, compiled = _run(kind, axis_name_in_model=True)
    assert compiled == []  # the state a step returns is placed like the one it took: no second compilation
    assert _max_diff(state.params, ref_state.params) <= 1e-5
    assert _max_diff(state.batch_stats, ref_state.batch_stats) <= 1e-5
    # The step moved things at all, so agreeing means something.
    assert _max_diff(state.params, _variables()["params"]) > 1e-2
    for name in ("loss", "top1", "grad_norm"):
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, atol=1e-6)
    assert int(state.step) == 2


def test_without_the_named_axis_devices_diverge(reference):
    """Control: per-device BatchNorm statistics and no gradient averaging give a visibly different model."""
    ref_state, _, _ = reference
    config = _config()
    local_only = functools.partial(training.train_step, num_classes=NUM_CLASSES)

    def train_fn(state, batch, axis_name=None):
        del axis_name  # the control ignores the device axis
        return local_only(state, batch)

    state, _, _ = _run("pmap", axis_name_in_model=False, train_fn=train_fn)
    assert config.optimizer == "sgd"
    assert _max_diff(state.params, ref_state.params) > 1e-3
    assert _max_diff(state.batch_stats, ref_state.batch_stats) > 1e-3


def test_padded_eval_sums_are_exact_on_every_driver():
    """Masked eval sums over 8 devices equal the single-device sums over the real examples only."""
    config = _config()
    batch = _batch()
    real = 11  # the last 5 examples are padding
    batch["mask"] = (np.arange(GLOBAL_BATCH) < real).astype(np.float32)
    host_state = _state(TinyBNNet(), config)

    def sums(kind, batch):
        train_fn, eval_fn = training.step_functions(config, NUM_CLASSES)
        driver = parallel.make_driver(kind, train_fn, eval_fn)
        state = host_state.replace(apply_fn=TinyBNNet(axis_name=driver.axis_name).apply)
        return driver.eval_step(driver.put_state(state), batch)

    unpadded = sums("single", {k: v[:real] for k, v in batch.items() if k != "mask"})
    assert float(unpadded["count"]) == real
    for kind in ("pmap", "shard_map"):
        padded = sums(kind, batch)
        for name in unpadded:
            np.testing.assert_allclose(padded[name], unpadded[name], rtol=1e-5)


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_indivisible_batch_names_both_numbers(kind):
    train_fn, eval_fn = training.step_functions(_config(), NUM_CLASSES)
    driver = parallel.make_driver(kind, train_fn, eval_fn)
    assert driver.num_devices == N_DEVICES
    with pytest.raises(ValueError, match="--batch_size=12 does not divide over 8 devices: use a multiple of 8"):
        driver.train_step(None, _batch(12))
    with pytest.raises(ValueError, match="--eval_batch_size=20 does not divide over 8 devices"):
        driver.eval_step(None, _batch(20))


def test_unknown_driver_is_refused():
    with pytest.raises(ValueError, match="pmap, shard_map, single"):
        parallel.make_driver("tpu_magic", training.train_step, training.eval_step)
