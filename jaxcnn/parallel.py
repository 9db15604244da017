"""Data-parallel drivers: the same per-device step under `jax.pmap`, under `jax.shard_map`, or on one device.

The step functions (`jaxcnn.training.train_step` / `eval_step`, usually via `training.step_functions`) are
per-device code that takes `axis_name=`; a driver binds it to its device axis, compiles once, and moves
state and batches::

    driver = make_driver(config.parallel, train_fn, eval_fn)          # 'pmap' | 'shard_map' | 'single'
    model = get_model(name, axis_name=driver.axis_name, ...)           # BatchNorm syncs over the devices
    state = driver.put_state(create_train_state(model, ...))          # host copy -> devices
    state, metrics = driver.train_step(state, batch)                   # numpy global batch; state donated
    sums = driver.eval_step(state, eval_batch)                         # host numpy sums, exact with a mask
    state = driver.update_plateau(state, val_loss)                     # after each evaluation
    host_state = driver.get_state(state)                               # one host copy (for checkpoints)

`driver.num_devices` is how many devices the global batch is split over; a batch that does not divide
raises ValueError. Train metrics come back as (unsynchronized) device scalars; read them with
`jax.device_get` only when logging. Multi-host: every process feeds its host-local part of the batch
(`put_batch` assembles the global array for shard_map; pmap maps over the local devices) and
`initialize_distributed` starts the processes; only the single-process case is tested.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.training import update_plateau

AXIS_NAME = "batch"
KINDS = ("pmap", "shard_map", "single")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Start multi-process JAX (one process per host) before any other JAX call; a no-op for one process.

    On TPU pods and SLURM clusters jax finds all three values itself: pass none of them.
    """
    if num_processes == 1:
        return
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def check_divisible(size: int, num_devices: int, flag: str = "batch_size") -> None:
    """Raise ValueError unless a global batch of `size` splits evenly over `num_devices`."""
    if size % num_devices:
        raise ValueError(f"--{flag}={size} does not divide over {num_devices} devices: "
                         f"use a multiple of {num_devices}")


def _batch_size(batch: dict) -> int:
    return int(jax.tree.leaves(batch)[0].shape[0])


def _placed(batch: dict, sharding) -> bool:
    return all(isinstance(x, jax.Array) and x.sharding == sharding for x in jax.tree.leaves(batch))


def _host_copy(x):
    """One replica of a replicated array, on the host (works for arrays spanning several processes)."""
    return np.asarray(x.addressable_shards[0].data) if isinstance(x, jax.Array) else np.asarray(x)


def _unstack(x):
    """One replica of a pmap output (a [devices, ...] array), on the host."""
    return np.asarray(x.addressable_shards[0].data)[0]


class SingleDriver:
    """Plain `jax.jit` on one device (axis_name None): the reference the parallel drivers must match."""

    kind = "single"
    axis_name = None

    def __init__(self, train_step_fn: Callable, eval_step_fn: Callable, devices: Sequence | None = None):
        self.device = (devices or jax.local_devices())[0]
        self.num_devices = 1
        self._train = jax.jit(functools.partial(train_step_fn, axis_name=None), donate_argnums=(0,))
        self._eval = jax.jit(functools.partial(eval_step_fn, axis_name=None))
        self._plateau = jax.jit(update_plateau, donate_argnums=(0,))

    def put_state(self, state):
        # A copy: the steps donate the state, which must not delete the caller's arrays.
        return jax.device_put(state, self.device, may_alias=False)

    def get_state(self, state):
        return jax.device_get(state)

    def put_batch(self, batch: dict) -> dict:
        return jax.device_put(batch, self.device)

    def train_step(self, state, batch: dict):
        return self._train(state, self.put_batch(batch))

    def eval_step(self, state, batch: dict) -> dict:
        return jax.device_get(self._eval(state, self.put_batch(batch)))

    def update_plateau(self, state, val_loss: float):
        return self._plateau(state, val_loss)


class PmapDriver:
    """`jax.pmap` over this process's devices; the state carries a leading device axis (replicated)."""

    kind = "pmap"
    axis_name = AXIS_NAME

    def __init__(self, train_step_fn: Callable, eval_step_fn: Callable, devices: Sequence | None = None):
        self.local_devices = list(devices or jax.local_devices())
        # The global batch is split over every process's devices; each process feeds its local ones.
        self.num_devices = len(self.local_devices) * (1 if devices else jax.process_count())
        pmap = functools.partial(jax.pmap, axis_name=AXIS_NAME, devices=devices)
        self._train = pmap(functools.partial(train_step_fn, axis_name=AXIS_NAME), donate_argnums=(0,))
        self._eval = pmap(functools.partial(eval_step_fn, axis_name=AXIS_NAME))
        self._plateau = pmap(update_plateau, in_axes=(0, None), donate_argnums=(0,))
        # pmap's own output sharding: inputs placed like this do not trigger a second compilation.
        self._stacked = NamedSharding(Mesh(np.asarray(self.local_devices), (AXIS_NAME,)), P(AXIS_NAME))

    def put_state(self, state):
        """Replicate a host state onto the local devices (a stacked copy per device)."""
        n = len(self.local_devices)
        return jax.tree.map(lambda x: jax.device_put(np.stack([np.asarray(x)] * n), self._stacked), state)

    def get_state(self, state):
        return jax.tree.map(_unstack, state)

    def put_batch(self, batch: dict, flag: str = "batch_size") -> dict:
        """Host-local batch [B, ...] -> [local devices, B / local devices, ...] on the devices.

        A batch that is already placed (e.g. prefetched with this method) passes through.
        """
        if _placed(batch, self._stacked):
            return batch
        n = len(self.local_devices)
        size = _batch_size(batch)
        check_divisible(size * (self.num_devices // n), self.num_devices, flag)
        return jax.tree.map(lambda x: jax.device_put(np.asarray(x).reshape(n, size // n, *x.shape[1:]),
                                                     self._stacked), batch)

    def train_step(self, state, batch: dict):
        state, metrics = self._train(state, self.put_batch(batch))
        # The first local replica, still on its device: no host sync on every step.
        return state, jax.tree.map(lambda m: m.addressable_shards[0].data[0], metrics)

    def eval_step(self, state, batch: dict) -> dict:
        return jax.tree.map(_unstack, self._eval(state, self.put_batch(batch, "eval_batch_size")))

    def update_plateau(self, state, val_loss: float):
        return self._plateau(state, val_loss)


class ShardMapDriver:
    """`jax.jit` of `jax.shard_map` over a 1-D mesh ('batch',): state replicated, batch split on axis 0."""

    kind = "shard_map"
    axis_name = AXIS_NAME

    def __init__(self, train_step_fn: Callable, eval_step_fn: Callable, devices: Sequence | None = None):
        self.mesh = Mesh(np.asarray(devices or jax.devices()), (AXIS_NAME,))
        self.num_devices = self.mesh.size
        self._replicated = NamedSharding(self.mesh, P())
        self._split = NamedSharding(self.mesh, P(AXIS_NAME))
        # check_vma=False: the step averages its gradients itself (lax.pmean), exactly as under pmap.
        shard = functools.partial(jax.shard_map, mesh=self.mesh, in_specs=(P(), P(AXIS_NAME)), out_specs=P(),
                                  check_vma=False)
        self._train = jax.jit(shard(functools.partial(train_step_fn, axis_name=AXIS_NAME)), donate_argnums=(0,))
        self._eval = jax.jit(shard(functools.partial(eval_step_fn, axis_name=AXIS_NAME)))
        self._plateau = jax.jit(update_plateau, donate_argnums=(0,))

    def put_state(self, state):
        """Replicate a host state over the mesh (every process passes the same state)."""
        def put(x):
            x = np.asarray(x)
            # Copies: the steps donate the state, which must not delete the caller's arrays.
            return jax.make_array_from_callback(x.shape, self._replicated, lambda index: np.array(x[index]))
        return jax.tree.map(put, state)

    def get_state(self, state):
        return jax.tree.map(_host_copy, state)

    def put_batch(self, batch: dict, flag: str = "batch_size") -> dict:
        """This process's part of the batch -> one global array split over the mesh (placed ones pass)."""
        if _placed(batch, self._split):
            return batch
        size = _batch_size(batch) * jax.process_count()
        check_divisible(size, self.num_devices, flag)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._split, np.asarray(x)), batch)

    def train_step(self, state, batch: dict):
        return self._train(state, self.put_batch(batch))

    def eval_step(self, state, batch: dict) -> dict:
        return jax.tree.map(_host_copy, self._eval(state, self.put_batch(batch, "eval_batch_size")))

    def update_plateau(self, state, val_loss: float):
        return self._plateau(state, val_loss)


Driver = SingleDriver | PmapDriver | ShardMapDriver


def make_driver(kind: str, train_step_fn: Callable, eval_step_fn: Callable,
                devices: Sequence | None = None) -> Driver:
    """The driver named `kind` ('pmap' | 'shard_map' | 'single') around the given per-device steps."""
    drivers = {"pmap": PmapDriver, "shard_map": ShardMapDriver, "single": SingleDriver}
    if kind not in drivers:
        raise ValueError(f"unknown parallel driver {kind!r}; choose one of {', '.join(KINDS)}")
    return drivers[kind](train_step_fn, eval_step_fn, devices)


__all__ = [
    "AXIS_NAME", "KINDS", "Driver", "PmapDriver", "ShardMapDriver", "SingleDriver", "check_divisible",
    "initialize_distributed", "make_driver",
]
