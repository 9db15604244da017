"""jaxcnn.summary: layer tables and totals against reference counts, multiply-adds against docs/reference.md."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import flax.linen as nn
import pytest

from jaxcnn import summary
from jaxcnn.models import get_spec, list_models

# docs/reference.md, "Compute": multiply-adds per 224x224 image (torchvision's "GFLOPS" column, really GMACs).
REFERENCE_GMACS = {"alexnet": 0.714, "resnet18": 1.814, "vgg11": 7.609}


class Wrap(nn.Module):
    """One layer with the models' `__call__(x, train)` signature."""

    layer: Any

    def __call__(self, x, train: bool = False):
        return self.layer(x)


def test_lenet5_rows_by_hand():
    s = summary.summarize_model("lenet5")
    assert s.params == get_spec("lenet5").params == 61_706 and s.state == 0
    rows = [(r.path, r.kind, r.output_shape, r.params) for r in s.rows]
    assert rows == [
        ("c1", "Conv", (1, 28, 28, 6), 5 * 5 * 6 + 6),
        ("c3", "Conv", (1, 10, 10, 16), 5 * 5 * 6 * 16 + 16),
        ("c5", "Conv", (1, 1, 1, 120), 5 * 5 * 16 * 120 + 120),
        ("f6", "Dense", (1, 84), 120 * 84 + 84),
        ("output", "Dense", (1, 10), 84 * 10 + 10),
    ]
    assert s.output_shape == (1, 10)


def test_resnet18_totals_and_depth():
    s = summary.summarize_model("resnet18")
    assert s.params == get_spec("resnet18").params == 11_689_512
    # Running mean and variance of every BatchNorm: 64 (stem) + 4x64 + (4+1)x128 + (4+1)x256 + (4+1)x512.
    assert s.state == 2 * (64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512) == 9_600
    assert sum(r.params for r in s.rows) == s.params  # the leaf rows cover every parameter once
    blocks = summary.summarize_model("resnet18", depth=1)
    assert sum(r.params for r in blocks.rows) == s.params
    assert len(blocks.rows) < len(s.rows)
    assert blocks.rows[-1].output_shape == (1, 1000)
    text = str(s)
    assert "Total params: 11,689,512" in text and "Total (params + state): 11,699,112" in text


def test_model_kwargs_reach_the_builder():
    # docs/reference.md: torchvision GoogLeNet with both auxiliary heads.
    assert summary.summarize_model("googlenet", depth=1, aux_logits=True).params == 13_004_888


def test_xla_counts_two_flops_per_multiply_add_and_skips_padding():
    dense = Wrap(nn.Dense(10, use_bias=False))
    assert summary.forward_xla_flops(dense, (100,)) == 2 * 100 * 10
    assert summary.forward_multiply_adds(dense, (100,)) == 100 * 10
    conv = Wrap(nn.Conv(8, (3, 3), padding=1, use_bias=False))
    # 3x3 taps over a 10x10 map padded by 1: per axis 10*3 - 2 taps land on real input.
    assert summary.forward_xla_flops(conv, (10, 10, 4)) == 2 * 4 * 8 * (10 * 3 - 2) ** 2
    # The conventional count (torchvision's) takes every tap: output pixels x kernel size.
    assert summary.forward_multiply_adds(conv, (10, 10, 4)) == 10 * 10 * 8 * 3 * 3 * 4
    grouped = Wrap(nn.Conv(8, (3, 3), strides=2, padding="VALID", feature_group_count=2))
    assert summary.forward_multiply_adds(grouped, (9, 9, 4)) == 4 * 4 * 8 * 3 * 3 * 2


@pytest.mark.parametrize("name", sorted(REFERENCE_GMACS))
def test_multiply_adds_match_reference(name):
    macs = summary.multiply_adds(name, 224)
    assert macs / 1e9 == pytest.approx(REFERENCE_GMACS[name], rel=2e-3)


def test_cli_summary_and_table(capsys):
    assert summary.main(["resnet18", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer4_1" in out and "11,689,512" in out
    assert summary.main(["--table"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + len(list_models())
    assert "| lenet5 | " in table[2 + list_models().index("lenet5")]
    assert any(line.startswith("| resnet18 |") and "| 11,689,512 | 224×224×3 |" in line for line in table)


def test_cli_unknown_model_exits_2_with_one_line():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "jaxcnn.summary", "resnet81"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'resnet81'" in lines[0] and "resnet18" in lines[0]
