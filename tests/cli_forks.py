"""Many `python -m train.main ARGS` runs that end early (bad input), in one process: one start-up, then a fork
per command line that runs train/main.py as `python -m` does (runpy, `__main__`, sys.argv).

A fresh interpreter pays for importing absl, ml_collections, the recipes and the model registry (jax, flax) on
every run: seconds each on a loaded 2-core box, for checks that then take milliseconds. Here the parent
imports those once and every child inherits them; train/main.py itself runs afresh in each child, so each
run defines its flags and reads its argv exactly as a new process does.

Usage: `python tests/cli_forks.py < commands.json > outcomes.json`, with a JSON list of argument lists in, and
out a list of {"returncode", "stdout", "stderr"} in the same order (a negative returncode: killed by that
signal, e.g. -14 when a run outlived its TIME_LIMIT_S).
"""

import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import traceback
from pathlib import Path

# What train/main.py imports before its checks end a bad run (for speed only: a child imports what is
# missing).
PRELOAD = ("absl.app", "absl.flags", "ml_collections.config_flags", "jaxcnn.errors", "jaxcnn.hugepages",
           "jaxcnn.models", "train.compile_cache", "train.config_check", "train.configs")
TIME_LIMIT_S = 120  # a run that is not refused would go on to train: stop it rather than hang the suite


def exit_status(code) -> int:
    """The process exit status for `sys.exit(code)`, as the interpreter maps it (a message is status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_child(args: list[str], stdout_path: Path, stderr_path: Path) -> None:
    """In the forked child: stdout/stderr to the files, `python -m train.main *args`, exit with its status."""
    signal.alarm(TIME_LIMIT_S)
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["train.main", *args]  # runpy puts the module's file path in argv[0], as `python -m` does
    try:
        runpy.run_module("train.main", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = exit_status(e.code)
    except BaseException:  # an uncaught exception: the interpreter's traceback and status 1
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_all(commands: list[list[str]]) -> list[dict]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="cli-forks-") as scratch:
        for index, args in enumerate(commands):
            stdout_path, stderr_path = Path(scratch) / f"{index}.out", Path(scratch) / f"{index}.err"
            pid = os.fork()
            if pid == 0:
                run_child(args, stdout_path, stderr_path)
            _, status = os.waitpid(pid, 0)
            outcomes.append({"returncode": os.waitstatus_to_exitcode(status),
                             "stdout": stdout_path.read_text(), "stderr": stderr_path.read_text()})
    return outcomes


if __name__ == "__main__":
    # The project root first on the path, as `python -m` run from there puts it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    commands = json.load(sys.stdin)
    for name in PRELOAD:
        importlib.import_module(name)
    sys.stdout.flush()
    json.dump(run_all(commands), sys.stdout)
