"""The training loop: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir, split)`.

Data -> parallel driver -> jitted per-device steps -> periodic evaluation -> checkpoints -> logs.

Reproducibility: one root key from `config.seed`; the train step derives each step's key with
`fold_in(key, step)`, and the data order is a pure function of (seed, epoch). A checkpoint stores the
state and the data position (epoch, batch), so a resumed run replays exactly the batches and keys an
uninterrupted run would have seen and ends bit-identical to it.

Interruptions: SIGTERM and SIGINT set a flag; the loop then saves a checkpoint at the current step and
returns with `interrupted` set (train.main exits 0 after SIGTERM, so a preempted job counts as a clean stop,
and 130 after Ctrl-C, the shell's convention). A second Ctrl-C interrupts at once. SIGKILL cannot be caught:
the rerun resumes from the last complete checkpoint (see jaxcnn.checkpoint).

Resuming: checkpoints record the config they were made with; a rerun whose config would change the
training is refused before any step (`check_resume`, with train.config_check deciding which fields are safe
to change), and the safe changes are printed. Unreadable checkpoints are skipped but kept, and metrics.jsonl
keeps the lines of every checkpoint that still exists (`MetricsLog`).

Non-finite losses: the loop stops with a message naming the first bad step and does not save the bad state,
so the last checkpoint stays the last good one; with `config.skip_nonfinite` the optimizer skips such
updates (optax.apply_if_finite) and the loop counts and logs them.

Logs: `<workdir>/metrics.jsonl` (one JSON object per logged step: step, split, loss, top1, top5, ...),
TensorBoard summaries under `<workdir>/tensorboard`, and a progress bar on stderr (train/progress.py).

Multi-process runs (after `jaxcnn.parallel.initialize_distributed`): every process runs this same loop on
its own shard of the data (`config.batch_size` stays the global batch; each process reads
batch_size / process_count examples a step) and takes part in every step, evaluation and checkpoint save or
restore; the workdir must be one directory all processes see. Only process 0 writes metrics.jsonl,
TensorBoard and the progress lines (the metrics are global already: the steps average them over all
devices). SIGTERM goes to JAX's preemption service, which picks one step at which every process stops and
saves; SIGINT stops at once without a checkpoint (processes cannot agree on a step for it).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import checkpoint as ckpt
from jaxcnn import models, optim, parallel, training, weights
from train import config_check, periods
from train.prefetch import prefetch_to_device
from train.progress import ProgressBar

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """A run that cannot go on (non-finite loss, no checkpoint to evaluate...); the message says why."""


class ConfigChanged(ValueError):
    """A rerun whose config would change the training of the workdir's checkpoints."""


# ------------------------------------------------------------------------------------------ the setup


@dataclasses.dataclass
class Setup:
    """Everything built from the config before the first step."""

    config: ml_collections.ConfigDict
    spec: models.ModelSpec
    model: Any
    num_classes: int
    image_shape: tuple[int, int, int]
    metadata: dict
    driver: Any  # jaxcnn.parallel driver around the jitted steps


def image_shape_for(config, spec: models.ModelSpec) -> tuple[int, int, int]:
    """(H, W, C): `config.image_size` square (-1: the model's default) with the model's channel count."""
    h, w, c = spec.input_shape
    size = int(config.image_size)
    return (h, w, c) if size <= 0 else (size, size, c)


def setup(config, workdir: str | Path) -> Setup:
    """Resolve the model, class count and image shape, and check the workdir, before any data or step.

    Raises ValueError with a one-line message for an unknown model, an image size the model cannot take, a
    batch that does not divide over the devices, a dataset that cannot be had, and a workdir holding another
    model's checkpoints (nothing is written). The checks that need no data run before tensorflow is imported,
    so these errors come quickly.
    """
    check_same_config(config)
    spec = models.get_spec(config.model)
    image_shape = image_shape_for(config, spec)
    # The loss takes its class count from the logits, so the steps need no num_classes.
    driver = parallel.make_driver(config.parallel, *training.step_functions(config, None))
    for size, flag in ((config.batch_size, "batch_size"), (config.eval_batch_size, "eval_batch_size")):
        parallel.check_divisible(int(size), driver.num_devices, flag)

    def build(num_classes):
        return models.get_model(config.model, num_classes=num_classes, dtype=training.model_dtype(config),
                                axis_name=driver.axis_name, **dict(config.model_kwargs))

    # Trace the model once (no FLOPs) so that a size it cannot take fails here with its own message.
    jax.eval_shape(functools.partial(build(spec.num_classes).init, train=False), jax.random.key(0),
                   jnp.zeros((1, *image_shape), jnp.float32))
    from jaxcnn import data  # tensorflow: imported only once the quick checks have passed

    dataset_classes, _ = data.dataset_info(config.dataset, data_dir=config.data_dir or None)
    num_classes = int(config.num_classes) if config.num_classes > 0 else int(dataset_classes)
    metadata = dict(model=config.model, num_classes=num_classes, image_shape=list(image_shape),
                    dataset=config.dataset, config=config_check.plain(config))
    ckpt.check_compatible(workdir, metadata)
    return Setup(config, spec, build(num_classes), num_classes, image_shape, metadata, driver)


def check_resume(config, workdir: Path) -> None:
    """Refuse a rerun on `workdir` whose config would change the training its newest checkpoint was made
    with (ConfigChanged, one line naming the fields and the ways on; nothing written); print the safe changes
    (periods, a longer run, evaluation settings) it accepts."""
    found = ckpt.read_metadata(workdir)
    if found is None or "config" not in found[1]:  # a fresh workdir, or checkpoints that predate the record
        return
    step, saved = found
    changed, safe = config_check.training_changes(saved["config"], config)
    if changed:
        raise ConfigChanged(
            f"{workdir} was trained with other settings ({config_check.describe_changes(changed)}; "
            f"checkpoint step {step}): a resume would not continue it exactly. Rerun with the old values, "
            f"use another --workdir, or start a new one from its weights with --init_from={workdir}")
    if safe and is_primary():
        print(f"resuming with changed settings: {config_check.describe_changes(safe, limit=100)}",
              file=sys.stderr)


def input_record(config, pipeline) -> dict:
    """What shapes the model's input, for the checkpoint: evaluation, train.predict and train.visualize
    prepare images with it, whatever the recipe says today."""
    return dict(dataset=config.dataset, image_shape=list(pipeline.image_shape),
                source_shape=list(pipeline.source.image_shape), normalize=config.normalize,
                mean=[float(v) for v in pipeline.mean], std=[float(v) for v in pipeline.std],
                crop_fraction=float(pipeline.crop_fraction), class_names=list(pipeline.class_names))


def is_primary() -> bool:
    """Whether this process writes the logs (process 0; the only one outside multi-process runs)."""
    return jax.process_index() == 0


def check_same_config(config) -> None:
    """Refuse a multi-process run whose processes got different configs (flags): their batches, shapes or
    step counts would disagree, silently or in a hang. `data_dir` may differ (a host-local copy)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    text = json.dumps({k: v for k, v in config.to_dict().items() if k != "data_dir"}, sort_keys=True, default=str)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
    if differ:
        raise ValueError(f"process {differ[0]} runs another config than process 0: give every process the "
                         f"same flags")


def make_pipeline(config, split: str, *, train: bool, image_shape, batch_size: int):
    """This process's pipeline of `split` for the GLOBAL `batch_size`: it yields batch_size / process_count
    examples a step from its own shard, and the driver assembles the processes' parts into the global batch."""
    from jaxcnn import data

    local_batch = int(batch_size) // jax.process_count()  # setup() checked it divides over all devices
    return data.make_pipeline(
        config.dataset, split, batch_size=local_batch, image_shape=tuple(image_shape), train=train,
        seed=int(config.seed), augment=config.augment if train else None, normalize=config.normalize,
        data_dir=config.data_dir or None, process_index=jax.process_index(),
        process_count=jax.process_count(), shuffle_buffer=int(config.shuffle_buffer),
        crop_fraction=float(config.crop_fraction))


def initial_state(s: Setup, steps_per_epoch: int):
    """The train state at step 0: fresh, or from `config.init_from` saved variables.

    With `freeze_backbone` only the classifier head (the last top-level module) is trained; with
    `reinit_head` the head keeps a fresh initialization (for a different class count).
    """
    config = s.config
    rng = jax.random.key(int(config.seed))
    trainable = optim.head_trainable if config.freeze_backbone else None
    if not config.init_from:
        return training.create_train_state(s.model, config, rng, s.image_shape, steps_per_epoch,
                                           trainable=trainable)
    loaded, meta = weights.load_init_variables(config.init_from, config.model)
    if meta.get("num_classes") != s.num_classes and not config.reinit_head:
        raise ValueError(f"--init_from {config.init_from} has {meta.get('num_classes')} classes, this run "
                         f"{s.num_classes}: pass --config.reinit_head=True for a fresh classifier head")
    if config.reinit_head:  # real initial values for the head
        fresh = training.init_variables(s.model, jax.random.split(rng)[0], s.image_shape)
        head = {"params": optim.head_trainable(fresh["params"]),
                "batch_stats": jax.tree.map(lambda _: False, fresh["batch_stats"])}
    else:  # shapes only: every value comes from the file
        fresh = jax.eval_shape(lambda: training.init_variables(s.model, rng, s.image_shape))
        head = None
    variables = merge_variables(fresh, {k: loaded[k] for k in ("params", "batch_stats")}, head)
    return training.create_train_state(s.model, config, rng, s.image_shape, steps_per_epoch,
                                       trainable=trainable, variables=variables)


def merge_variables(fresh, loaded, keep_fresh=None):
    """`loaded` values in `fresh`'s structure, shapes and dtypes (a clear error on a missing or misshapen
    entry); leaves where `keep_fresh` is True keep `fresh`'s values."""
    keep = keep_fresh if keep_fresh is not None else jax.tree.map(lambda _: False, fresh)

    def pick(path, f, k):
        if k:
            return f
        node = loaded
        for p in path:
            name = getattr(p, "key", p)
            if not isinstance(node, dict) or name not in node:
                raise ValueError(f"--init_from lacks {jax.tree_util.keystr(path)}, which the model has")
            node = node[name]
        if tuple(np.shape(node)) != tuple(f.shape):
            raise ValueError(f"--init_from {jax.tree_util.keystr(path)} has shape {tuple(np.shape(node))}, "
                             f"the model {tuple(f.shape)}")
        return jnp.asarray(node, dtype=f.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh, keep)


# --------------------------------------------------------------------------------------------- logs


class MetricsLog:
    """metrics.jsonl + TensorBoard. On resume the JSON lines past the last checkpoint are dropped (the steps
    that no checkpoint holds; the resumed run logs them again), so the file reads as if the run had never
    stopped.

    Lines up to `keep_through` (the newest checkpoint that still exists, even one that could not be read and
    was skipped) are never dropped: a run resumed from an older checkpoint recomputes those steps
    identically, and their records are not written twice. With `write=False` (processes other than 0) it
    only keeps the records in memory, for `best()`.
    """

    def __init__(self, workdir: Path, resumed_step: int, write: bool = True, keep_through: int = 0):
        self.path = workdir / "metrics.jsonl"
        lines = read_jsonl(self.path)
        keep = max(resumed_step, keep_through)
        self.records = [r for r in lines if r.get("step", 0) <= keep]
        self._logged = {(r.get("step"), r.get("split")) for r in self.records
                        if r.get("step", 0) > resumed_step}
        self.write_files = write
        if not write:
            return
        if len(self.records) != len(lines) or _torn(self.path):
            # Replaced in one rename: another process reading it meanwhile sees the old or the new lines,
            # which agree up to `keep`.
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            tmp.replace(self.path)
        self._file = self.path.open("a")
        import tensorflow as tf  # the data pipeline has imported it already
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
        # tf.summary.scalar lives in the tensorboard package; the raw write with the 'scalars' plugin tag
        # produces the same event records without that dependency.
        self._scalar_metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

    def write(self, step: int, split: str, **values) -> None:
        if (int(step), split) in self._logged:  # kept from the run that made a surviving checkpoint
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
        self.records.append(record)
        if not self.write_files:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        with self._writer.as_default(step=int(step)):
            for k, v in values.items():
                if isinstance(v, (int, float, np.number)):
                    self._tf.summary.write(f"{split}/{k}", self._tf.constant(float(v), self._tf.float32),
                                           metadata=self._scalar_metadata)
        self._writer.flush()

    def best(self) -> tuple[float, int] | None:
        """(top1, step) of the best validation record so far (the earliest on ties); evaluations with a
        non-finite loss or top-1 (a diverged network) do not count."""
        evals = [r for r in self.records
                 if r["split"] == "validation" and _finite(r.get("top1")) and _finite(r.get("loss"))]
        if not evals:
            return None
        best = max(evals, key=lambda r: (r["top1"], -r["step"]))
        return best["top1"], best["step"]

    def close(self) -> None:
        if self.write_files:
            self._file.close()
            self._writer.close()


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file; a torn last line (a kill mid-write) is dropped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _torn(path: Path) -> bool:
    """Whether the file's last line is incomplete (a kill mid-write): appending after it would glue lines."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray, jax.Array)):
        v = np.asarray(v).item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# ----------------------------------------------------------------------------------------- signals


class StopSignals:
    """Turn SIGTERM/SIGINT into a flag the loop polls (`check(step)`) ; a second SIGINT raises
    KeyboardInterrupt at once.

    With `synchronized` (multi-process runs) it installs no handler: SIGTERM stays with JAX's preemption
    notifier, and `check(step)` reports it at the step all processes agreed on
    (`multihost_utils.reached_preemption_sync_point`), so that they stop and save together; SIGINT keeps
    Python's KeyboardInterrupt.
    """

    def __init__(self, synchronized: bool = False):
        self.received: str | None = None
        self.synchronized = synchronized
        self._previous: dict = {}

    def check(self, step: int) -> str | None:
        """The stop signal received (None to go on); call it once after every step."""
        if self.synchronized and self.received is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.received = "SIGTERM"
        return self.received

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt
        self.received = self.received or name
        log.warning("%s received: saving a checkpoint at the current step and stopping", name)

    def __enter__(self) -> "StopSignals":
        if not self.synchronized and threading.current_thread() is threading.main_thread():  # only there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------- steps


def poisoned(batch: dict) -> dict:
    """The batch with NaN images (config.debug_nan_step); a batch already on the device stays there."""
    return {**batch, "image": batch["image"] * np.float32(np.nan)}


def batches(pipeline, position: ckpt.Position, steps_per_epoch: int) -> Iterator[tuple[ckpt.Position, dict]]:
    """(position after the batch, batch) forever from `position` on, epoch after epoch."""
    epoch, skip = position.epoch, position.batch
    while True:
        for i, batch in enumerate(pipeline.epoch(epoch, skip_batches=skip), start=skip):
            after = ckpt.Position(epoch, i + 1) if i + 1 < steps_per_epoch else ckpt.Position(epoch + 1, 0)
            yield after, batch
        epoch, skip = epoch + 1, 0


def run_eval(driver, device_state, pipeline, max_batches: int = -1) -> dict:
    """Loss, top-1, top-5 over a split, or its first `max_batches` batches when > 0 (padded examples carry
    mask 0 and do not count)."""
    sums = {}
    for i, batch in enumerate(pipeline.epoch(0)):
        if 0 < max_batches <= i:
            break
        out = jax.device_get(driver.eval_step(device_state, batch))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
    if not sums:
        raise TrainingError("the evaluation split has no examples")
    return dict(training.summarize(sums), count=int(round(sums["count"])))


def mean_metrics(window: list[dict]) -> dict:
    """Host means over the steps of a logging window (each value averaged over devices too)."""
    fetched = jax.device_get(window)
    keys = [k for k in fetched[0] if k in ("loss", "top1", "top5", "aux_loss")]
    return {k: float(np.mean([np.mean(np.asarray(m[k])) for m in fetched])) for k in keys}


def first_nonfinite(window: list[dict], first_step: int) -> int | None:
    """The step of the first non-finite loss in the window, or None."""
    for i, m in enumerate(jax.device_get(window)):
        if not np.all(np.isfinite(np.asarray(m["loss"]))):
            return first_step + i
    return None


# -------------------------------------------------------------------------------------- entry points


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train `config.model` on `config.dataset`, evaluating and checkpointing into `workdir`.

    Resumes from the newest complete checkpoint in `workdir`. Returns a dict with best_top1, best_step,
    final_step, last validation metrics (validation), skipped_nonfinite and interrupted (None, 'SIGTERM'
    or 'SIGINT').
    """
    workdir = Path(workdir).absolute()
    s = setup(config, workdir)
    check_resume(config, workdir)
    train_data = make_pipeline(config, config.train_split, train=True, image_shape=s.image_shape,
                               batch_size=config.batch_size)
    eval_data = make_pipeline(config, config.eval_split, train=False, image_shape=s.image_shape,
                              batch_size=config.eval_batch_size)
    s.metadata["input"] = input_record(config, train_data)
    steps_per_epoch = int(train_data.steps_per_epoch)
    num_steps = optim.total_steps(config, steps_per_epoch)
    eval_every = periods.eval_every(config, steps_per_epoch, eval_data.num_examples)
    log_every = periods.log_every(config, num_steps)

    state = initial_state(s, steps_per_epoch)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = ckpt.Checkpoints(workdir, keep=config.keep_checkpoints)
    position = ckpt.Position()
    restored = checkpoints.restore_latest(state)
    primary = is_primary()
    if restored is not None:
        state, position, _ = restored
        if primary:
            print(f"resuming from step {int(state.step)} (epoch {position.epoch}, batch {position.batch})",
                  file=sys.stderr)
    step = int(jax.device_get(state.step))
    metrics_log = MetricsLog(workdir, resumed_step=step, write=primary,
                             keep_through=max(checkpoints.steps(), default=0))
    driver = s.driver
    device_state = driver.put_state(state)
    progress = ProgressBar(num_steps, initial=step, enabled=primary)
    skipped, window, window_start, last_eval = 0, [], step + 1, None
    tick, window_images = time.perf_counter(), 0

    def save(pos: ckpt.Position, metrics: dict | None = None) -> None:
        checkpoints.save(driver.get_state(device_state), pos, s.metadata, metrics)

    def flush_window() -> dict:
        """Check and log the pending train metrics; raise on a non-finite loss unless skipping."""
        nonlocal window, window_start, skipped, tick, window_images
        if not window:
            return {}
        bad = first_nonfinite(window, window_start)
        if bad is not None and not config.skip_nonfinite:
            raise TrainingError(f"non-finite loss at step {bad}: stopping; the last checkpoint "
                                f"(step {max(checkpoints.steps(), default=0)}) holds the last good state")
        fetched = jax.device_get(window)
        if "skipped" in fetched[-1]:  # the optimizer's own count of the updates apply_if_finite skipped
            skipped = int(np.max(np.asarray(fetched[-1]["skipped"])))
        finite = [m for m in fetched if np.all(np.isfinite(np.asarray(m["loss"])))]
        means = mean_metrics(finite) if finite else {k: float("nan") for k in ("loss", "top1", "top5")}
        now = time.perf_counter()
        rate = window_images / max(now - tick, 1e-9)
        extra = {"skipped_nonfinite": skipped} if config.skip_nonfinite else {}
        metrics_log.write(step, "train", **means, images_per_sec=rate, **extra)
        progress.update(step, loss=means["loss"], top1=means["top1"], img_per_s=round(rate))
        window, window_start, tick, window_images = [], step + 1, now, 0
        return means

    interrupted = None
    with StopSignals(synchronized=jax.process_count() > 1) as stop:
        try:
            stream = prefetch_to_device(batches(train_data, position, steps_per_epoch), driver.put_batch)
            while step < num_steps and not stop.received:
                position, batch = next(stream)
                if step + 1 == config.debug_nan_step:
                    batch = poisoned(batch)
                device_state, metrics = driver.train_step(device_state, batch)
                step += 1
                progress.step(step)
                window.append(metrics)
                window_images += int(config.batch_size)
                is_last = step == num_steps
                stopping = stop.check(step)  # every step: multi-process runs agree on the step to stop at
                if step % log_every == 0 or is_last or stopping:
                    flush_window()
                if step % eval_every == 0 or is_last:
                    flush_window()
                    last_eval = run_eval(driver, device_state, eval_data, config.eval_steps)
                    metrics_log.write(step, "validation", **{k: v for k, v in last_eval.items()})
                    device_state = driver.update_plateau(device_state, last_eval["loss"])
                    save(position, metrics=last_eval)
                elif step % config.checkpoint_every_steps == 0:
                    flush_window()
                    save(position)
            flush_window()
            if stop.received:
                interrupted = stop.received
                save(position)
                checkpoints.wait()  # on disk before we say so
                if primary:
                    print(f"{interrupted}: saved a checkpoint at step {step}; rerun to resume", file=sys.stderr)
        finally:
            progress.close()
            metrics_log.close()
            checkpoints.close()

    best = metrics_log.best()
    result = dict(best_top1=best[0] if best else None, best_step=best[1] if best else None, final_step=step,
                  validation=last_eval, skipped_nonfinite=skipped, interrupted=interrupted)
    if best and primary:
        print(f"best validation top-1: {best[0]:.4f} at step {best[1]}")
    return result


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path, split: str | None = None) -> dict:
    """Evaluate on `split` the weights of `config.init_from` when given, else the newest checkpoint in
    `workdir`; writes `<workdir>/eval_<split>.json`.

    Only params and batch_stats are read, so a checkpoint evaluates under any optimizer settings. Images are
    prepared as the checkpoint recorded (dataset, image size, normalization, crop fraction), whatever the
    config says; a line on stderr names the fields where the two differ.
    """
    workdir = Path(workdir).absolute()
    if not config.init_from and not ckpt.list_steps(workdir):
        raise TrainingError(f"no checkpoint to evaluate in {ckpt.checkpoint_dir(workdir)} "
                            f"(train first, or pass --init_from=SAVED_WEIGHTS)")
    variables, metadata = weights.load_init_variables(config.init_from or workdir, config.model)
    if metadata.get("model", config.model) != config.model:
        raise ValueError(f"{config.init_from or workdir} holds weights of {metadata['model']!r}, not "
                         f"{config.model!r}: pass --model={metadata['model']}")
    config = as_recorded(config, metadata)
    split = split or config.eval_split
    s = setup(config, workdir)
    pipeline = make_pipeline(config, split, train=False, image_shape=s.image_shape,
                             batch_size=config.eval_batch_size)
    shapes = jax.eval_shape(lambda: training.init_variables(s.model, jax.random.key(0), s.image_shape))
    variables = merge_variables(shapes, {k: variables.get(k, {}) for k in ("params", "batch_stats")})
    step = int(metadata.get("step", 0))
    state = training.TrainState(step=jnp.asarray(step, jnp.int32), params=variables["params"],
                                batch_stats=variables["batch_stats"], opt_state=(),
                                rng=jax.random.key_data(jax.random.key(0)), apply_fn=s.model.apply, tx=None)
    driver = s.driver
    result = run_eval(driver, driver.put_state(state), pipeline, config.eval_steps)
    result = dict(result, step=step, split=split, model=config.model)
    if not is_primary():
        return result
    workdir.mkdir(parents=True, exist_ok=True)  # a fresh workdir when evaluating --init_from weights
    (workdir / f"eval_{split}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{split}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  loss {result['loss']:.4f}  "
          f"({result['count']} images, step {result['step']})")
    return result


# Config fields that shape the model's input, from the input record a checkpoint carries.
RECORDED_INPUT = ("dataset", "normalize", "crop_fraction")


def as_recorded(config, metadata: dict) -> ml_collections.ConfigDict:
    """`config` with the class count, image size and input preparation the weights were made with (when
    their metadata records them); a line on stderr names the fields that differed."""
    config = ml_collections.ConfigDict(config.to_dict())
    recorded = dict(metadata.get("input", {}))
    if "num_classes" in metadata:
        recorded["num_classes"] = int(metadata["num_classes"])
    if "preprocessing" in metadata:  # published weights: their publisher's transform
        recorded.update(publisher_input(metadata["preprocessing"]))
        if config.image_size != -1:  # they take any size: an asked-for one keeps the publisher's resize ratio
            del recorded["image_size"]
    elif "image_shape" in metadata:
        recorded["image_size"] = int(metadata["image_shape"][0])
    changed = []
    for field in (*RECORDED_INPUT, "num_classes", "image_size"):
        if field in recorded and config[field] != recorded[field]:
            if config[field] != -1:  # -1 ("the dataset's", "the model's") is no disagreement
                changed.append(f"{field} {recorded[field]!r} (not {config[field]!r})")
            config[field] = type(config[field])(recorded[field])
    if changed and is_primary():
        print(f"evaluating with the weights' own settings: {', '.join(changed)}", file=sys.stderr)
    return config


def publisher_input(preprocessing: dict) -> dict:
    """The config fields that make the pipeline prepare images as `jaxcnn.imagenet.eval_transform(image,
    **preprocessing)` does: the crop as the image size, crop / resize as the crop fraction, the publisher's
    mean, std and channel order."""
    from jaxcnn import data

    return dict(image_size=int(preprocessing["crop"]),
                crop_fraction=int(preprocessing["crop"]) / int(preprocessing["resize"]),
                normalize=data.explicit_normalize(preprocessing["mean"], preprocessing["std"],
                                                  preprocessing.get("channels", "RGB")))
