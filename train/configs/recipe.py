"""The config file `train.main` loads by default: `recipe.py:MODEL,DATASET` -> `recipe_for(MODEL, DATASET)`.

Loading the recipe as the --config file (rather than default.py) defines an override flag for every field of
that model's recipe, `--config.model_kwargs.NAME` included. A last field, `recipe.py:MODEL,DATASET,lr=A+B`, names
modules the command line gives a learning-rate factor (`--config.lr_multipliers.A=0.1`): each gets a field
(factor 1, which the flag then replaces) unless the recipe already sets one.
"""

from train.configs import recipe_for


def get_config(arg: str = "lenet5,"):
    model, _, dataset = arg.partition(",")
    dataset, _, names = dataset.rpartition(",lr=") if ",lr=" in dataset else (dataset, "", "")
    config = recipe_for(model or "lenet5", dataset or None)
    for name in filter(None, names.split("+")):
        if name not in config.lr_multipliers:
            config.lr_multipliers[name] = 1.0
    return config
