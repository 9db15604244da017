"""`python -m train.main --model=NAME`: parse flags, build the config, call the loop.

Kept short on purpose, flags -> config -> run: the config from the flags is train/cli_config.py, the run
train/loop.py and jaxcnn, which notebooks import directly.
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
import sys

from jaxcnn import hugepages, xla_flags
from jaxcnn.errors import first_line, typed_first_line

if __name__ == "__main__":
    xla_flags.set_defaults()  # before jax is imported: XLA reads XLA_FLAGS once
    hugepages.reexec_with_huge_pages()  # before jax is imported: XLA's buffers on 2 MiB pages

from absl import app, flags
from ml_collections import config_flags

from train import cli_config, compile_cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before tensorflow is imported anywhere
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences its start-up banner on stderr

# The default config is the recipe for --model and --dataset, read from argv before the flags are parsed
# (train/cli_config.py): the override flags are defined from the fields of the config loaded here.
BAD_OVERRIDE = cli_config.unknown_override(sys.argv[1:])
if BAD_OVERRIDE is None:
    config_flags.DEFINE_config_file("config", cli_config.recipe_spec(sys.argv),
                                    "ml_collections config file (default: the recipe for --model and --dataset)",
                                    lock_config=False)
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
        config = cli_config.checked_config(FLAGS)
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
        cli_config.announce(config)
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
