"""ml_collections recipes, chosen from the model AND the dataset: `recipe_for(model, dataset=None)`.

  * No dataset (or 'embedded_mnist'): the laptop recipe of laptop.py, made for that model on the embedded
    MNIST subset (minutes on 2 CPU cores).
  * The model's paper dataset (PAPER_DATASET: imagenet2012, or MNIST for the LeNet family, where 'mnist' and
    any image folder count): the paper's recipe, one module per paper (PAPER_RECIPES), deviations named in
    its docstring.
  * Any other dataset: the laptop recipe with that dataset (a starting point, said so on the first lines).

Every recipe's `model_kwargs` lists the model's own options at their defaults (jaxcnn.models.model_options),
so `--config.model_kwargs.NAME=VALUE` exists for each of them. describe.py holds the text a run starts with and
the --list_models table.
"""

from __future__ import annotations

import importlib

import ml_collections

from train.configs import default, laptop

EMBEDDED = "embedded_mnist"

# Model or family -> the module of train/configs holding its paper recipe.
PAPER_RECIPES = {
    "alexnet_2012": "alexnet_2012", "alexnet": "alexnet_2012", "alexnet_bn": "alexnet_2012",
    "nin": "alexnet_2012", "zfnet": "zfnet", "vgg": "vgg16", "googlenet_2014": "googlenet_2014",
    "googlenet": "googlenet", "inception": "inception_v3", "resnet": "resnet50", "densenet": "densenet",
    "lenet5": "lenet5_mnist", "mlp": "lenet5_mnist", "lenet5_1998": "lenet5_1998_mnist",
}
PAPER_DATASET = {"lenet": "mnist"}  # family -> dataset; every other family's is imagenet2012


def _spec(model: str):
    from jaxcnn import models

    try:
        return models.get_spec(model)
    except ValueError:  # unknown: the run's set-up names the close matches in one line
        return None


def paper_recipe_name(model: str) -> str | None:
    """The module name of `model`'s paper recipe, or None."""
    spec = _spec(model)
    return PAPER_RECIPES.get(model) or (PAPER_RECIPES.get(spec.family) if spec else None)


def paper_dataset(model: str) -> str:
    spec = _spec(model)
    return PAPER_DATASET.get(spec.family if spec else "", "imagenet2012")


def is_paper_dataset(model: str, dataset: str) -> bool:
    """Whether `dataset` is the one `model`'s paper trained on (any image folder counts for MNIST: the full
    MNIST is usually had as files)."""
    wanted = paper_dataset(model)
    return dataset == wanted or (wanted == "mnist" and dataset.startswith("folder:"))


def with_model_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.model_kwargs` completed with every option of the model at its default (recipe values win)."""
    from jaxcnn.models.registry import model_options

    if _spec(config.model) is None:
        return config
    chosen = config.model_kwargs.to_dict()
    config.model_kwargs = ml_collections.ConfigDict({**model_options(config.model), **chosen})
    return config


def recipe_for(model: str, dataset: str | None = None) -> ml_collections.ConfigDict:
    """The recipe for training `model` on `dataset` (None: the embedded MNIST subset); see the module doc."""
    spec = _spec(model)
    family = spec.family if spec else ""
    if dataset and dataset != EMBEDDED and is_paper_dataset(model, dataset) and paper_recipe_name(model):
        config = importlib.import_module(f"train.configs.{paper_recipe_name(model)}").get_config(model)
    elif spec is not None and (family in laptop.FAMILY or model in laptop.MODELS):
        config = laptop.get_config(model, family, spec.fixed_size)
    else:  # a model registered outside the zoo (tests, notebooks): the plain defaults
        config = default.get_config()
    config.model = model
    if dataset:
        config.dataset = dataset
    return with_model_options(config)


def recipe_kind(config: ml_collections.ConfigDict) -> str:
    """'laptop', 'paper' or 'other' for the recipe `config` was made from (by its model and dataset)."""
    if config.dataset == EMBEDDED:
        return "laptop"
    if is_paper_dataset(config.model, config.dataset) and paper_recipe_name(config.model):
        return "paper"
    return "other"
