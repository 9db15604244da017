"""Checks of a run's config before any work: every number in its range, and a resume that changes nothing.

`validate(config)` raises ValueError with one line naming the field, its value and the valid range for the
first number out of range (0 batches, negative periods, epochs that train nothing, absurd sizes, NaN rates).
It needs neither jax nor tensorflow, so bad input fails in a fraction of a second.

`training_changes(saved, config)` compares the config a workdir's checkpoint was made with against the
config of a rerun: the fields that would change the training (a resume could not continue it exactly) and
the safe ones (logging, checkpointing, evaluation, a longer run) that differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Iterator, Mapping

INT32_MAX = 2**31 - 1  # the train state counts steps in int32
MAX_BATCH = 2**20


@dataclasses.dataclass(frozen=True)
class Range:
    """Valid values of a numeric field: [low, high] (ends excluded where `open_low`/`open_high`), integers
    only with `integer`, plus the special values in `also` (e.g. -1 for "off" / "the default")."""

    low: float
    high: float
    integer: bool = False
    open_low: bool = False
    open_high: bool = False
    also: tuple = ()

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value in self.also and (isinstance(value, int) or not self.integer):
            return True
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        text = f"{kind} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        return " or ".join([*(str(v) for v in self.also), text])


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _steps(also: tuple = ()) -> Range:
    return Range(1, INT32_MAX, integer=True, also=also)


def _fraction(open_low=False, open_high=True) -> Range:
    return Range(0, 1, open_low=open_low, open_high=open_high)


# Every numeric config field (train/configs/default.py) and its valid values; tests/test_config_check.py
# makes sure no numeric field lacks a rule.
RULES: dict[str, Range] = {
    "num_classes": Range(1, 1_000_000, integer=True, also=(-1,)),
    "image_size": Range(1, 8192, integer=True, also=(-1,)),
    "crop_fraction": _fraction(open_low=True, open_high=False),
    "shuffle_buffer": Range(1, 100_000_000, integer=True),
    "batch_size": Range(1, MAX_BATCH, integer=True),
    "eval_batch_size": Range(1, MAX_BATCH, integer=True),
    "num_epochs": Range(1, 1_000_000, integer=True),
    "num_train_steps": _steps(also=(-1,)),
    "learning_rate": Range(0, 100, open_low=True),
    "lr_per_256": Range(0, 100),  # 0: off (learning_rate as given)
    "momentum": _fraction(),
    "b1": _fraction(),
    "b2": _fraction(),
    "eps": Range(0, 1, open_low=True),
    "rmsprop_decay": _fraction(),
    "weight_decay": _fraction(),
    "grad_clip_norm": Range(0, 1e6),
    "label_smoothing": _fraction(),
    "map_loss_j": Range(0, 1000),  # 0: off (plain cross-entropy)
    "aux_loss_weight": Range(0, 100),
    "warmup_epochs": Range(0, 1_000_000),
    "step_decay_epochs": Range(0, 1_000_000, open_low=True),
    "step_decay_factor": _fraction(open_low=True, open_high=False),
    "plateau_factor": _fraction(open_low=True),
    "plateau_patience": Range(0, 1_000_000, integer=True),
    "plateau_cooldown": Range(0, 1_000_000, integer=True),
    "seed": Range(0, INT32_MAX, integer=True),
    "steps_per_call": Range(1, 1024, integer=True, also=(-1,)),
    "max_consecutive_nonfinite": Range(1, 1_000_000, integer=True),
    "log_every_steps": _steps(also=(-1,)),
    "eval_every_steps": _steps(also=(-1,)),
    "eval_steps": _steps(also=(-1,)),
    "checkpoint_every_steps": _steps(),
    "keep_checkpoints": Range(1, 1_000_000, integer=True),
    "debug_nan_step": _steps(also=(-1,)),
    "augment.random_crop_padding": Range(0, 4096, integer=True),
    "augment.rotation_degrees": Range(0, 180),
    "augment.zoom": _fraction(),
    "augment.color_jitter": Range(0, 1),
    "augment.pca_lighting": Range(0, 10),
    # The numeric model options (jaxcnn.models.model_options) the recipes expose.
    "model_kwargs.dropout": _fraction(),
    "model_kwargs.aux_dropout": _fraction(),
    "model_kwargs.bn_epsilon": Range(0, 1, open_low=True),
    "model_kwargs.bn_momentum": _fraction(),
    "model_kwargs.bn_size": Range(1, 64, integer=True),
    "model_kwargs.branch3_kernel": Range(1, 15, integer=True),
    "model_kwargs.pool4_window": Range(1, 15, integer=True),
}
# Fields holding a sequence of numbers: a rule for each element.
ELEMENT_RULES: dict[str, Range] = {
    "piecewise_boundaries": Range(0, 1_000_000),  # epochs
    "piecewise_values": Range(0, 100),  # learning rates
    "augment.scale_jitter": Range(0, 8192, integer=True),  # (S_min, S_max) pixels; (0, 0): off
}
# Fields mapping names the user picks to numbers: a rule for each value.
MAPPING_RULES: dict[str, Range] = {
    "lr_multipliers": Range(0, 1000, open_low=True),  # a top-level module's factor on the learning rate
}
# The numeric flags that are not config fields (train/main.py).
FLAG_RULES: dict[str, Range] = {
    "peer_timeout": Range(0, 86_400, open_low=True),
    "num_processes": Range(1, 65_536, integer=True),
    "process_id": Range(0, 65_535, integer=True),
}


def numeric_fields(config: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every number or sequence of numbers in `config` (booleans aside)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from numeric_fields(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value
        elif isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            yield name, value


ABSENT = object()


def dotted_value(config: Mapping, dotted: str) -> Any:
    """The field's value, or ABSENT for a config without it (a hand-written --config file)."""
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return ABSENT
        node = node[part]
    return node


def _refuse(name: str, value: Any, rule: Range) -> ValueError:
    return ValueError(f"invalid {name}={value!r}: must be {rule.describe()}")


def validate(config: Mapping) -> None:
    """Raise ValueError (one line: field, value, valid range) for the first numeric field out of range."""
    for name, rule in RULES.items():
        value = dotted_value(config, name)
        if value is not ABSENT and not rule.accepts(value):
            raise _refuse(name, value, rule)
    for name, rule in ELEMENT_RULES.items():
        values = dotted_value(config, name)
        values = () if values is ABSENT else tuple(values)
        bad = [v for v in values if not rule.accepts(v)]
        if bad:
            raise ValueError(f"invalid {name}={values!r}: each must be {rule.describe()}")
    for name, rule in MAPPING_RULES.items():
        mapping = dotted_value(config, name)
        for key, value in ({} if mapping is ABSENT else mapping).items():
            if not rule.accepts(value):
                raise _refuse(f"{name}.{key}", value, rule)
    bounds = dotted_value(config, "piecewise_boundaries")
    bounds = () if bounds is ABSENT else tuple(bounds)
    if list(bounds) != sorted(bounds):
        raise ValueError(f"invalid piecewise_boundaries={bounds!r}: must not decrease")
    if dotted_value(config, "schedule") == "piecewise" and len(config["piecewise_values"]) != len(bounds) + 1:
        raise ValueError(f"invalid piecewise_values={tuple(config['piecewise_values'])!r}: the piecewise "
                         f"schedule needs one more value than piecewise_boundaries {bounds!r}")


def validate_flags(values: Mapping[str, Any]) -> None:
    """The same for each numeric flag outside the config (None: not given)."""
    for name, rule in FLAG_RULES.items():
        value = values.get(name)
        if value is not None and not rule.accepts(value):
            raise ValueError(f"invalid --{name}={value!r}: must be {rule.describe()}")
    # How the process flags fit together is jaxcnn.parallel.check_distributed_args's to say.


def rule_for(flag: str) -> Range | None:
    """The rule of a flag (`batch_size`, `config.augment.zoom`, `peer_timeout`), or None."""
    name = flag.removeprefix("config.")
    mapping = MAPPING_RULES.get(name.rsplit(".", 1)[0]) if "." in name else None
    return RULES.get(name) or ELEMENT_RULES.get(name) or FLAG_RULES.get(name) or mapping


def unparsable_flag_message(error: Exception) -> str:
    """One line for a flag value absl could not parse (`--batch_size=2.5`): the valid range when known."""
    match = re.match(r"flag --([\w.]+)=(.*?): ", str(error))
    rule = rule_for(match.group(1)) if match else None
    if rule is None:
        lines = str(error).strip().splitlines()
        return lines[0] if lines else type(error).__name__
    return f"invalid --{match.group(1)}={match.group(2)}: must be {rule.describe()}"


# Fields a resume may change without changing the training: periods of logs and checkpoints, where the data
# lies, the multi-device driver (pmap and shard_map compute the same steps), the steps per host call (the same
# steps to fp32 rounding, tests/test_training.py).
SAFE_FIELDS = frozenset({"log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "data_dir",
                         "parallel", "steps_per_call"})
# Safe unless the schedule reads them: the run's length shapes a cosine decay, and the evaluations drive
# reduce-on-plateau.
SAFE_UNLESS_SCHEDULE = {"num_epochs": "cosine", "num_train_steps": "cosine", "eval_every_steps": "plateau",
                        "eval_steps": "plateau", "eval_batch_size": "plateau", "eval_split": "plateau"}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{dotted name: value} of a nested config dict; a mapping field (MAPPING_RULES) stays one value, so that
    a name added to it or dropped from it is a change too."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and f"{prefix}{key}" not in MAPPING_RULES:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_safe(name: str, schedule: str) -> bool:
    return name in SAFE_FIELDS or (name in SAFE_UNLESS_SCHEDULE and SAFE_UNLESS_SCHEDULE[name] != schedule)


def training_changes(saved: Mapping, config: Mapping) -> tuple[list, list]:
    """([(field, old, new)] that change the training, [(field, old, new)] that are safe) between the config
    a checkpoint recorded (`saved`, plain JSON) and a rerun's. Fields the checkpoint did not record (added to
    the code since) are not compared."""
    old, new = flatten(saved), flatten(plain(config))
    differ = [(k, old[k], new[k]) for k in sorted(old) if k in new and old[k] != new[k]]
    schedule = old.get("schedule")
    safe = [d for d in differ if is_safe(d[0], schedule)]
    return [d for d in differ if d not in safe], safe


def describe_changes(changes: list, limit: int = 6) -> str:
    """'batch_size 32 -> 64, optimizer 'sgd' -> 'adam'' (the first `limit`, then how many more)."""
    text = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def plain(config: Mapping) -> dict:
    """`config` as JSON would give it back (tuples as lists, ConfigDicts as dicts): what checkpoints store."""
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(tree, default=str))
