"""torchvision ResNet / ResNeXt / Wide ResNet / DenseNet state_dicts -> flax {'params', 'batch_stats'}.

The flax models name their modules after torchvision's, so conversion is a renaming plus the layout changes:
conv weight (O, I/g, kH, kW) -> kernel (kH, kW, I/g, O); linear weight (out, in) -> kernel (in, out);
BN weight/bias -> scale/bias in `params`, running_mean/running_var -> mean/var in `batch_stats`.
torch's `num_batches_tracked` counter has no flax counterpart and is dropped.

Running statistics, eval and train
----------------------------------
In eval mode both frameworks normalize with the stored running mean/var, so they are copied unchanged and
eval-mode outputs agree to fp32 rounding. In train mode both normalize with the *biased* batch variance
v_b (so train-mode outputs agree too), but the running-variance updates differ:

    torch (momentum m = 0.1):        var_t' = (1 - m) * var + m * v_b * n / (n - 1)   (unbiased)
    flax  (momentum 0.9 = 1 - m):    var_f' = (1 - m) * var + m * v_b                 (biased)

with n = N*H*W the number of values per channel at that BN layer. The running means update identically.
So one flax step maps to torch's running variance by rescaling the step's increment:

    var_t' = (1 - m) * var + (var_f' - (1 - m) * var) * n / (n - 1)

which `torch_running_var` computes (the tests check it against torch to 1e-5). The gap is a factor of
n / (n - 1) on the new-batch term: negligible for large batches, visible for tiny late-stage maps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxcnn.convert import TORCHVISION_CONVERTERS
from jaxcnn.convert.common import check_shapes, conv_kernel, dense_kernel, expected_variables, to_numpy


def resnet_module_path(torch_module: str) -> list[str]:
    """torchvision ResNet module name -> flax path: 'layer2.0.downsample.1' -> ['layer2_0', 'downsample_bn']."""
    name = re.sub(r"^layer(\d+)\.(\d+)", r"layer\1_\2", torch_module)
    name = name.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
    return name.split(".")


def densenet_module_path(torch_module: str) -> list[str]:
    """torchvision DenseNet module name -> flax path: 'features.denseblock1.denselayer2.norm1' -> [...]."""
    return torch_module.removeprefix("features.").split(".")


def _leaf(param: str, value: np.ndarray) -> tuple[str, str, np.ndarray]:
    """(collection, flax leaf name, array) for one torch tensor of a conv, linear or BN layer."""
    if param == "running_mean":
        return "batch_stats", "mean", value
    if param == "running_var":
        return "batch_stats", "var", value
    if param == "bias":
        return "params", "bias", value
    if param == "weight":  # the rank tells conv (4), linear (2) and BatchNorm (1) apart
        if value.ndim == 4:
            return "params", "kernel", conv_kernel(value)
        if value.ndim == 2:
            return "params", "kernel", dense_kernel(value)
        return "params", "scale", value
    raise ValueError(f"unexpected torch parameter {param!r}")


def convert_state_dict(state_dict: Mapping[str, Any], module_path) -> dict:
    """Rename and re-layout every tensor; `module_path(torch_module_name)` gives the flax module path."""
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, tensor in state_dict.items():
        module, param = key.rsplit(".", 1)
        if param == "num_batches_tracked":
            continue
        collection, leaf, value = _leaf(param, to_numpy(tensor).astype(np.float32))
        node = variables[collection]
        for part in module_path(module):
            node = node.setdefault(part, {})
        node[leaf] = value
    return variables


def torchvision_to_flax(model_name: str, state_dict: Mapping[str, Any]) -> dict:
    """Convert a torchvision resnet*/resnext*/wide_resnet*/densenet* state_dict into flax variables.

    The class count is read off the classifier; every shape is checked against the flax model
    (`ShapeMismatch` names the first layer that does not fit, with both shapes).
    """
    from jaxcnn.models import get_model, get_spec

    is_densenet = model_name.startswith("densenet")
    variables = convert_state_dict(state_dict, densenet_module_path if is_densenet else resnet_module_path)
    spec = get_spec(model_name)
    head_bias = state_dict.get(f"{'classifier' if is_densenet else 'fc'}.bias")
    num_classes = spec.num_classes if head_bias is None else int(head_bias.shape[0])  # None: check_shapes says
    model = get_model(model_name, num_classes=num_classes)
    expected = expected_variables(model, (spec.min_size, spec.min_size, 3))
    check_shapes(variables, expected)
    return variables


def torch_running_var(old_var, flax_new_var, count: int, momentum: float = 0.1):
    """torch's running variance after one train step, from flax's (see the module docstring).

    `old_var` is the running variance before the step, `flax_new_var` flax's after it (momentum 1 - m),
    `count` the values per channel (N*H*W) at that layer, `momentum` torch's m.
    """
    kept = (1.0 - momentum) * old_var
    return kept + (flax_new_var - kept) * (count / (count - 1))


for _prefix in ("resnet", "resnext", "wide_resnet", "densenet"):
    TORCHVISION_CONVERTERS[_prefix] = torchvision_to_flax
