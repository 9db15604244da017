"""`python -m jaxcnn.convert` writes an orbax checkpoint that training starts from, with the same outputs."""

import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import checkpoint  # noqa: E402
from jaxcnn.models import get_model  # noqa: E402


def run_convert(*args):
    return subprocess.run([sys.executable, "-m", "jaxcnn.convert", *args], capture_output=True, text=True,
                          timeout=600)


def test_torchvision_file_to_checkpoint_and_back(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), weights)
    out = tmp_path / "ckpt"
    done = run_convert("--from=torchvision", "--model=resnet18", f"--weights={weights}", f"--out={out}")
    assert done.returncode == 0, done.stderr
    assert "7 classes" in done.stdout

    variables, meta = checkpoint.load_variables(out)
    assert meta["model"] == "resnet18" and meta["num_classes"] == 7
    x = np.random.default_rng(0).standard_normal((2, 64, 48, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(get_model("resnet18", num_classes=7).apply)(variables, x))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-5

    again = run_convert("--from=torchvision", "--model=resnet18", f"--weights={weights}", f"--out={out}")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_wrong_architecture_is_one_line(tmp_path):
    weights = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    done = run_convert("--from=torchvision", "--model=vgg11", f"--weights={weights}", f"--out={tmp_path / 'o'}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "features_0" in lines[0]
    assert not (tmp_path / "o").exists()
