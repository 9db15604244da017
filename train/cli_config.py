"""The command line's config for train.main: the recipe read from argv before the flags are parsed, the flags
laid over it, the range checks, and the lines that announce the run.

The default config is the recipe for --model and --dataset (train/configs/recipe.py), so the override flags
(--config.model_kwargs.aux_logits=...) are defined from that recipe's fields: the two are read from argv before
absl parses it, and an override the recipe lacks is caught here with one line instead of absl's usage dump.
"""

from __future__ import annotations

import re
from pathlib import Path

from ml_collections import config_flags

RECIPE_FILE = str(Path(__file__).parent / "configs" / "recipe.py")

# The flags that set the config field of the same name (over the recipe and its --config.* overrides).
OVERRIDES = ("model", "dataset", "data_dir", "num_epochs", "num_train_steps", "batch_size", "learning_rate",
             "seed", "parallel", "checkpoint_every_steps", "log_every_steps", "init_from")


def argv_value(name: str, argv: list[str]) -> str:
    """The value of --name in `argv` ('--name=V' or '--name V'; the last one wins), '' when absent."""
    value = ""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def multiplier_names(argv: list[str]) -> list[str]:
    """The module names of the --config.lr_multipliers.NAME flags in `argv`, in order, each once."""
    names = (re.match(r"--config\.lr_multipliers\.([^=.]+)(=|$)", arg) for arg in argv)
    return list(dict.fromkeys(match.group(1) for match in names if match))


def recipe_spec(argv: list[str]) -> str:
    """The --config default: the recipe file with the --model and --dataset of `argv`, and the modules that
    --config.lr_multipliers.NAME flags name (so that a flag is defined for each, as torch lets any parameter
    group have its own rate)."""
    names = "+".join(multiplier_names(argv))
    spec = f"{RECIPE_FILE}:{argv_value('model', argv)},{argv_value('dataset', argv)}"
    return f"{spec},lr={names}" if names else spec


def unknown_override(argv: list[str]) -> str | None:
    """One line about the first --config.PATH of `argv` that the recipe for its --model/--dataset lacks, or None
    (with --config=FILE the file's own fields are checked by the flag library)."""
    from ml_collections import ConfigDict

    from train.configs import recipe_for

    if argv_value("config", argv):
        return None
    model = argv_value("model", argv) or "lenet5"
    config = recipe_for(model, argv_value("dataset", argv) or None)
    for arg in argv:
        match = re.match(r"--(?:no)?config\.([^=]+)", arg)
        if not match:
            continue
        node, path = config, match.group(1).split(".")
        if path[0] == "lr_multipliers" and len(path) == 2:
            continue  # any module name: recipe_spec defines its flag, the optimizer checks the model has it
        for depth, part in enumerate(path):
            if isinstance(node, ConfigDict) and part in node:
                node = node[part]
                continue
            if path[:depth] == ["model_kwargs"]:
                options = ", ".join(sorted(config.model_kwargs)) or "none"
                return f"--config.{match.group(1)}: {model} has no option {part!r} (its options: {options})"
            return f"--config.{match.group(1)}: the recipe has no field {'.'.join(path[:depth + 1])!r}"
    return None


def build_config(flag_values):
    """The recipe for --model/--dataset (or --config=FILE) with the --config.* overrides, then the explicit flags.

    A learning rate given on the command line replaces a recipe's batch-scaled one (`lr_per_256`)."""
    config = flag_values["config"].value
    for name in OVERRIDES:
        if flag_values[name].present:
            config[name] = flag_values[name].value
    overrides = config_flags.get_override_values(flag_values["config"])
    if flag_values["learning_rate"].present or "learning_rate" in overrides:
        config.lr_per_256 = 0.0
    return config


def checked_config(flag_values):
    """build_config(), with every numeric field and flag in its range (train.config_check)."""
    from train import config_check

    config_check.validate_flags({name: flag_values[name].value for name in config_check.FLAG_RULES})
    config = build_config(flag_values)
    config_check.validate(config)
    return config


def announce(config) -> None:
    """Say what this run does (dataset, input, batch, steps, optimizer; the paper's setting) before it starts."""
    import jax

    from jaxcnn import models
    from train.configs import describe
    from train.setup import image_shape_for

    if jax.process_index() == 0:
        shape = image_shape_for(config, models.get_spec(config.model))
        devices = 1 if config.parallel == "single" else jax.device_count()
        print(describe.describe(config, shape, devices), flush=True)
