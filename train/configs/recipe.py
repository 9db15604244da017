"""The config file `train.main` loads by default: `recipe.py:MODEL,DATASET` -> `recipe_for(MODEL, DATASET)`.

Loading the recipe as the --config file (rather than default.py) defines an override flag for every field of
that model's recipe, `--config.model_kwargs.NAME` included.
"""

from train.configs import recipe_for


def get_config(arg: str = "lenet5,"):
    model, _, dataset = arg.partition(",")
    return recipe_for(model or "lenet5", dataset or None)
