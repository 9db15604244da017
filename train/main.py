"""`python -m train.main --model=NAME`: parse flags, build the config, call the loop.

Kept short on purpose: the logic lives in train/loop.py and jaxcnn, which notebooks import directly.
The config is `--config=FILE` when given, else the recipe for --model (train/configs/<model>.py, or
default.py); `--config.FIELD=VALUE` overrides apply to either, and explicit flags override both.
Bad input ends with one line on stderr and exit status 1 (a traceback only with --verbose).
Exit status after a signal: 0 for SIGTERM (the checkpoint is saved; rerun to resume), 130 for SIGINT.

Multi-process (one process per host, README "Multi-host training"): --distributed lets JAX detect the job
(Cloud TPU pod slices, SLURM, Open MPI); elsewhere give every process --coordinator_address=HOST0:PORT
--num_processes=N --process_id=I. A process that fails tells the others, and a process whose peer dies
exits with one line and status 1 (jaxcnn.parallel.PeerWatchdog reports the peer, `peer_lost` exits).
"""

import logging
import os
import re
import sys
from pathlib import Path

from jaxcnn import hugepages, xla_flags
from jaxcnn.errors import first_line, typed_first_line

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # before jax is imported: XLA's buffers on 2 MiB pages

from absl import app, flags
from ml_collections import config_flags

from train import compile_cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before tensorflow is imported anywhere
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences its start-up banner on stderr

_RECIPE_FILE = str(Path(__file__).parent / "configs" / "recipe.py")


def argv_value(name: str, argv: list[str]) -> str:
    """The value of --name in `argv` ('--name=V' or '--name V'; the last one wins), '' when absent."""
    value = ""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


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
        for depth, part in enumerate(path):
            if isinstance(node, ConfigDict) and part in node:
                node = node[part]
                continue
            if path[:depth] == ["model_kwargs"]:
                options = ", ".join(sorted(config.model_kwargs)) or "none"
                return f"--config.{match.group(1)}: {model} has no option {part!r} (its options: {options})"
            return f"--config.{match.group(1)}: the recipe has no field {'.'.join(path[:depth + 1])!r}"
    return None


# The default config is the recipe for --model and --dataset, read from argv before the flags are parsed: the
# override flags (--config.model_kwargs.aux_logits=...) are defined from the fields of the config loaded here.
BAD_OVERRIDE = unknown_override(sys.argv[1:])
if BAD_OVERRIDE is None:
    CONFIG = config_flags.DEFINE_config_file(
        "config", f"{_RECIPE_FILE}:{argv_value('model', sys.argv)},{argv_value('dataset', sys.argv)}",
        "ml_collections config file (default: the recipe for --model and --dataset)", lock_config=False)
flags.DEFINE_string("model", None, "model name (--list_models)")
flags.DEFINE_string("dataset", None, "embedded_mnist, a tfds name, or folder:/path")
flags.DEFINE_string("workdir", None, "checkpoints and logs (default ./workdir/<model>)")
flags.DEFINE_string("data_dir", None, "tfds data_dir")
flags.DEFINE_integer("num_epochs", None, "epochs")
flags.DEFINE_integer("num_train_steps", None, "steps (> 0 overrides num_epochs)")
flags.DEFINE_integer("batch_size", None, "global batch size")
flags.DEFINE_float("learning_rate", None, "base learning rate")
flags.DEFINE_integer("seed", None, "root random seed")
flags.DEFINE_enum("parallel", None, ["pmap", "shard_map", "jit", "fsdp"], "multi-device driver")
flags.DEFINE_integer("checkpoint_every_steps", None, "checkpoint period")
flags.DEFINE_integer("log_every_steps", None, "logging period")
flags.DEFINE_string("init_from", None, "weights to start from: torchvision, keras (published ImageNet "
                    "weights), a .pth/.h5 file, or saved variables (python -m jaxcnn.convert)")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train, or evaluate the latest checkpoint")
flags.DEFINE_string("split", None, "split for --mode=eval (default: config.eval_split)")
flags.DEFINE_bool("list_models", False, "print the model names and exit")
flags.DEFINE_bool("distributed", False, "multi-process run with the values JAX detects (Cloud TPU, SLURM)")
flags.DEFINE_string("coordinator_address", None, "multi-process: host:port of process 0, the same for all")
flags.DEFINE_integer("num_processes", None, "multi-process: how many processes (usually one per host)")
flags.DEFINE_integer("process_id", None, "multi-process: this process's id in [0, num_processes)")
flags.DEFINE_float("peer_timeout", 60.0, "multi-process: seconds without a heartbeat before a peer "
                   "counts as dead (this process then exits with status 1)")
flags.DEFINE_bool("verbose", False, "debug logs and full tracebacks")
FLAGS = flags.FLAGS
OVERRIDES = ("model", "dataset", "data_dir", "num_epochs", "num_train_steps", "batch_size", "learning_rate",
             "seed", "parallel", "checkpoint_every_steps", "log_every_steps", "init_from")


def build_config():
    """The recipe for --model/--dataset (or --config=FILE) with the --config.* overrides, then the explicit flags.

    A learning rate given on the command line replaces a recipe's batch-scaled one (`lr_per_256`)."""
    config = CONFIG.value
    for name in OVERRIDES:
        if FLAGS[name].present:
            config[name] = FLAGS[name].value
    overrides = config_flags.get_override_values(FLAGS["config"])
    if FLAGS["learning_rate"].present or "learning_rate" in overrides:
        config.lr_per_256 = 0.0
    return config


def checked_config():
    """build_config(), with every numeric field and flag in its range (train.config_check)."""
    from train import config_check

    config_check.validate_flags({name: FLAGS[name].value for name in config_check.FLAG_RULES})
    config = build_config()
    config_check.validate(config)
    return config


def announce(config) -> None:
    """Say what this run does (dataset, input, batch, steps, optimizer; the paper's setting) before it starts."""
    import jax

    from jaxcnn import models
    from train import loop
    from train.configs import describe

    if jax.process_index() == 0:
        shape = loop.image_shape_for(config, models.get_spec(config.model))
        devices = 1 if config.parallel == "single" else jax.device_count()
        print(describe.describe(config, shape, devices), flush=True)


def start_distributed():
    """jax.distributed for --distributed or the explicit process flags (the peer watchdog), else None."""
    from jaxcnn import parallel

    values = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if not FLAGS.distributed and all(v is None for v in values):
        return None
    return parallel.initialize_distributed(*values, peer_timeout=FLAGS.peer_timeout, on_peer_lost=peer_lost)


def peer_lost(message: str) -> None:
    """The watchdog found another process dead: one line, status 1. os._exit, because the main thread may be
    blocked in a collective that will never complete (and JAX's exit handler would wait for the dead peer)."""
    import jax

    print(f"error: {message}; process {jax.process_index()} exits", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def fail(e: BaseException, watchdog) -> int:
    """One line on stderr (after the traceback, except for bad input and Ctrl-C without --verbose); exit
    status 1 (130 after Ctrl-C).

    A process of a multi-process run tells the others and leaves at once: JAX's exit handler would wait for
    them at a barrier, and they are leaving too. A collective fails at once when a peer dies, so a runtime
    error first gives the watchdog the time to find a dead peer (it then exits with a line naming it).
    """
    import threading
    import traceback

    import jax

    bad_input = isinstance(e, (ValueError, FileNotFoundError))
    if watchdog is not None and isinstance(e, jax.errors.JaxRuntimeError) and watchdog.wait_for_lost_peer():
        threading.Event().wait()  # the watchdog's thread is in `peer_lost`, which ends the process
    interrupted = isinstance(e, KeyboardInterrupt)
    if FLAGS.verbose or not (bad_input or interrupted):
        traceback.print_exception(e)
    message = first_line(e, limit=1000) if bad_input else typed_first_line(e, limit=1000)
    print(f"error: {message}", file=sys.stderr, flush=True)
    if watchdog is None:
        return 1
    watchdog.finish(error=message)
    sys.stdout.flush()
    os._exit(130 if interrupted else 1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Our warnings (a skipped checkpoint, a removed partial one) show; other libraries' only with --verbose.
    logging.getLogger().setLevel(logging.DEBUG if FLAGS.verbose else logging.ERROR)
    for ours in ("jaxcnn", "train"):
        logging.getLogger(ours).setLevel(logging.DEBUG if FLAGS.verbose else logging.WARNING)
    if FLAGS.list_models:
        from jaxcnn import models
        from train.configs import describe

        print(describe.models_table(models.list_models(), describe.load_measured()))
        return 0
    try:  # before any work (no jax, no tensorflow yet): a bad number fails in a fraction of a second
        config = checked_config()
    except ValueError as e:
        print(f"error: {first_line(e, limit=1000)}", file=sys.stderr)
        return 1
    compile_cache.enable()  # before the first compilation: a rerun loads the compiled steps from disk
    watchdog = None
    try:
        watchdog = start_distributed()  # before anything touches a JAX backend
        from train import loop

        workdir = FLAGS.workdir or os.path.join("workdir", config.model)
        if FLAGS.mode == "eval":
            loop.evaluate(config, workdir, FLAGS.split)
            return 0
        announce(config)
        result = loop.train_and_evaluate(config, workdir)
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
        if FLAGS.verbose and watchdog is None:
            raise
        return fail(e, watchdog)
    except BaseException as e:  # a bug, a failed collective, Ctrl-C: the other processes must hear of it
        if watchdog is None:
            raise
        return fail(e, watchdog)
    return 130 if result["interrupted"] == "SIGINT" else 0


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad flag, option or value (`--batch_size=2.5`) reported in one line (exit status 1)
    instead of a usage dump."""
    from train import config_check

    if BAD_OVERRIDE is not None:
        print(f"error: {BAD_OVERRIDE}", file=sys.stderr)
        sys.exit(1)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {config_check.unparsable_flag_message(e)[:1000]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
