"""torchvision GoogLeNet and Inception-v3 weights into flax variables.

The flax models name their modules as torchvision does, so conversion is a renaming plus layouts:
torch's `inception3a.branch2.1.conv.weight` becomes `params/inception3a/branch2_1/conv/kernel` (OIHW ->
HWIO), BatchNorm `weight`/`bias` become `scale`/`bias` and its running statistics `batch_stats` `mean`/`var`
(torch's running variance is already the one to use at inference; `num_batches_tracked` has no flax
counterpart). Linear weights are transposed; torchvision's aux `fc1` sees torch's NCHW flatten, which the flax
model reproduces, so no permutation is needed.

Auxiliary heads come along exactly when the state_dict has them (`aux1.*`/`aux2.*`, `AuxLogits.*`); build
the flax model with `aux_logits=has_aux(variables)` to match. The class count is read off `fc.weight`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxcnn.convert import TORCHVISION_CONVERTERS
from jaxcnn.convert.common import check_shapes, conv_kernel, dense_kernel, expected_variables, to_numpy

AUX_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
AUX_PARAM_NAMES = ("aux1", "aux2", "AuxLogits")


def _module_path(key: str) -> tuple[tuple[str, ...], str]:
    """'inception3a.branch2.1.conv.weight' -> (('inception3a', 'branch2_1', 'conv'), 'weight').

    A numeric part (an index into an nn.Sequential) joins the name before it, as the flax modules are named.
    """
    *modules, leaf = key.split(".")
    path: list[str] = []
    for part in modules:
        if part.isdigit():
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path), leaf


def _set(tree: dict, path: tuple[str, ...], leaf: str, value) -> None:
    for part in path:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def state_dict_to_variables(state_dict: Mapping[str, Any]) -> dict:
    """Rename and re-lay a torchvision Inception-family state_dict into {'params', 'batch_stats'}.

    A module with `running_mean` is a BatchNorm; otherwise a 4-d `weight` is a conv and a 2-d one a linear.
    """
    modules: dict[tuple[str, ...], dict[str, Any]] = {}
    for key, tensor in state_dict.items():
        path, leaf = _module_path(key)
        modules.setdefault(path, {})[leaf] = tensor
    params: dict = {}
    stats: dict = {}
    for path, tensors in modules.items():
        if "running_mean" in tensors:
            _set(params, path, "scale", to_numpy(tensors["weight"]))
            _set(params, path, "bias", to_numpy(tensors["bias"]))
            _set(stats, path, "mean", to_numpy(tensors["running_mean"]))
            _set(stats, path, "var", to_numpy(tensors["running_var"]))
            continue
        weight = tensors["weight"]
        _set(params, path, "kernel", conv_kernel(weight) if weight.ndim == 4 else dense_kernel(weight))
        if "bias" in tensors:
            _set(params, path, "bias", to_numpy(tensors["bias"]))
    return {"params": params, "batch_stats": stats}


def has_aux(variables: Mapping) -> bool:
    """Whether converted variables carry auxiliary heads (build the model with `aux_logits=` this)."""
    return any(name in variables["params"] for name in AUX_PARAM_NAMES)


def convert_inception_family(model_name: str, state_dict: Mapping[str, Any]) -> dict:
    """torchvision `googlenet` / `inception_v3` state_dict -> flax variables, shapes checked per layer."""
    from jaxcnn.models import get_model, get_spec

    if model_name not in AUX_PREFIXES:
        raise ValueError(
            f"no torchvision weights fit {model_name!r}: torchvision has only 'googlenet' (BatchNorm, 3x3 "
            f"'5x5' branches) and 'inception_v3'; googlenet_2014 is the paper's network (biases, no BatchNorm, "
            f"real 5x5 branches, LRN) and has to be trained from scratch")
    aux = any(key.startswith(AUX_PREFIXES[model_name]) for key in state_dict)
    num_classes = int(to_numpy(state_dict["fc.weight"]).shape[0])
    variables = state_dict_to_variables(state_dict)
    model = get_model(model_name, num_classes=num_classes, aux_logits=aux)
    expected = expected_variables(model, get_spec(model_name).input_shape)
    for collection in ("params", "batch_stats"):
        check_shapes(variables[collection], expected[collection], collection)
    return variables


TORCHVISION_CONVERTERS["googlenet"] = convert_inception_family
TORCHVISION_CONVERTERS["inception_v3"] = convert_inception_family
