"""Every notebook runs top to bottom without an error cell, on a kernel that is this test's own Python.

The kernel spec is written into a temporary JUPYTER_PATH (pointing at sys.executable), so the notebooks run
in the venv that runs the tests whatever kernels are installed elsewhere; the repository root goes on
PYTHONPATH for a checkout that is not pip-installed. Notebooks are stored without outputs.
"""

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300
# CPU devices the kernel sees: one, like a laptop, except where the notebook is about several devices (the
# tests' own 8 forced devices would make every small batch pay for 8-way collectives on 2 cores).
DEVICES = {"04_colab_tpu": 2}
# What each notebook must print: its point, as a number that could come out wrong.
EXPECTED = {
    "01_quickstart": r"best validation top-1 0\.9\d\d at step",  # 300 LeNet-5 steps: over 90%
    # torchvision: 4.09 GFLOPS, 25.6 M; then one epoch of LeNet-5 in NNX (over 90% on held-out digits)
    "02_model_tour": (r"\| resnet50 \| 2016 \| 25\.56 M \| 4\.089 G \|"
                      r"[\s\S]*NNX LeNet-5, one epoch: .* validation top-1 0\.9\d\d"),
    "03_transfer_learning": r"backbone unchanged: True\nnew head: \(512, 4\)",
    "04_colab_tpu": r"resuming from step 40[\s\S]*checkpoints: \[40, 80\] - final step: 80",  # not restarted
}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A 'python3' kernel spec for sys.executable in a fresh JUPYTER_PATH; restores the environment after."""
    spec_dir = tmp_path_factory.mktemp("jupyter") / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)", "language": "python"}))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = str(spec_dir.parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    os.environ["MPLBACKEND"] = "Agg"  # plt.show() in a headless kernel: no window, no warning
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_notebooks_exist_without_outputs():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_quickstart.ipynb", "02_model_tour.ipynb", "03_transfer_learning.ipynb",
                     "04_colab_tpu.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        link = f"https://colab.research.google.com/github/jaxcnn/jaxcnn/blob/main/notebooks/{path.name}"
        assert link in nb.cells[0].source, f"{path.name} lacks its Open in Colab link"


def test_kernel_is_this_python(kernel_env):
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


def xla_flags(devices: int) -> str:
    """XLA_FLAGS with the forced host device count set to `devices`."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    return f"{flags.strip()} --xla_force_host_platform_device_count={devices}".strip()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env, tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", xla_flags(DEVICES.get(path.stem, 1)))  # read by the kernel at its start
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile workdirs go with the test's directory
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert re.search(EXPECTED[path.stem], text), text[-3000:]
