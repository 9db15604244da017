"""Transparent huge pages for XLA:CPU's buffers: re-run the program with glibc's malloc asked to use them.

XLA:CPU allocates a step's temporaries afresh on every call (2.4 GB for resnet18 at batch 32), glibc maps
blocks that large straight from the kernel, and the kernel hands them out 4 KiB at a time: resnet18's step
took 636,000 page faults and 1.8 s of kernel time on the 2-core CI box. glibc's `glibc.malloc.hugetlb=1`
tunable makes malloc advise the kernel to back its blocks with 2 MiB pages (Linux's transparent huge pages in
their usual `madvise` mode): 2,000 faults and 0.65 s, the step 1.28x faster (benchmarks/NOTES.md).
glibc reads tunables only when a process starts, so an entry point (`python -m train.main`, the benchmarks)
calls `reexec_with_huge_pages()` before anything else and the process replaces itself once, same PID, same
arguments. Nothing changes numerically. Set JAXCNN_NO_HUGE_PAGES=1 to keep the system's malloc settings.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "JAXCNN_NO_HUGE_PAGES"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def supported() -> bool:
    """Linux with glibc, and the kernel's transparent huge pages not switched off."""
    try:
        mode = THP_MODE.read_text()
    except OSError:
        return False
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc" and "[never]" not in mode


def runs_as_invoked() -> bool:
    """This process is the program its command line names: not an IPython/Jupyter kernel that `%run` a
    script (re-running the kernel's own command line would replace the kernel)."""
    args = sys.argv[1:]
    return "IPython" not in sys.modules and sys.orig_argv[len(sys.orig_argv) - len(args):] == args


def reexec_with_huge_pages() -> None:
    """Replace this process by itself with GLIBC_TUNABLES asking for huge pages, unless that is already
    the case, the user opted out, the platform cannot do it, or the process is not its own command line.
    Call before jax is imported."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or os.environ.get(OPT_OUT) or not supported() or not runs_as_invoked():
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, TUNABLE])))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # an interpreter we cannot re-run: carry on with 4 KiB pages
        pass
