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
`jax.device_get` only when logging.

Multi-host (JAX's multi-controller runtime: one process per host, each driving its local devices):
`initialize_distributed` starts the processes before any other JAX call. Every process then runs the same
program on its host-local part of each global batch: pmap maps over the local devices while its collectives
(`lax.pmean`/`psum` over 'batch') span every process's devices; shard_map's mesh holds `jax.devices()`, all
of them, and `put_batch` assembles the global array from the processes' parts (process 0's rows first). So
metrics come back already averaged over processes, and eval sums summed over them. On CPU the collectives
between processes go through gloo. tests/test_multihost.py checks 2 processes x 2 devices against
1 process x 4 devices.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.errors import first_line
from jaxcnn.training import update_plateau

log = logging.getLogger(__name__)

AXIS_NAME = "batch"
KINDS = ("pmap", "shard_map", "single")


class DistributedError(ValueError):
    """Multi-process start-up failed (inconsistent values, peers that never connect); one-line message."""


def check_distributed_args(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Raise DistributedError unless the values are all given and consistent, or all left to JAX (None).

    `num_processes=1` alone is a single-process run.
    """
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"--num_processes={num_processes}: need at least 1")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process_id={process_id} outside [0, {num_processes - 1}] "
                               f"for --num_processes={num_processes}")
    if num_processes == 1:
        return
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise DistributedError("give all of --coordinator_address, --num_processes and --process_id (or none, "
                               "with --distributed, to let JAX detect them on Cloud TPU or SLURM)")
    if not any(given):
        return
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d+)", coordinator_address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise DistributedError(f"--coordinator_address={coordinator_address!r}: expected host:port of "
                               f"process 0, e.g. 10.0.0.1:1234")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, peer_timeout: float = 60.0,
                           initialization_timeout: int = 300) -> PeerWatchdog | None:
    """Start multi-process JAX (one process per host) before any other JAX call; a no-op for one process.

    On Cloud TPU, SLURM and Open MPI JAX finds the three values itself: pass none of them. Otherwise pass
    all three (every process the same address of process 0 and count, and its own id in [0, count)).
    Raises DistributedError (one line) for inconsistent values, or when the processes do not all connect
    within `initialization_timeout` seconds.

    Returns the started `PeerWatchdog` (None for a single process): if another process stops for more than
    `peer_timeout` seconds this one exits with status 1 and one line naming it, instead of waiting forever
    in a collective. Call its `finish(error)` when this process fails, so the others stop at once.
    """
    check_distributed_args(coordinator_address, num_processes, process_id)
    if num_processes == 1:
        return None
    # CPU processes exchange their collectives through gloo: `jax_cpu_collectives_implementation`
    # defaults to it in JAX 0.10, so nothing needs setting here.
    try:
        # JAX's own heartbeats end a job whose process died too, but later and by aborting the survivors
        # with a multi-line fatal log: leave them well behind our watchdog's timeout.
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=int(initialization_timeout),
                                   heartbeat_timeout_seconds=int(max(100, 2 * peer_timeout)))
    except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
        if not any(v is not None for v in (coordinator_address, num_processes, process_id)) and \
                "should be defined" in str(e):
            raise DistributedError("--distributed: found no cluster to join (Cloud TPU, SLURM, Open MPI); "
                                   "pass --coordinator_address, --num_processes and --process_id") from e
        where = f" at {coordinator_address}" if coordinator_address else ""
        raise DistributedError(f"could not start the distributed runtime{where}: {first_line(e)}") from e
    if jax.process_count() == 1:
        return None
    from jax._src import distributed  # the coordination service's client (orbax reaches it the same way)

    watchdog = PeerWatchdog(distributed.global_state.client, jax.process_index(), jax.process_count(),
                            timeout=peer_timeout)
    watchdog.start()
    # Runs before JAX's own exit handler (registered earlier), which waits for every process at a barrier.
    atexit.register(watchdog.finish)
    return watchdog


class PeerWatchdog:
    """Exit with one clear line when another process of the job dies, instead of hanging in a collective.

    Every process beats (a counter under `jaxcnn/peer/<id>` in the coordination service's key-value store)
    every `timeout / 10` seconds and reads the others' beats. A peer whose counter has not moved for
    `timeout` seconds was killed or hangs: this process prints `error: process K of N stopped ...` and
    exits with status 1. A peer that failed and said so (`finish(error)`) stops the others at the next beat.
    Losing the coordinator (process 0) usually ends this process first through JAX's own abort (an
    "another task died" fatal log): the service lives in process 0, which is why process 0, when it fails or
    gives up, waits (a few beats at most) for the others to post their own last word and leave first.
    """

    PREFIX = "jaxcnn/peer/"

    def __init__(self, client, process_id: int, num_processes: int, timeout: float = 60.0,
                 exit_fn: Callable[[str], None] | None = None):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.timeout, self.interval = float(timeout), max(float(timeout) / 10, 0.1)
        self._exit = exit_fn or self._exit_process
        self._stop = threading.Event()
        self._exiting = threading.Event()  # set once the watchdog has decided to end the process
        self._finished = False
        self._dead: set[int] = set()  # peers that stopped beating: they will post nothing more
        self._thread = threading.Thread(target=self._run, name="jaxcnn-peer-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, error: str | None = None) -> None:
        """Stop beating and tell the others: this process is done (or failed with `error`)."""
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval * 2)
        self._post(f"failed:{error}" if error else "done")
        if error:
            self._let_others_leave_first()

    def _post(self, status: str) -> None:
        try:
            self.client.key_value_set(self._key(self.process_id), status, allow_overwrite=True)
        except Exception as e:  # noqa: BLE001 - the coordinator may be gone already: nobody left to tell
            log.debug("could not tell the other processes (%s)", first_line(e))

    def _let_others_leave_first(self) -> None:
        """On process 0, before it exits early: wait until every live peer has posted its last word (they
        exit right after), for at most a few beats. Losing the service would make JAX abort them."""
        if self.process_id != 0:
            return
        waiting = set(range(1, self.num_processes)) - self._dead
        deadline = time.monotonic() + 3 * self.interval + 1
        while waiting and time.monotonic() < deadline:
            try:
                posted = dict(self.client.key_value_dir_get(self.PREFIX))
            except Exception:  # noqa: BLE001 - nothing left to wait for
                return
            waiting = {p for p in waiting if posted.get(self._key(p), "") != "done"
                       and not posted.get(self._key(p), "").startswith("failed:")}
            time.sleep(0.05)
        time.sleep(0.5)  # from posting to os._exit

    def grace(self) -> None:
        """Wait long enough for the watchdog to notice a dead peer; if it does, it ends this process."""
        if self._exiting.wait(self.timeout + 2 * self.interval):
            threading.Event().wait()  # the watchdog's os._exit comes next; say nothing more here

    def _key(self, process: int) -> str:
        return f"{self.PREFIX}{process}"

    def _run(self) -> None:
        watched = set(range(self.num_processes)) - {self.process_id}
        last_beat = dict.fromkeys(watched)
        last_change = dict.fromkeys(watched, time.monotonic())
        beat = 0
        while not self._stop.wait(self.interval):
            beat += 1
            try:
                self.client.key_value_set(self._key(self.process_id), str(beat), allow_overwrite=True)
                beats = dict(self.client.key_value_dir_get(self.PREFIX))
            except Exception as e:  # noqa: BLE001 - any failure here means the service (process 0) is gone
                if not self._stop.is_set():
                    self._exit(f"lost the coordinator (process 0 of {self.num_processes}): {first_line(e)}")
                return
            now = time.monotonic()
            for peer in sorted(watched):
                value = beats.get(self._key(peer))
                if value == "done":
                    watched.discard(peer)
                elif value is not None and value.startswith("failed:"):
                    return self._exit(f"process {peer} of {self.num_processes} failed: {value[len('failed:'):]}")
                elif value != last_beat[peer]:
                    last_beat[peer], last_change[peer] = value, now
                elif now - last_change[peer] > self.timeout:
                    self._dead.add(peer)
                    return self._exit(f"process {peer} of {self.num_processes} stopped (no heartbeat for "
                                      f"{self.timeout:g} s: killed, crashed or hung)")

    def _exit_process(self, message: str) -> None:
        self._exiting.set()
        print(f"error: {message}; process {self.process_id} exits", file=sys.stderr, flush=True)
        self._post(f"failed:{message}")
        self._let_others_leave_first()
        os._exit(1)  # the main thread may be blocked in a collective that will never complete


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
    "AXIS_NAME", "KINDS", "DistributedError", "Driver", "PeerWatchdog", "PmapDriver", "ShardMapDriver",
    "SingleDriver", "check_distributed_args", "check_divisible", "initialize_distributed", "make_driver",
]
