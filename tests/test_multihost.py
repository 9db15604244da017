"""Multi-host training on JAX's distributed runtime, with local processes on the CPU.

2 processes x 2 CPU devices run `train.main` (tests/multihost_worker.py: the real flags, loop, drivers,
checkpoints) and must match 1 process x 4 devices fed the same global batches, for pmap, shard_map and jit; a
process whose peer dies must leave with one line instead of hanging; tfds datasets are read per process.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_COMPILE

from jaxcnn import checkpoint as ckpt
from jaxcnn import parallel

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multihost_worker.py"
# One launch per driver, each resuming the previous one's checkpoint: (driver, last step).
LAUNCHES = (("pmap", 3), ("shard_map", 6), ("jit", 9))
STEPS, RESUME_FROM = LAUNCHES[-1][1], LAUNCHES[0][1]
COMMON = ("--model=tiny_bn", "--batch_size=16", "--config.eval_batch_size=192", "--log_every_steps=1",
          f"--checkpoint_every_steps={RESUME_FROM}", f"--config.eval_every_steps={RESUME_FROM}",
          "--learning_rate=0.1", "--config.shuffle_buffer=1000")
TOL = 1e-5
PEER_TIMEOUT = 6  # seconds, for the dead-peer tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # each run compiles for itself
    return env


def start(*flags: str, devices: int) -> subprocess.Popen:
    common = () if "--psum_loop" in flags else COMMON
    return subprocess.Popen([sys.executable, str(WORKER), *common, *flags], cwd=ROOT, env=worker_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_processes(*flags: str, count: int = 2) -> list[subprocess.Popen]:
    """`count` processes of one job, 2 CPU devices each, coordinated on a free local port."""
    cluster = (f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={count}")
    return [start(*flags, *cluster, f"--process_id={i}", devices=2) for i in range(count)]


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process, which must exit 0; none is left running, whatever happens."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, (p.args, out, err)
    return outputs


def by_step(workdir: Path, split: str) -> dict[int, dict]:
    found = {}
    for r in (json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()):
        if r["split"] == split:
            assert r["step"] not in found, f"step {r['step']} ({split}) logged twice"
            found[r["step"]] = r
    return found


def max_diff(a, b) -> float:
    import jax

    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_two_processes_match_four_devices(tmp_path):
    """pmap trains steps 1-3 and saves; a second launch resumes that checkpoint under shard_map for steps 4-6,
    a third under jit (global arrays, no per-device code) for steps 7-9.

    Every step, every evaluation and every checkpoint must match the reference. (One test and one chain of
    runs for the drivers: each launch costs seconds of imports on every process.)
    """
    workdir, ref_dir = tmp_path / "run", tmp_path / "reference"
    reference = start("--reference", f"--workdir={ref_dir}", f"--num_train_steps={STEPS}", devices=4)
    try:
        launches = [finish(start_processes(f"--parallel={kind}", f"--workdir={workdir}",
                                           f"--num_train_steps={last}")) for kind, last in LAUNCHES]
    finally:
        finish([reference])

    # Per-step metrics: each step's are the global batch's, averaged over all 4 devices inside the step.
    ref_train, train = by_step(ref_dir, "train"), by_step(workdir, "train")
    assert sorted(train) == sorted(ref_train) == list(range(1, STEPS + 1))
    for step in train:
        for name in ("loss", "top1", "top5"):
            assert abs(train[step][name] - ref_train[step][name]) <= TOL, (driver(step), step, name)
    # Evaluations: eval_batch_size 192 is 96 a process, so each pads its 1,000 validation images to 1,056;
    # the padding must not count, on any process.
    ref_eval, evaluation = by_step(ref_dir, "validation"), by_step(workdir, "validation")
    evaluated = list(range(RESUME_FROM, STEPS + 1, RESUME_FROM))
    assert sorted(evaluation) == sorted(ref_eval) == evaluated
    for step in evaluation:
        assert evaluation[step]["count"] == ref_eval[step]["count"] == 2000
        for name in ("loss", "top1", "top5"):
            assert abs(evaluation[step][name] - ref_eval[step][name]) <= TOL, (driver(step), step, name)

    # The checkpoints the 2 processes saved together hold the reference's variables.
    assert ckpt.list_steps(workdir) == ckpt.list_steps(ref_dir) == evaluated
    saved = {step: saved_variables(workdir, step) for step in evaluated}
    for step, variables in saved.items():
        reference_variables = saved_variables(ref_dir, step)
        for collection in ("params", "batch_stats"):
            assert max_diff(variables[collection], reference_variables[collection]) <= TOL, (driver(step), collection)
    assert max_diff(saved[RESUME_FROM]["params"], saved[STEPS]["params"]) > 1e-3  # so agreeing means something

    # Only process 0 writes: one metrics.jsonl (each step once: no doubled lines), progress and summary.
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "metrics.jsonl", "tensorboard"]
    for process, (out, err) in enumerate(sum(launches, [])):
        primary = process % 2 == 0
        assert any(is_progress(line) for line in err.splitlines()) == primary, (process, err)
        assert ("best validation top-1" in out) == primary, (process, out)
    assert "resuming from step 3 (epoch 0, batch 3)" in launches[1][0][1]
    assert "resuming from step 6 (epoch 0, batch 6)" in launches[2][0][1]


def driver(step: int) -> str:
    return next(kind for kind, last in LAUNCHES if step <= last)


def saved_variables(workdir: Path, step: int) -> dict:
    state = ckpt._read_item(ckpt.checkpoint_dir(workdir) / str(step), state=ckpt.ocp.args.StandardRestore()).state
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


# ------------------------------------------------------------------------------------------- a dead peer


def is_progress(line: str) -> bool:
    """A progress line: train.main's tqdm bar ("compiling/training: ... 2/100 [...]") or psum_loop's "step N/"."""
    return line.startswith(("step ", "compiling", "training"))


def steps_done(line: str) -> int:
    """The step count a progress line shows (0 when it shows none)."""
    match = re.search(r"(?:^step |\| ?)(\d+)/", line)
    return int(match.group(1)) if is_progress(line) and match else 0


def wait_for_steps(proc: subprocess.Popen, steps: int = 2) -> list[str]:
    lines = []
    for line in proc.stderr:  # text mode: tqdm's carriage returns end lines too
        lines.append(line)
        if steps_done(line) >= steps:
            return lines
    raise AssertionError(f"process 0 ended before step {steps}: {''.join(lines)}")


def kill_and_time(victim: int, *flags: str) -> tuple[subprocess.Popen, float, str]:
    """Start a long 2-process run, SIGKILL process `victim` mid-run, and time the other's exit."""
    procs = start_processes(*flags, f"--peer_timeout={PEER_TIMEOUT}")
    try:
        wait_for_steps(procs[0])
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=120)  # a hang fails here
        return survivor, time.monotonic() - killed, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def test_dead_peer_ends_the_other_process_with_one_line(tmp_path):
    survivor, seconds, err = kill_and_time(1, f"--workdir={tmp_path}", "--num_train_steps=100000")
    assert survivor.returncode == 1, err
    messages = [line for line in err.splitlines() if line.strip() and not is_progress(line)]
    expected = (f"error: process 1 of 2 stopped (no heartbeat for {PEER_TIMEOUT} s: killed, crashed or hung); "
                "process 0 exits")
    assert messages == [expected], err
    assert PEER_TIMEOUT - 1 < seconds < PEER_TIMEOUT + 20, seconds


def test_dead_coordinator_ends_the_other_process():
    """Process 0 holds JAX's coordination service: the others lose it at once and JAX ends them itself
    (a job that only sums over its devices: the training run's start-up would add nothing here)."""
    survivor, seconds, err = kill_and_time(0, "--psum_loop")
    assert survivor.returncode != 0
    assert "another task died" in err, err
    assert seconds < PEER_TIMEOUT, seconds


# ------------------------------------------------------------------------------------- start-up checks


@pytest.mark.parametrize("args, phrase", [
    (("127.0.0.1:1234", 2, None), "give all of --coordinator_address, --num_processes and --process_id"),
    ((None, 2, 0), "give all of"),
    (("127.0.0.1:1234", 2, 2), "--process_id=2 outside [0, 1] for --num_processes=2"),
    (("127.0.0.1:1234", 0, 0), "--num_processes=0: need at least 1"),
    (("127.0.0.1", 2, 0), "expected host:port"),
    (("host0:99999", 2, 1), "expected host:port"),
])
def test_inconsistent_process_values_are_refused(args, phrase):
    with pytest.raises(parallel.DistributedError) as e:
        parallel.check_distributed_args(*args)
    assert phrase in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("args", [(None, None, None), ("10.0.0.1:1234", 4, 3), ("[::1]:8476", 2, 0),
                                  (None, 1, None), (None, 1, 0)])
def test_consistent_process_values_pass(args):
    parallel.check_distributed_args(*args)


def test_cli_refuses_inconsistent_flags_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.main", f"--workdir={tmp_path}", "--num_processes=2",
                           "--process_id=5", "--coordinator_address=127.0.0.1:1234"], cwd=ROOT,
                          env=worker_env(2), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: --process_id=5 outside [0, 1] for --num_processes=2"]
    assert not any(tmp_path.iterdir())


def test_processes_given_different_flags_are_refused(tmp_path):
    """Different batch sizes would make the processes' steps disagree (silently, or in a hang): both refuse
    with one line, before any data is read."""
    cluster = (f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2", f"--workdir={tmp_path}")
    procs = [start(*cluster, "--process_id=0", "--batch_size=16", devices=2),
             start(*cluster, "--process_id=1", "--batch_size=8", devices=2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 1, err
        assert err.strip().splitlines()[-1].endswith(
            "process 1 runs another config than process 0: give every process the same flags"), err
    assert not (tmp_path / "metrics.jsonl").exists()


class FakeClient:
    """The coordination service's key-value store, in memory."""

    def __init__(self):
        self.store = {}

    def key_value_set(self, key, value, allow_overwrite=False):
        self.store[key] = value

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


def watch(client, timeout=0.5, process_id=0, num_processes=3):
    reports = []
    dog = parallel.PeerWatchdog(client, process_id, num_processes, timeout=timeout,
                                on_peer_lost=reports.append)
    return dog, reports


def test_watchdog_names_the_peer_that_stopped_beating():
    client = FakeClient()
    dog, exits = watch(client, process_id=1)  # not process 0, which would wait for the others to leave first
    dog.start()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and not exits:
        client.key_value_set(f"{dog.PREFIX}0", str(time.monotonic()))  # process 0 beats, process 2 does not
        time.sleep(0.02)
    dog.finish()
    message = "process 2 of 3 stopped (no heartbeat for 0.5 s: killed, crashed or hung)"
    assert exits == [message] and dog.lost == message
    # The library only reports (the process lives on); it tells the other processes this one cannot go on.
    assert client.store[f"{dog.PREFIX}1"] == f"failed:{message}"


def test_watchdog_stops_at_a_failed_peer_and_ignores_finished_ones():
    client = FakeClient()
    client.store[f"{parallel.PeerWatchdog.PREFIX}1"] = "done"
    client.store[f"{parallel.PeerWatchdog.PREFIX}2"] = "failed:non-finite loss at step 7"
    dog, exits = watch(client, timeout=5.0)
    dog.start()
    time.sleep(1.2)
    dog.finish(error="ignored")
    assert exits == ["process 2 of 3 failed: non-finite loss at step 7"]
    assert dog.wait_for_lost_peer() == exits[0]


# -------------------------------------------------------------------------------- tfds parts per process


def test_tfds_processes_read_consecutive_parts_that_cover_the_split(tmp_path):
    """Each process reads only its part (tfds.even_splits); together they hold every example once, with
    its global index (the pipeline's augmentation seed), in the whole split's order."""
    import tensorflow_datasets as tfds

    from jaxcnn.data import pipeline

    class JaxcnnTestDigits(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(103):
                yield i, {"image": np.full((4, 4, 1), i, np.uint8), "label": i % 10}

    JaxcnnTestDigits(data_dir=str(tmp_path)).download_and_prepare()

    def examples(split, index=0, count=1):
        source = pipeline.make_source("jaxcnn_test_digits", split, data_dir=str(tmp_path))
        return [(int(i), int(source.decode(raw)[0, 0, 0])) for i, (raw, _) in
                source.process_examples(index, count).as_numpy_iterator()]

    for split, size in (("train", 93), ("validation", 10)):  # no validation split: the 90% / 10% holdout
        whole = examples(split)
        parts = [examples(split, p, 3) for p in range(3)]
        assert len(whole) == size and [e for part in parts for e in part] == whole
        assert [len(p) for p in parts] == [size // 3 + (p < size % 3) for p in range(3)]  # as ds.shard's
