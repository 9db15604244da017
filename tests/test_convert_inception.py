"""torchvision GoogLeNet and Inception-v3 against the converted flax models, on random weights.

Both torch models get random weights (torchvision's own init), random BatchNorm affines and non-trivial
running statistics (those of a calibration batch, then perturbed), so every parameter and statistic matters.
GoogLeNet is compared in depth: eval logits, every Inception block's output, input gradients, and one training
step's logits, aux logits and updated running statistics. Inception-v3 is compared on eval logits.
Inputs are small and non-square to exercise the ceil-mode and valid pooling arithmetic on both axes.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import ShapeMismatch, torchvision_to_flax  # noqa: E402
from jaxcnn.convert.tv_inception import has_aux  # noqa: E402
from jaxcnn.models import get_model  # noqa: E402
from jaxcnn.models.googlenet import Inception  # noqa: E402

GOOGLENET_BLOCKS = ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c", "inception4d",
                    "inception4e", "inception5a", "inception5b"]


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def nhwc(t) -> np.ndarray:
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def randomize_batch_norms(model, calibration) -> None:
    """Random BN affines, running stats of `calibration` (momentum 1 for one pass), then perturbed."""
    gen = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=gen))
            bn.momentum = 1.0
        model.train()
        model(calibration)
        for bn in bns:
            bn.momentum = 0.1
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.1 * std * torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.mul_(0.8 + 0.45 * torch.rand(bn.running_var.shape, generator=gen))
    model.eval()


@pytest.fixture(scope="module")
def torch_googlenet():
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    randomize_batch_norms(model, torch.randn(4, 3, 96, 112))
    return model


@pytest.fixture(scope="module")
def googlenet_variables(torch_googlenet):
    return torchvision_to_flax("googlenet", torch_googlenet.state_dict())


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 96, 112, generator=torch.Generator().manual_seed(2))


def test_googlenet_eval_logits_and_every_block(torch_googlenet, googlenet_variables, batch):
    captured = {}
    hooks = [getattr(torch_googlenet, name).register_forward_hook(
        lambda mod, inp, out, name=name: captured.__setitem__(name, nhwc(out))) for name in GOOGLENET_BLOCKS]
    with torch.no_grad():
        ref = torch_googlenet(batch).numpy()
    for hook in hooks:
        hook.remove()

    model = get_model("googlenet", aux_logits=True)
    is_block = lambda mdl, method: method == "__call__" and isinstance(mdl, Inception)  # noqa: E731
    logits, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=is_block))(
        googlenet_variables, nhwc(batch))
    assert logits.shape == (2, 1000)
    assert rel_err(logits, ref) <= 1e-5
    blocks = state["intermediates"]
    assert sorted(blocks) == sorted(GOOGLENET_BLOCKS)
    for name in GOOGLENET_BLOCKS:
        out = blocks[name]["__call__"][0]
        assert out.shape == captured[name].shape, name
        assert rel_err(out, captured[name]) <= 1e-5, name


def test_googlenet_input_gradients(torch_googlenet, googlenet_variables, batch):
    weights = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))
    x = batch.clone().requires_grad_(True)
    (torch_googlenet(x) * weights).sum().backward()

    model = get_model("googlenet", aux_logits=True)
    objective = lambda x: jnp.sum(model.apply(googlenet_variables, x) * weights.numpy())  # noqa: E731
    grad = jax.jit(jax.grad(objective))(nhwc(batch))
    assert rel_err(grad, nhwc(x.grad)) <= 1e-4


def test_googlenet_train_step_logits_aux_and_running_stats(torch_googlenet, googlenet_variables, batch):
    """Train mode with dropout off on both sides: batch-statistics BN, both aux heads, updated stats.

    torch updates running_var with the unbiased batch variance v*n/(n-1) and momentum 0.1; flax with the
    biased v and momentum 0.9 (same weighting). With the same old stats r and n = N*H*W values per channel:
      torch: r' = 0.9 r + 0.1 v n/(n-1)        flax: r'' = 0.9 r + 0.1 v = 0.9 r + (r' - 0.9 r)(n-1)/n
    Running means follow the same rule on both sides.
    """
    net = copy.deepcopy(torch_googlenet)
    net.dropout.p = net.aux1.dropout.p = net.aux2.dropout.p = 0.0
    bns = {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    count = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: count.__setitem__(
        name, inp[0].shape[0] * inp[0].shape[2] * inp[0].shape[3])) for name, m in bns.items()]
    old = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in bns.items()}
    net.train()
    with torch.no_grad():
        ref = net(batch)
    for hook in hooks:
        hook.remove()

    model = get_model("googlenet", aux_logits=True, dropout=0.0, aux_dropout=0.0)
    logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats", "aux"]))(
        googlenet_variables, nhwc(batch))
    assert rel_err(logits, ref.logits.numpy()) <= 1e-5
    assert rel_err(state["aux"]["aux1"][0], ref.aux_logits1.numpy()) <= 1e-5
    assert rel_err(state["aux"]["aux2"][0], ref.aux_logits2.numpy()) <= 1e-5

    assert len(bns) == 57 + 2  # 57 BasicConv2d in the trunk, one per aux head
    for name, bn in bns.items():
        stats = _flax_bn_stats(state["batch_stats"], name)
        n = count[name]
        old_var = old[name][1].numpy()
        expected_var = 0.9 * old_var + (bn.running_var.numpy() - 0.9 * old_var) * (n - 1) / n
        assert not np.allclose(stats["var"], old_var), name  # the step did move the statistics
        assert rel_err(stats["mean"], bn.running_mean.numpy()) <= 1e-5, name
        assert rel_err(stats["var"], expected_var) <= 1e-5, name


def _flax_bn_stats(batch_stats, torch_name: str):
    """The flax batch_stats of torch BN module `torch_name` ('inception3a.branch2.1.bn')."""
    from jaxcnn.convert.tv_inception import _module_path

    path, leaf = _module_path(torch_name + ".x")
    node = batch_stats
    for part in path:
        node = node[part]
    return node


def test_googlenet_without_aux_heads(torch_googlenet):
    """A state_dict without aux heads (torchvision's pretrained layout) converts to the 6,624,904-param net."""
    state = {k: v for k, v in torch_googlenet.state_dict().items() if not k.startswith(("aux1.", "aux2."))}
    variables = torchvision_to_flax("googlenet", state)
    assert not has_aux(variables)
    assert sum(np.size(p) for p in jax.tree_util.tree_leaves(variables["params"])) == 6_624_904


def test_googlenet_converter_refuses_the_paper_network_and_names_bad_shapes(torch_googlenet):
    state = torch_googlenet.state_dict()
    with pytest.raises(ValueError, match="googlenet_2014"):
        torchvision_to_flax("googlenet_2014", state)
    bad = dict(state)
    bad["inception4c.branch3.1.conv.weight"] = torch.zeros(64, 24, 5, 5)  # the paper's real 5x5
    with pytest.raises(ShapeMismatch, match=r"inception4c/branch3_1/conv/kernel.*\(5, 5, 24, 64\).*\(3, 3, 24, 64\)"):
        torchvision_to_flax("googlenet", bad)


def test_inception_v3_eval_logits():
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    size = (83, 97)  # just above the 75x75 minimum, non-square
    randomize_batch_norms(net, torch.randn(4, 3, 299, 299))  # at 299 so the aux head is calibrated too
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = net(x).numpy()

    variables = torchvision_to_flax("inception_v3", net.state_dict())
    assert has_aux(variables)
    model = get_model("inception_v3", aux_logits=True)
    logits = jax.jit(model.apply)(variables, nhwc(x))
    assert logits.shape == (2, 1000)
    assert rel_err(logits, ref) <= 1e-5
