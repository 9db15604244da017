"""train.metrics_log.MetricsLog: the TensorBoard scalars it writes without TensorFlow, read back with
tensorboard's own EventAccumulator, and metrics.jsonl beside them."""

import json

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from train.metrics_log import MetricsLog

RECORDS = [  # (step, split, values) as the loop logs them
    (5, "train", {"loss": 2.25, "top1": 0.125, "images_per_sec": 812.5}),
    (10, "train", {"loss": 1.5, "top1": np.float32(0.375), "images_per_sec": 790.0}),
    (10, "validation", {"loss": 1.75, "top1": 0.3125, "top5": 0.8125, "count": 200}),
    (15, "train", {"loss": float("nan"), "top1": 0.5, "images_per_sec": 805.0}),
]


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar summary under `logdir`."""
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_scalars_read_back_with_their_steps_and_values(tmp_path):
    log = MetricsLog(tmp_path, resumed_step=0)
    for step, split, values in RECORDS:
        log.write(step, split, **values)
    log.close()

    found = scalars(tmp_path / "tensorboard")
    expected = {}
    for step, split, values in RECORDS:
        for name, value in values.items():
            expected.setdefault(f"{split}/{name}", []).append((step, float(np.float32(value))))
    assert sorted(found) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in found[tag]] == [s for s, _ in points], tag
        np.testing.assert_array_equal([v for _, v in found[tag]], [v for _, v in points], err_msg=tag)

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [(step, split) for step, split, _ in RECORDS]
    assert lines[1]["top1"] == 0.375 and lines[2]["count"] == 200 and lines[3]["loss"] == "nan"


def test_a_resumed_log_adds_to_the_same_directory(tmp_path):
    """A resumed run writes an event file of its own beside the first one, which it leaves as it was (the
    workdir is the user's data): the steps past the checkpoint appear in both, the old value and the new."""
    first = MetricsLog(tmp_path, resumed_step=0)
    for step in (5, 10, 15):
        first.write(step, "train", loss=float(step))
    first.close()
    resumed = MetricsLog(tmp_path, resumed_step=10)  # the checkpoint at step 10: step 15 is logged again
    resumed.write(15, "train", loss=1.0)
    resumed.close()

    assert [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [
        5.0, 10.0, 1.0]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2
    assert sorted(scalars(tmp_path / "tensorboard")["train/loss"]) == [(5, 5.0), (10, 10.0), (15, 1.0), (15, 15.0)]
