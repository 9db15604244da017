"""ml_collections recipes: default.py plus one per paper setting, picked by model name."""

from __future__ import annotations

import importlib
import re

import ml_collections

from train.configs import default


def recipe_for(model_name: str) -> ml_collections.ConfigDict:
    """The recipe `train/configs/<model_name>.py` when there is one, else default.py, with `model` set."""
    config = None
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model_name) and model_name != "default":
        try:
            config = importlib.import_module(f"train.configs.{model_name}").get_config()
        except ModuleNotFoundError as e:  # no recipe for this model (a broken recipe's own error propagates)
            if e.name != f"train.configs.{model_name}":
                raise
    config = config if config is not None else default.get_config()
    config.model = model_name
    return config
