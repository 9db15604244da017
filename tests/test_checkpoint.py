"""Checkpoints: retention, corrupt and partial checkpoints, saved variables, and bit-identical resume."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
META = dict(model="toy", num_classes=3, image_shape=[4, 4, 1])


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for these tests and their subprocesses: the same steps compile once."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    cache = tmp_path_factory.getbasetemp() / "jax_cache"
    previous = jax.config.jax_compilation_cache_dir, os.environ.get("JAX_COMPILATION_CACHE_DIR")
    jax.config.update("jax_compilation_cache_dir", str(cache))
    compilation_cache.reset_cache()  # take the new directory even if an earlier test compiled something
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    yield
    jax.config.update("jax_compilation_cache_dir", previous[0])
    compilation_cache.reset_cache()
    if previous[1] is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = previous[1]


def toy_state(value: float = 0.0, step: int = 0):
    """A small TrainState-like tree with namedtuple optimizer state, BN stats and a typed key."""
    from jaxcnn.training import TrainState

    params = {"dense": {"kernel": jnp.full((4, 3), value), "bias": jnp.zeros(3)}}
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    opt_state = jax.tree.map(lambda x: x + value, tx.init(params))
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                      batch_stats={"bn": {"mean": jnp.full(3, value)}}, opt_state=opt_state,
                      rng=jax.random.key(int(value)), apply_fn=None, tx=tx)


def assert_trees_equal(a, b):
    a, b = ckpt.state_to_tree(a), ckpt.state_to_tree(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_retention_keeps_last_n_plus_best_across_restarts(tmp_path):
    top1 = {2: 0.5, 4: 0.9, 6: 0.6, 8: 0.7}  # evaluated checkpoints; odd steps carry no metrics
    with ckpt.Checkpoints(tmp_path, keep=2) as c:
        for step in range(1, 6):
            c.save(toy_state(step, step), ckpt.Position(0, step), META,
                   {"top1": top1[step]} if step in top1 else None)
        assert c.steps() == [4, 5]  # the best (4) is among the last two
    with ckpt.Checkpoints(tmp_path, keep=2) as c:  # a new manager must still know step 4's metrics
        for step in range(6, 10):
            c.save(toy_state(step, step), ckpt.Position(0, step), META,
                   {"top1": top1[step]} if step in top1 else None)
        assert c.steps() == [4, 8, 9]
        state, position, metadata = c.restore_latest(toy_state())
    assert int(state.step) == 9 and position == ckpt.Position(0, 9) and metadata == META
    assert_trees_equal(state, toy_state(9, 9))


def test_best_ignores_nonfinite_evaluations(tmp_path):
    evaluations = {1: {"top1": 0.4, "loss": 1.5}, 2: {"top1": 1.0, "loss": float("nan")},
                   3: {"top1": float("nan"), "loss": 0.1}}
    with ckpt.Checkpoints(tmp_path, keep=1) as c:
        for step in range(1, 6):
            c.save(toy_state(step, step), ckpt.Position(0, step), META, evaluations.get(step))
        assert c.steps() == [1, 5]  # the finite best (0.4) and the latest, not the NaN-loss "perfect" step 2


def test_an_asynchronous_save_keeps_the_state_it_was_given(tmp_path):
    """`save` returns while orbax still writes; the loop's next step then donates (reuses) the device buffers
    of the state just saved. The checkpoint must hold the state as it was at `save`."""
    state = jax.device_put(toy_state(3, 3))
    overwrite = jax.jit(lambda tree: jax.tree.map(lambda x: x * 0 - 1, tree), donate_argnums=0)
    with ckpt.Checkpoints(tmp_path) as c:
        c.save(state, ckpt.Position(0, 3), META)
        params = overwrite(state.params)  # as the next train step does, before the write is done
        assert all(x.is_deleted() for x in jax.tree.leaves(state.params))  # the buffers were donated
        assert c.steps() == [3]
        c.wait()
        assert ckpt.list_steps(tmp_path) == [3]  # complete on disk once wait() returns
    assert float(params["dense"]["kernel"][0, 0]) == -1
    restored, _, _ = ckpt.restore_latest(tmp_path, toy_state())
    assert_trees_equal(restored, toy_state(3, 3))


# tensorstore complains about its closed event loop after a failed read
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_is_skipped_with_a_warning(tmp_path, caplog):
    with ckpt.Checkpoints(tmp_path, keep=3) as c:
        for step in (1, 2, 3):
            c.save(toy_state(step, step), ckpt.Position(1, step), META)
    # Truncate every data file of the newest checkpoint's state, as a crash of the file system might.
    broken = ckpt.checkpoint_dir(tmp_path) / "3"
    truncated = 0
    for f in (broken / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            truncated += 1
    assert truncated
    with caplog.at_level(logging.WARNING, logger="jaxcnn.checkpoint"):
        state, position, _ = ckpt.restore_latest(tmp_path, toy_state())
    assert int(state.step) == 2 and position == ckpt.Position(1, 2)
    assert_trees_equal(state, toy_state(2, 2))
    assert any(str(broken) in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    # A garbled metadata file is skipped the same way.
    (ckpt.checkpoint_dir(tmp_path) / "2" / "position" / "metadata").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="jaxcnn.checkpoint"):
        state, _, _ = ckpt.restore_latest(tmp_path, toy_state())
    assert int(state.step) == 1


def test_partial_directory_is_ignored_and_removed(tmp_path, caplog):
    with ckpt.Checkpoints(tmp_path) as c:
        c.save(toy_state(1, 1), ckpt.Position(0, 1), META)
    partial = ckpt.checkpoint_dir(tmp_path) / "2.orbax-checkpoint-tmp-1700000000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "manifest.ocdbt").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.WARNING, logger="jaxcnn.checkpoint"):
        state, _, _ = ckpt.restore_latest(tmp_path, toy_state())
    assert int(state.step) == 1
    assert not partial.exists()
    assert any(str(partial) in r.getMessage() for r in caplog.records)


def test_another_models_checkpoints_are_refused_without_touching_files(tmp_path):
    with ckpt.Checkpoints(tmp_path) as c:
        c.save(toy_state(1, 1), ckpt.Position(0, 1), META)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    ckpt.check_compatible(tmp_path, META)  # the same model: fine
    with pytest.raises(ckpt.CheckpointMismatch, match="'toy'.*'other'"):
        ckpt.check_compatible(tmp_path, dict(META, model="other"))
    with pytest.raises(ckpt.CheckpointMismatch, match="3 classes"):
        ckpt.check_compatible(tmp_path, dict(META, num_classes=10))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_saved_variables_round_trip(tmp_path):
    variables = {"params": {"conv": {"kernel": np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)}},
                 "batch_stats": {"bn": {"mean": np.ones(4, np.float32), "var": np.full(4, 2.0, np.float32)}}}
    meta = dict(model="resnet18", num_classes=4, image_shape=(32, 32, 3), source="test")
    ckpt.save_variables(tmp_path / "v", variables, meta)
    loaded, loaded_meta = ckpt.load_variables(tmp_path / "v")
    assert loaded_meta == dict(meta, image_shape=[32, 32, 3])
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="not a saved-variables directory"):
        ckpt.load_variables(tmp_path)


# A config file that registers a tiny BatchNorm + dropout CNN: BN statistics, momentum and dropout keys all
# take part in the resume, and it compiles in seconds (resnet18 takes minutes on a loaded CPU).
TINY_MODEL = """
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import batch_norm
from jaxcnn.models import list_models, register
from jaxcnn.models.common import check_input
from train.configs import recipe_for


class TinyBN(nn.Module):
    num_classes: int = 10
    dtype: Any = jnp.float32
    axis_name: Any = None
    min_size: ClassVar[int] = 28
    fixed_size: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self)
        norm = batch_norm(train, axis_name=self.axis_name, dtype=self.dtype)
        # tanh, not relu: XLA's CPU max() turns NaN into 0, which would hide the NaN-injection tests' NaNs.
        x = nn.tanh(norm()(nn.Conv(16, (5, 5), strides=(2, 2), dtype=self.dtype)(x)))
        x = nn.tanh(nn.Conv(16, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
        x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


if "tiny_bn" not in list_models():
    register("tiny_bn", input_shape=(28, 28, 1), min_size=28, num_classes=10, paper="test model", year=2024,
             params=None, fixed_size=True, family="test")(lambda **kw: TinyBN(**kw))
"""


def write_config(path: Path, **settings) -> Path:
    """A config file for the tiny model with `settings` (usable as --config=path and in-process)."""
    path.write_text(TINY_MODEL + f"\n\ndef get_config():\n    c = recipe_for('tiny_bn')\n"
                                 f"    c.update({settings!r})\n    return c\n")
    return path


def load_config(path: Path, **changes):
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(changes)
    return config


def raw_state(workdir: Path, step: int) -> dict:
    """The stored state tree of checkpoint `step` (params, batch_stats, opt_state, step, rng)."""
    import orbax.checkpoint as ocp

    return ckpt._read_item(ckpt.checkpoint_dir(workdir) / str(step), state=ocp.args.StandardRestore()).state


def assert_same_tree(a, b) -> None:
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


N = 12  # batch 512: 19 steps an epoch, so the resumed half crosses an epoch boundary


def test_resumed_run_is_bit_identical(tmp_path):
    """2N steps in one go == N steps, then a new process that resumes and runs to 2N (BatchNorm statistics,
    momentum, dropout keys and the data position included)."""
    from train import loop

    config_file = write_config(tmp_path / "tiny.py", batch_size=512, eval_batch_size=512, eval_steps=1,
                               learning_rate=0.05, log_every_steps=1, checkpoint_every_steps=1000,
                               eval_every_steps=1000, num_train_steps=2 * N)
    straight, split = tmp_path / "straight", tmp_path / "split"
    loop.train_and_evaluate(load_config(config_file), straight)
    loop.train_and_evaluate(load_config(config_file, num_train_steps=N), split)
    assert ckpt.list_steps(split) == [N]
    done = subprocess.run([sys.executable, "-m", "train.main", f"--config={config_file}",
                           f"--workdir={split}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming from step {N} (epoch 0, batch {N})" in done.stderr

    a, b = raw_state(straight, 2 * N), raw_state(split, 2 * N)
    assert a["batch_stats"] and a["opt_state"]  # the BN statistics and the momentum are compared too
    assert_same_tree(a, b)
    # The train losses logged after the resume are the uninterrupted run's, step for step.
    losses = [{r["step"]: r["loss"] for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "train"} for w in (straight, split)]
    assert losses[0] == losses[1] and len(losses[0]) == 2 * N
    assert losses[0][2 * N] < 0.8 * losses[0][1]  # it learns: identical params are not untouched params


def test_several_steps_per_call_keep_periods_and_resume_exactly(tmp_path, monkeypatch):
    """config.steps_per_call=4 (the 'single' driver): calls never cross a logged step (every 6: a call of 4,
    then 2 single steps), a run stopped at N and resumed ends bit-identical to an uninterrupted one, and both
    match the one-step-per-call run to fp32 rounding."""
    from jaxcnn import parallel
    from train import loop

    calls = []
    train_steps = parallel.SingleDriver.train_steps
    monkeypatch.setattr(parallel.SingleDriver, "train_steps",
                        lambda self, state, batches: calls.append(len(batches["label"])) or
                        train_steps(self, state, batches))
    config_file = write_config(tmp_path / "tiny.py", batch_size=512, eval_batch_size=512, eval_steps=1,
                               learning_rate=0.05, log_every_steps=6, checkpoint_every_steps=1000,
                               eval_every_steps=1000, num_train_steps=2 * N, parallel="single", steps_per_call=4)
    straight, split, single = tmp_path / "straight", tmp_path / "split", tmp_path / "single"
    loop.train_and_evaluate(load_config(config_file), straight)
    assert calls == [4] * 4  # 0-4, 6-10, 12-16, 18-22; the rest single steps
    loop.train_and_evaluate(load_config(config_file, num_train_steps=N), split)
    assert ckpt.list_steps(split) == [N]
    loop.train_and_evaluate(load_config(config_file), split)
    loop.train_and_evaluate(load_config(config_file, steps_per_call=1), single)
    assert len(calls) == 8

    a, b, c = (raw_state(w, 2 * N) for w in (straight, split, single))
    assert int(a["step"]) == 2 * N
    assert_same_tree(a, b)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(c["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    logs = [[json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
            for w in (straight, split, single)]
    losses = [{r["step"]: r["loss"] for r in log if r["split"] == "train"} for log in logs]
    assert list(losses[0]) == [6, 12, 18, 24] and losses[0] == losses[1]
    np.testing.assert_allclose(list(losses[0].values()), list(losses[2].values()), rtol=1e-5)
    assert losses[0][2 * N] < 0.8 * losses[0][6]  # it learns


def test_init_from_saved_variables_with_a_frozen_backbone(tmp_path):
    """--init_from loads saved variables; freeze_backbone trains the head only; a class-count mismatch stops
    before any step."""
    from jaxcnn import models, training
    from train import loop
    from train.configs import recipe_for

    variables = training.init_variables(models.get_model("lenet5", num_classes=10), jax.random.key(7),
                                        (28, 28, 1))
    ckpt.save_variables(tmp_path / "init", variables,
                        dict(model="lenet5", num_classes=10, image_shape=(28, 28, 1)))
    config = recipe_for("lenet5")
    config.update(dict(num_train_steps=3, eval_steps=1, log_every_steps=1, init_from=str(tmp_path / "init"),
                       freeze_backbone=True))
    loop.train_and_evaluate(config, tmp_path / "run")
    params = raw_state(tmp_path / "run", 3)["params"]
    assert list(params) == list(variables["params"]) and list(params)[-1] == "output"
    for name, saved in variables["params"].items():
        pairs = zip(jax.tree.leaves(params[name]), jax.tree.leaves(saved))
        unchanged = all(np.array_equal(a, b) for a, b in pairs)
        assert unchanged == (name != "output"), name  # only the head moved

    config.num_classes = 5
    with pytest.raises(ValueError, match="has 10 classes, this run 5"):
        loop.train_and_evaluate(config, tmp_path / "mismatch")
    assert not (tmp_path / "mismatch" / "checkpoints").exists()
