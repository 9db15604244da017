"""The one input pipeline: a source split -> per-example decode (and crop, for images of varying size) ->
batches -> fit, augment, normalize on the whole batch -> numpy batches.

Every dataset (tfds, the embedded MNIST subset, image folders) becomes a `Source`: its examples in a fixed order
plus a decoder. `Pipeline.epoch(e)` then builds the same tf.data graph for all of them, and its output is a pure
function of (seed, epoch): the shuffle seed comes from (seed, epoch) and each example's augmentation from
(seed, epoch, example index), never from the batch it lands in, so `epoch(e, skip_batches=k)` skips k batches
without decoding them and yields exactly what `epoch(e)` yields from batch k on. The per-image work is what
differs image by image (decoding, a crop of varying size); fitting to the model's size, the size-preserving
augmentations and the normalization run as a few ops per batch. In-memory sources (the embedded MNIST) need no
per-image work at all: their epochs are one numpy permutation of the split, gathered batch by batch, without
tf.data's per-example shuffle and batching, and where numpy has the batch ops (`Pipeline.in_numpy`) prepared
in numpy with the same pixels, so that the embedded MNIST trains without importing TensorFlow. A small
evaluation split is read once and kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from jaxcnn.data import augment as aug
from jaxcnn.data import batch_numpy, embedded, folder
from jaxcnn.data.tensorflow_import import tensorflow, tf
from jaxcnn.errors import typed_first_line

TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenette", "imagenet2012")
HOLDOUT = ("train[:90%]", "train[90%:]")  # 'train' / 'validation' of tfds datasets without a validation split
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}
CROP_FRACTION = 0.875  # torchvision's ImageNet evaluation: Resize(256) then CenterCrop(224)
KEEP_EVAL_BYTES = 256 << 20  # evaluation splits whose batches fit in this are kept in memory after one pass

# Per-channel mean and std of pixels in [0, 1].
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's; also folders and imagenette
}
_GREY = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights


class DatasetUnavailable(ValueError):
    """The dataset is not on disk and cannot be had from here (offline, or files that must be fetched by hand)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One split of one dataset before any per-example work.

    `examples()` yields (raw, label) in a fixed order; `decode(raw)` gives a uint8 [h, w, c] image.
    `image_shape` has None where image sizes vary (ImageNet, folders). `read_part(index, count)`, when
    given, reads only the consecutive part `index` of `count` (sized like `ds.shard`'s: the first
    num_examples % count parts one larger) as (global index, (raw, label)). `in_order(order)`, when given,
    yields (global index, (raw, label)) for the indices `order` in that order: sources whose examples are
    cheap to reorder (file names) and stored class by class, which a shuffle buffer alone would not mix.
    `in_memory` sources (`arrays` given) need no per-example work at all: their raw examples are the uint8
    images, and the pipeline gathers whole batches of them by index.
    """

    examples: Callable[[], tf.data.Dataset]
    decode: Callable[[tf.Tensor], tf.Tensor]
    num_examples: int
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, int | None, int]
    stats: str  # key of STATS used by normalize='dataset'
    skipped: tuple[str, ...] = ()  # corrupt files left out (folders)
    read_part: Callable[[int, int], tf.data.Dataset] | None = None
    in_order: Callable[[np.ndarray], tf.data.Dataset] | None = None
    arrays: tuple[np.ndarray, np.ndarray] | None = None  # (uint8 images, labels) of a split held in memory

    @property
    def in_memory(self) -> bool:
        """Whether the split is held in memory as decoded images (`arrays`): batches are gathered by index."""
        return self.arrays is not None

    def process_examples(self, index: int, count: int) -> tf.data.Dataset:
        """(global index, (raw, label)) of process `index`'s share of `count`: its consecutive part when the
        source can read just that, else every count-th example (`ds.shard`, which reads them all)."""
        if count > 1 and self.read_part is not None:
            return self.read_part(index, count)
        return self.examples().enumerate().shard(count, index)


# ----------------------------------------------------------------------------------------------- sources


def _embedded_source(split: str) -> Source:
    images, labels = embedded.load(split)
    return Source(
        examples=lambda: tf.data.Dataset.from_tensor_slices((images, labels)),
        decode=lambda raw: tf.convert_to_tensor(raw),  # a lambda: TensorFlow is imported where it is used
        num_examples=len(labels),
        class_names=embedded.CLASS_NAMES,
        image_shape=embedded.IMAGE_SHAPE,
        stats="mnist",
        arrays=(images, labels),
    )


def _folder_source(dataset: str, split: str) -> Source:
    paths, labels, names, skipped = folder.split_files(folder.root_of(dataset), split)
    if not paths:
        raise DatasetUnavailable(f"{dataset} has no readable images in its {split} split")
    paths, labels = np.asarray(paths), np.asarray(labels, np.int32)

    def in_order(order: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((order.astype(np.int64), (paths[order], labels[order])))

    return Source(
        examples=lambda: tf.data.Dataset.from_tensor_slices((paths, labels)),
        decode=lambda path: folder.decode(tf.io.read_file(path)),
        num_examples=len(paths),
        class_names=names,
        image_shape=(None, None, 3),
        stats="imagenet",
        skipped=skipped,
        in_order=in_order,
    )


def _tfds():
    """tensorflow_datasets (seconds to import: only when a tfds dataset is asked for), after TensorFlow is
    imported our way (without Keras, off the GPUs), which it would otherwise import itself."""
    tensorflow()
    import tensorflow_datasets

    return tensorflow_datasets


def _tfds_builder(name: str, data_dir: str | None, download: bool):
    """A prepared tfds builder, or DatasetUnavailable saying which files to put where."""
    tfds = _tfds()
    builder = tfds.builder(name, data_dir=data_dir or None)
    if builder.is_prepared():
        return builder
    root = data_dir or tfds.core.constants.DATA_DIR
    manual_dir = os.path.join(root, "downloads", "manual")
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        files = " and ".join(MANUAL_FILES.get(name, ("its archives",)))
        needs = f"{name} needs {files} in {manual_dir}/ (see the tfds docs for {name})"
    else:
        needs = f"{name} is not in {root} and cannot be downloaded (offline?): run once with network or pass --data_dir"
    if not download:
        raise DatasetUnavailable(needs + " [download=False]")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except (OSError, AssertionError, tfds.download.DownloadError) as e:  # network errors are OSErrors
        raise DatasetUnavailable(f"{needs} ({typed_first_line(e, limit=200)})") from e
    return builder


def _tfds_split(builder, split: str) -> str:
    """'train'/'validation' -> the first 90% / last 10% of train when the dataset has no validation split."""
    splits = builder.info.splits
    if split in ("train", "validation") and "validation" not in splits:
        return HOLDOUT[split == "validation"]
    base = split.split("[")[0]
    if splits and base not in splits:
        raise ValueError(f"{builder.name} has the splits {sorted(splits)} (and 'validation' = {HOLDOUT[1]})")
    return split


def _tfds_source(name: str, split: str, data_dir: str | None, download: bool) -> Source:
    tfds = _tfds()
    builder = _tfds_builder(name, data_dir, download)
    tfds_split = _tfds_split(builder, split)
    features = builder.info.features
    shape = tuple(features["image"].shape)

    def read(split) -> tf.data.Dataset:
        # Encoded images travel through shuffle and skip; decoding happens in the parallel map.
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: (ex["image"], ex["label"]))

    def examples() -> tf.data.Dataset:
        return read(tfds_split)

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=shape[-1], expand_animations=False)
        return tf.ensure_shape(image, shape)

    if builder.info.splits:
        num_examples = builder.info.splits[tfds_split].num_examples
    else:  # no split metadata (tfds.testing.mock_data): count once
        num_examples = int(examples().reduce(0, lambda n, _: n + 1))

    def read_part(index: int, count: int) -> tf.data.Dataset:
        # A host reads only its part's records (tfds.even_splits, as tfds.split_for_jax_process does): with
        # ds.shard every host of an ImageNet pod slice would read the whole dataset each epoch. The parts
        # are consecutive, in order, sized like ds.shard's; the global index keeps augmentation host-agnostic.
        start = index * (num_examples // count) + min(index, num_examples % count)
        return read(tfds.even_splits(tfds_split, n=count)[index]).enumerate(start=start)

    return Source(
        examples=examples,
        decode=decode,
        num_examples=num_examples,
        class_names=tuple(features["label"].names),
        image_shape=shape,
        stats=name if name in STATS else "imagenet",
        read_part=read_part if builder.info.splits else None,  # mock_data ignores split slicing
    )


def make_source(dataset: str, split: str, data_dir: str | None = None, download: bool = True) -> Source:
    """The Source of `split` of `dataset`: 'embedded_mnist', 'folder:/path' or a tfds name."""
    if dataset == "embedded_mnist":
        return _embedded_source(split)
    if dataset.startswith(folder.PREFIX):
        return _folder_source(dataset, split)
    return _tfds_source(dataset, split, data_dir, download)


def dataset_info(dataset: str, data_dir: str | None = None) -> tuple[int, tuple[int | None, int | None, int]]:
    """(num_classes, source image shape) of `dataset`, without preparing or reading it."""
    if dataset == "embedded_mnist":
        return len(embedded.CLASS_NAMES), embedded.IMAGE_SHAPE
    if dataset.startswith(folder.PREFIX):
        return len(folder.class_names(folder.root_of(dataset))), (None, None, 3)
    features = _tfds().builder(dataset, data_dir=data_dir or None).info.features
    return features["label"].num_classes, tuple(features["image"].shape)


# --------------------------------------------------------------------------------------- per-example ops


def match_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Grey -> RGB by tiling, RGB -> grey with tf.image.rgb_to_grayscale; an image [H, W, C] or a batch of them."""
    have = image.shape[-1]
    if have == channels:
        return image
    if (have, channels) == (1, 3):
        return tf.tile(image, [1] * (image.shape.rank - 1) + [3])
    if (have, channels) == (3, 1):
        return tf.image.rgb_to_grayscale(image)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def fit_to_size(image: tf.Tensor, size: tuple[int, int], crop_fraction: float = 1.0) -> tf.Tensor:
    """Bring a float image [h, w, c] to `size` (H, W); without a crop, also a batch [B, h, w, c] of one size.

    28x28 -> 32x32 is zero padding by 2 (LeNet-5, LeCun et al. 1998, pads MNIST). With crop_fraction < 1 the
    shorter side is resized to round(max(H, W) / crop_fraction) and the centre (H, W) cropped (torchvision's
    Resize(256) + CenterCrop(224)); otherwise a bilinear resize, antialiased when it shrinks.
    """
    height, width = size
    spatial = tuple(image.shape[-3:-1])
    if (height, width) == (32, 32) and crop_fraction >= 1.0 and None in spatial:
        # Image folders have no static size: the same rule image by image (a folder of MNIST digits).
        is_28 = tf.reduce_all(tf.equal(tf.shape(image)[:2], 28))
        image = tf.cond(is_28, lambda: tf.pad(image, [[2, 2], [2, 2], [0, 0]]),
                        lambda: tf.image.resize(image, size, method="bilinear", antialias=True))
        return tf.ensure_shape(image, [height, width, image.shape[-1]])
    if spatial == (28, 28) and (height, width) == (32, 32):
        return tf.pad(image, [[0, 0]] * (image.shape.rank - 3) + [[2, 2], [2, 2], [0, 0]])
    if spatial == (height, width):
        return image
    if crop_fraction >= 1.0:
        return tf.image.resize(image, size, method="bilinear", antialias=True)
    side = round(max(height, width) / crop_fraction)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    # torchvision: the shorter side becomes `side`, the longer one int(side * long / short).
    new = tf.cast(tf.math.floor(hw * side / tf.reduce_min(hw)), tf.int32)
    new = tf.maximum(new, [height, width])
    image = tf.image.resize(image, new, method="bilinear", antialias=True)
    top, left = tf.unstack(tf.cast(tf.round(tf.cast(new - [height, width], tf.float32) / 2), tf.int32))
    return tf.ensure_shape(image[top : top + height, left : left + width], [height, width, image.shape[-1]])


def explicit_normalize(mean, std, order: str = "RGB") -> str:
    """The `normalize` value that gives these per-channel statistics (on the [0, 1] scale, in `order`: 'RGB',
    or 'BGR' where the model takes the channels reversed, as Keras's "caffe" VGG weights do), e.g.
    'BGR;mean=0.408,0.458,0.485;std=0.0039,0.0039,0.0039'. The statistics of published weights travel in
    this one string field, so that every pipeline reads them the same way."""
    numbers = lambda values: ",".join(repr(float(v)) for v in values)  # noqa: E731
    return f"{order};mean={numbers(mean)};std={numbers(std)}"


def _explicit(normalize: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(order, mean, std) of an `explicit_normalize` string; None for the named normalizations."""
    if "mean=" not in normalize:
        return None
    order, *parts = normalize.split(";")
    fields = dict(part.partition("=")[::2] for part in parts)
    try:
        if order not in ("RGB", "BGR") or set(fields) != {"mean", "std"}:
            raise ValueError
        mean, std = (np.float32([float(v) for v in fields[k].split(",")]) for k in ("mean", "std"))
    except ValueError:
        raise ValueError(f"normalize {normalize!r} is not RGB|BGR;mean=M1,M2,..;std=S1,S2,..") from None
    if len(mean) != len(std) or not np.all(std > 0):
        raise ValueError(f"normalize {normalize!r}: mean and std need one value per channel, std above 0")
    return order, mean, std


def channel_order(normalize: str) -> str:
    """'BGR' when `normalize` asks for the channels reversed before normalizing, else 'RGB'."""
    explicit = _explicit(normalize)
    return explicit[0] if explicit else "RGB"


def normalization(normalize: str, stats: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) for `normalize` ('dataset', 'none', a key of STATS such as 'imagenet' or 'mnist': an image
    folder of digits, or explicit statistics from `explicit_normalize`), converted to `channels`."""
    if normalize == "none":
        return np.zeros(channels, np.float32), np.ones(channels, np.float32)
    explicit = _explicit(normalize)
    if explicit:
        if len(explicit[1]) != channels:
            raise ValueError(f"normalize {normalize!r} has {len(explicit[1])} channels, "
                             f"the model takes {channels}")
        return explicit[1], explicit[2]
    if normalize != "dataset" and normalize not in STATS:
        raise ValueError(f"normalize must be 'dataset', 'none', one of {', '.join(STATS)} or "
                         f"'RGB|BGR;mean=..;std=..', not {normalize!r}")
    mean, std = (np.asarray(v, np.float32) for v in STATS[stats if normalize == "dataset" else normalize])
    if len(mean) == 1:  # grey statistics for an RGB model: tiled like the image
        return np.repeat(mean, channels), np.repeat(std, channels)
    if channels == 1:  # RGB statistics for a grey model: the grey weights applied to them (approximate std)
        return np.float32([np.dot(_GREY, mean)]), np.float32([np.dot(_GREY, std)])
    return mean, std


def _shuffle_seed(seed: int, epoch: int) -> int:
    """A shuffle seed that depends on both the run's seed and the epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _read_only(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for array in batch.values():
        array.setflags(write=False)  # kept and handed out again: nobody may change them in place
    return batch


def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """A permutation of the whole split for (seed, epoch), the same on every process (which then shard it)."""
    return np.random.default_rng([seed, epoch, 1]).permutation(num_examples)


# ----------------------------------------------------------------------------------------------- pipeline


class Pipeline:
    """Batches of one split for one model input shape; see the package docstring for the contract."""

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        image_shape: tuple[int, int, int],
        train: bool,
        seed: int,
        augment: Mapping[str, Any] | None = None,
        normalize: str = "dataset",
        process_index: int = 0,
        process_count: int = 1,
        shuffle_buffer: int = 10_000,
        crop_fraction: float = CROP_FRACTION,
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} outside [0, {process_count})")
        self.source = source
        self.batch_size = batch_size
        self.image_shape = tuple(image_shape)
        self.train = train
        self.seed = seed
        self.augment = aug.options(augment)
        self.process_index, self.process_count = process_index, process_count
        self.shuffle_buffer = shuffle_buffer
        # Centre crops are for photos of varying size; fixed-size sources (MNIST, CIFAR) are resized whole.
        self.crop_fraction = crop_fraction if None in source.image_shape[:2] else 1.0
        self.mean, self.std = normalization(normalize, source.stats, self.image_shape[-1])
        self.reverse_channels = channel_order(normalize) == "BGR"
        self._kept_batches: list[dict[str, np.ndarray]] | None = None  # a small evaluation split's batches

        n, p, count = source.num_examples, process_index, process_count
        self.num_local_examples = n // count + (p < n % count)  # ds.shard sizes differ by at most one
        if train:  # every process takes the same number of full batches: the smallest shard decides
            self.steps_per_epoch = (n // count) // batch_size
            if self.steps_per_epoch == 0:
                raise ValueError(f"{n} examples over {count} processes give no full batch of {batch_size}")
        else:  # every process pads to the same number of batches: the largest shard decides
            self.steps_per_epoch = math.ceil(math.ceil(n / count) / batch_size)

    num_examples = property(lambda self: self.source.num_examples, doc="examples in the whole split")
    num_classes = property(lambda self: len(self.source.class_names))
    class_names = property(lambda self: self.source.class_names)
    skipped = property(lambda self: self.source.skipped, doc="corrupt files left out (image folders)")

    def _fits_as_batch(self) -> bool:
        """Whether images reach the model's size on the batch: a source of one image size, and no crop that
        draws its size image by image (random resized crop, scale jittering)."""
        per_image_crop = self.train and (self.augment["random_resized_crop"] or max(self.augment["scale_jitter"]) > 0)
        return None not in self.source.image_shape[:2] and not per_image_crop

    def _example(self, epoch: int) -> Callable:
        """(index, (raw, label)) -> (index, (image, label)): the work that differs image by image. Sources of one
        image size are only decoded (uint8, their own shape); the others are also brought to the model's size
        (float), with their random crop where the config has one."""
        height, width, channels = self.image_shape
        base = tf.constant([self.seed, epoch], tf.int64)

        def fn(index, raw, label):
            if self._fits_as_batch():
                return index, (tf.ensure_shape(self.source.decode(raw), self.source.image_shape), label)
            image = tf.cast(self.source.decode(raw), tf.float32) / 255.0  # exactly torchvision's ToTensor
            image = match_channels(image, channels)
            seed = tf.random.experimental.stateless_fold_in(base, index)
            if self.train and self.augment["random_resized_crop"]:
                image = aug.random_resized_crop(image, aug.resized_crop_seed(seed), (height, width))
            elif self.train and max(self.augment["scale_jitter"]) > 0:
                image = aug.random_scale_crop(image, aug.scale_crop_seed(seed), (height, width),
                                              tuple(self.augment["scale_jitter"]))
            else:
                image = fit_to_size(image, (height, width), self.crop_fraction)
            return index, (tf.ensure_shape(image, self.image_shape), label)

        return lambda index, example: fn(index, *example)

    def _batch(self, epoch: int) -> Callable:
        """(index [B], (images, labels)) -> the model's batch: fit, augment and normalize a whole batch at once
        (a few ops per batch instead of dozens per image). Padding examples (index -1) become zero images with
        mask 0."""
        params = {}
        if self.train:
            params = aug.draw(self.augment, self.seed, epoch, self.source.num_examples, self.image_shape[:2])

        def fn(index, example):
            images, labels = example
            if self._fits_as_batch():
                images = tf.cast(images, tf.float32) / 255.0  # exactly torchvision's ToTensor
                images = fit_to_size(match_channels(images, self.image_shape[-1]), self.image_shape[:2])
            if self.train:
                images = aug.apply_batch(images, {op: tf.gather(table, index) for op, table in params.items()},
                                         self.augment)
            if self.reverse_channels:  # after augmentation, whose colour operations assume RGB
                images = images[..., ::-1]
            images = (images - self.mean) / self.std
            mask = tf.cast(index >= 0, tf.float32)
            if not self.train:
                images = tf.where(mask[:, None, None, None] > 0, images, 0.0)
            images = tf.ensure_shape(images, [self.batch_size, *self.image_shape])
            return dict(image=images, label=tf.cast(labels, tf.int32), mask=mask)

        return fn

    @property
    def in_numpy(self) -> bool:
        """Whether `epoch` prepares the batches in numpy, without TensorFlow: a split held in memory, fitted to
        the model on the batch, grey -> RGB tiling at most, and augmentations that batch_numpy has. The
        tf.data graph (`dataset`) gives the same batches."""
        return (self.source.in_memory and self._fits_as_batch()
                and self.source.image_shape[2] in (1, self.image_shape[2])
                and batch_numpy.supports(self.augment, self.image_shape[2]))

    def _numpy_batches(self, epoch: int, skip_batches: int) -> Iterator[dict[str, np.ndarray]]:
        """`epoch`'s batches from `skip_batches` on, prepared in numpy with the ops of `_batch`, in its order."""
        images, labels = self.source.arrays
        tables = aug.draw(self.augment, self.seed, epoch, self.source.num_examples,
                          self.image_shape[:2]) if self.train else {}
        rows = self.local_order(epoch).reshape(self.steps_per_epoch, self.batch_size)[skip_batches:]
        for index in rows:
            at = np.maximum(index, 0)
            batch = images[at].astype(np.float32) / np.float32(255.0)  # exactly torchvision's ToTensor
            batch = batch_numpy.fit(batch, self.image_shape)
            if self.train:
                batch = batch_numpy.apply_batch(batch, {op: t[index] for op, t in tables.items()}, self.augment)
            if self.reverse_channels:
                batch = batch[..., ::-1]
            batch = (batch - self.mean) / self.std
            mask = (index >= 0).astype(np.float32)
            if not self.train:
                batch = np.where(mask[:, None, None, None] > 0, batch, np.float32(0))
            yield dict(image=np.ascontiguousarray(batch, np.float32),
                       label=np.where(index >= 0, labels[at], 0).astype(np.int32), mask=mask)

    def dataset(self, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        """The tf.data graph of `epoch` from batch `skip_batches` on (skipped examples are never decoded)."""
        self._check_skip(skip_batches)
        # In-memory sources without per-image work: tf.data's autotuning (its parallel threads and their
        # bookkeeping) costs more CPU than the batch ops it would spread (-25% measured, same batches).
        light = self.source.in_memory and self._fits_as_batch()
        parallel = {} if light else dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.source.in_memory:
            ds = self._gathered(epoch, skip_batches)
            if not light:  # a crop drawn image by image (random resized crop) of the images in memory
                ds = ds.unbatch().map(self._example(epoch), **parallel).batch(self.batch_size, drop_remainder=True)
        else:
            ds = self._streamed(epoch, skip_batches).map(self._example(epoch), **parallel)
            ds = self._padded(ds, skip_batches).batch(self.batch_size, drop_remainder=True)
        ds = ds.map(self._batch(epoch), **parallel)
        options = tf.data.Options()
        options.deterministic = True
        options.autotune.enabled = not light
        return ds.prefetch(2 if light else tf.data.AUTOTUNE).with_options(options)

    def local_order(self, epoch: int) -> np.ndarray:
        """In-memory sources: the global indices of this process's examples of `epoch`, batch after batch
        ([steps_per_epoch * batch_size], -1 where the last evaluation batch is padded).

        Train: one permutation of the whole split per (seed, epoch) (source order with shuffle_buffer=1; an
        in-memory split needs no buffer, so any larger one permutes it whole). Eval: source order. Process p
        of c takes every c-th index from the p-th, so the processes' parts of global batch b are together
        positions [b * G, (b + 1) * G) of the order (G = c * batch_size): the examples of a global batch do
        not depend on the process count."""
        n = self.source.num_examples
        shuffled = self.train and self.shuffle_buffer > 1
        order = _epoch_order(self.seed, epoch, n) if shuffled else np.arange(n)
        total = self.steps_per_epoch * self.batch_size
        local = order[self.process_index :: self.process_count][:total]
        return np.pad(local, (0, total - len(local)), constant_values=-1)

    def _gathered(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        """In-memory sources: (index [B], (images [B], labels [B])) of `epoch` from batch `skip_batches` on,
        whole batches gathered by index (`local_order`): no per-example shuffle buffer or batching (~0.4 ms a
        batch of 32 in tf.data). Padding (index -1) gathers example 0, label 0; `_batch` zeroes its image."""
        rows = self.local_order(epoch).reshape(self.steps_per_epoch, self.batch_size)[skip_batches:]
        images, labels = self._arrays

        def gather(index):
            at = tf.maximum(index, 0)
            return index, (tf.gather(images, at), tf.where(index >= 0, tf.gather(labels, at), 0))

        return tf.data.Dataset.from_tensor_slices(rows).map(gather)

    @functools.cached_property
    def _arrays(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The in-memory split as tensors, made once: every epoch's graph captures the same ones."""
        return tuple(tf.constant(a) for a in self.source.arrays)

    def _streamed(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        """Other sources: (global index, (raw, label)) of this process's share of `epoch`, shuffled in a buffer
        (train), from batch `skip_batches` on."""
        total, start = self.steps_per_epoch * self.batch_size, skip_batches * self.batch_size
        # The global index is taken before sharding: an example's augmentation never depends on the host count.
        if self.train and self.source.in_order is not None:
            # An image folder lists its files class by class: a buffer smaller than a class would give batches
            # of one or two classes, so the whole file list is permuted first (file names cost no memory).
            order = _epoch_order(self.seed, epoch, self.source.num_examples)
            ds = self.source.in_order(order).shard(self.process_count, self.process_index)
        else:
            ds = self.source.process_examples(self.process_index, self.process_count)
        if self.train:
            buffer = max(1, min(self.shuffle_buffer, self.num_local_examples))
            ds = ds.shuffle(buffer, seed=_shuffle_seed(self.seed, epoch), reshuffle_each_iteration=False)
        return ds.take(total).skip(start)

    def _padded(self, ds: tf.data.Dataset, skip_batches: int) -> tf.data.Dataset:
        """`ds` with zero examples (index -1) filling the last evaluation batch."""
        total, start = self.steps_per_epoch * self.batch_size, skip_batches * self.batch_size
        num_pad = total - max(start, min(self.num_local_examples, total))  # eval only: fill the last batch
        if num_pad <= 0:
            return ds
        index, (image, label) = ds.element_spec
        pad = (tf.constant(-1, index.dtype), (tf.zeros(image.shape, image.dtype), tf.zeros([], label.dtype)))
        return ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_pad))

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches dict(image=float32 [B, H, W, C], label=int32 [B], mask=float32 [B]) of `epoch`."""
        self._check_skip(skip_batches)
        if self._kept_batches is not None:
            return iter(self._kept_batches[skip_batches:])
        if self.in_numpy:
            batches = self._numpy_batches(epoch, skip_batches)
        else:
            batches = self.dataset(epoch, skip_batches).as_numpy_iterator()
        size = self.steps_per_epoch * self.batch_size * math.prod(self.image_shape) * 4
        if self.train or skip_batches or size > KEEP_EVAL_BYTES:
            return batches
        return self._keep(batches)

    def _keep(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """`batches` (a whole evaluation epoch), kept once they have all been read. An evaluation split is the
        same every epoch: a small one is read once, so that later evaluations neither rebuild nor trace the
        tf.data graph (tens of ms of CPU each) nor redo the per-image work."""
        kept = []
        for batch in batches:
            kept.append(_read_only(batch))
            yield batch
        self._kept_batches = kept

    def _check_skip(self, skip_batches: int) -> None:
        if not 0 <= skip_batches <= self.steps_per_epoch:
            raise ValueError(f"skip_batches {skip_batches} outside [0, {self.steps_per_epoch}]")

    def __len__(self) -> int:
        return self.steps_per_epoch


def make_pipeline(
    dataset: str,
    split: str,
    *,
    batch_size: int,
    image_shape: tuple[int, int, int],
    train: bool,
    seed: int,
    augment: Mapping[str, Any] | None = None,
    normalize: str = "dataset",
    data_dir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 10_000,
    crop_fraction: float = CROP_FRACTION,
    download: bool = True,
) -> Pipeline:
    """The pipeline of `split` of `dataset` for a model taking `image_shape` (H, W, C); see the package docs."""
    source = make_source(dataset, split, data_dir=data_dir, download=download)
    return Pipeline(
        source,
        batch_size=batch_size,
        image_shape=image_shape,
        train=train,
        seed=seed,
        augment=augment,
        normalize=normalize,
        process_index=process_index,
        process_count=process_count,
        shuffle_buffer=shuffle_buffer,
        crop_fraction=crop_fraction,
    )
