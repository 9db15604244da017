"""Regenerate jaxcnn/data/embedded_mnist.npz: a fixed, class-balanced subset of the real MNIST training set.

    python scripts/make_embedded_mnist.py [--src ../shared/data/mnist] [--train 10000] [--validation 2000]

Reads the gzipped idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz), picks per class
`train/10` training and `validation/10` validation images with a fixed seed, and stores them as uint8 in a
compressed .npz (about 2 MB). The same inputs always give the same file.
MNIST is by Y. LeCun, C. Cortes and C. Burges, CC BY-SA 3.0.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pathlib

import numpy as np

SEED = 20240601  # fixed: the subset is part of the package, it must not change between runs
IMAGES_MD5 = "6bbc9ace898e44ae57da46a324031adb"  # of the unzipped training images (docs/reference.md)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def read_idx(path: pathlib.Path) -> tuple[np.ndarray, bytes]:
    """Parse one gzipped idx file (magic 0, 0, 0x08 = uint8, ndim; big-endian dims; data): (array, raw bytes)."""
    raw = gzip.decompress(path.read_bytes())
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not a uint8 idx file")
    ndim = raw[3]
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">u4").astype(int)
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims), raw


def balanced_subset(labels: np.ndarray, n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of `n_train` + `n_val` examples, an equal share per class, disjoint, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_train, per_val = n_train // len(classes), n_val // len(classes)
    train, val = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:per_train])
        val.append(idx[per_train : per_train + per_val])
    # Sorted: the stored order is the source order; the pipeline shuffles.
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "jaxcnn" / "data" / "embedded_mnist.npz")
    p.add_argument("--train", type=int, default=10_000)
    p.add_argument("--validation", type=int, default=2_000)
    args = p.parse_args()

    images, raw = read_idx(args.src / "train-images-idx3-ubyte.gz")
    if hashlib.md5(raw).hexdigest() != IMAGES_MD5:
        raise ValueError(f"{args.src} does not hold the MNIST training images (md5 mismatch)")
    labels, _ = read_idx(args.src / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60_000, 28, 28) and labels.shape == (60_000,)

    train, val = balanced_subset(labels, args.train, args.validation, SEED)
    np.savez_compressed(
        args.out,
        train_images=images[train], train_labels=labels[train], train_source_index=train.astype(np.int32),
        validation_images=images[val], validation_labels=labels[val],
        validation_source_index=val.astype(np.int32),
    )
    print(f"wrote {args.out}: {len(train)} train + {len(val)} validation, {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
