"""jaxcnn.hugepages: the re-executed process really gets 2 MiB pages for malloc'd blocks; the opt-out keeps 4 KiB."""

import os
import subprocess
import sys

import pytest

from jaxcnn import hugepages

pytestmark = pytest.mark.skipif(not hugepages.supported(), reason="needs Linux, glibc and transparent huge pages")

# A 256 MiB block from glibc's malloc (a bytearray, not numpy, which advises huge pages on its own), touched
# page by page; then the process's AnonHugePages in kB and its GLIBC_TUNABLES.
PROGRAM = """
import re, sys
from jaxcnn import hugepages
hugepages.reexec_with_huge_pages()
import os
block = bytearray(256 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
smaps = open("/proc/self/smaps_rollup").read()
print(int(re.search(r"AnonHugePages:\\s+(\\d+)", smaps).group(1)), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


def run(**env) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)} | env
    out = subprocess.run([sys.executable, "-c", PROGRAM, "kept", "--args"], env=env, capture_output=True,
                         text=True, check=True).stdout.strip().split(maxsplit=2)
    return out


def test_reexec_backs_malloc_with_huge_pages():
    huge_kb, tunables, args = run()
    assert tunables == hugepages.TUNABLE
    assert args == "['kept', '--args']"  # same arguments after the re-exec
    if "[always]" not in hugepages.THP_MODE.read_text():  # with "always" even the control would get them
        assert int(huge_kb) >= 64 * 1024, huge_kb  # at least a quarter of the block on 2 MiB pages


def test_existing_tunables_are_kept_and_opt_out_respected():
    assert run(GLIBC_TUNABLES="glibc.malloc.arena_max=2")[1] == "glibc.malloc.arena_max=2:" + hugepages.TUNABLE
    huge_kb, tunables, _ = run(**{hugepages.OPT_OUT: "1"})
    assert tunables == "None"
    if "[madvise]" in hugepages.THP_MODE.read_text():
        assert int(huge_kb) < 16 * 1024, huge_kb  # 4 KiB pages: no 2 MiB page for the block


def test_a_kernel_running_the_script_is_not_replaced():
    """Under IPython (a notebook's `%run -m train.main`) the process stays as it is, with 4 KiB pages."""
    program = "import sys, types; sys.modules['IPython'] = types.ModuleType('IPython')\n" + PROGRAM
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == "None"
