"""The input pipelines: embedded MNIST, determinism and resume, padding, shapes, tfds (mocked), folders, augments.

No network and no ../shared: tfds datasets come from `tfds.testing.mock_data`, folders are written here.
"""

import functools
import io
import pathlib
import re
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jaxcnn.data import DatasetUnavailable, dataset_info, embedded, fit_to_size, folder, make_pipeline
from jaxcnn.data import augment as aug
from jaxcnn.data import pipeline as pipeline_lib

tfds = pytest.importorskip("tensorflow_datasets")  # a hard dependency; the guard only keeps the import local


def _batches(pipe, epoch=0, skip=0):
    return list(pipe.epoch(epoch, skip_batches=skip))


def _stack(batches, key):
    return np.concatenate([b[key] for b in batches])


# ------------------------------------------------------------------------------------------ embedded MNIST


def test_embedded_mnist_counts_range_and_balance():
    assert embedded.PATH.stat().st_size < 3_000_000
    for split, n in (("train", 10_000), ("validation", 2_000)):
        images, labels = embedded.load(split)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert images.max() == 255 and images.min() == 0
        # Real MNIST digits: the mean pixel of MNIST is 0.1307 * 255 = 33.3; random or blank data would miss it.
        assert abs(images.mean() / 255 - 0.1307) < 0.005
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
    with np.load(embedded.PATH) as f:  # train and validation are different MNIST images
        assert not set(f["train_source_index"]) & set(f["validation_source_index"])
    assert dataset_info("embedded_mnist") == (10, (28, 28, 1))


def test_train_batches_full_shuffled_and_normalized():
    pipe = make_pipeline("embedded_mnist", "train", batch_size=128, image_shape=(28, 28, 1), train=True, seed=0)
    assert (pipe.num_examples, pipe.num_classes, pipe.steps_per_epoch) == (10_000, 10, 78)  # remainder dropped
    b = next(pipe.epoch(0))
    assert b["image"].shape == (128, 28, 28, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32 and (b["mask"] == 1).all()
    assert not np.array_equal(b["label"], embedded.load("train")[1][:128])  # shuffled, not the stored order
    # A whole epoch of the 2,000 validation images: 7 full batches of 256, the remaining 208 dropped.
    small = make_pipeline("embedded_mnist", "validation", batch_size=256, image_shape=(28, 28, 1), train=True,
                          seed=0)
    batches = _batches(small)
    images, labels = _stack(batches, "image"), _stack(batches, "label")
    assert len(batches) == small.steps_per_epoch == 7 and len(np.unique(labels)) == 10
    # MNIST's statistics (0.1307, 0.3081) standardise MNIST pixels.
    assert abs(images.mean()) < 0.02 and abs(images.std() - 1) < 0.03


# --------------------------------------------------------------------------------- determinism and resume

AUGMENT = dict(random_crop_padding=2, horizontal_flip=True, rotation_degrees=10.0)


def _train_pipe(seed=0, batch_size=250, **kw):
    return make_pipeline(
        "embedded_mnist", "validation", batch_size=batch_size, image_shape=(28, 28, 1), train=True, seed=seed,
        augment=AUGMENT, **kw,
    )


def test_epoch_is_a_function_of_seed_and_epoch_and_resumes():
    # One of eight processes (250 examples) keeps it quick and covers resuming a shard.
    kw = dict(batch_size=25, process_index=1, process_count=8)
    pipe = _train_pipe(**kw)
    first = _batches(pipe, 0)
    again = _batches(_train_pipe(**kw), 0)
    assert len(first) == 10
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = _batches(pipe, 1)  # other seeds: test_each_augmentation_changes_images_deterministically
    assert not np.array_equal(_stack(first, "label"), _stack(other, "label"))
    assert not np.allclose(_stack(first, "image"), _stack(other, "image"))
    resumed = _batches(pipe, 0, skip=3)
    assert len(resumed) == 7
    for a, b in zip(first[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert _batches(pipe, 0, skip=10) == []


def test_in_memory_epochs_are_whole_permutations_whose_global_batches_ignore_the_process_count():
    # The embedded split is shuffled in numpy: every example once an epoch, a new order each epoch, and the
    # examples of global batch b the same whether one process reads it or four share it.
    images = embedded.load("validation")[0].reshape(2000, -1)

    source_row = {row.tobytes(): i for i, row in enumerate(images)}  # the split has no duplicate images

    def rows(batch):
        pixels = np.round(batch["image"] * 255).astype(np.uint8).reshape(len(batch["image"]), -1)
        return [source_row[p.tobytes()] for p in pixels]

    def global_batches(count, epoch=0):
        """The source rows of each global batch of 200, read by `count` processes."""
        parts = [_batches(make_pipeline("embedded_mnist", "validation", batch_size=200 // count,
                                        image_shape=(28, 28, 1), train=True, seed=0, normalize="none",
                                        process_index=p, process_count=count), epoch) for p in range(count)]
        return [sorted(r for part in batch for r in rows(part)) for batch in zip(*parts, strict=True)]

    assert len({row.tobytes() for row in images}) == 2000
    one = global_batches(1)
    assert len(one) == 10 and sorted(r for b in one for r in b) == list(range(2000))  # each example once
    assert one[0] != list(range(200)) and one != global_batches(1, epoch=1)  # shuffled, anew each epoch
    assert global_batches(4) == one


# -------------------------------------------------------------------------------- eval padding, sharding


def test_eval_padding_and_mask():
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=300, image_shape=(28, 28, 1), train=False, seed=0)
    batches = _batches(pipe)
    assert pipe.steps_per_epoch == len(batches) == 7  # ceil(2000 / 300)
    mask, labels = _stack(batches, "mask"), _stack(batches, "label")
    assert mask.sum() == pipe.num_examples == 2000
    np.testing.assert_array_equal(mask, np.r_[np.ones(2000), np.zeros(100)])
    np.testing.assert_array_equal(labels[:2000], embedded.load("validation")[1])  # eval keeps source order
    assert (batches[-1]["image"][200:] == 0).all() and (labels[2000:] == 0).all()


def test_processes_share_the_examples_and_step_counts():
    shards = [
        make_pipeline("embedded_mnist", "validation", batch_size=64, image_shape=(28, 28, 1), train=False, seed=0,
                      process_index=p, process_count=3)
        for p in range(3)
    ]
    assert {s.steps_per_epoch for s in shards} == {11}  # ceil(ceil(2000 / 3) / 64)
    epochs = [_batches(s) for s in shards]
    labels = [_stack(e, "label")[_stack(e, "mask") == 1] for e in epochs]
    assert sum(len(x) for x in labels) == 2000
    np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.sort(embedded.load("validation")[1]))
    train = [_train_pipe(process_index=p, process_count=3) for p in range(3)]
    assert {t.steps_per_epoch for t in train} == {2}  # (2000 // 3) // 250, the smallest shard's full batches
    assert len(_batches(train[2])) == 2


# ------------------------------------------------------------------------------------ model input shapes


def test_pad_28_to_32_keeps_digit_pixels_and_channels_convert():
    images, _ = embedded.load("validation")
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=100, image_shape=(32, 32, 3), train=False,
                         seed=0, normalize="none")
    out = next(pipe.epoch(0))["image"]
    assert out.shape == (100, 32, 32, 3)
    digits = images[:100].astype(np.float32) / 255
    for c in range(3):  # grey tiled to RGB, padded by 2 (LeNet-5 1998), pixels unchanged
        np.testing.assert_array_equal(out[:, 2:30, 2:30, c : c + 1], digits)
    assert (out[:, :2] == 0).all() and (out[:, 30:] == 0).all() and (out[:, :, :2] == 0).all()

    rgb = tf.constant(np.random.default_rng(0).random((40, 60, 3), np.float32))
    grey = pipeline_lib.match_channels(rgb, 1)
    np.testing.assert_allclose(grey.numpy()[..., 0], rgb.numpy() @ [0.2989, 0.5870, 0.1140], atol=1e-5)
    assert fit_to_size(rgb, (224, 224)).shape == (224, 224, 3)
    # Varying-size photos: shorter side to 224 / 0.875 = 256 (so 40x60 -> 256x384), centre 224x224.
    cropped = fit_to_size(rgb, (224, 224), 0.875).numpy()
    full = tf.image.resize(rgb, (256, 384), antialias=True).numpy()
    np.testing.assert_allclose(cropped, full[16:240, 80:304], atol=1e-6)


def test_images_of_unknown_size_pad_28_to_32_as_digits_and_resize_otherwise():
    # Folder images have no static size: a 28x28 digit is still padded (LeNet-5 1998), others resized.
    fit = tf.function(lambda x: fit_to_size(x, (32, 32)), input_signature=[tf.TensorSpec([None, None, 1])])
    digit = np.random.default_rng(0).random((28, 28, 1), np.float32)
    np.testing.assert_array_equal(fit(digit).numpy(), np.pad(digit, [(2, 2), (2, 2), (0, 0)]))
    other = np.random.default_rng(1).random((40, 24, 1), np.float32)
    expected = tf.image.resize(other, (32, 32), antialias=True).numpy()
    np.testing.assert_allclose(fit(other).numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- tfds (mocked)


@pytest.mark.parametrize(
    "name, shape, classes",
    [("mnist", (32, 32, 1), 10), ("cifar10", (32, 32, 3), 10), ("imagenet2012", (224, 224, 3), 1000)],
)
def test_tfds_datasets_give_model_shaped_batches(name, shape, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        train = make_pipeline(name, "train", batch_size=4, image_shape=shape, train=True, seed=0,
                              data_dir=str(tmp_path), augment=dict(horizontal_flip=True))
        assert (train.num_examples, train.num_classes, train.steps_per_epoch) == (10, classes, 2)
        batches = _batches(train)
        assert [b["image"].shape for b in batches] == [(4, *shape)] * 2  # imagenet mock sizes vary
        assert all(np.isfinite(b["image"]).all() and (0 <= b["label"]).all() for b in batches)
        assert (_stack(batches, "label") < classes).all()
        evaluation = make_pipeline(name, "test" if name != "imagenet2012" else "validation", batch_size=4,
                                   image_shape=shape, train=False, seed=0, data_dir=str(tmp_path))
        assert _stack(_batches(evaluation), "mask").sum() == 10
    assert dataset_info(name, str(tmp_path))[0] == classes


def test_tfds_holdout_split_names():
    class Builder:  # only the split metadata matters here
        name = "cifar10"

        info = types.SimpleNamespace(splits={"train": 50_000, "test": 10_000})

    assert pipeline_lib._tfds_split(Builder, "train") == "train[:90%]"
    assert pipeline_lib._tfds_split(Builder, "validation") == "train[90%:]"
    assert pipeline_lib._tfds_split(Builder, "test") == "test"
    Builder.info.splits = {"train": 1, "validation": 1}
    assert pipeline_lib._tfds_split(Builder, "train") == "train"
    with pytest.raises(ValueError, match="splits"):
        pipeline_lib._tfds_split(Builder, "test")


def test_unavailable_datasets_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(DatasetUnavailable) as e:
        make_pipeline("cifar100", "train", batch_size=4, image_shape=(32, 32, 3), train=True, seed=0,
                      data_dir=str(tmp_path), download=False)
    assert "cifar100" in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)

    import requests

    def offline(self, *a, **k):
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DatasetUnavailable, match=r"cannot be downloaded \(offline\?\)") as e:
        make_pipeline("cifar100", "train", batch_size=4, image_shape=(32, 32, 3), train=True, seed=0,
                      data_dir=str(tmp_path))
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    # ImageNet cannot be downloaded: tfds refuses at once without the archives.
    with pytest.raises(DatasetUnavailable) as e:
        make_pipeline("imagenet2012", "train", batch_size=4, image_shape=(224, 224, 3), train=True, seed=0,
                      data_dir=str(tmp_path))
    message = str(e.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message and "\n" not in message
    assert str(tmp_path / "downloads" / "manual") in message


# ------------------------------------------------------------------------------------------------- folders


def _png(path: pathlib.Path, rng, size, mode="RGB"):
    shape = size if mode == "L" else (*size, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)  # 2-D arrays are saved grey


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "flowers"
    for c, name in enumerate(["tulip", "daisy", "rose"]):
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(20):
            _png(d / f"{name}_{i:02d}.png", rng, (20 + i, 24), mode="L" if i % 5 == 0 else "RGB")
    (root / "train" / "rose" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "train" / "daisy" / "cut.jpg").write_bytes(buf.getvalue()[:300])  # truncated
    (root / "train" / "notes.txt").write_text("not a class")
    return root


def test_folder_classes_corrupt_files_and_holdout(image_folder, capsys, tmp_path):
    dataset = f"folder:{image_folder}"
    kw = dict(batch_size=8, image_shape=(32, 32, 3), seed=0)
    train = make_pipeline(dataset, "train", train=True, **kw)
    val = make_pipeline(dataset, "validation", train=False, **kw)
    assert train.class_names == ("daisy", "rose", "tulip") and dataset_info(dataset) == (3, (None, None, 3))
    assert sorted(pathlib.Path(p).name for p in train.skipped) == ["broken.png", "cut.jpg"]
    printed = capsys.readouterr().out
    assert printed.count("skipped 2 corrupt image files") == 1 and "broken.png" in printed
    # 10% of each class held out: 2 of 20 per class.
    assert (train.num_examples, val.num_examples) == (54, 6)
    train_files, _, _, _ = folder.split_files(image_folder, "train")
    val_files, val_labels, _, _ = folder.split_files(image_folder, "validation")
    assert not set(train_files) & set(val_files) and val_labels == [0, 0, 1, 1, 2, 2]
    batches = _batches(val)
    assert _stack(batches, "mask").sum() == 6 and batches[0]["image"].shape == (8, 32, 32, 3)
    assert len(_batches(train)) == 6
    # Deterministic and independent of where the folder lives.
    moved = tmp_path / "elsewhere"
    image_folder.rename(moved)
    again, _, _, _ = folder.split_files(moved, "validation")
    assert [pathlib.Path(p).name for p in again] == [pathlib.Path(p).name for p in val_files]


def test_folder_listed_class_by_class_is_shuffled_as_a_whole(tmp_path):
    # 8 classes of 12 tiny images, a shuffle buffer of 4 (smaller than a class): a buffer alone would give a
    # first batch of 16 from the first two classes only.
    rng = np.random.default_rng(0)
    for c in range(8):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
        for i in range(12):
            _png(tmp_path / "train" / f"c{c}" / f"{i:02d}.png", rng, (4, 4))
    (tmp_path / "validation").mkdir()
    for c in range(8):
        (tmp_path / "validation" / f"c{c}").mkdir()
    kw = dict(batch_size=16, image_shape=(4, 4, 3), train=True, shuffle_buffer=4)
    pipe = make_pipeline(f"folder:{tmp_path}", "train", seed=0, **kw)
    first = _batches(pipe)
    assert len(first) == 6 and len(np.unique(first[0]["label"])) >= 6
    # A function of (seed, epoch), resumable mid-epoch, another order in another epoch.
    again = _batches(make_pipeline(f"folder:{tmp_path}", "train", seed=0, **kw))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(first[2:], _batches(pipe, skip=2), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(_stack(first, "label"), _stack(_batches(pipe, epoch=1), "label"))
    # Two processes share the permuted list: disjoint halves of the whole split.
    halves = [make_pipeline(f"folder:{tmp_path}", "train", seed=0, process_index=p, process_count=2,
                            **dict(kw, batch_size=8)) for p in range(2)]
    images = [_stack(_batches(h), "image").reshape(48, -1) for h in halves]
    assert len({row.tobytes() for part in images for row in part}) == 96


# ------------------------------------------------------------------------------------------- augmentations

ONE_EACH = [
    dict(random_crop_padding=4),
    dict(random_resized_crop=True),
    dict(horizontal_flip=True),
    dict(rotation_degrees=15.0),
    dict(zoom=0.2),
    dict(color_jitter=0.4),
    dict(pca_lighting=0.1),
]


@functools.cache
def _plain_batch():
    return _first_batch(None)


def _first_batch(augment, seed=0):
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=32, image_shape=(32, 32, 3), train=True,
                         seed=seed, augment=augment, normalize="none")
    return next(pipe.epoch(0))


@pytest.mark.parametrize("augment", ONE_EACH, ids=lambda a: next(iter(a)))
def test_each_augmentation_changes_images_deterministically(augment):
    plain, out = _plain_batch(), _first_batch(augment)
    np.testing.assert_array_equal(plain["label"], out["label"])  # augmenting never changes the order
    assert out["image"].shape == plain["image"].shape and out["image"].dtype == np.float32
    changed = np.abs(out["image"] - plain["image"]).reshape(32, -1).max(axis=1) > 1e-3
    assert changed.mean() > 0.3  # flips and crops leave some images unchanged
    np.testing.assert_array_equal(out["image"], _first_batch(augment)["image"])
    assert not np.array_equal(out["image"], _first_batch(augment, seed=1)["image"])


def test_augmentations_do_what_they_say():
    plain = _plain_batch()["image"]
    flipped = _first_batch(dict(horizontal_flip=True))["image"]
    for p, f in zip(plain, flipped):  # each image is itself or its mirror, exactly
        assert np.array_equal(f, p) or np.array_equal(f, p[:, ::-1])
    lit = _first_batch(dict(pca_lighting=0.1))["image"]
    shift = (lit - plain).reshape(32, -1, 3)  # one RGB shift per image, along the ImageNet eigenvectors
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1], shift.shape), atol=1e-6)
    alpha_eigval = shift[:, 0] @ np.asarray(aug.PCA_EIGVEC)  # eigvec is orthonormal: recovers alpha * eigval
    alpha = alpha_eigval / np.asarray(aug.PCA_EIGVAL)
    assert 0.05 < alpha.std() < 0.2  # alpha ~ N(0, 0.1)
    cropped = _first_batch(dict(random_crop_padding=4))["image"]
    for p, c in zip(plain, cropped):  # a shifted copy, zero filled
        padded = np.pad(p, [(4, 4), (4, 4), (0, 0)])
        assert any(np.array_equal(c, padded[y : y + 32, x : x + 32]) for y in range(9) for x in range(9))
    with pytest.raises(ValueError, match="unknown augment"):
        aug.options(dict(mixup=0.2))


def _in_source_order(batch_size, augment, process_index=0, process_count=1, epoch=0):
    """Augmented training images of the validation split; a shuffle buffer of 1 keeps the source order (this
    process's share of it: examples process_index, process_index + process_count, ...)."""
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=batch_size, image_shape=(28, 28, 1),
                         train=True, seed=0, augment=augment, normalize="none", shuffle_buffer=1,
                         process_index=process_index, process_count=process_count)
    return _stack(_batches(pipe, epoch), "image")


def test_augmentation_is_a_function_of_the_example_not_of_its_batch_or_host():
    # Augmentation runs on whole batches; each example's draws come from its global index, so the same image
    # comes out whatever the batch size or the number of hosts sharing the split.
    augment = dict(AUGMENT, zoom=0.1, color_jitter=0.3)
    whole = _in_source_order(100, augment)
    assert whole.shape == (2000, 28, 28, 1)
    plain = embedded.load("validation")[0].astype(np.float32) / 255
    assert (np.abs(whole - plain).reshape(2000, -1).max(axis=1) > 1e-3).mean() > 0.9  # augmented
    np.testing.assert_array_equal(_in_source_order(40, augment), whole)
    np.testing.assert_array_equal(_in_source_order(50, augment, process_index=1, process_count=2), whole[1::2])
    assert not np.array_equal(_in_source_order(100, augment, epoch=1), whole)  # other draws next epoch


def test_each_image_gets_its_own_crop_offset_uniformly():
    padding = 2
    cropped = _in_source_order(100, dict(random_crop_padding=padding))[..., 0]
    padded = np.pad(embedded.load("validation")[0][..., 0] / np.float32(255), [(0, 0), (2, 2), (2, 2)])
    shifts = [[(y, x) for y in range(5) for x in range(5) if np.array_equal(c, p[y : y + 28, x : x + 28])]
              for c, p in zip(cropped, padded)]
    assert all(shifts)  # every image is its digit shifted by whole pixels, zero filled
    first = np.array([s[0] for s in shifts])
    for axis in range(2):  # 2,000 draws of 5 offsets: 400 each expected, 4.5 standard deviations allowed
        np.testing.assert_allclose(np.bincount(first[:, axis], minlength=5), 400, atol=80)
    # Within a batch the offsets differ: not one draw per batch.
    assert len({tuple(s) for s in first[:100]}) > 10


def test_batched_colour_jitter_is_tf_images_adjustments_per_image():
    rng = np.random.default_rng(0)
    images = rng.random((6, 9, 7, 3), np.float32)
    factors = (rng.uniform(-1, 1, (6, 3)) * 0.4 + [0, 1, 1]).astype(np.float32)  # brightness, contrast, saturation
    out = aug.color_jitter(tf.constant(images), tf.constant(factors)).numpy()
    for image, (b, c, s), got in zip(images, factors, out):
        expected = tf.image.adjust_saturation(tf.image.adjust_contrast(tf.image.adjust_brightness(image, b), c), s)
        np.testing.assert_allclose(got, tf.clip_by_value(expected, 0.0, 1.0).numpy(), atol=2e-6)
    grey = aug.color_jitter(tf.constant(images[..., :1]), tf.constant(factors)).numpy()
    for image, (b, c, _), got in zip(images[..., :1], factors, grey):  # grey: no saturation
        expected = tf.image.adjust_contrast(tf.image.adjust_brightness(image, b), c)
        np.testing.assert_allclose(got, tf.clip_by_value(expected, 0.0, 1.0).numpy(), atol=2e-6)


def test_batched_rotation_and_zoom_resample_each_image_about_its_centre():
    from scipy import ndimage

    digits = embedded.load("validation")[0][:8].astype(np.float32) / 255
    rng = np.random.default_rng(0)
    degrees, scale = rng.uniform(-15, 15, 8).astype(np.float32), rng.uniform(0.8, 1.2, 8).astype(np.float32)
    out = aug.transform(tf.constant(digits), aug.rotation_transforms(degrees, scale, (28, 28))).numpy()
    centre = np.array([13.5, 13.5])
    for digit, d, s, got in zip(digits, degrees.astype(np.float64), scale.astype(np.float64), out):
        angle = np.deg2rad(d)
        # Output pixel (y, x) samples the input at centre + M ((y, x) - centre): the inverse rotation and zoom.
        m = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / s
        expected = ndimage.affine_transform(digit[..., 0], m, centre - m @ centre, order=1, mode="grid-constant")
        np.testing.assert_allclose(got[..., 0], expected, atol=1e-5)


def test_a_small_evaluation_split_is_read_once_and_kept(monkeypatch):
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=300, image_shape=(28, 28, 1), train=False,
                         seed=0)
    assert pipe.dataset(0).options().autotune.enabled is False  # in memory: no autotuning threads
    assert pipe.in_numpy  # the split is in memory: its batches come from numpy
    builds = []
    build = pipe._numpy_batches
    monkeypatch.setattr(pipe, "_numpy_batches", lambda *a: builds.append(a) or build(*a))
    next(pipe.epoch(0))  # a partial pass (eval_steps) keeps nothing
    first, second = _batches(pipe), _batches(pipe, epoch=3)
    assert len(builds) == 2 and len(first) == len(second) == 7
    for a, b in zip(first, second, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not second[0]["image"].flags.writeable  # the kept batches cannot be changed by a caller
    assert [b["label"][0] for b in _batches(pipe, skip=5)] == [first[5]["label"][0], first[6]["label"][0]]
    assert len(builds) == 2
    monkeypatch.setattr(pipeline_lib, "KEEP_EVAL_BYTES", 2000 * 28 * 28 * 4)  # 2,100 padded images: too big
    big = make_pipeline("embedded_mnist", "validation", batch_size=300, image_shape=(28, 28, 1), train=False,
                        seed=0)
    _batches(big)
    assert big.epoch(0) is not big.epoch(0) and big._kept_batches is None


def test_explicit_normalization_round_trips_and_refuses_bad_strings_in_one_line():
    """normalize='RGB|BGR;mean=..;std=..' (published weights' statistics): read back to the float32 values
    written, in the channel order written; malformed strings are one ValueError line naming the form."""
    mean, std = (0.4076, 0.458, 0.485), (1 / 255, 1 / 255, 1 / 255)
    spec = pipeline_lib.explicit_normalize(mean, std, "BGR")
    got_mean, got_std = pipeline_lib.normalization(spec, "imagenet", 3)
    assert np.array_equal(got_mean, np.float32(mean)) and np.array_equal(got_std, np.float32(std))
    assert pipeline_lib.channel_order(spec) == "BGR" and pipeline_lib.channel_order("imagenet") == "RGB"
    for bad, says in (("GBR;mean=0,0,0;std=1,1,1", "is not RGB|BGR;mean="),
                      ("RGB;mean=0,0,x;std=1,1,1", "is not"), ("RGB;mean=0,0,0", "is not"),
                      ("RGB;mean=0,0,0;std=1,0,1", "std above 0"),
                      ("RGB;mean=0,0;std=1,1", "has 2 channels, the model takes 3")):
        with pytest.raises(ValueError, match=re.escape(says)) as error:
            pipeline_lib.normalization(bad, "imagenet", 3)
        assert "\n" not in str(error.value)


def test_predict_prepares_a_bgr_run_as_its_pipeline_does(tmp_path):
    """A run whose normalize reverses the channels (a Keras-VGG-like 'BGR;mean=..;std=..'): predict's
    prepare_image gives the pipeline's own batch for the same image file."""
    from train import predict

    low = np.uint8([200, 100, 0])  # red above green above blue: a reversal shows
    pixels = np.random.default_rng(0).integers(0, 56, (40, 48, 3), dtype=np.uint8) + low
    for split in ("train", "validation"):
        (tmp_path / split / "x").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / split / "x" / "0.png")
    spec = pipeline_lib.explicit_normalize((0.4, 0.45, 0.5), (0.2, 0.25, 0.3), "BGR")
    pipe = make_pipeline(f"folder:{tmp_path}", "validation", batch_size=1, image_shape=(32, 32, 3),
                         train=False, seed=0, normalize=spec, crop_fraction=0.8)
    batch = next(pipe.epoch(0))["image"][0]
    mean, std = pipeline_lib.normalization(spec, "imagenet", 3)
    inputs = dict(normalize=spec, source_shape=[None, None, 3], crop_fraction=0.8, mean=mean.tolist(),
                  std=std.tolist())
    run = types.SimpleNamespace(metadata={}, image_shape=(32, 32, 3), inputs=inputs)
    prepared = predict.prepare_image(predict.read_image(tmp_path / "validation" / "x" / "0.png"), run)
    np.testing.assert_allclose(prepared, batch, atol=1e-6)
    rgb_first = (batch * std + mean)[..., ::-1]  # undo the normalization and the reversal: pixels in RGB
    assert np.abs(rgb_first.mean(axis=(0, 1)) - pixels.mean(axis=(0, 1)) / 255).max() < 0.02


NUMPY_CASES = [  # (augment, model input shape): the laptop recipes' augmentation, and every op numpy has
    (dict(random_crop_padding=2, rotation_degrees=8.0), (28, 28, 1)),
    (dict(random_crop_padding=2, rotation_degrees=8.0), (32, 32, 1)),
    (dict(random_crop_padding=3, horizontal_flip=True, rotation_degrees=15.0, zoom=0.1, color_jitter=0.3),
     (28, 28, 1)),
    (dict(random_crop_padding=4, horizontal_flip=True, rotation_degrees=20.0, pca_lighting=0.1), (32, 32, 3)),
    (None, (32, 32, 3)),
    # Resized (AlexNet's 63, Inception-v3's 75; 16 shrinks): the same to fp32 rounding, not bit for bit.
    (None, (63, 63, 1)),
    (dict(random_crop_padding=2, rotation_degrees=8.0), (75, 75, 3)),
    (dict(horizontal_flip=True), (16, 16, 1)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("augment,shape", NUMPY_CASES, ids=lambda c: str(c))
def test_in_memory_batches_from_numpy_are_the_tf_data_graphs(augment, shape, train):
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=96, image_shape=shape, train=train, seed=3,
                         augment=augment, normalize="dataset")
    assert pipe.in_numpy
    from_numpy, from_tf = list(pipe.epoch(1)), list(pipe.dataset(1).as_numpy_iterator())
    assert len(from_numpy) == len(from_tf) == (20 if train else 21)  # eval: the last batch padded
    resized = shape[:2] not in ((28, 28), (32, 32))
    for ours, theirs in zip(from_numpy, from_tf):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
            if resized and key == "image":  # the resize sums its taps in another order than TensorFlow's
                np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=2e-6)
            else:
                np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    if train and augment:  # and the batches are augmented: not the plain digits
        plain = make_pipeline("embedded_mnist", "validation", batch_size=96, image_shape=shape, train=True,
                              seed=3, normalize="dataset")
        assert not np.array_equal(next(plain.epoch(1))["image"], from_numpy[0]["image"])


@pytest.mark.parametrize("augment,shape", [(dict(color_jitter=0.3), (32, 32, 3)),  # saturation: TF's HSV
                                           (dict(scale_jitter=(32, 40)), (28, 28, 1)),  # image by image
                                           (dict(random_resized_crop=True), (28, 28, 1))])
def test_in_memory_splits_keep_tf_data_where_numpy_lacks_the_op(augment, shape):
    pipe = make_pipeline("embedded_mnist", "validation", batch_size=100, image_shape=shape, train=True, seed=0,
                         augment=augment)
    assert not pipe.in_numpy
    assert next(pipe.epoch(0))["image"].shape == (100, *shape)


TRAIN_WITHOUT_TF = """
import json, sys
from train import configs, loop
config = configs.recipe_for("lenet5")
config.num_train_steps, config.eval_every_steps, config.log_every_steps, config.eval_steps = 8, 8, 4, 1
result = loop.train_and_evaluate(config, sys.argv[1])
print(json.dumps(dict(tensorflow="tensorflow" in sys.modules, augment=config.augment.to_dict())))
"""


def test_the_readmes_first_run_trains_without_importing_tensorflow(tmp_path):
    """The laptop recipe of lenet5 (the README's first command), augmentation, evaluation, checkpoints and the
    TensorBoard scalars included, never imports TensorFlow (~4 s of CPU)."""
    import json
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_TF, str(tmp_path / "run")], cwd=root,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["augment"]["rotation_degrees"] > 0 and result["augment"]["random_crop_padding"] > 0
    assert result["tensorflow"] is False
    assert list((tmp_path / "run" / "tensorboard").iterdir())  # the scalars were written
