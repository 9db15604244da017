"""Data-parallel drivers: one step under `jax.pmap`, `jax.shard_map`, sharded `jax.jit`, or on one device.

The step functions (`jaxcnn.training.train_step` / `eval_step`, usually via `training.step_functions`) take
`axis_name=`. Under pmap and shard_map they run as per-device code and the driver binds `axis_name` to its
device axis (the step averages over it with `lax.pmean`). Under 'jit' and 'fsdp' they run as global-array
code (`axis_name=None`): the batch is one array sharded over a mesh, and the compiler inserts the
reductions, so BatchNorm statistics are the global batch's without naming an axis. A driver compiles once
and moves state and batches::

    driver = make_driver(config.parallel, train_fn, eval_fn)          # one of KINDS
    model = get_model(name, axis_name=driver.axis_name, ...)           # BatchNorm's axis (None under jit)
    state = driver.put_state(create_train_state(model, ...))          # host copy -> devices
    state, metrics = driver.train_step(state, batch)                   # numpy global batch; state donated
    state, metrics = driver.train_steps(state, batches)                # 'single' only: k stacked batches
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
of them, and `put_batch` assembles the global array from the processes' parts (process 0's rows first); the
jit drivers' mesh spans the same global devices. So metrics come back already averaged over processes, and
eval sums summed over them. On CPU the collectives between processes go through gloo.
tests/test_multihost.py checks 2 processes x 2 devices against 1 process x 4 devices.

Which driver fits (README "Parallel training"): 'pmap' (the default) is the classic per-device step, one
replica of the state on every device; 'shard_map' is the same per-device step under jit; 'jit' is what
JAX recommends today (no per-device code at all); 'fsdp' is 'jit' with the large parameters and their
optimizer state split over the devices, for models whose state does not fit whole on each one (VGG's FC
layers). Every driver's `get_state` returns the same host form, so a checkpoint saved under one restores
under any other.
"""

from __future__ import annotations

import atexit
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn.errors import first_line
from jaxcnn.training import scanned, update_plateau

log = logging.getLogger(__name__)

AXIS_NAME = "batch"
KINDS = ("pmap", "shard_map", "jit", "fsdp", "single")
# Under 'fsdp', state leaves of at least this many elements are split over the devices (1 MiB in fp32);
# smaller ones stay whole on every device, where gathering them would cost more than they take.
FSDP_MIN_SIZE = 2**18


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
                           initialization_timeout: int = 300,
                           on_peer_lost: Callable[[str], None] | None = None) -> PeerWatchdog | None:
    """Start multi-process JAX (one process per host) before any other JAX call; a no-op for one process.

    On Cloud TPU, SLURM and Open MPI JAX finds the three values itself: pass none of them. Otherwise pass
    all three (every process the same address of process 0 and count, and its own id in [0, count)).
    Raises DistributedError (one line) for inconsistent values, or when the processes do not all connect
    within `initialization_timeout` seconds.

    Returns the started `PeerWatchdog` (None for a single process): if another process stops for more than
    `peer_timeout` seconds, it calls `on_peer_lost(message)` from its own thread, with a message naming the
    process. What happens then is the program's choice; the main thread may be blocked in a collective that
    will never complete, so a program usually ends the process there (train/main.py does). Call the
    watchdog's `finish(error)` when this process fails, so the others stop at once.
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
    # JAX keeps the coordination service's client private; orbax's multihost module is the public way to it.
    from orbax.checkpoint import multihost

    watchdog = PeerWatchdog(multihost.get_jax_distributed_client(), jax.process_index(), jax.process_count(),
                            timeout=peer_timeout, on_peer_lost=on_peer_lost)
    watchdog.start()
    # Runs before JAX's own exit handler (registered earlier), which waits for every process at a barrier.
    atexit.register(watchdog.finish)
    return watchdog


class PeerWatchdog:
    """Tell the program when another process of the job dies, instead of leaving it hung in a collective.

    Every process beats (a counter under `jaxcnn/peer/<id>` in the coordination service's key-value store)
    every `timeout / 10` seconds and reads the others' beats. A peer whose counter has not moved for
    `timeout` seconds was killed or hangs: the watchdog posts this process's failure for the others, then
    calls `on_peer_lost("process K of N stopped ...")` from its thread and stops watching (`lost` holds the
    message). A peer that failed and said so (`finish(error)`) is reported at the next beat.
    Losing the coordinator (process 0) usually ends this process first through JAX's own abort (an
    "another task died" fatal log): the service lives in process 0, which is why process 0, when it fails or
    gives up, waits (a few beats at most) for the others to post their own last word and leave first.
    """

    PREFIX = "jaxcnn/peer/"

    def __init__(self, client, process_id: int, num_processes: int, timeout: float = 60.0,
                 on_peer_lost: Callable[[str], None] | None = None):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.timeout, self.interval = float(timeout), max(float(timeout) / 10, 0.1)
        self._on_peer_lost = on_peer_lost
        self.lost: str | None = None  # why the job cannot go on, once a peer was found dead or failed
        self._stop = threading.Event()
        self._found = threading.Event()  # set once `lost` is known, before `on_peer_lost` runs
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
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.interval * 2)
        self._post(f"failed:{error}" if error else "done")
        if error:
            self._let_others_leave_first()

    def wait_for_lost_peer(self) -> str | None:
        """Wait long enough for the watchdog to notice a dead peer: its message if it did, else None.

        For a collective that failed: it fails at once when a peer dies, before the heartbeats tell why."""
        return self.lost if self._found.wait(self.timeout + 2 * self.interval) else None

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
        time.sleep(0.5)  # from posting to the program's exit

    def _key(self, process: int) -> str:
        return f"{self.PREFIX}{process}"

    def _run(self) -> None:
        message = self._watch()
        if message is None:
            return
        self.lost = message
        self._found.set()
        self._finished = True  # this process's last word is the failure posted here
        self._post(f"failed:{message}")
        self._let_others_leave_first()
        if self._on_peer_lost is not None:
            self._on_peer_lost(message)

    def _watch(self) -> str | None:
        """Beat until stopped (None) or until a peer is lost (why)."""
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
                if self._stop.is_set():
                    return None
                return f"lost the coordinator (process 0 of {self.num_processes}): {first_line(e)}"
            now = time.monotonic()
            for peer in sorted(watched):
                value = beats.get(self._key(peer))
                if value == "done":
                    watched.discard(peer)
                elif value is not None and value.startswith("failed:"):
                    return f"process {peer} of {self.num_processes} failed: {value[len('failed:'):]}"
                elif value != last_beat[peer]:
                    last_beat[peer], last_change[peer] = value, now
                elif now - last_change[peer] > self.timeout:
                    self._dead.add(peer)
                    return (f"process {peer} of {self.num_processes} stopped (no heartbeat for "
                            f"{self.timeout:g} s: killed, crashed or hung)")
        return None


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


def _put_copy(x, sharding: NamedSharding) -> jax.Array:
    """Host array `x` (the same on every process) laid out as `sharding`, as a copy: the steps donate the
    state, which must not delete the caller's arrays."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: np.array(x[index]))


def _put_global_batch(batch: dict, split: NamedSharding, num_devices: int, flag: str) -> dict:
    """This process's part of the batch -> one global array split as `split` over the mesh (placed ones
    pass); `flag` names the batch size in the error when it does not divide over the devices."""
    if _placed(batch, split):
        return batch
    size = _batch_size(batch) * jax.process_count()
    check_divisible(size, num_devices, flag)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(split, np.asarray(x)), batch)


class SingleDriver:
    """Plain `jax.jit` on one device (axis_name None): the reference the parallel drivers must match."""

    kind = "single"
    axis_name = None

    def __init__(self, train_step_fn: Callable, eval_step_fn: Callable, devices: Sequence | None = None):
        self.device = (devices or jax.local_devices())[0]
        self.num_devices = 1
        step = functools.partial(train_step_fn, axis_name=None)
        self._train = jax.jit(step, donate_argnums=(0,))
        self._train_many = jax.jit(scanned(step), donate_argnums=(0,))  # compiled on first use
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

    def train_steps(self, state, batches: dict):
        """k steps in one call (config.steps_per_call): `batches` stacked [k, B, ...]; metrics [k] each."""
        return self._train_many(state, self.put_batch(batches))

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
        return jax.tree.map(lambda x: _put_copy(x, self._replicated), state)

    def get_state(self, state):
        return jax.tree.map(_host_copy, state)

    def put_batch(self, batch: dict, flag: str = "batch_size") -> dict:
        return _put_global_batch(batch, self._split, self.num_devices, flag)

    def train_step(self, state, batch: dict):
        return self._train(state, self.put_batch(batch))

    def eval_step(self, state, batch: dict) -> dict:
        return jax.tree.map(_host_copy, self._eval(state, self.put_batch(batch, "eval_batch_size")))

    def update_plateau(self, state, val_loss: float):
        return self._plateau(state, val_loss)


def fsdp_spec(shape: Sequence[int], num_devices: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """Where 'fsdp' splits a state leaf of `shape`: along its largest dimension that divides over the devices,
    when the leaf has at least `min_size` elements; P() (whole on every device) otherwise.

    The rule reads only the shape, so a parameter and its optimizer moments (same shape) split alike.
    """
    if int(np.prod(shape, dtype=np.int64)) < max(min_size, 1) or num_devices == 1:
        return P()
    divisible = [axis for axis, size in enumerate(shape) if size % num_devices == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda a: shape[a])  # the first of the largest: a dense kernel's input side
    return P(*([None] * axis), AXIS_NAME)


class JitDriver:
    """`jax.jit` with explicit shardings over a 1-D `jax.make_mesh` ('batch',) spanning every global device.

    The step is global-array code (`axis_name` None): the batch is one array split along the mesh, the state
    is replicated, and the compiler inserts the reductions, so gradients and BatchNorm statistics are the
    global batch's with no per-device code. `jax.set_mesh` makes the mesh current around each call, so a
    model may constrain its activations with bare PartitionSpecs.
    """

    kind = "jit"
    axis_name = None

    def __init__(self, train_step_fn: Callable, eval_step_fn: Callable, devices: Sequence | None = None):
        devices = list(devices or jax.devices())
        # Auto axes: the compiler chooses how intermediates are sharded; the step stays plain array code.
        self.mesh = jax.make_mesh((len(devices),), (AXIS_NAME,), axis_types=(jax.sharding.AxisType.Auto,),
                                  devices=devices)
        self.num_devices = self.mesh.size
        self._replicated = NamedSharding(self.mesh, P())
        self._split = NamedSharding(self.mesh, P(AXIS_NAME))
        self._train_fn = functools.partial(train_step_fn, axis_name=None)
        self._eval_fn = functools.partial(eval_step_fn, axis_name=None)
        self._shardings = None  # of the state, known once a state is put

    def leaf_spec(self, shape: Sequence[int]) -> P:
        """How a state leaf of `shape` is laid out over the mesh: whole on every device."""
        del shape
        return P()

    def state_shardings(self, state):
        """The NamedSharding of every leaf of `state` (host arrays or their shapes)."""
        return jax.tree.map(lambda x: NamedSharding(self.mesh, self.leaf_spec(np.shape(x))), state)

    def _compile(self, shardings) -> None:
        """The jitted steps for a state laid out as `shardings`: a step returns it laid out the same way."""
        self._shardings = shardings
        self._train = jax.jit(self._train_fn, in_shardings=(shardings, self._split),
                              out_shardings=(shardings, self._replicated), donate_argnums=(0,))
        self._eval = jax.jit(self._eval_fn, in_shardings=(shardings, self._split),
                             out_shardings=self._replicated)
        self._plateau = jax.jit(update_plateau, in_shardings=(shardings, self._replicated),
                                out_shardings=shardings, donate_argnums=(0,))

    def put_state(self, state):
        """A host state (every process passes the same) onto the mesh, each leaf laid out by `leaf_spec`."""
        shardings = self.state_shardings(state)
        self._compile(shardings)
        return jax.tree.map(_put_copy, state, shardings)

    def get_state(self, state):
        """One host copy, gathered from every process where a leaf is split: the same form for any driver."""
        return jax.tree.map(_gathered, state)

    def put_batch(self, batch: dict, flag: str = "batch_size") -> dict:
        return _put_global_batch(batch, self._split, self.num_devices, flag)

    def train_step(self, state, batch: dict):
        batch = self.put_batch(batch)
        with jax.set_mesh(self.mesh):
            return self._train(state, batch)

    def eval_step(self, state, batch: dict) -> dict:
        batch = self.put_batch(batch, "eval_batch_size")
        with jax.set_mesh(self.mesh):
            return jax.tree.map(_host_copy, self._eval(state, batch))

    def update_plateau(self, state, val_loss: float):
        with jax.set_mesh(self.mesh):
            return self._plateau(state, np.float32(val_loss))


class FsdpDriver(JitDriver):
    """'jit' with large state leaves split over the mesh (fully sharded data parallel).

    Parameters and their optimizer state of at least `min_size` elements live 1/N on each device
    (`fsdp_spec`); the compiler gathers a layer's parameters where the step uses them and reduce-scatters
    their gradients. The numbers are those of 'jit'; the memory for the big layers (VGG's 100M-parameter
    FC layers, their momentum) is divided by the device count.
    """

    kind = "fsdp"

    def __init__(self, train_step_fn: Callable, eval_step_fn: Callable, devices: Sequence | None = None,
                 min_size: int = FSDP_MIN_SIZE):
        super().__init__(train_step_fn, eval_step_fn, devices)
        self.min_size = min_size

    def leaf_spec(self, shape: Sequence[int]) -> P:
        return fsdp_spec(shape, self.num_devices, self.min_size)


def _gathered(x):
    """The whole of a (possibly split, possibly multi-process) array, on the host."""
    if not isinstance(x, jax.Array) or x.sharding.is_fully_replicated:
        return _host_copy(x)
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


Driver = SingleDriver | PmapDriver | ShardMapDriver | JitDriver | FsdpDriver


def make_driver(kind: str, train_step_fn: Callable, eval_step_fn: Callable,
                devices: Sequence | None = None, **options) -> Driver:
    """The driver named `kind` (one of KINDS) around the given steps; `options` go to its constructor
    (`min_size` for 'fsdp')."""
    drivers = {"pmap": PmapDriver, "shard_map": ShardMapDriver, "jit": JitDriver, "fsdp": FsdpDriver,
               "single": SingleDriver}
    if kind not in drivers:
        raise ValueError(f"unknown parallel driver {kind!r}; choose one of {', '.join(KINDS)}")
    return drivers[kind](train_step_fn, eval_step_fn, devices, **options)


__all__ = [
    "AXIS_NAME", "FSDP_MIN_SIZE", "KINDS", "DistributedError", "Driver", "FsdpDriver", "JitDriver",
    "PeerWatchdog", "PmapDriver", "ShardMapDriver", "SingleDriver", "check_distributed_args", "check_divisible", "fsdp_spec",
    "initialize_distributed", "make_driver",
]
