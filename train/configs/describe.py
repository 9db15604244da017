"""What a run does, as text: the first lines of a run (`describe`) and the --list_models table (`models_table`).

Pure functions of a config and the model facts; MEASURED (measured.json, written by benchmarks/recipes.py) holds
the wall time and accuracy each default run took on the 2-core machine the recipes were made on.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from train.config_check import dotted_value
from train.configs import paper_dataset, paper_recipe_name, recipe_kind

MEASURED = Path(__file__).with_name("measured.json")


def describe(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_devices: int = 1) -> str:
    """What a run of `config` does, in a few lines: dataset, input size, batch, steps, optimizer, schedule, and
    how to get the paper's setting instead. A pure function of the config and the model's input shape."""
    from jaxcnn import optim

    h, w, c = image_shape
    steps = (f"{config.num_train_steps} steps" if config.num_train_steps > 0 else f"{config.num_epochs} epochs")
    optimizer = config.optimizer + (f" momentum {config.momentum}" if config.optimizer == "sgd" and
                                    config.momentum else "")
    lr = optim.base_learning_rate(config)
    scaled = f" (= {config.lr_per_256} x batch {config.batch_size} / 256)" if config.get("lr_per_256", 0) > 0 else ""
    extras = f", weight decay {config.weight_decay:g}" if config.weight_decay else ""
    factors = dict(config.get("lr_multipliers", {}))  # per-module rates: "classifier_0 at 0.0204x"
    extras += "".join(f", {name} at {factor:.3g}x" for name, factor in sorted(factors.items()))
    options = {k: v for k, v in config.model_kwargs.items()}
    kind = recipe_kind(config)
    lines = [
        f"{config.model} on {config.dataset}: {kind} recipe",
        f"  input {h}x{w}x{c}, batch {config.batch_size} over {num_devices} device(s), {steps}",
        f"  {optimizer}, learning rate {lr:g}{scaled} with a {config.schedule} schedule{extras}",
    ]
    if options:
        lines.append("  model options: " + ", ".join(f"{k}={v}" for k, v in sorted(options.items())))
    paper = paper_recipe_name(config.model)
    if kind != "paper" and paper:
        dataset = paper_dataset(config.model)
        lines.append(f"  the paper's setting: --dataset={dataset} (train/configs/{paper}.py)")
    return "\n".join(lines)


def load_measured(path: Path = MEASURED) -> dict:
    """model -> the figures benchmarks/recipes.py stored for its default run ({} before any)."""
    return json.loads(path.read_text()) if path.exists() else {}


def changed_settings(measured: dict, config: ml_collections.ConfigDict) -> dict:
    """The settings a measurement recorded that the recipe has changed since: model options, and (recorded
    from 2026-12-03 on) the learning rate, the augmentation and the per-module learning-rate factors."""
    recorded = {**{f"model_kwargs.{k}": v for k, v in measured.get("model_options", {}).items()},
                **{f"augment.{k}": v for k, v in measured.get("augment", {}).items()},
                **({"learning_rate": measured["learning_rate"]} if "learning_rate" in measured else {})}
    changed = {}
    for key, value in recorded.items():
        now = dotted_value(config, key)
        if now != value and not (isinstance(value, list) and tuple(value) == now):  # JSON keeps tuples as lists
            changed[key.removeprefix("model_kwargs.")] = value
    if "lr_multipliers" in measured and measured["lr_multipliers"] != dict(config.get("lr_multipliers", {})):
        changed["lr_multipliers"] = measured["lr_multipliers"]  # as a whole: a factor added since counts too
    return changed


def models_table(names: list[str], measured: dict) -> str:
    """One line per model: its default (embedded MNIST) recipe's input size and steps, the minutes and best
    validation top-1 measured here (or 'not measured'), and its paper recipe."""
    from jaxcnn import models
    from train.configs import recipe_for

    rows = [("model", "input", "steps", "minutes", "best top-1", "paper recipe")]
    for name in names:
        config, spec = recipe_for(name), models.get_spec(name)
        size = config.image_size if config.image_size > 0 else spec.input_shape[0]
        steps = str(config.num_train_steps) if config.num_train_steps > 0 else f"{config.num_epochs} epochs"
        m = measured.get("embedded", {}).get(name)
        if m and m.get("best_top1") is not None:
            minutes, top1 = f"{m['wall_s'] / 60:.1f}", f"{100 * m['best_top1']:.2f}%"
            if (str(m["steps"]), m["batch_size"]) != (steps, config.batch_size):  # the recipe changed since
                top1 += f" (measured with {m['steps']} steps of {m['batch_size']})"
            elif changed := changed_settings(m, config):
                top1 += " (measured with " + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")"
        else:
            minutes, top1 = "not measured", ""
        paper = paper_recipe_name(name)
        paper_text = f"{paper} (--dataset={paper_dataset(name)})" if paper else "none"
        rows.append((name, f"{size}x{size}", steps, minutes, top1, paper_text))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
