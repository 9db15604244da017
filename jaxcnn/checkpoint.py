"""Checkpoints: the only module that talks to orbax.

Two formats live here.

Training checkpoints (`Checkpoints`): an orbax `CheckpointManager` under `<workdir>/checkpoints`, one
directory per checkpoint named by its step, each holding three items:
  state/     the train state as a tree {step, params, batch_stats, opt_state, rng}; optax namedtuples become
             dicts through `flax.serialization.to_state_dict`, a typed PRNG key its raw key data
  position/  JSON {"epoch", "batch"}: where the data resumes, `pipeline.epoch(epoch, skip_batches=batch)`
  metadata/  JSON {"model", "num_classes", "image_shape", ...}: what the checkpoint belongs to
Retention keeps the last `keep` checkpoints plus the best one by validation top-1: orbax's
`AnyPreservationPolicy(LatestN(keep), BestN(top1, n=1))`. Only checkpoints saved right after an evaluation
carry metrics, so "best" ranks evaluated checkpoints only and the rest are kept by recency alone.

Saves are asynchronous: `save` copies the state to host memory and returns, and orbax writes the files in a
background thread while the next steps run (a lenet5 save blocked the loop for ~0.15 s, a deep model's for
seconds). Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so a process killed
mid-save leaves only a temporary directory, which the next run deletes (with a warning), and the previous
checkpoints stay as they were. A save waits for the one before it; `wait()` (and `close()`, and every read)
waits for the pending one, so nothing reads or exits past a checkpoint still being written.
Only a checkpoint whose files cannot be read (a truncated or garbled file) counts as corrupt: it is skipped
with a warning that names it, and the previous one is used; it is never deleted, renamed or overwritten. A
readable checkpoint of another structure (other optimizer settings) raises CheckpointMismatch instead.
Each checkpoint's metadata also records the config it was made with ("config") and what shapes its input
("input": dataset, image shape, normalization, crop fraction, class names), for resume checks and inference.

Saved variables (`save_variables`/`load_variables`): the format `--init_from` reads and
`python -m jaxcnn.convert` writes. One orbax directory with two items:
  variables/  {'params': ..., 'batch_stats': ...} (batch_stats may be empty)
  metadata/   JSON {"model": name, "num_classes": int, "image_shape": [H, W, C], ...free-form extras}
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from jaxcnn.errors import typed_first_line

log = logging.getLogger(__name__)

TMP_MARKER = ".orbax-checkpoint-tmp"
# Metadata fields that must match for a workdir's checkpoints to belong to the current run.
IDENTITY_FIELDS = ("model", "num_classes", "image_shape")


class CheckpointMismatch(ValueError):
    """The workdir holds checkpoints of another model (or class count / image shape)."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Where the data stream resumes: batch `batch` (0-based) of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0


# ---------------------------------------------------------------------------------------------- trees


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def state_to_tree(state: Any) -> dict:
    """A train state as a plain nested dict of arrays that orbax can store (typed keys -> key data)."""
    tree = serialization.to_state_dict(state)
    return jax.tree_util.tree_map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def tree_to_state(target: Any, tree: Mapping) -> Any:
    """Inverse of `state_to_tree`, shaped like `target` (typed keys are re-wrapped with target's impl)."""
    target_tree = serialization.to_state_dict(target)
    tree = jax.tree_util.tree_map(
        lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        target_tree, tree)
    return serialization.from_state_dict(target, tree)


# ------------------------------------------------------------------------------------ the directory


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def list_steps(workdir: str | Path) -> list[int]:
    """Steps of the finalized (renamed) checkpoint directories, ascending."""
    root = checkpoint_dir(workdir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name))


def _partial_dirs(workdir: str | Path) -> list[Path]:
    root = checkpoint_dir(workdir)
    return sorted(p for p in root.iterdir() if TMP_MARKER in p.name) if root.is_dir() else []


def _read_item(step_dir: Path, **items: Any) -> Any:
    """Read named items of one checkpoint directory (no manager: nothing is written)."""
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    return checkpointer.restore(step_dir, args=ocp.args.Composite(**items))


def read_metadata(workdir: str | Path) -> tuple[int, dict] | None:
    """(step, metadata) of the newest checkpoint whose metadata is readable, or None."""
    for step in reversed(list_steps(workdir)):
        try:
            item = _read_item(checkpoint_dir(workdir) / str(step), metadata=ocp.args.JsonRestore())
            return step, dict(item.metadata)
        except Exception as e:  # noqa: BLE001 - a broken checkpoint is skipped, not fatal (warned)
            log.warning("checkpoint %s: unreadable metadata (%s); looking at an older one",
                        checkpoint_dir(workdir) / str(step), typed_first_line(e))
    return None


def check_compatible(workdir: str | Path, metadata: Mapping) -> None:
    """Raise CheckpointMismatch when `workdir`'s checkpoints belong to another model; reads only."""
    found = read_metadata(workdir)
    if found is None:
        return
    step, saved = found
    for field in IDENTITY_FIELDS:
        if field in saved and field in metadata and _norm(saved[field]) != _norm(metadata[field]):
            raise CheckpointMismatch(
                f"{checkpoint_dir(workdir)} holds checkpoints of {_describe(saved)}, "
                f"not {_describe(metadata)}: use another --workdir (or delete that one)")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def _describe(m: Mapping) -> str:
    shape = "x".join(str(s) for s in m.get("image_shape", ()))
    return f"{m.get('model')!r} ({m.get('num_classes')} classes, {shape} input)"


# ------------------------------------------------------------------------------ training checkpoints


class Checkpoints:
    """Save and restore training checkpoints in `<workdir>/checkpoints` (see the module docstring)."""

    def __init__(self, workdir: str | Path, keep: int = 3, asynchronous: bool = True):
        self.directory = checkpoint_dir(workdir)
        # Left by a process killed mid-save. In a multi-process run all processes share the directory and
        # process 0 cleans it (orbax likewise writes from process 0 and has the others wait at barriers).
        for partial in _partial_dirs(workdir) if jax.process_index() == 0 else []:
            log.warning("removing partial checkpoint %s (its save never completed)", partial)
            shutil.rmtree(partial, ignore_errors=True)
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=max(int(keep), 1)),
            ocp.checkpoint_managers.BestN(get_metric_fn=_top1, n=1, keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes orbax write each checkpoint's metrics to disk (and read them back in a new process);
        # the preservation policy above decides what is kept.
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_top1, best_mode="max",
                                               enable_async_checkpointing=asynchronous, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the checkpoints kept, the one still being written included."""
        return list(self.manager.all_steps())

    def save(self, state: Any, position: Position, metadata: Mapping, metrics: Mapping | None = None) -> int:
        """Save `state` at its step with the data `position`; `metrics` (with 'top1') ranks it for "best".

        Returns once the state is copied to host memory; the files are written in the background (`wait`).
        """
        # A host copy the caller's next steps cannot touch: they donate (overwrite) the device buffers, and a
        # host array may be a view of one.
        tree = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), jax.device_get(state_to_tree(state)))
        step = int(tree["step"])
        if step in self.manager.all_steps():  # e.g. a SIGTERM right after a periodic save
            return step
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            position=ocp.args.JsonSave(dataclasses.asdict(position)),
            metadata=ocp.args.JsonSave(dict(metadata)))
        # Unevaluated checkpoints carry top1=None (ranked last) so that every save has metrics; so do
        # evaluations with a non-finite number, which cannot be the best whatever their top-1 says.
        top1 = float(metrics["top1"]) if metrics is not None and _finite_metrics(metrics) else None
        self.manager.save(step, args=args, metrics={"top1": top1}, force=True)
        return step

    def wait(self) -> None:
        """Block until the pending save (if any) is complete on disk; raises the error a failed one met."""
        self.manager.wait_until_finished()

    def restore_latest(self, target_state: Any) -> tuple[Any, Position, dict] | None:
        """(state, position, metadata) from the newest checkpoint that restores, or None when there is none.

        `target_state` gives the tree structure, shapes, dtypes and placement. Only a checkpoint whose files
        cannot be read counts as corrupt: it is skipped with a warning naming its directory (and left as it
        is). A readable checkpoint whose state does not fit `target_state` (another optimizer, clipping,
        freezing...) raises CheckpointMismatch: it belongs to another configuration, not to the bin.
        """
        self.wait()
        tree = state_to_tree(target_state)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(tree), position=ocp.args.JsonRestore(),
                    metadata=ocp.args.JsonRestore()))
                state = tree_to_state(target_state, restored.state)
            except Exception as e:  # noqa: BLE001 - unreadable (skipped, loudly) or of another structure
                step_dir = self.directory / str(step)
                difference = structure_difference(step_dir, tree)
                if difference is not None:
                    raise CheckpointMismatch(
                        f"checkpoint {step_dir} holds a train state of another structure ({difference}): it "
                        f"was made with other settings; rerun with those, or start a new --workdir with "
                        f"--init_from={self.directory.parent}") from e
                log.warning("skipping corrupt checkpoint %s: it cannot be read (%s); it is left as it is",
                            step_dir, typed_first_line(e))
                continue
            return state, Position(**restored.position), dict(restored.metadata)
        return None

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _top1(metrics: Mapping | None) -> float:
    """Validation top-1 for ranking; checkpoints saved without a finite evaluation rank last."""
    top1 = (metrics or {}).get("top1")
    return float(top1) if top1 is not None and math.isfinite(float(top1)) else float("-inf")


def _finite_metrics(metrics: Mapping) -> bool:
    """Whether every number of an evaluation is finite (a NaN loss marks a diverged network)."""
    return all(math.isfinite(float(v)) for v in metrics.values() if isinstance(v, (int, float, np.number)))


def restore_latest(workdir: str | Path, target_state: Any) -> tuple[Any, Position, dict] | None:
    """(state, position, metadata) of `workdir`'s newest restorable checkpoint, or None."""
    if not list_steps(workdir):
        return None
    with Checkpoints(workdir) as checkpoints:
        return checkpoints.restore_latest(target_state)


def _stored_tree(step_dir: Path) -> dict:
    """The stored state's tree of array metadata (shapes, dtypes), read without its arrays."""
    return dict(ocp.PyTreeCheckpointHandler().metadata(step_dir / "state").tree)


def _leaf_shapes(tree: Any) -> dict[str, tuple]:
    return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", np.shape(leaf)))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def structure_difference(step_dir: Path, tree: Any) -> str | None:
    """How the state stored in `step_dir` differs from `tree` (entries only one has, or other shapes), or
    None when the stored structure cannot be read (a corrupt checkpoint) or matches."""
    try:
        stored = _leaf_shapes(_stored_tree(step_dir))
    except Exception:  # noqa: BLE001 - unreadable metadata: corrupt, the caller says so
        return None
    wanted = _leaf_shapes(tree)
    only_stored, only_wanted = sorted(set(stored) - set(wanted)), sorted(set(wanted) - set(stored))
    reshaped = sorted(k for k in set(stored) & set(wanted) if stored[k] != wanted[k])
    found = (("it has", only_stored), ("it lacks", only_wanted), ("other shape:", reshaped))
    parts = [f"{what} {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
             for what, names in found if names]
    return "; ".join(parts) or None


def restore_variables(workdir: str | Path) -> tuple[dict, dict, int] | None:
    """(variables {'params', 'batch_stats'}, metadata, step) of `workdir`'s newest readable checkpoint, or
    None; reads only.

    For evaluation and inference: a partial restore of params and batch_stats alone (numpy arrays), so it
    needs no target state and works whatever optimizer the run used. An unreadable checkpoint is skipped with
    a warning.
    """
    for step in reversed(list_steps(workdir)):
        step_dir = checkpoint_dir(workdir) / str(step)
        try:
            stored = _stored_tree(step_dir)
            item = {k: stored[k] for k in ("params", "batch_stats") if stored.get(k)}
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            restored = _read_item(step_dir, metadata=ocp.args.JsonRestore(), state=ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
            variables, metadata = restored.state, restored.metadata
        except Exception as e:  # noqa: BLE001 - skip a corrupt checkpoint, loudly, and use an older one
            log.warning("skipping corrupt checkpoint %s: it cannot be read (%s)", step_dir,
                        typed_first_line(e))
            continue
        variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
        return jax.tree_util.tree_map(np.asarray, variables), dict(metadata), step
    return None


# --------------------------------------------------------------------------------- saved variables


def save_variables(directory: str | Path, variables: Mapping, metadata: Mapping) -> Path:
    """Save model variables {'params', 'batch_stats'} and `metadata` (model, num_classes, image_shape).

    The format `--init_from` reads; the directory must not exist yet (orbax writes it atomically).
    """
    missing = [f for f in IDENTITY_FIELDS if f not in metadata]
    if missing:
        raise ValueError(f"save_variables: metadata lacks {missing}")
    directory = Path(directory).absolute()
    tree = {"params": dict(variables["params"]), "batch_stats": dict(variables.get("batch_stats", {}))}
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in metadata.items()}
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    checkpointer.save(directory, args=ocp.args.Composite(variables=ocp.args.StandardSave(tree),
                                                         metadata=ocp.args.JsonSave(meta)))
    return directory


def load_variables(directory: str | Path) -> tuple[dict, dict]:
    """(variables, metadata) saved by `save_variables`, as numpy arrays; a clear ValueError otherwise."""
    directory = Path(directory).absolute()
    if not (directory / "variables").is_dir() or not (directory / "metadata").is_dir():
        raise ValueError(f"{directory} is not a saved-variables directory "
                         f"(expected variables/ and metadata/ written by jaxcnn.checkpoint.save_variables)")
    restored = _read_item(directory, variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore())
    variables = jax.tree_util.tree_map(np.asarray, dict(restored.variables))
    variables.setdefault("batch_stats", {})
    return variables, dict(restored.metadata)
