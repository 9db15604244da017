"""Converted weights reproduce torchvision / Keras outputs (AlexNet, VGG, NiN, ZFNet, LeNet-5, MLP).

Every comparison is the relative error ||out - ref|| / ||ref|| of logits on the same random batch, with
random (not pretrained) weights and non-trivial BatchNorm statistics, against the 1e-5 bound.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.convert import ShapeMismatch, keras_to_flax, torchvision_to_flax
from jaxcnn.convert.tv_classic import convert_checked
from jaxcnn.models import get_model, get_spec

TOL = 1e-5


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def flax_logits(name: str, variables, x_nhwc: np.ndarray, num_classes: int, **kw) -> np.ndarray:
    model = get_model(name, num_classes=num_classes, **kw)
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x_nhwc)))


# --- torchvision -------------------------------------------------------------------------------------------

try:  # CI installs the torch extra; the Keras tests below run without it
    import torch
    import torchvision
except ImportError:
    torch = torchvision = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch + torchvision: pip install -e '.[torch]'")


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def torch_batch(shape, seed: int = 0) -> tuple["torch.Tensor", np.ndarray]:
    """A random NCHW torch batch and the same batch as NHWC numpy."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x, x.numpy().transpose(0, 2, 3, 1)


def torchvision_model(name: str, **kw):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kw)
    randomize_batchnorm(model)
    return model


# At (63, 70) and (32, 40) AlexNet's and VGG's features end in a 1x1 map, which the adaptive pool would copy
# over 6x6 / 7x7: there the pool is folded into the first dense layer's kernel (layers.PooledDense).
@needs_torch
@pytest.mark.parametrize("name, hw", [("alexnet", (127, 143)), ("vgg11", (64, 80)), ("vgg11_bn", (64, 80)),
                                      ("vgg16", (64, 80)), ("alexnet", (63, 70)), ("vgg11_bn", (32, 40))])
def test_torchvision_eval_logits_match(name, hw):
    model = torchvision_model(name).eval()
    x, x_nhwc = torch_batch((2, 3, *hw))
    with torch.no_grad():
        ref = model(x).numpy()
    variables = torchvision_to_flax(name, model.state_dict())
    assert rel_err(flax_logits(name, variables, x_nhwc, ref.shape[-1]), ref) <= TOL


@needs_torch
def test_vgg11_bn_train_mode_logits_and_running_stats_match():
    """Train mode (dropout off on both sides): logits from batch statistics, and the updated running stats.

    torch updates running_var with the unbiased batch variance (n/(n-1) times flax's biased one), both with
    weight 0.1 (flax momentum 0.9). So from the same start, flax's new var is
    0.9 v0 + (torch's new var - 0.9 v0) (n-1)/n, with n the values per channel at that BatchNorm.
    """
    model = torchvision_model("vgg11_bn", dropout=0.0).train()
    counts = {}  # BatchNorm module name -> values per channel in its batch
    for mod_name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda m, inp, out, k=mod_name: counts.__setitem__(
                k.replace(".", "_"), inp[0].numel() // inp[0].shape[1]))
    variables = torchvision_to_flax("vgg11_bn", model.state_dict())  # before the step: the starting stats
    x, x_nhwc = torch_batch((2, 3, 64, 80), seed=1)
    with torch.no_grad():
        ref = model(x).numpy()
    new_torch = torchvision_to_flax("vgg11_bn", model.state_dict())["batch_stats"]

    flax_model = get_model("vgg11_bn", dropout=0.0)
    out, updated = jax.jit(lambda v, x: flax_model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(x_nhwc))
    assert rel_err(out, ref) <= TOL
    assert set(counts) == set(updated["batch_stats"]) and len(counts) == 8
    for layer, n in counts.items():
        v0 = variables["batch_stats"][layer]["var"]
        expected_var = 0.9 * v0 + (new_torch[layer]["var"] - 0.9 * v0) * (n - 1) / n
        assert rel_err(updated["batch_stats"][layer]["mean"], new_torch[layer]["mean"]) <= TOL, layer
        assert rel_err(updated["batch_stats"][layer]["var"], expected_var) <= TOL, layer


@needs_torch
def test_folded_pool_gradients_match_torch_autograd():
    """vgg11 in train mode at 32x40 (a 1x1 map under the 7x7 adaptive pool, folded into classifier_0's kernel):
    the gradients of that kernel (all 25,088 rows), of the first conv and of the input match torch's."""
    model = torchvision_model("vgg11", dropout=0.0).train()
    x, x_nhwc = torch_batch((2, 3, 32, 40), seed=2)
    weights = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))  # loss = sum(logits * weights)
    x.requires_grad_(True)
    (model(x) * weights).sum().backward()
    variables = torchvision_to_flax("vgg11", model.state_dict())
    flax_model = get_model("vgg11", dropout=0.0)

    def loss(params, x):
        return jnp.sum(flax_model.apply({**variables, "params": params}, x, train=True) * weights.numpy())

    grads, x_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], jnp.asarray(x_nhwc))
    assert rel_err(grads["classifier_0"]["kernel"], model.classifier[0].weight.grad.numpy().T) <= TOL
    assert rel_err(grads["classifier_0"]["bias"], model.classifier[0].bias.grad.numpy()) <= TOL
    assert rel_err(grads["features_0"]["kernel"], model.features[0].weight.grad.numpy().transpose(2, 3, 1, 0)) <= TOL
    assert rel_err(x_grad, x.grad.numpy().transpose(0, 2, 3, 1)) <= TOL


@needs_torch
def test_converter_refuses_a_state_dict_of_another_model():
    vgg11 = torchvision_model("vgg11").state_dict()
    # vgg16 has a second 64-channel conv at features.2 where vgg11 already pools
    with pytest.raises(ShapeMismatch, match="features_2"):
        torchvision_to_flax("vgg16", vgg11)
    alexnet = torchvision_model("alexnet").state_dict()
    with pytest.raises(ShapeMismatch, match=r"features_0/kernel.*\(11, 11, 3, 64\).*\(3, 3, 3, 64\)"):
        torchvision_to_flax("vgg11", alexnet)
    # the paper variants share the 'alexnet' prefix but have no torchvision weights
    for name in ("alexnet_2012", "alexnet_bn"):
        with pytest.raises(ValueError, match="torchvision has only 'alexnet'"):
            torchvision_to_flax(name, alexnet)


@needs_torch
def test_converter_keeps_a_fine_tuned_class_count():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None, num_classes=7).eval()
    x, x_nhwc = torch_batch((1, 3, 63, 70))
    with torch.no_grad():
        ref = model(x).numpy()
    variables = torchvision_to_flax("alexnet", model.state_dict())
    assert variables["params"]["classifier_6"]["kernel"].shape == (4096, 7)
    assert rel_err(flax_logits("alexnet", variables, x_nhwc, 7), ref) <= TOL


# Models with no torchvision twin, rebuilt in torch from their papers with the same nn.Sequential indices:
# this checks our grouped convs, the paper's LRN, Caffe ceil-mode pooling and the NiN head against torch.


def torch_twin(name: str, num_classes: int):
    """The paper model `name` in torch, with our nn.Sequential indices."""
    nn = torch.nn

    class TorchPlainNet(nn.Module):
        def __init__(self, features, classifier=(), gap=False):
            super().__init__()
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(*classifier)
            self.gap = gap

        def forward(self, x):
            x = self.features(x)
            x = x.mean(dim=(2, 3)) if self.gap else torch.flatten(x, 1)
            return self.classifier(x)


    def lrn():  # torch divides alpha by n: 5 * 1e-4 is the paper's 1e-4 on the plain sum
        return nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)

    def pool(ceil=False):
        return nn.MaxPool2d(3, 2, ceil_mode=ceil)

    classifier = [nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
                  nn.Linear(4096, num_classes)]
    if name == "alexnet_2012":
        features = [nn.Conv2d(3, 96, 11, 4), nn.ReLU(), lrn(), pool(),
                    nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), lrn(), pool(),
                    nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
                    nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), pool()]
        return TorchPlainNet(features, classifier)
    if name == "zfnet":
        features = [nn.Conv2d(3, 96, 7, 2, 1), nn.ReLU(), lrn(), pool(True),
                    nn.Conv2d(96, 256, 5, 2), nn.ReLU(), lrn(), pool(True),
                    nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), pool(True)]
        return TorchPlainNet(features, classifier)

    def mlpconv(cin, cout, k, s=1, p=0):
        return [nn.Conv2d(cin, cout, k, s, p), nn.ReLU(), nn.Conv2d(cout, cout, 1), nn.ReLU(),
                nn.Conv2d(cout, cout, 1), nn.ReLU()]

    features = [*mlpconv(3, 96, 11, 4), pool(), *mlpconv(96, 256, 5, p=2), pool(),
                *mlpconv(256, 384, 3, p=1), pool(), nn.Dropout(), *mlpconv(384, num_classes, 3, p=1)]
    return TorchPlainNet(features, gap=True)


@needs_torch
@pytest.mark.parametrize("name, hw, num_classes", [("alexnet_2012", (227, 227), 10), ("zfnet", (224, 224), 10),
                                                   ("nin", (100, 121), 1000)])
def test_paper_models_match_a_torch_rebuild(name, hw, num_classes):
    torch.manual_seed(0)
    model = torch_twin(name, num_classes).eval()
    x, x_nhwc = torch_batch((1, 3, *hw))
    with torch.no_grad():
        ref = model(x).numpy()
    variables = convert_checked(name, model.state_dict())
    assert rel_err(flax_logits(name, variables, x_nhwc, ref.shape[-1]), ref) <= TOL


# --- Keras -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_models():
    """Keras models built once per module (keras_reference), keyed by our model name."""
    from jaxcnn.convert.keras import keras_reference

    built = {}

    def get(name):
        if name not in built:
            built[name] = randomize_keras_batchnorm(keras_reference(name))
        return built[name]

    return get


def randomize_keras_batchnorm(model, seed: int = 0):
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.5, 0.5, n),
                               rng.uniform(-0.5, 0.5, n), rng.uniform(0.5, 1.5, n)])
    return model


# Keras "Total params" includes the BatchNorm moving statistics; ours (the params collection) does not.
KERAS_COUNTS = {"mlp": 669_706, "lenet5": 61_706, "alexnet_bn": 62_381_096 + 2_752, "vgg16": 138_357_544}


@pytest.mark.parametrize("name", ["mlp", "lenet5", "alexnet_bn", "vgg16"])
def test_keras_logits_match(name, keras_models):
    kmodel = keras_models(name)
    assert kmodel.count_params() == KERAS_COUNTS[name]
    x = np.random.default_rng(0).standard_normal((1, *get_spec(name).input_shape)).astype(np.float32)
    ref = np.asarray(kmodel(x, training=False))
    variables = keras_to_flax(name, kmodel)
    assert rel_err(flax_logits(name, variables, x, ref.shape[-1]), ref) <= TOL


def test_keras_files_convert_like_the_model(keras_models, tmp_path):
    kmodel = keras_models("lenet5")
    direct = keras_to_flax("lenet5", kmodel)
    kmodel.save_weights(tmp_path / "lenet5.weights.h5")
    kmodel.save(tmp_path / "lenet5.keras")
    for path in (tmp_path / "lenet5.weights.h5", str(tmp_path / "lenet5.keras")):
        jax.tree_util.tree_map(np.testing.assert_array_equal, keras_to_flax("lenet5", path), direct)


def test_keras_converter_refuses_another_model(keras_models):
    with pytest.raises(ShapeMismatch, match="3 layers with weights"):
        keras_to_flax("lenet5", keras_models("mlp"))
    with pytest.raises(ValueError, match="no Keras converter"):
        keras_to_flax("vgg11", keras_models("mlp"))
