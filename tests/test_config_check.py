"""Every numeric flag and config field is checked before any work: through `python -m train.main`, a value out
of range (0, negative, fractional where an integer is needed, absurdly large) ends with one line naming the
field, the value and the valid range, exit status 1, no traceback and nothing written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from train import config_check
from train.configs import default, recipe_for

ROOT = Path(__file__).resolve().parents[1]
# The numeric flags that set config fields of the same name (train/main.py OVERRIDES).
FIELD_FLAGS = ("num_epochs", "num_train_steps", "batch_size", "learning_rate", "seed",
               "checkpoint_every_steps", "log_every_steps")


def bad_values(rule: config_check.Range) -> list:
    """0, a negative number, a fraction for integer fields and an absurd size: those the rule refuses."""
    candidates = [0, -3, *([2.5] if rule.integer else []), 10**12 if rule.integer else 1e30]
    return [v for v in candidates if not rule.accepts(v)]


def model_having(flag: str) -> list[str]:
    """["--model=M"] for a model option's flag (the first model that has the option) or a learning-rate factor's
    (classifier_0's, which vgg16_bn's recipe sets), else []."""
    if flag.startswith("config.lr_multipliers."):
        return ["--model=vgg16_bn"]
    option = flag.removeprefix("config.model_kwargs.")
    if option == flag:
        return []
    from jaxcnn.models import list_models, model_options

    return [f"--model={next(m for m in list_models() if option in model_options(m))}"]


def cases() -> list[tuple[str, str, str, object]]:
    """(flag, value as typed, field named in the error, value) for every numeric field and flag."""
    out = []
    for name, rule in config_check.RULES.items():
        for value in bad_values(rule):
            out.append((f"config.{name}", repr(value), name, value))
            if name in FIELD_FLAGS:
                out.append((name, repr(value), name, value))
    for name, rule in config_check.FLAG_RULES.items():
        for value in bad_values(rule):
            out.append((name, repr(value), f"--{name}", value))
    for name, rule in config_check.ELEMENT_RULES.items():
        for value in bad_values(rule):
            if isinstance(value, int) or not rule.integer:
                out.append((f"config.{name}", f"({value!r}, 9)", name, None))
    for name, rule in config_check.MAPPING_RULES.items():  # vgg16_bn's recipe sets classifier_0's factor
        for value in bad_values(rule):
            out.append((f"config.{name}.classifier_0", repr(value), f"{name}.classifier_0", value))
    out.append(("config.piecewise_boundaries", "(8, 5)", "piecewise_boundaries", None))  # must not decrease
    return out


CASES = cases()


def command(index: int, workdir: Path) -> list[str]:
    """The arguments to `python -m train.main` for case `index`."""
    flag, typed, _, _ = CASES[index]
    return [*model_having(flag), f"--{flag}={typed}", f"--workdir={workdir}"]


# Cases also run as their own `python -m train.main` process: one of each kind (a flag setting a field, a
# flag's own rule, an element of a sequence, a config field (a model option), a decreasing sequence). Those
# must come out the same through tests/cli_forks.py, which runs every case.
SUBPROCESS_CASES = sorted({next(i for i, c in enumerate(CASES) if c[0] == "batch_size"),
                           next(i for i, c in enumerate(CASES) if c[0] in config_check.FLAG_RULES),
                           next(i for i, c in enumerate(CASES) if c[3] is None),
                           next(i for i, c in enumerate(CASES) if c[0].startswith("config.model_kwargs.")),
                           len(CASES) - 1})
ENV = dict(os.environ, JAXCNN_NO_HUGE_PAGES="1")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case through the CLI, in one process that forks a `python -m train.main` per case (each ends
    before any work: one start-up for all instead of a second or more of imports each)."""
    base = tmp_path_factory.mktemp("bad_values")
    workdirs = [base / f"w{index}" for index in range(len(CASES))]
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_forks.py")], cwd=ROOT, env=ENV,
                          timeout=1800, input=json.dumps([command(i, w) for i, w in enumerate(workdirs)]),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    return [(subprocess.CompletedProcess([], r["returncode"], r["stdout"], r["stderr"]), workdir)
            for r, workdir in zip(results, workdirs)]


def test_every_numeric_field_has_a_rule():
    recipes = [default.get_config()] + [recipe_for(p.stem) for p in (ROOT / "train" / "configs").glob("*.py")
                                        if not p.stem.startswith("_")]
    for config in recipes:
        fields = {name for name, _ in config_check.numeric_fields(config)
                  if name.rsplit(".", 1)[0] not in config_check.MAPPING_RULES}
        missing = fields - set(config_check.RULES) - set(config_check.ELEMENT_RULES)
        assert not missing, f"{config.model}: numeric fields without a rule in config_check.py: {missing}"
        config_check.validate(config)  # and every recipe passes its own checks


def assert_refused_in_one_line(index: int, done: subprocess.CompletedProcess, workdir: Path) -> None:
    flag, typed, field, value = CASES[index]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, (flag, typed, done.stdout, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    line = lines[0]
    assert line.startswith("error: invalid ") and "must " in line, line
    assert re.search(rf"(--)?{re.escape(field.removeprefix('--'))}=", line), line
    if value is not None:
        shown = re.search(r"=([^:]+): must be", line).group(1)
        assert float(shown) == float(value), line  # the value as given (2.5 is not silently made 2)
        rule = config_check.rule_for(flag)
        assert rule.describe() in line, line  # the valid range
    assert not workdir.exists()  # nothing written


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}={c[1]}" for c in CASES])
def test_bad_value_is_refused_in_one_line(outcomes, index):
    assert_refused_in_one_line(index, *outcomes[index])


@pytest.mark.parametrize("index", SUBPROCESS_CASES,
                         ids=[f"{CASES[i][0]}={CASES[i][1]}" for i in SUBPROCESS_CASES])
def test_bad_value_is_refused_by_its_own_process(outcomes, index, tmp_path):
    """End to end in a process of its own, as a user runs it; and the forked run said the same."""
    workdir = tmp_path / "w"
    done = subprocess.run([sys.executable, "-m", "train.main", *command(index, workdir)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert_refused_in_one_line(index, done, workdir)
    forked, _ = outcomes[index]
    assert (forked.returncode, forked.stdout, forked.stderr) == (done.returncode, done.stdout, done.stderr)


def test_the_rules_take_what_the_recipes_use_and_refuse_the_edges():
    rule = config_check.RULES["num_train_steps"]
    assert rule.accepts(-1) and rule.accepts(1) and rule.accepts(config_check.INT32_MAX)
    assert not rule.accepts(0) and not rule.accepts(-2) and not rule.accepts(2**31) and not rule.accepts(3.0)
    rule = config_check.RULES["momentum"]
    assert rule.accepts(0) and rule.accepts(0.99) and not rule.accepts(1.0) and not rule.accepts(float("nan"))
    assert not config_check.RULES["learning_rate"].accepts(float("inf"))
    assert not config_check.RULES["batch_size"].accepts(True)  # a bool is no batch size


def test_learning_rate_factors_are_checked_and_a_changed_one_changes_the_training():
    """config.lr_multipliers: each factor in (0, 1000]; a factor added, dropped or changed is a training change
    (a resume refuses it), the mapping compared whole."""
    import ml_collections

    config = default.get_config()
    for bad in (0.0, -1.0, float("nan"), "half"):
        config.lr_multipliers = ml_collections.ConfigDict({"classifier_0": bad})
        with pytest.raises(ValueError, match=r"invalid lr_multipliers.classifier_0=.*: must be a number in \(0, 1000\]"):
            config_check.validate(config)
    config.lr_multipliers = ml_collections.ConfigDict({"classifier_0": 0.5})
    config_check.validate(config)
    plain = default.get_config()
    assert config_check.training_changes(config_check.plain(plain), config) == (
        [("lr_multipliers", {}, {"classifier_0": 0.5})], [])
    assert config_check.training_changes(config_check.plain(config), plain) == (
        [("lr_multipliers", {"classifier_0": 0.5}, {})], [])
