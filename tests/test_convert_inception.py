"""torchvision GoogLeNet and Inception-v3 against the converted flax models, on random weights.

Both torch models get random weights (torchvision's own init), random BatchNorm affines and non-trivial
running statistics (those of a calibration batch, then perturbed), so every parameter and statistic matters.
GoogLeNet is compared in depth: eval logits, every Inception block's output, input gradients, and one training
step's logits, aux logits and updated running statistics. Inception-v3 is compared on eval logits.
Inputs are small and non-square to exercise the ceil-mode and valid pooling arithmetic on both axes.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import ShapeMismatch, torchvision_to_flax
from jaxcnn.convert.tv_inception import _module_path, has_aux
from jaxcnn.models import get_model
from jaxcnn.models.googlenet import Inception

# Each graph runs once on a tiny batch, so compile time is what counts: XLA:CPU's older (non-MLIR) fusion
# emitters with LLVM at -O0 compile these graphs about 4x faster (either option alone does not help).
jit = functools.partial(jax.jit, compiler_options={"xla_cpu_use_fusion_emitters": False,
                                                  "xla_backend_optimization_level": 0,
                                                  "xla_llvm_disable_expensive_passes": True})

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


def torch_run(net, x, block_names=(), cotangent=None):
    """Logits (or torchvision's train-mode tuple), NHWC block outputs and, with `cotangent`, d<logits, c>/dx."""
    captured = {}
    hooks = [getattr(net, name).register_forward_hook(
        lambda mod, inp, out, name=name: captured.__setitem__(name, nhwc(out))) for name in block_names]
    x = x.clone().requires_grad_(cotangent is not None)
    with torch.set_grad_enabled(cotangent is not None):
        out = net(x)
        if cotangent is not None:
            (out * cotangent).sum().backward()
    for hook in hooks:
        hook.remove()
    return out, captured, (None if cotangent is None else nhwc(x.grad))


def to_float64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def test_googlenet_float32_eval_logits(torch_googlenet, googlenet_variables, batch):
    """fp32 against fp32, with the float64 torch forward as the referee.

    On random weights this network amplifies fp32 rounding ~1.35x per Inception block: torch's own fp32
    logits are 5e-6..1e-5 (relative) away from its float64 logits, and so are flax's. The exact equivalence
    check is the float64 one below; here flax must be as accurate as torch and within 2e-5 of it.
    """
    ref32 = torch_run(torch_googlenet, batch)[0].detach().numpy()
    ref64 = torch_run(copy.deepcopy(torch_googlenet).double(), batch.double())[0].detach().numpy()
    logits = jit(get_model("googlenet", aux_logits=True).apply)(googlenet_variables, nhwc(batch))
    assert logits.shape == (2, 1000)
    assert rel_err(logits, ref32) <= 2e-5
    assert rel_err(logits, ref64) <= 2 * rel_err(ref32, ref64)


def test_googlenet_float64_every_block_and_input_gradients(torch_googlenet, googlenet_variables, batch):
    """Both sides in float64, so rounding is out of the way: every Inception block's output, the logits and
    the input gradient of sum(logits * c) must agree to float64 precision (logits are returned as float32).

    (torch's default fp32 CPU backward through oneDNN is ~1e-2 away from its own float64 gradient on this
    network, while flax fp32, and torch fp32 with oneDNN off, are ~1e-6 away: float64 is the fair referee.)
    """
    cotangent = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))
    ref, blocks_ref, grad_ref = torch_run(copy.deepcopy(torch_googlenet).double(), batch.double(),
                                          GOOGLENET_BLOCKS, cotangent.double())
    is_block = lambda mdl, method: method == "__call__" and isinstance(mdl, Inception)
    with jax.enable_x64(True):
        model = get_model("googlenet", aux_logits=True, dtype=jnp.float64)
        variables = to_float64(googlenet_variables)

        def forward_and_grad(x, c):
            forward = lambda x: model.apply(variables, x, capture_intermediates=is_block)
            logits, vjp, state = jax.vjp(forward, x, has_aux=True)
            return logits, state["intermediates"], vjp(c)[0]

        logits, blocks, grad = jit(forward_and_grad)(nhwc(batch.double()), cotangent.numpy())
    assert rel_err(logits, ref.detach().numpy()) <= 1e-6  # the float32 cast of the returned logits
    assert sorted(blocks) == sorted(GOOGLENET_BLOCKS)
    for name in GOOGLENET_BLOCKS:
        out = blocks[name]["__call__"][0]
        assert out.dtype == np.float64 and out.shape == blocks_ref[name].shape, name
        assert rel_err(out, blocks_ref[name]) <= 1e-10, name
    assert grad.dtype == np.float64
    assert rel_err(grad, grad_ref) <= 1e-10


def test_googlenet_train_step_logits_aux_and_running_stats(torch_googlenet, googlenet_variables, batch):
    """Train mode in float64 with dropout off on both sides: batch-statistics BN, both aux heads and the
    updated running statistics.

    torch updates running_var with the unbiased batch variance v*n/(n-1) and momentum 0.1; flax with the
    biased v and momentum 0.9 (the same weighting). With the same old stats r and n = N*H*W values/channel:
      torch: r' = 0.9 r + 0.1 v n/(n-1)        flax: r'' = 0.9 r + 0.1 v = 0.9 r + (r' - 0.9 r)(n-1)/n
    Running means follow the same rule on both sides.
    """
    net = copy.deepcopy(torch_googlenet).double()
    net.dropout.p = net.aux1.dropout.p = net.aux2.dropout.p = 0.0
    bns = {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(bns) == 57 + 2  # 3 stem + 9 blocks x 6 BasicConv2d, one per aux head
    count = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: count.__setitem__(
        name, inp[0].shape[0] * inp[0].shape[2] * inp[0].shape[3])) for name, m in bns.items()]
    old_var = {name: m.running_var.clone().numpy() for name, m in bns.items()}
    net.train()
    ref = torch_run(net, batch.double())[0]
    for hook in hooks:
        hook.remove()

    with jax.enable_x64(True):
        model = get_model("googlenet", aux_logits=True, dropout=0.0, aux_dropout=0.0, dtype=jnp.float64)
        step = jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats", "aux"]))
        logits, state = step(to_float64(googlenet_variables), nhwc(batch.double()))
    assert rel_err(logits, ref.logits.detach().numpy()) <= 1e-6  # float32 logits
    assert rel_err(state["aux"]["aux1"]["logits"][0], ref.aux_logits1.detach().numpy()) <= 1e-6
    assert rel_err(state["aux"]["aux2"]["logits"][0], ref.aux_logits2.detach().numpy()) <= 1e-6

    for name, bn in bns.items():
        stats = _flax_node(state["batch_stats"], name)
        n, old = count[name], old_var[name]
        expected_var = 0.9 * old + (bn.running_var.numpy() - 0.9 * old) * (n - 1) / n
        assert rel_err(stats["var"], old) > 1e-3, name  # the step did move the statistics
        assert rel_err(stats["mean"], bn.running_mean.numpy()) <= 1e-10, name
        assert rel_err(stats["var"], expected_var) <= 1e-10, name


def _flax_node(tree, torch_module_name: str):
    """The flax subtree of torch module `torch_module_name` ('inception3a.branch2.1.bn')."""
    for part in _module_path(torch_module_name + ".weight")[0]:
        tree = tree[part]
    return tree


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
    aux, net.AuxLogits = net.AuxLogits, None  # the aux head cannot run below 299x299 (nor does it in eval)
    randomize_batch_norms(net, torch.randn(4, 3, *size))
    net.AuxLogits = aux
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = net(x).numpy()

    variables = torchvision_to_flax("inception_v3", net.state_dict())
    assert has_aux(variables)
    model = get_model("inception_v3", aux_logits=True)
    logits = jit(model.apply)(variables, nhwc(x))
    assert logits.shape == (2, 1000)
    print("inception_v3 fp32 logits rel err", rel_err(logits, ref))
    assert rel_err(logits, ref) <= 1e-5
