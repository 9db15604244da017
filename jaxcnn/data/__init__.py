"""Input pipelines: tfds datasets, the embedded MNIST subset and image folders, through one tf.data graph (or
its numpy twin for splits held in memory).

    pipe = make_pipeline("embedded_mnist", "train", batch_size=128, image_shape=(32, 32, 1), train=True, seed=0)
    for batch in pipe.epoch(3, skip_batches=10):  # dict(image=[B,H,W,C] float32, label=[B] int32, mask=[B] float32)
        ...

`make_pipeline(dataset, split, *, batch_size, image_shape, train, seed, augment=None, normalize='dataset',
data_dir=None, process_index=0, process_count=1, shuffle_buffer=10000, crop_fraction=0.875, download=True)`
returns a `Pipeline` with `num_examples` (the whole split), `num_classes`, `class_names`, `steps_per_epoch`,
`skipped` (corrupt folder files left out) and `epoch(epoch, skip_batches=0)`, an iterator of numpy batches.

Datasets
  * tfds names: mnist, fashion_mnist, cifar10, cifar100, imagenette, imagenet2012 (any tfds dataset with
    'image' and 'label' features works). Prepared with `download_and_prepare` into `data_dir`; imagenet2012
    needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/. A dataset
    that is not on disk and cannot be fetched raises `DatasetUnavailable` (a ValueError) with a one-line reason.
    Datasets without a validation split (MNIST, CIFAR): 'train' is tfds 'train[:90%]' and 'validation' the
    held-out 'train[90%:]'; 'test' is tfds 'test'. Other tfds split strings ('train[:1000]') pass through.
  * 'embedded_mnist': 10,000 train + 2,000 validation real MNIST images stored in the package (offline).
    MNIST is by Y. LeCun, C. Cortes and C. Burges, CC BY-SA 3.0.
  * 'folder:/path': /path/{train,validation,test}/<class>/*.png|jpg|jpeg, class names sorted; without a
    validation folder a deterministic 10% of each class of train is held out; corrupt files are skipped and
    reported once.

Contract
  * Train: shuffled, augmented (config.augment), full batches only (the remainder is dropped), mask all ones.
    Eval (train=False): source order, no augmentation, the last batch padded to batch_size with zero images
    and mask 0, so every batch divides over devices; the count of mask == 1 over an epoch is the split size.
  * Shuffling: a buffer of `shuffle_buffer` examples; image folders, listed class by class, first have their
    whole file list permuted, so that batches mix the classes however small the buffer. Splits held in memory
    (embedded MNIST) are permuted whole in numpy, one permutation per (seed, epoch) (shuffle_buffer=1: source
    order), and gathered batch by batch; the examples of a global batch then do not depend on the host count.
  * Determinism: an epoch is a pure function of (seed, epoch). The shuffle is seeded from (seed, epoch) and
    every random op of an example from (seed, epoch, example index), whatever its batch, host or resume
    position (augmentation runs on whole batches, with per-example draws: jaxcnn.data.augment), so
    `epoch(e, skip_batches=k)` yields exactly the batches k.. of `epoch(e)`: the trainer resumes mid-epoch
    with it. A small evaluation split (its batches under 256 MB) is read once and kept.
  * Model input: images are brought to the model's (H, W, C): 28x28 -> 32x32 by padding 2 pixels (LeNet-5 1998),
    fixed-size sources otherwise by bilinear (antialiased) resizing, sources of varying size (ImageNet,
    folders) by resizing the shorter side to H / crop_fraction and centre cropping (torchvision's 256 -> 224);
    grey -> RGB by tiling, RGB -> grey by tf.image.rgb_to_grayscale. normalize: 'dataset' (per-dataset
    mean/std, ImageNet's for folders and imagenette), 'imagenet' or 'none' (pixels in [0, 1]).
  * Multi-host: each process reads its own share of the split, and `batch_size` is the per-process batch;
    all processes run the same steps_per_epoch (train: the smallest share's full batches; eval: the largest
    share's batches, padded). tfds datasets: process p reads only the consecutive part p of the split
    (`tfds.even_splits`, as `tfds.split_for_jax_process`), so no host reads another's records; embedded and
    folder sources (in memory, or paths read after sharding): example i goes to process i % process_count
    (`ds.shard` after the fixed source order). Shares differ in size by at most one example.

TensorFlow is imported at its first use (jaxcnn.data.tensorflow_import), which hides the GPUs from it (the
accelerators belong to JAX). Splits held in memory (embedded MNIST) are prepared in numpy without it, unless
an option needs it (RGB colour jitter, a crop drawn image by image).
"""

from jaxcnn.data.pipeline import (
    STATS,
    TFDS_DATASETS,
    DatasetUnavailable,
    Pipeline,
    Source,
    dataset_info,
    explicit_normalize,
    fit_to_size,
    make_pipeline,
    make_source,
    match_channels,
)

__all__ = [
    "STATS",
    "TFDS_DATASETS",
    "DatasetUnavailable",
    "Pipeline",
    "Source",
    "dataset_info",
    "explicit_normalize",
    "fit_to_size",
    "make_pipeline",
    "make_source",
    "match_channels",
]
