"""Pictures and predictions: jaxcnn.viz, `python -m train.visualize` and `python -m train.predict` on a tiny
LeNet-5 run trained once for the module."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcnn import viz

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """lenet5 on embedded MNIST: 20 steps of batch 32, train logs every 5 steps, validation at 10 and 20
    (2 batches each)."""
    from train.configs import recipe_for
    from train.loop import train_and_evaluate

    config = recipe_for("lenet5")
    config.num_train_steps = STEPS
    config.batch_size = 32
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.eval_steps = 2
    workdir = tmp_path_factory.mktemp("lenet5")
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def run(workdir):
    from train.predict import restore_run

    return restore_run(workdir)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def assert_not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 10, pixels.std()
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10  # a picture, not a flat fill


# ------------------------------------------------------------------------------------------ library


def test_filter_images_scale_each_kernel_and_keep_colour():
    rng = np.random.default_rng(0)
    rgb = viz.filter_images(rng.normal(size=(11, 11, 3, 96)) * np.arange(1, 97))  # very different ranges
    assert rgb.shape == (96, 11, 11, 3)
    np.testing.assert_allclose(rgb.min(axis=(1, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(rgb.max(axis=(1, 2, 3)), 1.0, atol=1e-12)
    grey = viz.filter_images(np.stack([np.ones((5, 5)), 2 * np.ones((5, 5))], -1)[:, :, :, None] * [1, -1])
    assert grey.shape == (2, 5, 5, 1)  # two inputs are averaged into one grey image
    np.testing.assert_allclose(grey, 0.5)  # constant kernels: mid-grey, not a division by zero


def test_mosaic_layout():
    images = np.arange(5, dtype=float).reshape(5, 1, 1, 1) * np.ones((5, 2, 3, 1))
    tiled = viz.mosaic(images, pad=1, fill=-1.0)
    assert viz.grid_shape(5) == (2, 3) and viz.grid_shape(96) == (10, 10) and viz.grid_shape(6) == (2, 3)
    assert tiled.shape == (2 * 3 - 1, 3 * 4 - 1, 1)
    assert tiled[0, 0, 0] == 0 and tiled[0, 4, 0] == 1 and tiled[3, 0, 0] == 3 and tiled[3, 4, 0] == 4
    assert tiled[2, 0, 0] == -1 and tiled[0, 3, 0] == -1 and tiled[3, 8, 0] == -1  # gaps and the empty cell


def test_confusion_counts():
    counts = viz.confusion_counts([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        viz.confusion_counts([3], [0], 3)


def test_curves_skip_torn_lines_and_read_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"step": 20, "split": "train", "loss": 1.0, "top1": 0.5},
        {"step": 10, "split": "train", "loss": "nan", "top1": 0.1},
        {"step": 20, "split": "validation", "loss": 0.9, "top1": 0.6}]) + '\n{"step": 30, "spl')
    steps, loss = viz.curve(viz.read_metrics(path), "train", "loss")
    np.testing.assert_array_equal(steps, [10, 20])
    assert np.isnan(loss[0]) and loss[1] == 1.0
    out = viz.training_curves(path, tmp_path / "curves.png")
    assert Image.open(out).size == viz.CURVES_SIZE


def test_capture_returns_the_layer_output(run):
    """The captured c1 output is the convolution itself (before tanh), computed here by hand."""
    x = np.random.default_rng(1).normal(size=(2, 28, 28, 1)).astype(np.float32)
    captured = viz.capture(run.model, run.variables, x, ["c1", "c3"])
    c1 = run.variables["params"]["c1"]
    expected = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(c1["kernel"]), (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + c1["bias"]
    np.testing.assert_allclose(captured["c1"], expected, rtol=1e-5, atol=1e-5)
    assert captured["c3"].shape == (2, 10, 10, 16)
    with pytest.raises(ValueError, match="no layer 'c9'.*c1, c3, c5, f6, output"):
        viz.capture(run.model, run.variables, x, ["c9"])


def test_first_conv_and_default_layers(run):
    path, kernel = viz.first_conv_kernel(run.model, run.variables, run.image_shape)
    assert path == "c1" and kernel.shape == (5, 5, 1, 6)
    assert viz.default_layers(run.model, run.image_shape) == ["c1", "c3"]  # c5 is 1x1: no picture


# ------------------------------------------------------------------------------------------ programs


def test_visualize_writes_four_pictures(workdir, capsys):
    from train import visualize

    assert visualize.main([f"--workdir={workdir}", "--eval_batches=2"]) == 0
    printed = capsys.readouterr().out.split()
    names = ["filters.png", "feature_maps.png", "curves.png", "confusion.png"]
    assert printed == [str(workdir / n) for n in names]
    expected = {
        "filters.png": (3 * viz.FILTER_CELL, 2 * viz.FILTER_CELL),  # 6 kernels: 2 rows of 3, 64 px each
        "feature_maps.png": (1000, 3 * 250),  # the input, c1 and c3
        "curves.png": (1000, 400),
        "confusion.png": (700, 600),
    }
    for name, size in expected.items():
        assert Image.open(workdir / name).size == size, name
        assert_not_blank(png(workdir / name))


def test_visualize_init_from_draws_the_same_weights(workdir, tmp_path):
    from train import visualize

    if not (workdir / "filters.png").exists():
        assert visualize.main([f"--workdir={workdir}", "--eval_batches=1"]) == 0
    assert visualize.main([f"--workdir={tmp_path}", f"--init_from={workdir}", "--eval_batches=1"]) == 0
    np.testing.assert_array_equal(png(tmp_path / "filters.png"), png(workdir / "filters.png"))
    np.testing.assert_array_equal(png(tmp_path / "feature_maps.png"), png(workdir / "feature_maps.png"))


def write_validation_images(directory: Path, count: int) -> list[Path]:
    from jaxcnn.data import embedded

    images, _ = embedded.load("validation")
    paths = []
    for i in range(count):
        paths.append(directory / f"digit{i}.png")
        Image.fromarray(images[i, ..., 0]).save(paths[-1])
    return paths


def test_predict_sees_what_training_saw(workdir, run, tmp_path, capsys):
    """The printed top-5 are sorted, sum to at most 1, and equal the model's softmax on the validation
    pipeline's own batch for the same images (PNG files of them): same preprocessing, same numbers."""
    from jaxcnn.data import make_pipeline
    from train import predict

    paths = write_validation_images(tmp_path, 3)
    assert predict.main([f"--workdir={workdir}", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    blocks = out.strip().split("\n" + str(tmp_path))
    assert len(blocks) == 3
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=8, image_shape=run.image_shape, train=False,
                         seed=0)
    reference = np.asarray(jax.nn.softmax(run.model.apply(run.variables, next(pipe.epoch(0))["image"][:3])))
    for i, block in enumerate(blocks):
        rows = re.findall(r"^\s+(\d)\. (\S+)\s+([0-9.]+)$", block, flags=re.MULTILINE)
        assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
        classes, probs = [int(r[1]) for r in rows], np.array([float(r[2]) for r in rows])
        assert np.all(np.diff(probs) <= 0) and probs.sum() <= 1 + 5e-4
        np.testing.assert_allclose(probs, reference[i][classes], atol=6e-5)
        assert classes == list(np.argsort(-reference[i])[:5])


def test_predict_rgb_file_of_a_grey_digit_matches_grey(workdir, run, tmp_path):
    from train.predict import prepare_image, read_image

    grey = write_validation_images(tmp_path, 1)[0]
    rgb = tmp_path / "rgb.png"
    Image.open(grey).convert("RGB").save(rgb)
    assert read_image(rgb).shape == (28, 28, 3)
    # tf.image.rgb_to_grayscale's weights sum to 0.9999, hence the tolerance
    np.testing.assert_allclose(prepare_image(read_image(rgb), run), prepare_image(read_image(grey), run), atol=1e-3)


def test_predict_corrupt_image_one_line(workdir, tmp_path):
    good = write_validation_images(tmp_path, 1)[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(Image.open(good).tobytes()[:100])  # raw pixels: not an image file
    result = subprocess.run([sys.executable, "-m", "train.predict", f"--workdir={workdir}", str(good), str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read image") and "broken.png" in lines[0], lines
    assert result.stdout == ""


def test_predict_uses_the_runs_own_input_record(tmp_path, capsys):
    """A run trained with normalize='none' (the lenet5 recipe says 'dataset') is predicted with pixels in
    [0, 1], as it was trained; class names and shapes come from the checkpoint; --init_from reads the same
    weights."""
    from jaxcnn.data import embedded, make_pipeline
    from train import predict
    from train.configs import recipe_for
    from train.loop import train_and_evaluate

    config = recipe_for("lenet5")
    config.update(dict(normalize="none", num_train_steps=2, batch_size=32, log_every_steps=1))
    train_and_evaluate(config, tmp_path / "run")
    run = predict.restore_run(tmp_path / "run")
    assert run.inputs["normalize"] == "none" and run.inputs["mean"] == [0.0] and run.inputs["std"] == [1.0]
    assert run.class_names == embedded.CLASS_NAMES and run.image_shape == (28, 28, 1)
    images, _ = embedded.load("validation")
    prepared = predict.prepare_image(images[0], run)
    np.testing.assert_allclose(prepared, images[0] / 255.0, atol=1e-7)
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=8, image_shape=(28, 28, 1), train=False,
                         seed=0, normalize="none")
    np.testing.assert_allclose(prepared, next(pipe.epoch(0))["image"][0], atol=1e-7)  # what evaluation saw

    # --mode=eval with the recipe's normalization ('dataset') evaluates as the checkpoint recorded ('none'):
    # the numbers training logged for it.
    from train.loop import evaluate

    result = evaluate(recipe_for("lenet5").copy_and_resolve_references(), tmp_path / "run", "validation")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in logged if r["split"] == "validation"][-1]
    assert result["count"] == 2000 and validation["step"] == 2
    for key in ("loss", "top1", "top5"):
        assert result[key] == pytest.approx(validation[key], rel=1e-6), key

    path = write_validation_images(tmp_path, 1)[0]
    capsys.readouterr()
    assert predict.main([f"--workdir={tmp_path / 'run'}", str(path)]) == 0
    by_workdir = capsys.readouterr().out
    assert predict.main([f"--init_from={tmp_path / 'run'}", str(path)]) == 0
    assert capsys.readouterr().out == by_workdir


def test_crop_fraction_reaches_the_pipeline(tmp_path):
    """config.crop_fraction is what the training and evaluation pipelines of photos of varying size use."""
    from train.configs import recipe_for
    from train.loop import make_pipeline

    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((40, 60, 3), 60 * i + 30, np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / name / f"{i}.png")
    config = recipe_for("resnet18")
    config.dataset = f"folder:{tmp_path}"
    for fraction in (0.5, 1.0):
        config.crop_fraction = fraction
        for train in (True, False):
            pipe = make_pipeline(config, "train", train=train, image_shape=(32, 32, 3), batch_size=2)
            assert pipe.crop_fraction == fraction
