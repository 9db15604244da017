"""Reliability: SIGTERM and SIGKILL at any moment, and non-finite losses, never lose or corrupt the run.

The runs use the MLP with dropout 0.5 (so the per-step random keys matter) and batch 512 on the embedded
MNIST subset (19 steps an epoch, so runs cross epoch boundaries), and compare with an uninterrupted run.
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
import orbax.checkpoint as ocp
import pytest

from jaxcnn import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
STEPS = 120
SETTINGS = dict(model="mlp", batch_size=512, eval_batch_size=512, num_train_steps=STEPS, learning_rate=0.05,
                log_every_steps=1, eval_every_steps=10_000, eval_steps=1, checkpoint_every_steps=7)
MODEL_KWARGS = dict(dropout=0.5)


def config(**changes):
    from train.configs import recipe_for

    c = recipe_for(SETTINGS["model"])
    for k, v in {**SETTINGS, **changes}.items():
        c[k] = v
    c.model_kwargs.update(MODEL_KWARGS)
    return c


def cli_args(workdir: Path) -> list[str]:
    flags = [f"--workdir={workdir}", f"--model={SETTINGS['model']}"]
    flags += [f"--config.{k}={v}" for k, v in SETTINGS.items() if k != "model"]
    flags += [f"--config.model_kwargs.{k}={v}" for k, v in MODEL_KWARGS.items()]
    return [sys.executable, "-m", "train.main", *flags]


def saved_state(workdir: Path, step: int) -> dict:
    """The raw state tree of checkpoint `step` (params, batch_stats, opt_state, step, rng)."""
    item = ocp.args.StandardRestore()
    return ckpt._read_item(ckpt.checkpoint_dir(workdir) / str(step), state=item).state


def assert_same_state(a: dict, b: dict) -> None:
    import jax

    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The final state of an uninterrupted run."""
    from train import loop

    workdir = tmp_path_factory.mktemp("reference")
    loop.train_and_evaluate(config(), workdir)
    return saved_state(workdir, STEPS)


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


def finish(workdir: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cli_args(workdir), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def test_sigterm_saves_and_resumes_exactly(reference, tmp_path):
    proc = subprocess.Popen(cli_args(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_step(tmp_path) >= 10, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    stopped = int(err.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
    assert 10 <= stopped < STEPS
    assert stopped in ckpt.list_steps(tmp_path)  # the current step, not only the last periodic one
    assert saved_state(tmp_path, stopped)["step"] == stopped
    done = finish(tmp_path)
    assert f"at step {STEPS}" in done.stdout.strip().splitlines()[-1]
    assert_same_state(saved_state(tmp_path, STEPS), reference)
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


def test_sigkill_resumes_from_the_last_complete_checkpoint(reference, tmp_path):
    # First a kill at a random moment after the first checkpoint, then one aimed at a save in progress.
    proc = subprocess.Popen(cli_args(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(ckpt.list_steps(tmp_path)) >= 1, proc)
    time.sleep(random.Random(0).uniform(0.0, 1.0))
    proc.kill()
    proc.wait()
    proc = subprocess.Popen(cli_args(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: logged_step(tmp_path) > max(ckpt.list_steps(tmp_path)), proc)  # resumed and stepping
    mid_save = kill_during_save(tmp_path, proc)
    proc.wait()
    last_complete = max(ckpt.list_steps(tmp_path))
    done = finish(tmp_path)
    if mid_save:
        assert "removing partial checkpoint" in done.stderr
    assert f"resuming from step {last_complete}" in done.stderr or last_complete == STEPS
    assert_same_state(saved_state(tmp_path, STEPS), reference)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from train import loop

    with pytest.raises(loop.TrainingError, match=r"non-finite loss at step 25\b.*step 21"):
        loop.train_and_evaluate(config(debug_nan_step=25, num_train_steps=40), tmp_path)
    assert ckpt.list_steps(tmp_path) == [7, 14, 21]  # nothing saved from the bad state on
    assert all(np.all(np.isfinite(x)) for x in _leaves(saved_state(tmp_path, 21)["params"]))


def test_skip_nonfinite_continues_and_counts(tmp_path):
    from train import loop

    result = loop.train_and_evaluate(config(debug_nan_step=25, num_train_steps=40, skip_nonfinite=True), tmp_path)
    assert result["final_step"] == 40 and result["skipped_nonfinite"] == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_nonfinite"] for r in records if r["split"] == "train"}
    assert skipped[24] == 0 and skipped[25] == 1 and skipped[40] == 1
    assert all(math.isfinite(r["loss"]) for r in records if r["step"] != 25)
    assert all(np.all(np.isfinite(x)) for x in _leaves(saved_state(tmp_path, 40)["params"]))


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.soak
def test_soak_kill_and_resume(reference, tmp_path):
    """SOAK_CYCLES (default 100) SIGKILLs at random moments (start-up, steps, saves); the run still ends
    bit-identical to the uninterrupted one."""
    rng = random.Random(1234)
    for _ in range(int(os.environ.get("SOAK_CYCLES", 100))):
        if STEPS in ckpt.list_steps(tmp_path):
            break
        proc = subprocess.Popen(cli_args(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(float(os.environ.get("SOAK_MIN_S", 5)), float(os.environ.get("SOAK_MAX_S", 40))))
        proc.kill()
        proc.wait()
    finish(tmp_path)
    assert_same_state(saved_state(tmp_path, STEPS), reference)
