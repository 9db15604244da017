"""Recipes by model and dataset: every model's default recipe resolves and trains two steps through the CLI;
the paper recipes are picked by dataset; model options from the command line; the paper initializations by
value; ResNet's learning rate scaled by the batch the run uses."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpoint import compilation_cache  # noqa: F401  (autouse: one XLA cache for the runs)
from test_cli import run_cli

from jaxcnn import models, optim
from train.configs import describe, recipe_for

# Through the CLI in the default suite: one model of every family (the cheapest) and the two with auxiliary
# heads. Each run is a fresh process that compiles its model (a minute or more on 2 cores), so the other models,
# deeper variants of the same code, run with `-m variants`; every recipe still resolves in the default suite.
# Not inception_v3 and densenet121 (96 and 151 s here, the suite's slowest): their recipes take nothing the
# runs below do not (an input size, shifts and rotations), and their train steps at the recipes' input sizes
# (75 and 32) run in test_models_inception.py and test_models_resnet.py.
DEFAULT_SUITE = ("mlp", "lenet5", "lenet5_1998", "alexnet", "vgg11", "nin", "googlenet", "googlenet_2014",
                 "resnet18")


@pytest.mark.parametrize("name", models.list_models())
def test_default_recipe_resolves_for_every_model(name):
    spec = models.get_spec(name)
    config = recipe_for(name)
    assert config.model == name and config.dataset == "embedded_mnist"
    size = config.image_size if config.image_size > 0 else spec.input_shape[0]
    assert size >= spec.min_size and (not spec.fixed_size or size == spec.min_size), size
    assert size <= max(75, spec.min_size), size  # at or near the minimum: a laptop can afford it
    total = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * 10_000 // config.batch_size
    assert 100 <= total <= 5000, total
    assert set(config.model_kwargs) == set(models.model_options(name))  # each one settable from the CLI
    text = describe.describe(config, (size, size, spec.input_shape[2]))
    assert text.splitlines()[0] == f"{name} on embedded_mnist: laptop recipe"
    assert f"input {size}x{size}x{spec.input_shape[2]}, batch {config.batch_size}" in text
    assert config.optimizer in text and "--dataset=" in text  # how to get the paper's setting


def test_models_evaluated_at_the_end_only_are_registered_and_evaluate_once():
    """A misspelt name in laptop.EVALUATED_AT_THE_END_ONLY would silently keep the mid-run evaluation."""
    from train.configs import laptop

    assert set(laptop.EVALUATED_AT_THE_END_ONLY) <= set(models.list_models())
    for name in laptop.EVALUATED_AT_THE_END_ONLY:
        config = recipe_for(name)
        assert config.eval_every_steps == config.num_train_steps > 0
    vgg16_bn = recipe_for("vgg16_bn")  # a sibling not in the list: half-way and at the end
    assert 2 * vgg16_bn.eval_every_steps == vgg16_bn.num_train_steps


def test_recipe_follows_the_dataset():
    vgg = recipe_for("vgg16", "imagenet2012")
    assert (vgg.batch_size, vgg.learning_rate, vgg.weight_decay, vgg.num_epochs) == (256, 0.01, 5e-4, 74)
    assert tuple(vgg.augment.scale_jitter) == (256, 512) and not vgg.augment.random_resized_crop
    assert recipe_for("vgg19_bn", "imagenet2012").augment.scale_jitter == vgg.augment.scale_jitter

    alexnet = recipe_for("alexnet_2012", "imagenet2012")
    assert alexnet.model_kwargs.paper_init and alexnet.augment.pca_lighting == 0.1 and alexnet.batch_size == 128
    assert not recipe_for("alexnet_2012").model_kwargs.paper_init  # the laptop recipe keeps the fast init

    for dataset in ("mnist", "folder:/data/mnist"):
        lenet = recipe_for("lenet5", dataset)
        assert lenet.dataset == dataset and lenet.num_epochs == 20 and lenet.normalize == "mnist"
        assert lenet.weight_decay == 5e-4  # what took it from 1.02% to 0.64% test error
        paper = recipe_for("lenet5_1998", dataset)
        assert paper.model_kwargs.paper_init and tuple(paper.piecewise_boundaries) == (2, 5, 8, 12)
        assert paper.map_loss_j > 0  # the paper's MAP loss (eq. 9), not the plain cross-entropy
        # The paper's distorted training digits (its 0.8% run), as shifts and rotations.
        assert (paper.augment.random_crop_padding, paper.augment.rotation_degrees) == (2, 8.0)
    assert recipe_for("lenet5").num_epochs == 10  # the embedded subset: the laptop recipe

    for dataset in (None, "imagenet2012", "cifar10"):  # googlenet_2014 keeps its auxiliary heads everywhere
        assert recipe_for("googlenet_2014", dataset).model_kwargs.aux_logits is True
    other = recipe_for("resnet18", "cifar10")  # no paper recipe for this pair: the laptop one on that data
    assert other.dataset == "cifar10" and other.optimizer == recipe_for("resnet18").optimizer
    assert recipe_for("resnet18", "imagenet2012").lr_per_256 == 0.1
    # The deep ResNets' laptop recipes start each residual branch at zero; the paper's ImageNet recipe does not.
    for name in ("resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"):
        assert recipe_for(name).model_kwargs.zero_init_residual is True, name
        assert recipe_for(name, "imagenet2012").model_kwargs.zero_init_residual is False, name


def test_resnet50_learning_rate_scales_with_the_batch():
    config = recipe_for("resnet50", "imagenet2012")
    for batch, lr in ((256, 0.1), (1024, 0.4), (64, 0.025)):
        config.batch_size = batch
        assert optim.base_learning_rate(config) == pytest.approx(lr)
        steps_per_epoch = 1000
        schedule = optim.build_schedule(config, steps_per_epoch)
        peak = int(config.warmup_epochs * steps_per_epoch)  # the warm-up ends at the scaled rate
        assert float(schedule(peak)) == pytest.approx(lr, rel=1e-5)
        assert float(schedule(peak // 2)) == pytest.approx(lr / 2, rel=1e-4)


def test_cli_scales_the_batch_learning_rate_and_names_the_recipe(tmp_path):
    """The first lines of a run; no ImageNet here, so the run then stops with one line (and exit status 1)."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    common = ("--model=resnet50", "--dataset=imagenet2012", f"--data_dir={empty}", f"--workdir={tmp_path / 'w'}")
    scaled = run_cli(*common, "--batch_size=1024")
    assert scaled.returncode == 1 and "ILSVRC2012_img_train.tar" in scaled.stderr.strip().splitlines()[-1]
    lines = scaled.stdout.splitlines()
    assert lines[0] == "resnet50 on imagenet2012: paper recipe"
    assert "input 224x224x3, batch 1024" in lines[1] and "90 epochs" in lines[1]
    assert "sgd momentum 0.9, learning rate 0.4 (= 0.1 x batch 1024 / 256)" in lines[2]
    explicit = run_cli(*common, "--batch_size=1024", "--learning_rate=0.2")
    assert "learning rate 0.2 with" in explicit.stdout.splitlines()[2]  # a given rate is not scaled


def test_any_module_gets_a_learning_rate_factor_from_the_command_line(tmp_path):
    """--config.lr_multipliers.NAME for a module the recipe does not name (torch's parameter groups): the factor
    reaches the optimizer (the run's third line names it); a module the model lacks gets one line naming those
    it has."""
    done = run_cli("--model=mlp", "--config.lr_multipliers.Dense_0=0.25", "--num_train_steps=2",
                   f"--workdir={tmp_path / 'named'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[2].endswith("with a cosine schedule, Dense_0 at 0.25x")
    bogus = run_cli("--model=mlp", "--config.lr_multipliers.dense=0.5", "--num_train_steps=2",
                    f"--workdir={tmp_path / 'bogus'}")
    lines = bogus.stderr.strip().splitlines()
    assert bogus.returncode == 1 and "Traceback" not in bogus.stderr
    assert lines[-1] == ("error: lr_multipliers names dense, which the model lacks; its top-level modules: "
                         "Dense_0, Dense_1, Dense_2")


def test_bad_model_options_get_one_line(tmp_path):
    cases = {("--model=mlp", "--config.model_kwargs.bogus=1"): "mlp has no option 'bogus' (its options: dropout)",
             ("--model=googlenet_2014", "--config.model_kwargs.aux_logits=maybe"): "--config.model_kwargs.aux_logits",
             ("--model=vgg16", "--config.no_such_field=1"): "no field 'no_such_field'"}
    for flags, phrase in cases.items():
        done = run_cli(*flags, f"--workdir={tmp_path}")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (flags, done.stderr)
        assert phrase in lines[0] and "Traceback" not in done.stderr, (flags, lines)


def cli_params() -> list:
    return [pytest.param(name, marks=[] if name in DEFAULT_SUITE else [pytest.mark.variants])
            for name in models.list_models()]


@pytest.mark.parametrize("name", cli_params())
def test_default_recipe_trains_two_steps_through_the_cli(name, tmp_path):
    """`python -m train.main --model=NAME` with the recipe's input size, cut to 2 steps of 2 images.

    googlenet runs with `--config.model_kwargs.aux_logits=True` (the override) and googlenet_2014 with its
    default: both must then train their auxiliary heads (an aux_loss in the logs)."""
    spec = models.get_spec(name)
    config = recipe_for(name)
    size = config.image_size if config.image_size > 0 else spec.input_shape[0]
    extra = ("--config.model_kwargs.aux_logits=True",) if name == "googlenet" else ()
    done = run_cli(f"--model={name}", f"--workdir={tmp_path}", "--num_train_steps=2", "--batch_size=2",
                   "--config.eval_batch_size=2", "--config.eval_steps=1", "--config.eval_every_steps=2",
                   "--config.parallel=single", "--log_every_steps=1", *extra, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"{name} on embedded_mnist: laptop recipe"
    assert f"input {size}x{size}x{spec.input_shape[2]}, batch 2 over 1 device(s), 2 steps" in lines[1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(math.isfinite(r["loss"]) for r in records), records
    assert [r["count"] for r in records if r["split"] == "validation"] == [2]
    if name in ("googlenet", "googlenet_2014"):
        assert "aux_logits=True" in done.stdout
        assert all(r["aux_loss"] > 0 for r in train), train
    else:
        assert all("aux_loss" not in r for r in train)
    assert re.search(r"\d+/2 \[", done.stderr)  # the tqdm bar (steps done / total, elapsed, rate)


# --- The paper initializations, by value ---------------------------------------------------------------------


def init_params(name: str, shape, **options) -> dict:
    model = models.get_model(name, num_classes=1000 if name == "alexnet_2012" else 10, **options)
    return jax.jit(lambda key: model.init(key, jnp.zeros((1, *shape)), train=False)["params"])(jax.random.key(0))


def test_alexnet_2012_paper_initialization():
    params = jax.device_get(init_params("alexnet_2012", (227, 227, 3), paper_init=True))
    ones = {"features_4", "features_10", "features_12", "classifier_0", "classifier_3"}
    assert set(params) == ones | {"features_0", "features_8", "classifier_6"}
    for name, layer in params.items():
        np.testing.assert_array_equal(layer["bias"], 1.0 if name in ones else 0.0, err_msg=name)
        kernel = np.asarray(layer["kernel"], np.float64)
        # N(0, 0.01): the sample std of n draws is within ~5/sqrt(2n) relative of 0.01 (n >= 34,848).
        assert abs(kernel.std() - 0.01) < 0.01 * 5 / math.sqrt(2 * kernel.size), (name, kernel.std())
        assert abs(kernel.mean()) < 5 * 0.01 / math.sqrt(kernel.size), (name, kernel.mean())
    default = jax.device_get(init_params("alexnet_2012", (227, 227, 3)))
    assert all(np.all(layer["bias"] == 0) for layer in default.values())  # the option is off by default


def test_alexnet_2012_paper_init_refuses_another_weight_init():
    with pytest.raises(ValueError, match="would replace weight_init='he': set weight_init='lecun'"):
        models.get_model("alexnet_2012", num_classes=10, paper_init=True, weight_init="he")
    assert models.get_model("alexnet_2012", num_classes=10, paper_init=True, weight_init="lecun").ones_bias


def test_weight_init_he_doubles_the_kernel_variance():
    """`weight_init='he'`: every conv and dense kernel of a plain network N(0, 2/fan_in) (truncated, as flax's
    variance scaling), where the default LeCun start has 1/fan_in; biases stay 0. The VGG recipes use it."""
    assert recipe_for("vgg16").model_kwargs.weight_init == "he"
    for init, variance in (("he", 2.0), ("lecun", 1.0)):
        params = jax.device_get(init_params("vgg11", (32, 32, 3), weight_init=init))
        for name, layer in params.items():
            kernel = np.asarray(layer["kernel"], np.float64)
            expected = math.sqrt(variance / math.prod(kernel.shape[:-1]))  # fan_in: every axis but the outputs
            # The sample std of n >= 1,728 draws is within ~5/sqrt(2n) relative of the true one.
            assert abs(kernel.std() / expected - 1) < 5 / math.sqrt(2 * kernel.size), (init, name, kernel.std())
            np.testing.assert_array_equal(layer["bias"], 0.0)
    with pytest.raises(ValueError, match="weight_init must be one of lecun, he, glorot, normal_0.01, not 'xavier'"):
        init_params("vgg11", (32, 32, 3), weight_init="xavier")


def test_googlenet_weight_init_by_name():
    """GoogLeNet's kernels start as its source's (the 2014 paper's Glorot uniform, torchvision's N(0, 0.01)) and
    take any other start by name: googlenet_2014's laptop recipe uses He normal."""
    assert recipe_for("googlenet_2014").model_kwargs.weight_init == "he"

    def conv1_and_fc(name, shape, **options):
        params = jax.device_get(init_params(name, shape, **options))
        return [np.asarray(kernel, np.float64) for kernel in (params["conv1"]["conv"]["kernel"], params["fc"]["kernel"])]

    glorot = conv1_and_fc("googlenet_2014", (224, 224, 3))
    he = conv1_and_fc("googlenet_2014", (224, 224, 3), weight_init="he")
    torchvision = conv1_and_fc("googlenet", (32, 32, 3))
    for g, h, t in zip(glorot, he, torchvision):
        receptive = math.prod(g.shape[:-2])
        fan_in, fan_out = receptive * g.shape[-2], receptive * g.shape[-1]
        tolerance = 5 / math.sqrt(2 * g.size)  # the sample std's relative spread, n >= 10,240 draws
        for kernel, std in ((g, math.sqrt(2 / (fan_in + fan_out))), (h, math.sqrt(2 / fan_in)), (t, 0.01)):
            assert abs(kernel.std() / std - 1) < tolerance, (kernel.shape, kernel.std(), std)
        assert np.abs(g).max() <= math.sqrt(6 / (fan_in + fan_out))  # uniform, within Glorot's bound


def test_lenet5_1998_paper_initialization():
    params = jax.device_get(init_params("lenet5_1998", (32, 32, 1), paper_init=True))
    c3_fan_in = [25 * len(ins) for ins in models.lenet.C3_TABLE]  # 75, 100 or 150 per output map
    fan_in = {"c1": 25, "s2": 4, "s4": 4, "c5": 400, "f6": 120}
    for layer, values in params.items():
        for kind, value in values.items():
            value = np.asarray(value)
            if layer == "c3":
                per_map = np.array(c3_fan_in, np.float32)
                if kind == "bias":
                    bound = 2.4 / per_map
                else:  # the connected kernels side by side, in table order
                    bound = np.repeat(2.4 / per_map, [len(ins) for ins in models.lenet.C3_TABLE])
            else:
                bound = np.float32(2.4 / fan_in[layer])
            assert np.all(np.abs(value) <= bound), (layer, kind)
            # Uniform in +-bound: values spread over the whole range (max |x| near the bound, mean |x| ~ bound/2).
            ratio = np.abs(value) / bound
            assert ratio.max() > 0.5 and 0.25 < ratio.mean() < 0.75, (layer, kind, ratio.max(), ratio.mean())
    c1 = np.asarray(params["c1"]["kernel"])
    assert 0.8 * 2.4 / 25 < np.abs(c1).max() <= 2.4 / 25  # 150 draws: the largest comes close to the bound


# --- VGG's scale jittering (jaxcnn.data.augment.random_scale_crop) ------------------------------------------


def test_scale_jitter_rescales_the_shorter_side_into_the_range():
    """A horizontal ramp 0..1 over 400 columns of a 300x400 image: after the shorter side goes to S the ramp
    rises 300 / (400 S) per column, so the crop's slope tells S."""
    import tensorflow as tf

    from jaxcnn.data import augment

    ramp = np.tile(np.linspace(0.0, 1.0, 400, dtype=np.float32), (300, 1))[..., None]

    def scale_of(seed: int, scale) -> float:
        crop = augment.random_scale_crop(tf.constant(ramp), tf.constant([seed, 0], tf.int64), (224, 224), scale)
        assert tuple(crop.shape) == (224, 224, 1)
        slope = np.mean(np.diff(crop.numpy()[112, 20:-20, 0]))  # away from the antialiasing at the borders
        return 300 / (400 * slope) * (399 / 400)  # linspace steps are 1/399

    assert scale_of(0, (256, 256)) == pytest.approx(256, rel=0.01)
    sizes = [scale_of(seed, (256, 512)) for seed in range(24)]
    assert all(250 <= s <= 520 for s in sizes), sizes
    assert min(sizes) < 320 and max(sizes) > 450, sizes  # the draws cover the range, not one scale


def test_full_mnist_folder_holds_out_test_and_validation_and_trains_on_the_rest(tmp_path, monkeypatch):
    """benchmarks/recipes.py --full_mnist: the last HELD_OUT digits are the test split, the VALIDATION before
    them the validation split, and the pipeline trains on all the others (holding nothing more out of train/)."""
    import gzip
    import importlib.util
    import pathlib

    from jaxcnn.data import folder

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "recipes.py"
    spec = importlib.util.spec_from_file_location("bench_recipes", path)
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    monkeypatch.setattr(recipes, "HELD_OUT", 6)
    monkeypatch.setattr(recipes, "VALIDATION", 4)
    n = 30
    images = np.arange(n * 28 * 28, dtype=np.uint32).reshape(n, 28, 28).astype(np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    (tmp_path / "idx").mkdir()
    for name, array, magic in (("train-images-idx3-ubyte.gz", images, 3), ("train-labels-idx1-ubyte.gz", labels, 1)):
        header = bytes([0, 0, 8, magic]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        (tmp_path / "idx" / name).write_bytes(gzip.compress(header + array.tobytes()))

    root = recipes.mnist_folder(tmp_path / "idx", tmp_path / "mnist")
    counts = {split: len(list((root / split).glob("*/*.png"))) for split in ("train", "validation", "test")}
    assert counts == {"train": 20, "validation": 4, "test": 6}
    assert sorted(int(p.stem) for p in (root / "test").glob("*/*.png")) == list(range(24, 30))
    assert sorted(int(p.stem) for p in (root / "validation").glob("*/*.png")) == list(range(20, 24))
    train_paths, train_labels, _, _ = folder.split_files(root, "train")
    assert len(train_paths) == 20 and sorted(train_labels) == sorted(labels[:20].tolist())


def test_list_models_marks_a_measurement_taken_with_other_settings():
    """`--list_models` shows a figure as the recipe's only where it was taken with the recipe's steps, batch and
    model options (resnext101_32x8d's was taken before its recipe started residual branches at zero)."""
    def run(name, **settings):
        return dict(wall_s=600.0, best_top1=0.975, steps=recipe_for(name).num_train_steps, batch_size=32, **settings)

    vgg = recipe_for("vgg16_bn")
    same = dict(learning_rate=vgg.learning_rate, augment=json.loads(json.dumps(vgg.augment.to_dict())),
                lr_multipliers=json.loads(json.dumps(vgg.lr_multipliers.to_dict())))
    measured = {"embedded": {"resnet101": run("resnet101", model_options={"zero_init_residual": True}),
                             "resnet152": run("resnet152", model_options={"zero_init_residual": False}),
                             "resnet50": dict(run("resnet50"), steps=7),
                             "vgg16_bn": run("vgg16_bn", **same),
                             "vgg13_bn": run("vgg13_bn", **dict(same, learning_rate=1e-4)),
                             "vgg19_bn": run("vgg19_bn", **dict(same, lr_multipliers={})),
                             "vgg11_bn": run("vgg11_bn", **dict(same, augment=dict(same["augment"],
                                                                                    rotation_degrees=45.0)))}}
    names = ["resnet101", "resnet152", "resnet50", "vgg16_bn", "vgg13_bn", "vgg11_bn", "vgg19_bn"]
    rows = {line.split()[0]: line for line in describe.models_table(names, measured).splitlines()}
    assert "97.50%" in rows["resnet101"] and "measured with" not in rows["resnet101"]
    assert "97.50%" in rows["vgg16_bn"] and "measured with" not in rows["vgg16_bn"]  # tuples read back as lists
    assert "97.50% (measured with zero_init_residual=False)" in rows["resnet152"]
    assert "97.50% (measured with 7 steps of 32)" in rows["resnet50"]
    assert "97.50% (measured with learning_rate=0.0001)" in rows["vgg13_bn"]
    assert "97.50% (measured with lr_multipliers={})" in rows["vgg19_bn"]  # the recipe has added a factor
    assert "97.50% (measured with augment.rotation_degrees=45.0)" in rows["vgg11_bn"]
