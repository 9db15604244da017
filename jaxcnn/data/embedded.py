"""`embedded_mnist`: a real MNIST subset shipped inside the package, so training and tests work offline.

10,000 training and 2,000 validation images (1,000 and 200 per digit), drawn once with a fixed seed from the
60,000-image MNIST training set by scripts/make_embedded_mnist.py and stored as uint8 in embedded_mnist.npz
(about 2 MB). The two splits are disjoint; there is no 'test' split.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/),
licensed under CC BY-SA 3.0; the subset here is shared under the same licence.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

PATH = pathlib.Path(__file__).with_name("embedded_mnist.npz")
SPLITS = ("train", "validation")
IMAGE_SHAPE = (28, 28, 1)
CLASS_NAMES = tuple(str(d) for d in range(10))


@functools.cache
def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) of `split` ('train' or 'validation'), in stored order."""
    if split not in SPLITS:
        raise ValueError(f"embedded_mnist has the splits {SPLITS}, not {split!r}")
    with np.load(PATH) as f:
        images, labels = f[f"{split}_images"], f[f"{split}_labels"]
    images, labels = images[..., None], labels.astype(np.int32)
    for a in (images, labels):
        a.setflags(write=False)  # cached and shared: nobody may change them in place
    return images, labels
