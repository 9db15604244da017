"""The training program end to end: `python -m train.main` runs, logs, evaluates, and refuses bad input with
one clear line. (Every model's default recipe trains two steps through the CLI in test_recipes.py.)"""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_checkpoint import compilation_cache  # noqa: F401  (autouse: one XLA cache for the runs)

ROOT = Path(__file__).resolve().parents[1]
LENET_STEPS = 80


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "train.main", *args]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(cli_command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def snapshot(directory: Path) -> dict:
    """Path -> (mtime, sha256) of every file under `directory`."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """A short lenet5 run on the embedded MNIST subset, then --mode=eval on its checkpoint."""
    workdir = tmp_path_factory.mktemp("lenet5")
    train = run_cli("--model=lenet5", f"--workdir={workdir}", f"--num_train_steps={LENET_STEPS}",
                    "--batch_size=32", "--log_every_steps=10", "--checkpoint_every_steps=40")
    assert train.returncode == 0, train.stderr
    evaluation = run_cli("--model=lenet5", f"--workdir={workdir}", "--mode=eval", "--split=validation")
    assert evaluation.returncode == 0, evaluation.stderr
    return workdir, train, evaluation


def test_training_logs_and_evaluation(lenet_run):
    workdir, train, evaluation = lenet_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert {"step", "split", "loss", "top1", "top5"} <= set(r), r
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == list(range(10, LENET_STEPS + 1, 10))
    first, last = train_records[0]["loss"], train_records[-1]["loss"]
    assert last < 0.5 * first, (first, last)  # 80 steps of SGD take LeNet-5 well below the first losses

    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [LENET_STEPS]
    assert validation[0]["count"] == 2000  # the embedded validation split, padding excluded
    assert validation[0]["top1"] > 0.8
    last_line = train.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"best validation top-1: (\d\.\d{4}) at step (\d+)", last_line)
    assert match, last_line
    assert float(match.group(1)) == pytest.approx(validation[0]["top1"], abs=5e-5)
    assert int(match.group(2)) == LENET_STEPS

    result = json.loads((workdir / "eval_validation.json").read_text())
    assert result["count"] == 2000 and result["step"] == LENET_STEPS
    # The same checkpoint on the same split: the numbers the training run logged at its last step.
    for key in ("loss", "top1", "top5"):
        assert result[key] == pytest.approx(validation[0][key], rel=1e-6), key
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [40, 80]


def test_bad_input_gets_one_line(lenet_run, tmp_path):
    lenet_dir = lenet_run[0]
    before = snapshot(lenet_dir)
    empty = tmp_path / "no_data"
    empty.mkdir()
    cases = {  # flags -> a phrase the one line must contain
        ("--model=resnet5O",): "did you mean resnet50",
        ("--dataset=imagenet2012", f"--data_dir={empty}"): "ILSVRC2012_img_train.tar",  # no download to try
        ("--model=resnet18", "--config.image_size=16"): "at least 32x32",
        ("--batch_size=12",): "does not divide over 8 devices",
        ("--model=mlp", f"--workdir={lenet_dir}"): "'lenet5'",
    }
    # Started together: each spends most of its time importing jax.
    procs = {}
    for flags in cases:
        workdir = () if any(f.startswith("--workdir") for f in flags) else (f"--workdir={tmp_path / 'w'}",)
        procs[flags] = start_cli(*flags, "--num_train_steps=1", *workdir)
    for flags, phrase in cases.items():
        out, err = procs[flags].communicate(timeout=600)
        lines = err.strip().splitlines()
        assert procs[flags].returncode == 1, (flags, out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (flags, err)
        assert "Traceback" not in err and phrase in lines[0], (flags, err)
    assert snapshot(lenet_dir) == before  # another model's checkpoints: refused before touching anything
    assert not (tmp_path / "w" / "checkpoints").exists()
