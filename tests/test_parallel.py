"""One device against eight: pmap, shard_map, jit, fsdp and one device must train the same BatchNorm model
alike, and a state saved under one driver must go on under any other."""

import functools
import logging

import flax.linen as nn
import jax
import numpy as np
import pytest

from jax.sharding import PartitionSpec as P

from jaxcnn import layers, models, parallel, training
from train.configs.default import get_config

N_DEVICES = 8
GLOBAL_BATCH = 16
NUM_CLASSES = 3
PARALLEL = ["pmap", "shard_map", "jit", "fsdp"]
# fsdp splits every leaf that divides over the devices here (its default spares small ones), so the
# equivalence below covers split parameters, optimizer moments and BatchNorm statistics.
OPTIONS = {"fsdp": {"min_size": 0}}


class TinyBNNet(nn.Module):
    """Conv (8 channels: splits over 8 devices) -> BatchNorm (synced over `axis_name`) -> ReLU -> global mean
    -> Dense."""

    num_classes: int = NUM_CLASSES
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = layers.batch_norm(train, axis_name=self.axis_name)
        x = layers.ConvBN(8, 3, padding=1, norm=norm, name="block")(x)
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


def _driver(kind, train_fn=None):
    default_train, eval_fn = training.step_functions(_config(), NUM_CLASSES)
    return parallel.make_driver(kind, train_fn or default_train, eval_fn, **OPTIONS.get(kind, {}))


def _run(kind, axis_name_in_model, train_fn=None, steps=2):
    """`steps` train steps of driver `kind` from the same initial state.

    Returns (host state, host metrics of the last step, what was compiled after the first step).
    """
    config = _config()
    driver = _driver(kind, train_fn)
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


@pytest.mark.parametrize("kind", PARALLEL)
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


def test_fsdp_splits_the_state_over_the_devices():
    """What fsdp holds on each device: 1/8 of every leaf that divides (here, with min_size 0), moments too."""
    config = _config()
    state = _driver("fsdp").put_state(_state(TinyBNNet(), config))
    kernel, momentum = state.params["block"]["conv"]["kernel"], state.opt_state
    assert kernel.shape == (3, 3, 2, 8) and kernel.sharding.spec == P(None, None, None, "batch")
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 2, 1)}
    split = [x for x in jax.tree.leaves(momentum) if x.ndim and not x.sharding.is_fully_replicated]
    assert {x.shape for x in split} >= {(3, 3, 2, 8), (8, 3)}  # SGD momentum of the conv and dense kernels
    assert state.batch_stats["block"]["bn"]["mean"].addressable_shards[0].data.shape == (1,)
    # jit keeps every leaf whole on every device.
    whole = _driver("jit").put_state(_state(TinyBNNet(), config))
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(whole))


def test_fsdp_keeps_vgg_fc_layers_off_every_device():
    """VGG-16's 124M FC parameters (and their momentum) are not whole on any device under fsdp's default."""
    spec = models.get_spec("vgg16")
    model = models.get_model("vgg16", num_classes=1000)
    shapes = jax.eval_shape(lambda: training.init_variables(model, jax.random.PRNGKey(0),
                                                            (spec.min_size, spec.min_size, 3)))["params"]
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    total = sum(np.prod(x.shape) for _, x in leaves)
    per_device = 0
    for path, x in leaves:
        parts = parallel.fsdp_spec(x.shape, N_DEVICES)
        split = "batch" in parts
        per_device += np.prod(x.shape) // (N_DEVICES if split else 1)
        if np.prod(x.shape) >= 10**6:  # every FC kernel and the big conv kernels
            assert split, (jax.tree_util.keystr(path), x.shape)
    assert total == 138_357_544  # docs/reference.md
    assert per_device < total / 6  # not quite 1/8: the small leaves stay whole


@pytest.mark.parametrize("first, second", [("fsdp", "pmap"), ("pmap", "jit"), ("jit", "fsdp"),
                                           ("shard_map", "single")])
def test_state_moves_between_drivers(first, second, reference):
    """One step under `first`, the host state (what a checkpoint holds), one step under `second`: the same
    state as two single-device steps. Checkpoints do not depend on the driver that wrote them."""
    ref_state, _, _ = reference
    config = _config()
    host = _state(TinyBNNet(), config)
    for step, kind in enumerate((first, second)):
        driver = _driver(kind)
        device_state = driver.put_state(host.replace(apply_fn=TinyBNNet(axis_name=driver.axis_name).apply))
        device_state, _ = driver.train_step(device_state, _batch(seed=step))
        host = driver.get_state(device_state)
        assert all(isinstance(x, (np.ndarray, np.generic)) for x in jax.tree.leaves(host))  # host form
        assert [x.shape for x in jax.tree.leaves(host)] == [np.shape(x) for x in jax.tree.leaves(ref_state)]
    assert _max_diff(host.params, ref_state.params) <= 1e-5
    assert _max_diff(host.batch_stats, ref_state.batch_stats) <= 1e-5
    assert _max_diff(host.opt_state, ref_state.opt_state) <= 1e-5


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
        driver = _driver(kind)
        state = host_state.replace(apply_fn=TinyBNNet(axis_name=driver.axis_name).apply)
        return driver.eval_step(driver.put_state(state), batch)

    unpadded = sums("single", {k: v[:real] for k, v in batch.items() if k != "mask"})
    assert float(unpadded["count"]) == real
    for kind in PARALLEL:
        padded = sums(kind, batch)
        for name in unpadded:
            np.testing.assert_allclose(padded[name], unpadded[name], rtol=1e-5)


@pytest.mark.parametrize("kind", PARALLEL)
def test_indivisible_batch_names_both_numbers(kind):
    driver = _driver(kind)
    assert driver.num_devices == N_DEVICES
    with pytest.raises(ValueError, match="--batch_size=12 does not divide over 8 devices: use a multiple of 8"):
        driver.train_step(None, _batch(12))
    with pytest.raises(ValueError, match="--eval_batch_size=20 does not divide over 8 devices"):
        driver.eval_step(None, _batch(20))


def test_unknown_driver_is_refused():
    with pytest.raises(ValueError, match="choose one of pmap, shard_map, jit, fsdp, single"):
        parallel.make_driver("tpu_magic", training.train_step, training.eval_step)


def test_pmap_over_one_device_is_plain_jit(reference, tmp_path, monkeypatch):
    """A run on one device (`--parallel=pmap`, the default) gets the 'single' driver: pmap's dispatch costs
    0.5 ms a step there. The step is the same: pmap restricted to one device trains as plain jit does."""
    from train import setup

    ref_state, ref_metrics, _ = reference
    one = [jax.devices()[0]]
    default_train, eval_fn = training.step_functions(_config(), NUM_CLASSES)
    pmap = parallel.make_driver("pmap", default_train, eval_fn, devices=one)
    state = pmap.put_state(_state(TinyBNNet(axis_name=pmap.axis_name), _config()))
    for step in range(2):
        state, metrics = pmap.train_step(state, _batch(seed=step))
    assert _max_diff(pmap.get_state(state).params, ref_state.params) <= 1e-6
    np.testing.assert_allclose(jax.device_get(metrics)["loss"], ref_metrics["loss"], rtol=1e-6)

    config = get_config()
    assert setup.setup(config, tmp_path).driver.kind == "pmap"  # 8 devices here
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert setup.setup(config, tmp_path).driver.kind == "single"
    config.parallel = "shard_map"  # asked for by name: kept
    assert setup.setup(config, tmp_path).driver.kind == "shard_map"


def test_several_steps_per_call_run_on_one_device_and_are_refused_elsewhere_in_one_line(tmp_path, monkeypatch):
    from train import setup

    config = get_config()
    config.steps_per_call = -1  # several where the driver can: the 'single' driver only
    assert setup.setup(config, tmp_path).steps_per_call == 1  # pmap over 8 devices here
    config.steps_per_call = 4
    with pytest.raises(ValueError) as refused:
        setup.setup(config, tmp_path)
    assert "steps_per_call=4" in str(refused.value) and "8 devices" in str(refused.value)
    assert "\n" not in str(refused.value)
    config.parallel = "single"
    assert setup.setup(config, tmp_path).steps_per_call == 4
    monkeypatch.setattr(jax, "device_count", lambda: 1)  # pmap over one device: the 'single' driver
    config.parallel, config.steps_per_call = "pmap", -1
    assert setup.setup(config, tmp_path).steps_per_call == setup.AUTO_STEPS_PER_CALL > 1
