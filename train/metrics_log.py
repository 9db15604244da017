"""The run's metrics: `<workdir>/metrics.jsonl` (one JSON object per logged step: step, split, loss, top1, top5,
...) and TensorBoard scalars under `<workdir>/tensorboard`.

A resumed run drops the lines no surviving checkpoint covers and logs those steps again, so the file reads as if
the run had never stopped; a torn last line (a kill mid-write) is dropped too.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np


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
        self._tensorboard_dir = workdir / "tensorboard"
        self._tensorboard = None  # made at the first record

    def write(self, step: int, split: str, **values) -> None:
        if (int(step), split) in self._logged:  # kept from the run that made a surviving checkpoint
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
        self.records.append(record)
        if not self.write_files:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._write_scalars(int(step), split, values)

    def _write_scalars(self, step: int, split: str, values: dict) -> None:
        """The numbers among `values` as TensorBoard scalars `<split>/<name>` at `step`."""
        if self._tensorboard is None:
            self._tensorboard = ScalarEvents(self._tensorboard_dir)
        for k, v in values.items():
            if isinstance(v, (int, float, np.number)):
                self._tensorboard.scalar(f"{split}/{k}", v, step)
        self._tensorboard.flush()

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
            if self._tensorboard is not None:
                self._tensorboard.close()


class ScalarEvents:
    """TensorBoard scalars in an event file of their own under `logdir`, written without TensorFlow.

    flax's writer (tf.summary) and TensorBoard's own (its file layer, tf.io.gfile) both import TensorFlow when
    it is installed: ~4 s of the README's first run, which otherwise never needs it. This writes the same
    Event protos in TensorBoard's record framing, to a new file: an earlier run's files are never touched.
    """

    _count = itertools.count()  # one file per writer, even several in the same second

    def __init__(self, logdir: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
        from tensorboard.util import tensor_util

        self._event, self._tensor = event_pb2.Event, tensor_util.make_tensor_proto
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DataClass.DATA_CLASS_SCALAR)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._count)}"
        self._records = RecordWriter((logdir / name).open("xb"))
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def scalar(self, tag: str, value, step: int) -> None:
        event = self._event(wall_time=time.time(), step=int(step))
        event.summary.value.add(tag=tag, tensor=self._tensor(np.float32(value)), metadata=self._metadata)
        self._write(event)

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


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

