"""Run the default training command for a list of models and write the results: train/configs/measured.json
(what `python -m train.main --list_models` shows) and the README table between the recipes-table markers.

    python benchmarks/recipes.py vgg16 lenet5 mlp          # `python -m train.main --model=NAME`, one at a time
    python benchmarks/recipes.py --full_mnist=/path/to/mnist lenet5 lenet5_1998

For each model: the wall time of the whole command (start-up and compilation included, from an empty
compilation cache: a user's first run), the input size and steps of its recipe, the best validation top-1, the
machine load (1-minute load average) before and after, and the share of CPU time other tenants of the VM host
stole during the run (which the load average does not show).

--full_mnist=DIR: DIR holds the real MNIST training set as idx files (train-images-idx3-ubyte.gz,
train-labels-idx1-ubyte.gz; 60,000 images). It is written once as an image folder with the LAST 10,000 images
held out as the test split and the 1,000 before them as the validation split (train/ then holds 49,000); each
model then trains with the recipe for that dataset (`--dataset=folder:...`) and is evaluated on the test split.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # host.py beside this file
from host import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "train" / "configs" / "measured.json"
README = ROOT / "README.md"
MARKERS = ("<!-- recipes-table:start -->", "<!-- recipes-table:end -->")
HELD_OUT = 10_000
VALIDATION = 1_000


def load_average() -> float:
    return os.getloadavg()[0]


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks since boot from /proc/stat, or None off Linux. Steal is the time a virtual
    machine's CPUs waited for the hypervisor: other tenants' load, which the load average does not show."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int] | None) -> float | None:
    """The share of CPU time stolen by the hypervisor since `before` (cpu_ticks), or None if unknown."""
    after = cpu_ticks()
    if before is None or after is None or after[1] == before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def run(args: list[str], log: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m train.main ARGS` and its wall time; its output is also kept in `log` (where the time went).

    Each run gets an empty compilation cache (JAXCNN_HOME in a fresh temporary directory): the time is a user's
    first run of the command, compilation included, not a rerun that loads the compiled steps from disk."""
    with tempfile.TemporaryDirectory(prefix="jaxcnn_home_") as home:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "JAXCNN_HOME": home})
        wall = time.perf_counter() - start
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr)
    return done, wall


def best_top1(stdout: str) -> float | None:
    match = re.search(r"best validation top-1: (\d\.\d+)", stdout)
    return float(match.group(1)) if match else None


def recipe_facts(model: str, dataset: str | None = None) -> dict:
    sys.path.insert(0, str(ROOT))
    from jaxcnn import models
    from train.configs import recipe_for

    config, spec = recipe_for(model, dataset), models.get_spec(model)
    size = config.image_size if config.image_size > 0 else spec.input_shape[0]
    steps = int(config.num_train_steps) if config.num_train_steps > 0 else f"{config.num_epochs} epochs"
    return dict(image_size=int(size), steps=steps, batch_size=int(config.batch_size), optimizer=config.optimizer,
                learning_rate=float(config.learning_rate), lr_multipliers=config.lr_multipliers.to_dict(),
                augment=config.augment.to_dict(),
                model_options=dict(config.model_kwargs))


def measure(model: str, workdir: Path) -> dict:
    """The default command for `model` (embedded MNIST) in a fresh workdir."""
    facts, load_before, ticks = recipe_facts(model), load_average(), cpu_ticks()  # the recipe as the run reads it
    done, wall = run([f"--model={model}", f"--workdir={workdir}"], workdir.with_suffix(".log"))
    if done.returncode != 0 or best_top1(done.stdout) is None:  # None: stopped (SIGTERM) before its end
        raise SystemExit(f"{model} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return dict(facts, wall_s=round(wall, 1), best_top1=best_top1(done.stdout),
                load_before=round(load_before, 2), load_after=round(load_average(), 2), steal=steal_share(ticks),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cores=os.cpu_count(), cpu=cpu_name(),
                compile_cache="cold")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): the magic's last byte is the number of dimensions, then one int32 per dimension."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_folder(idx_dir: Path, out: Path) -> Path:
    """The 60,000 MNIST training images as out/{train,validation,test}/<digit>/<index>.png: the last HELD_OUT
    are the test split, the VALIDATION before them the validation split (so the pipeline holds nothing more
    out of train/, which keeps 49,000 where the paper trained on 60,000)."""
    from PIL import Image

    if (out / "done").exists():
        return out
    images = read_idx(idx_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(idx_dir / "train-labels-idx1-ubyte.gz")
    for i, (image, label) in enumerate(zip(images, labels)):
        from_end = len(images) - i
        split = "test" if from_end <= HELD_OUT else "validation" if from_end <= HELD_OUT + VALIDATION else "train"
        target = out / split / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{i:05d}.png")
    (out / "done").write_text(f"{len(images)} images: the last {HELD_OUT} test, the {VALIDATION} before them "
                              "validation\n")
    return out


def measure_full_mnist(model: str, folder: Path, workdir: Path) -> dict:
    dataset = f"folder:{folder}"
    facts, load_before, ticks = recipe_facts(model, dataset), load_average(), cpu_ticks()
    done, wall = run([f"--model={model}", f"--dataset={dataset}", f"--workdir={workdir}"], workdir.with_suffix(".log"))
    if done.returncode != 0:
        raise SystemExit(f"{model} on full MNIST failed: {done.stderr.strip().splitlines()[-1:]}")
    evaluation, _ = run([f"--model={model}", f"--dataset={dataset}", f"--workdir={workdir}", "--mode=eval",
                         "--split=test"])
    if evaluation.returncode != 0:
        raise SystemExit(f"{model} test evaluation failed: {evaluation.stderr.strip().splitlines()[-1:]}")
    test = json.loads((workdir / "eval_test.json").read_text())
    return dict(facts, wall_s=round(wall, 1), best_top1=best_top1(done.stdout),
                test_error=round(1 - test["top1"], 5), test_count=test["count"],
                load_before=round(load_before, 2), load_after=round(load_average(), 2), steal=steal_share(ticks),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cores=os.cpu_count(), cpu=cpu_name(),
                compile_cache="cold")


def load(m: dict) -> str:
    """The load average before/after, and the CPU time stolen by other tenants where it was recorded
    (from 2026-12-03 05:53 UTC on)."""
    steal = m.get("steal")
    return f"{m['load_before']}/{m['load_after']}" + ("" if steal is None else f", {100 * steal:.0f}% stolen")


def where(m: dict) -> str:
    """When and on what a figure was taken (the CPU model is recorded from 2026-12-02 noon UTC on, the
    compilation cache from 2026-12-03 09:20 UTC on; before that a model run earlier on the host may have found
    its compiled steps in the user's cache)."""
    cache = f", {m['compile_cache']} cache" if "compile_cache" in m else ""
    return f"{m['date'][5:16]}, {m.get('cpu', 'not recorded')}{cache}"


def table(measured: dict) -> str:
    """The README results table (markdown) from the measured figures."""
    lines = ["| model | input | steps | wall time | best validation top-1 | load (before/after), steal | date, CPU |",
             "|---|---|---|---|---|---|---|"]
    for model, m in sorted(measured.get("embedded", {}).items()):
        if m.get("best_top1") is None:  # a run stopped before its end
            continue
        verdict = "" if m["wall_s"] <= 900 and (m["best_top1"] or 0) >= 0.97 else " (misses the target)"
        lines.append(f"| {model} | {m['image_size']}x{m['image_size']} | {m['steps']} | "
                     f"{m['wall_s'] / 60:.1f} min | {100 * (m['best_top1'] or 0):.2f}%{verdict} | "
                     f"{load(m)} | {where(m)} |")
    full = measured.get("full_mnist", {})
    if full:
        lines += ["", "Full MNIST (60,000 images; the last 10,000 held out as the test split, the 1,000 before them "
                  "as validation):", "",
                  "| model | recipe steps | wall time | test error | load (before/after), steal | date, CPU |",
                  "|---|---|---|---|---|---|"]
        for model, m in sorted(full.items()):
            verdict = "" if m["test_error"] <= 0.01 else ", misses the <= 1.0% target"
            lines.append(f"| {model} | {m['steps']} | {m['wall_s'] / 60:.1f} min | {100 * m['test_error']:.2f}% "
                         f"({m['test_count']} images{verdict}) | {load(m)} | {where(m)} |")
    return "\n".join(lines)


def write_readme(text: str, readme: Path = README) -> None:
    content = readme.read_text()
    start, end = MARKERS
    if start not in content:
        raise SystemExit(f"{readme} lacks the {start} ... {end} markers")
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="models to run (none: only rewrite the README table)")
    parser.add_argument("--full_mnist", type=Path, help="directory of the MNIST idx files: run the models on it")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "jaxcnn_recipes")
    args = parser.parse_args()
    for model in args.models:
        workdir = args.scratch / ("full_mnist" if args.full_mnist else "embedded") / model / time.strftime("%H%M%S")
        if args.full_mnist:
            folder = mnist_folder(args.full_mnist, args.scratch / f"mnist_{HELD_OUT}_test_{VALIDATION}_validation")
            kind, result = "full_mnist", measure_full_mnist(model, folder, workdir)
        else:
            kind, result = "embedded", measure(model, workdir)
        print(model, json.dumps(result), flush=True)
        measured = read_measured()  # read again: other figures may have been written while this model ran
        measured.setdefault(kind, {})[model] = result
        MEASURED.write_text(json.dumps(measured, indent=1, sort_keys=True) + "\n")  # kept after every model
    write_readme(table(read_measured()))


def read_measured() -> dict:
    return json.loads(MEASURED.read_text()) if MEASURED.exists() else {}


if __name__ == "__main__":
    main()
