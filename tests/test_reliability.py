"""Reliability: SIGTERM and SIGKILL at any moment, and non-finite losses, never lose or corrupt the run.

The runs use test_checkpoint's tiny BatchNorm + dropout CNN (so batch statistics and per-step random keys
matter) with batch 512 on the embedded MNIST subset (19 steps an epoch, so runs cross epoch boundaries), and
compare with an uninterrupted run.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_checkpoint import assert_same_tree, compilation_cache, load_config, raw_state, write_config  # noqa: F401

from jaxcnn import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60
SETTINGS = dict(batch_size=512, eval_batch_size=512, num_train_steps=STEPS, learning_rate=0.05,
                log_every_steps=1, eval_every_steps=10_000, eval_steps=1, checkpoint_every_steps=7)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """The tiny BatchNorm + dropout model of test_checkpoint with SETTINGS, as a --config file."""
    return write_config(tmp_path_factory.mktemp("config") / "tiny.py", **SETTINGS)


def cli_args(config_file: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "train.main", f"--config={config_file}", f"--workdir={workdir}"]


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory):
    """The final state of an uninterrupted run."""
    from train import loop

    workdir = tmp_path_factory.mktemp("reference")
    loop.train_and_evaluate(load_config(config_file), workdir)
    return raw_state(workdir, STEPS)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else 0


def start_quiet(config_file: Path, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_args(config_file, workdir), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def finish(config_file: Path, workdir: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cli_args(config_file, workdir), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def test_sigterm_saves_and_resumes_exactly(config_file, reference, tmp_path):
    proc = subprocess.Popen(cli_args(config_file, tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(tmp_path) >= 10, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    stopped = int(err.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
    assert 10 <= stopped < STEPS
    assert stopped in ckpt.list_steps(tmp_path)  # the current step, not only the last periodic one
    assert raw_state(tmp_path, stopped)["step"] == stopped
    done = finish(config_file, tmp_path)
    assert f"at step {STEPS}" in done.stdout.strip().splitlines()[-1]
    assert_same_tree(raw_state(tmp_path, STEPS), reference)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # the log reads as one run: nothing lost, nothing twice


def kill_during_save(workdir: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """SIGKILL `proc` while a checkpoint is being written if that can be caught within `timeout`, else at
    once; True when the kill landed mid-save."""
    root = ckpt.checkpoint_dir(workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(ckpt.TMP_MARKER in name for name in os.listdir(root)):
                proc.kill()
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    proc.kill()
    return False


def test_sigkill_resumes_from_the_last_complete_checkpoint(config_file, reference, tmp_path):
    # First a kill at a random moment after the first checkpoint, then one aimed at a save in progress.
    proc = start_quiet(config_file, tmp_path)
    wait_for(lambda: len(ckpt.list_steps(tmp_path)) >= 1, proc)
    time.sleep(random.Random(0).uniform(0.0, 1.0))
    proc.kill()
    proc.wait()
    proc = start_quiet(config_file, tmp_path)
    wait_for(lambda: logged_step(tmp_path) > max(ckpt.list_steps(tmp_path)), proc)  # resumed and stepping
    mid_save = kill_during_save(tmp_path, proc)
    print(f"SIGKILL landed mid-save: {mid_save}")  # shown with -s
    proc.wait()
    last_complete = max(ckpt.list_steps(tmp_path))
    done = finish(config_file, tmp_path)
    if mid_save:
        assert "removing partial checkpoint" in done.stderr
    assert f"resuming from step {last_complete}" in done.stderr or last_complete == STEPS
    assert_same_tree(raw_state(tmp_path, STEPS), reference)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(config_file, tmp_path):
    from train import loop

    with pytest.raises(loop.TrainingError, match=r"non-finite loss at step 25\b.*step 21"):
        loop.train_and_evaluate(load_config(config_file, debug_nan_step=25, num_train_steps=40), tmp_path)
    assert ckpt.list_steps(tmp_path) == [7, 14, 21]  # nothing saved from the bad state on
    assert all(np.all(np.isfinite(x)) for x in _leaves(raw_state(tmp_path, 21)["params"]))


def test_skip_nonfinite_continues_and_counts(config_file, tmp_path):
    from train import loop

    result = loop.train_and_evaluate(load_config(config_file, debug_nan_step=25, num_train_steps=40,
                                                   skip_nonfinite=True), tmp_path)
    assert result["final_step"] == 40 and result["skipped_nonfinite"] == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_nonfinite"] for r in records if r["split"] == "train"}
    assert skipped[24] == 0 and skipped[25] == 1 and skipped[40] == 1
    assert all(math.isfinite(r["loss"]) for r in records if r["step"] != 25)
    assert all(np.all(np.isfinite(x)) for x in _leaves(raw_state(tmp_path, 40)["params"]))


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.soak
def test_soak_kill_and_resume(config_file, reference, tmp_path):
    """SOAK_CYCLES (default 100) SIGKILLs at random moments (start-up, steps, saves). A run that reaches its
    last step ends bit-identical to the uninterrupted one, with a metrics.jsonl that reads as one run, and the
    next cycles start another; the kills go on until SOAK_CYCLES have landed."""
    rng = random.Random(1234)
    low, high = float(os.environ.get("SOAK_MIN_S", "5")), float(os.environ.get("SOAK_MAX_S", "40"))
    runs, kills, mid_save = 0, 0, 0

    def check(workdir: Path) -> None:
        assert_same_tree(raw_state(workdir, STEPS), reference)
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        steps = [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]
        assert steps == list(range(1, STEPS + 1)), workdir  # nothing lost, nothing twice, no torn line

    workdir = tmp_path / "run0"
    while kills < int(os.environ.get("SOAK_CYCLES", 100)):
        if STEPS in ckpt.list_steps(workdir):
            check(workdir)
            runs += 1
            workdir = tmp_path / f"run{runs}"
        proc = start_quiet(config_file, workdir)
        time.sleep(rng.uniform(low, high))
        root = ckpt.checkpoint_dir(workdir)
        saving = root.is_dir() and any(ckpt.TMP_MARKER in name for name in os.listdir(root))
        landed = proc.poll() is None  # not when the run had already finished
        proc.kill()
        proc.wait()
        kills, mid_save = kills + landed, mid_save + (landed and saving)
    finish(config_file, workdir)
    check(workdir)
    # Shown with -s: the figure README quotes.
    print(f"soak: {kills} SIGKILLs ({mid_save} during a checkpoint save) over {runs + 1} runs of {STEPS} "
          f"steps, each bit-identical to the uninterrupted run")
