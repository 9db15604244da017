"""torchvision ResNet/ResNeXt/Wide ResNet/DenseNet -> flax: same logits, block activations, gradients, BN updates.

Random torchvision weights (weights=None) with randomized BatchNorm parameters and running statistics, so that
a wrong eps, padding, layout or statistics mapping shows up; a non-square 64x96 batch of 2 keeps it cheap and
catches height/width mix-ups.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import ShapeMismatch, torchvision_to_flax
from jaxcnn.convert.tv_resnet import resnet_module_path, torch_running_var
from jaxcnn.models import get_model
from jaxcnn.models.resnet import BasicBlock, Bottleneck

SHAPE = (2, 64, 96, 3)  # NHWC: batch 2, non-square


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def torch_model(name: str):
    """A torchvision model with random weights and random, non-trivial BN affine parameters and statistics."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            c = bn.num_features
            bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.bias.copy_(0.1 * torch.randn(c, generator=gen))
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return model.eval()


def random_input(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(*SHAPE).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "densenet121"])
def test_eval_logits_match_torchvision(name):
    model = torch_model(name)
    x = random_input()
    with torch.no_grad():
        ref = model(nchw(x)).numpy()
    variables = torchvision_to_flax(name, model.state_dict())
    flax_model = get_model(name)
    out = jax.jit(lambda v, x: flax_model.apply(v, x))(variables, x)
    assert out.shape == (2, 1000)
    assert rel_err(out, ref) <= 1e-5


@pytest.fixture(scope="module")
def resnet50():
    """(torch model, converted variables, flax model) for the detailed ResNet-50 checks."""
    model = torch_model("resnet50")
    return model, torchvision_to_flax("resnet50", model.state_dict()), get_model("resnet50")


def test_resnet50_logits_blocks_and_input_gradient(resnet50):
    """Eval mode: logits, every block's output (torch hooks on layerX[i]) and d(logits . c)/dx."""
    model, variables, flax_model = resnet50
    x, cotangent = random_input(1), np.random.RandomState(2).randn(2, 1000).astype(np.float32)

    blocks = {}
    hooks = [block.register_forward_hook(lambda mod, args, out, key=f"{layer}_{i}": blocks.__setitem__(key, out))
             for layer in ("layer1", "layer2", "layer3", "layer4")
             for i, block in enumerate(getattr(model, layer))]
    x_torch = nchw(x).requires_grad_(True)
    ref = model(x_torch)
    (ref * torch.from_numpy(cotangent)).sum().backward()
    for hook in hooks:
        hook.remove()

    def loss(x, variables, cotangent):  # weights as arguments, not constants XLA would try to fold
        is_block = lambda module, _: isinstance(module, (BasicBlock, Bottleneck))
        logits, state = flax_model.apply(variables, x, capture_intermediates=is_block, mutable=["intermediates"])
        return jnp.sum(logits * cotangent), (logits, state["intermediates"])

    grad, (logits, intermediates) = jax.jit(jax.grad(loss, has_aux=True))(x, variables, cotangent)
    assert rel_err(logits, ref.detach().numpy()) <= 1e-5
    assert len(blocks) == 16 and set(intermediates) == set(blocks)
    for key, out in blocks.items():
        assert rel_err(intermediates[key]["__call__"][0], nhwc(out)) <= 1e-5, key
    assert rel_err(grad, nhwc(x_torch.grad)) <= 1e-4


def test_resnet50_train_mode_logits_and_running_stats(resnet50):
    """Train mode: batch-statistics logits, and the running statistics each framework keeps afterwards.

    Run in float64 on both sides: in train mode every BN renormalizes with statistics of a tiny batch
    (n = 12 values per channel in layer4), which compounds fp32 rounding block after block; torch fp32 itself
    is ~4e-5 away from torch fp64 here, so only float64 can show agreement to 1e-5.
    torch's running_var takes the unbiased batch variance, flax's the biased one: `torch_running_var`
    maps flax's update onto torch's with n = N*H*W per layer (see tv_resnet's docstring).
    """
    model32, variables32, _ = resnet50
    model = copy.deepcopy(model32).double().train()
    x = random_input(3).astype(np.float64)

    counts = {}  # torch BN module name -> values per channel in this batch
    bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for name, bn in bns.items():
        bn.register_forward_hook(lambda mod, args, out, key=name: counts.__setitem__(key, out[:, 0].numel()))
    with torch.no_grad():
        ref = model(nchw(x)).numpy()

    with jax.enable_x64(True):
        variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables32)
        flax_model = get_model("resnet50", dtype=jnp.float64)
        step = jax.jit(lambda v, x: flax_model.apply(v, x, train=True, mutable=["batch_stats"]))
        logits, state = jax.device_get(step(variables, x))
    assert rel_err(logits, ref) <= 1e-5

    def at(tree, name):
        for part in resnet_module_path(name):
            tree = tree[part]
        return tree

    biased_gap = 0.0
    for name, bn in bns.items():
        old, new = at(variables["batch_stats"], name), at(state["batch_stats"], name)
        torch_var = torch_running_var(old["var"], new["var"], counts[name])
        assert rel_err(new["mean"], bn.running_mean.numpy()) <= 1e-5, name
        assert rel_err(torch_var, bn.running_var.numpy()) <= 1e-5, name
        biased_gap = max(biased_gap, rel_err(new["var"], bn.running_var.numpy()))
    assert biased_gap > 1e-3  # flax's raw running variance does differ: the conversion is doing the work


def test_shape_mismatch_names_the_layer():
    state = torch_model("resnet18").state_dict()
    state["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 3, 3)
    with pytest.raises(ShapeMismatch, match=r"layer2_0/downsample_conv/kernel.*\(3, 3, 64, 128\).*\(1, 1, 64, 128\)"):
        torchvision_to_flax("resnet18", state)


def test_classifier_size_follows_the_state_dict():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    variables = torchvision_to_flax("resnet18", model.state_dict())
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)
    assert "num_batches_tracked" not in str(jax.tree_util.tree_structure(variables))
