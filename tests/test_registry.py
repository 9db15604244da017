"""The registry contract (docs/architecture.md): sorted names, refused duplicates, close matches, model facts."""

import pytest

from jaxcnn.models import get_model, get_spec, list_models, register
from jaxcnn.models.registry import _REGISTRY

TORCHVISION_NAMES = ["alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "vgg19_bn", "googlenet", "inception_v3",
                     "resnet18", "resnet50", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
                     "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "densenet121", "densenet161",
                     "densenet169", "densenet201"]
PAPER_NAMES = ["mlp", "lenet5", "lenet5_1998", "alexnet_2012", "alexnet_bn", "zfnet", "nin", "googlenet_2014"]


def test_every_family_is_registered_under_its_torchvision_or_paper_name():
    # A test that loads the tiny test model's config in this worker registers it (family "test"): not counted.
    names = [n for n in list_models() if get_spec(n).family != "test"]
    assert names == sorted(names)
    missing = sorted(set(TORCHVISION_NAMES + PAPER_NAMES) - set(names))
    assert not missing, missing
    assert len(names) == 33


def test_duplicates_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        register("resnet18", input_shape=(1, 1, 1), min_size=1, num_classes=1, paper="", year=0, params=0)(
            lambda **kw: None)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet51'.*resnet50"):
        get_model("resnet51")
    with pytest.raises(ValueError, match=r"did you mean .*vgg16_bn"):
        get_spec("vgg16bn")


@pytest.mark.parametrize("name", sorted(_REGISTRY))
def test_facts_agree_with_the_module(name):
    """The registered facts are the module's own: minimum size, fixed head, default classes."""
    spec = get_spec(name)
    model = get_model(name)
    assert model.name == name
    assert model.num_classes == spec.num_classes
    assert type(model).min_size == spec.min_size
    assert getattr(type(model), "fixed_size", False) == spec.fixed_size
    assert spec.input_shape[0] >= spec.min_size and spec.input_shape[2] in (1, 3)
    assert 1986 <= spec.year <= 2017 and spec.paper
    assert spec.params is None or spec.params > 10_000
