"""Logging and evaluation periods sized to the run where the recipe leaves them at -1 (train/periods.py)."""

from train import periods
from train.configs import default, recipe_for


def config(**fields):
    c = default.get_config()
    c.update({"batch_size": 32, "eval_batch_size": 200, "schedule": "piecewise", **fields})
    return c


def test_evaluation_every_epoch_unless_it_costs_over_five_percent():
    # 312 steps x 32 = 9,984 training images an epoch; a forward image costs a third of a training image.
    assert periods.eval_every(config(), 312, 1_000) == 312  # 1,000 / 3 / 9,984 = 3.3%: every epoch
    assert periods.eval_every(config(), 312, 2_000) == 624  # 6.7% an epoch: every 2 epochs (3.3%)
    assert periods.eval_every(config(), 312, 5_000) == 1248  # 16.7%: every 4 epochs (4.2%; 3 would be 5.6%)
    assert periods.eval_every(config(eval_steps=2), 312, 5_000) == 312  # 400 images evaluated: 1.3%
    assert periods.eval_every(config(schedule="plateau"), 312, 5_000) == 312  # patience counts evaluations
    assert periods.eval_every(config(eval_every_steps=100), 312, 5_000) == 100  # the recipe's own period


def test_logging_about_every_percent_but_not_more_often_than_every_ten_steps():
    assert periods.log_every(config(), 3_120) == 31
    assert periods.log_every(config(), 450_000) == 4_500
    assert periods.log_every(config(), 200) == 10
    assert periods.log_every(config(log_every_steps=50), 3_120) == 50


def test_the_recipes_that_set_periods_keep_them():
    lenet5 = recipe_for("lenet5")  # the default command's recipe: 10 epochs of the embedded subset
    assert periods.log_every(lenet5, 3_120) == lenet5.log_every_steps == 48  # a multiple of its 8 steps a call
    assert lenet5.eval_every_steps == -1 and periods.eval_every(lenet5, 312, 2_000) == 624
    resnet50 = recipe_for("resnet50", "imagenet2012")  # ImageNet: 50,000 validation images per 1.28M training images
    assert periods.log_every(resnet50, 450_000) == resnet50.log_every_steps == 100
    assert periods.eval_every(resnet50, 5_004, 50_000) == 5_004


def test_calls_of_several_steps_end_where_the_loop_logs_evaluates_checkpoints_or_stops():
    def lengths(k, period_list, end, step=0):
        out = []
        while step < end:
            out.append(periods.call_length(step, k, period_list, end))
            step += out[-1]
        return out

    assert lengths(4, (6, 1000), 14) == [4, 1, 1, 4, 1, 1, 1, 1]  # 0-4, 4, 5 | 6-10, 10, 11 | 12, 13 (end 14)
    assert lengths(4, (6, 1000), 14, step=5) == [1, 4, 1, 1, 1, 1]  # resumed mid-way: the same calls on
    assert lengths(1, (6,), 5) == [1] * 5
    # lenet5's recipe (8 a call on one device; log 48, evaluate 624, 3120 steps): no call is split.
    assert set(lengths(8, (48, 624, 100_000), 3_120)) == {8}
