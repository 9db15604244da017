"""A workdir's history is never lost: a rerun with settings that change the training is refused before any
step with the workdir byte for byte as it was; safe changes resume; an unreadable checkpoint is skipped but
kept, and metrics.jsonl keeps the lines it covers; `--init_from=<workdir>` and `--mode=eval` read only the
weights, under any optimizer settings.

The runs use test_checkpoint's tiny BatchNorm + dropout CNN (batch 512 on the embedded MNIST subset)."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_checkpoint import compilation_cache, load_config, raw_state, write_config  # noqa: F401

from jaxcnn import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(batch_size=512, eval_batch_size=512, num_train_steps=4, learning_rate=0.05, log_every_steps=1,
                eval_every_steps=4, eval_steps=1, checkpoint_every_steps=2)


def snapshot(directory: Path) -> dict:
    """Path -> (size, mtime, sha256) of every file under `directory`, and the set of directories."""
    files = {p: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
             for p in sorted(directory.rglob("*")) if p.is_file()}
    return {"files": files, "dirs": sorted(p for p in directory.rglob("*") if p.is_dir())}


def cli(config_file: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train.main", f"--config={config_file}", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "tiny.py", **SETTINGS)


@pytest.fixture(scope="module")
def trained(config_file, tmp_path_factory) -> Path:
    """4 steps, checkpoints at 2 and 4 (4 evaluated)."""
    from train import loop

    workdir = tmp_path_factory.mktemp("trained")
    loop.train_and_evaluate(load_config(config_file), workdir)
    assert ckpt.list_steps(workdir) == [2, 4]
    return workdir


def test_changed_training_settings_are_refused_and_nothing_changes(config_file, trained, tmp_path):
    before = snapshot(trained)
    cases = {  # flags -> the fields (old -> new) the one line must name
        ("--config.grad_clip_norm=1.0",): ["grad_clip_norm 0.0 -> 1.0"],
        ("--config.optimizer=adam", "--batch_size=256"): ["batch_size 512 -> 256",
                                                          "optimizer 'sgd' -> 'adam'"],
        ("--config.freeze_backbone=True",): ["freeze_backbone False -> True"],
    }
    procs = {flags: cli(config_file, f"--workdir={trained}", *flags) for flags in cases}  # started together
    for flags, phrases in cases.items():
        out, err = procs[flags].communicate(timeout=600)
        lines = err.strip().splitlines()
        assert procs[flags].returncode == 1, (flags, out, err)
        assert len(lines) == 1 and "Traceback" not in err, (flags, err)
        line = lines[0]
        assert line.startswith("error: ") and all(p in line for p in phrases), (flags, line)
        # The ways on: the old values, another workdir, or its weights in a new one.
        assert "old values" in line and "another --workdir" in line and f"--init_from={trained}" in line, line
    assert snapshot(trained) == before


def test_safe_changes_resume_and_are_logged(config_file, trained, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(trained, workdir)
    proc = cli(config_file, f"--workdir={workdir}", "--num_train_steps=6", "--log_every_steps=2",
               "--checkpoint_every_steps=3", "--config.keep_checkpoints=5")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resuming from step 4" in err
    changed = [line for line in err.splitlines() if line.startswith("resuming with changed settings")]
    assert len(changed) == 1, err
    for phrase in ("checkpoint_every_steps 2 -> 3", "keep_checkpoints 3 -> 5", "log_every_steps 1 -> 2",
                   "num_train_steps 4 -> 6"):
        assert phrase in changed[0], changed[0]
    assert ckpt.list_steps(workdir) == [2, 4, 6]
    train = [r["step"] for r in records(workdir) if r["split"] == "train"]
    assert train == [1, 2, 3, 4, 6]  # the first run's lines kept, then every 2nd step


# tensorstore complains about its closed event loop after a failed read
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreadable_checkpoint_is_kept_and_its_metrics_too(config_file, trained, tmp_path, caplog):
    import shutil

    from train import loop

    workdir = tmp_path / "copy"
    shutil.copytree(trained, workdir)
    broken = ckpt.checkpoint_dir(workdir) / "4"
    for f in (broken / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    broken_files = snapshot(broken)
    log_before = (workdir / "metrics.jsonl").read_text()
    with caplog.at_level(logging.WARNING, logger="jaxcnn.checkpoint"):
        loop.train_and_evaluate(load_config(config_file, num_train_steps=6), workdir)
    assert any(str(broken) in r.getMessage() and "cannot be read" in r.getMessage() for r in caplog.records)
    assert snapshot(broken) == broken_files  # skipped, not deleted, renamed or overwritten
    assert ckpt.list_steps(workdir) == [2, 4, 6]
    log_after = (workdir / "metrics.jsonl").read_text()
    assert log_after.startswith(log_before)  # not cut back past step 4, whose checkpoint still exists
    train = [r["step"] for r in records(workdir) if r["split"] == "train"]
    assert train == [1, 2, 3, 4, 5, 6]  # steps 3-4, recomputed from step 2, are not logged twice


def test_another_structure_is_a_mismatch_not_corruption(tmp_path):
    import optax
    from test_checkpoint import META, toy_state

    with ckpt.Checkpoints(tmp_path) as c:
        c.save(toy_state(1, 1), ckpt.Position(0, 1), META)
    before = snapshot(tmp_path)
    state = toy_state(1, 1)
    clipped = optax.chain(optax.clip_by_global_norm(1.0), state.tx)
    with pytest.raises(ckpt.CheckpointMismatch, match=r"another structure \(it has .*it lacks"):
        ckpt.restore_latest(tmp_path, state.replace(tx=clipped, opt_state=clipped.init(state.params)))
    assert snapshot(tmp_path) == before


def test_init_from_a_workdir_and_eval_under_other_optimizer_settings(config_file, trained, tmp_path):
    from train import loop

    # Training from the workdir's weights with fresh (here: Adam) optimizer state and a frozen backbone.
    fine_tune = load_config(config_file, init_from=str(trained), optimizer="adam", num_train_steps=1,
                            freeze_backbone=True, eval_every_steps=1)
    loop.train_and_evaluate(fine_tune, tmp_path / "fine")
    old, new = raw_state(trained, 4), raw_state(tmp_path / "fine", 1)
    for collection in ("params", "batch_stats"):
        for name in old[collection]:
            moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old[collection][name]),
                                                                  jax.tree.leaves(new[collection][name])))
            assert moved == (collection == "params" and name == "Dense_0"), (collection, name)

    # --mode=eval of the workdir, and of --init_from=<workdir> into a new one, under Adam settings: the
    # numbers the training run logged for its checkpoint.
    logged = [r for r in records(trained) if r["split"] == "validation"][-1]
    procs = [cli(config_file, f"--workdir={tmp_path / 'eval'}", f"--init_from={trained}", "--mode=eval",
                 "--config.optimizer=adam"),
             cli(config_file, f"--workdir={trained}", "--mode=eval", "--config.optimizer=adam")]
    for proc, workdir in zip(procs, (tmp_path / "eval", trained)):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        result = json.loads((workdir / "eval_validation.json").read_text())
        assert result["step"] == 4 and result["count"] == 512
        for key in ("loss", "top1", "top5"):
            assert result[key] == pytest.approx(logged[key], rel=1e-6), key
