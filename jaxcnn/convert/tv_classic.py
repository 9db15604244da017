"""torchvision AlexNet and VGG (plain and BatchNorm) state_dicts -> flax variables.

Our `PlainCNN` names each layer after its torchvision index (`features.3` -> `features_3`), so the mapping
is by name; only the tensor layouts change:
- conv weight (O, I/groups, kH, kW) -> kernel (kH, kW, I/groups, O); linear weight (out, in) -> kernel (in, out)
- BatchNorm weight/bias -> params scale/bias; running_mean/running_var -> batch_stats mean/var.

torch stores the *unbiased* batch variance in `running_var`, flax the biased one in `var`; both use the stored
value the same way in eval (x - mean) / sqrt(var + eps), so copying running_var gives identical eval outputs.
Only the training-time update of the statistics differs (by n/(n-1) on the batch term), which does not matter
for converted weights. `num_batches_tracked` has no flax counterpart (momentum is fixed) and is dropped.
The first dense layer needs no permutation because these models flatten in torch's NCHW order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.convert import TORCHVISION_CONVERTERS
from jaxcnn.convert.common import check_shapes, conv_kernel, dense_kernel, expected_variables, to_numpy

VGG_NAMES = tuple(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn"))


def _group_by_module(state_dict: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """{'features.0.weight': w, ...} -> {'features_0': {'weight': w, ...}, ...}, keeping the dict order."""
    modules: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key, tensor in state_dict.items():
        module, _, leaf = key.rpartition(".")
        # a copy: torch's .numpy() shares memory, and the module's buffers keep changing in train mode
        modules[module.replace(".", "_")][leaf] = np.array(to_numpy(tensor), np.float32)
    return modules


def sequential_to_flax(state_dict: Mapping[str, Any]) -> dict:
    """Convert the state_dict of a torch model made of Conv2d / Linear / BatchNorm2d layers, module by module.

    The layer kind is read off the tensors: running statistics mean BatchNorm, a 4-d weight a convolution,
    a 2-d weight a linear layer.
    """
    params, stats = {}, {}
    for name, t in _group_by_module(state_dict).items():
        if "running_mean" in t:
            params[name] = {"scale": t["weight"], "bias": t["bias"]}
            stats[name] = {"mean": t["running_mean"], "var": t["running_var"]}
        elif "weight" in t and t["weight"].ndim in (2, 4):
            kernel = conv_kernel(t["weight"]) if t["weight"].ndim == 4 else dense_kernel(t["weight"])
            params[name] = {"kernel": kernel, **({"bias": t["bias"]} if "bias" in t else {})}
        else:
            raise ValueError(f"don't know how to convert torch module {name!r} with tensors {sorted(t)}")
    return {"params": params, **({"batch_stats": stats} if stats else {})}


def _num_classes(state_dict: Mapping[str, Any]) -> int | None:
    """Output count of the last linear layer (a fine-tuned head keeps its own class count)."""
    linear = [t for k, t in state_dict.items() if k.endswith("weight") and len(tuple(t.shape)) == 2]
    return int(linear[-1].shape[0]) if linear else None


def forward_order(model, input_shape) -> list[str]:
    """Names of the model's direct submodules in the order the forward pass calls them.

    (The variable dicts cannot tell: jax sorts dict keys, so 'classifier_0' would come before 'features_0'.)
    Traced abstractly with jax.eval_shape, so it costs no FLOPs.
    """
    order: list[str] = []

    def record(call, args, kwargs, context):
        path = context.module.path
        if context.method_name == "__call__" and len(path) == 1 and path[0] not in order:
            order.append(path[0])
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32)))
    return order


def expected_in_forward_order(model, input_shape) -> dict:
    """`expected_variables`, each collection's modules in forward order, so that `check_shapes` reports the
    first offending layer of the network (not 'features_10' before 'features_2')."""
    expected = expected_variables(model, input_shape)
    order = forward_order(model, input_shape)
    return {col: {m: tree[m] for m in order if m in tree} | tree for col, tree in expected.items()}


def convert_checked(model_name: str, state_dict: Mapping[str, Any]) -> dict:
    """Convert, then check every tensor against the variables our `model_name` expects (ShapeMismatch names
    the first layer that differs, with both shapes)."""
    from jaxcnn.models import get_model, get_spec

    spec = get_spec(model_name)
    variables = sequential_to_flax(state_dict)
    model = get_model(model_name, num_classes=_num_classes(state_dict) or spec.num_classes)
    check_shapes(variables, expected_in_forward_order(model, spec.input_shape))
    return variables


def alexnet_to_flax(model_name: str, state_dict: Mapping[str, Any]) -> dict:
    """torchvision `alexnet` -> our 'alexnet'. The paper variants have no torchvision weights."""
    if model_name != "alexnet":
        raise ValueError(f"torchvision has only 'alexnet', not {model_name!r}: 'alexnet_2012' has no published "
                         "torch weights and 'alexnet_bn' converts from Keras (jaxcnn.convert.keras_to_flax)")
    return convert_checked(model_name, state_dict)


def vgg_to_flax(model_name: str, state_dict: Mapping[str, Any]) -> dict:
    """torchvision `vgg11` ... `vgg19_bn` -> our model of the same name."""
    if model_name not in VGG_NAMES:
        raise ValueError(f"no torchvision VGG named {model_name!r}; supported: {', '.join(VGG_NAMES)}")
    return convert_checked(model_name, state_dict)


TORCHVISION_CONVERTERS["alexnet"] = alexnet_to_flax
TORCHVISION_CONVERTERS["vgg"] = vgg_to_flax
