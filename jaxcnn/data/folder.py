"""Image folders: `folder:/path` reads /path/{train,validation,test}/<class>/*.png|jpg|jpeg.

Class names are the sub-folders of /path/train, sorted; label i is the i-th name. Without a validation folder,
'validation' is a deterministic 10% of every class of train and 'train' is the rest: within a class the files
are ranked by the SHA-1 of their file name and the first round(10%) are held out, so
the choice does not depend on the machine, the listing order or the root path, and adding a file moves at most
one other. Files TensorFlow cannot decode are skipped; their count and names are printed once per folder.
The verify pass decodes every file once (in parallel, with the decoder training uses) when a split is
first opened in a process.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

from jaxcnn.data.tensorflow_import import tf

EXTENSIONS = (".png", ".jpg", ".jpeg")
HOLDOUT_FRACTION = 0.1
PREFIX = "folder:"


def root_of(dataset: str) -> pathlib.Path:
    return pathlib.Path(dataset[len(PREFIX) :]).expanduser()


def class_names(root: pathlib.Path) -> tuple[str, ...]:
    """Sorted sub-folder names of root/train: the label order."""
    train = root / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{root} has no train/ folder (expected {root}/train/<class>/*.png|jpg|jpeg)")
    names = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if not names:
        raise FileNotFoundError(f"{train} has no class sub-folders")
    return names


def decode(contents: tf.Tensor) -> tf.Tensor:
    """Encoded PNG/JPEG bytes -> uint8 [H, W, 3] (grey and RGBA files become RGB)."""
    return tf.io.decode_image(contents, channels=3, expand_animations=False)


def _decodable(paths: list[str]) -> set[str]:
    """The paths TensorFlow decodes without error (one parallel tf.data pass, failures dropped)."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
    ds = ds.map(lambda p: (p, tf.shape(decode(tf.io.read_file(p)))), num_parallel_calls=tf.data.AUTOTUNE)
    return {p.decode() for p, _ in ds.ignore_errors().as_numpy_iterator()}


@functools.cache
def scan(directory: pathlib.Path, names: tuple[str, ...]) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """({class name: decodable file paths sorted}, skipped paths) of directory/<class>/; prints the skips once."""
    files = {
        c: sorted(str(p) for p in (directory / c).glob("*") if p.suffix.lower() in EXTENSIONS)
        for c in names
        if (directory / c).is_dir()
    }
    everything = [p for ps in files.values() for p in ps]
    ok = _decodable(everything) if everything else set()
    skipped = tuple(p for p in everything if p not in ok)
    if skipped:
        shown = ", ".join(pathlib.Path(p).name for p in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        print(f"skipped {len(skipped)} corrupt image files in {directory}: {shown}")
    return {c: [p for p in ps if p in ok] for c, ps in files.items()}, skipped


def _select(paths: list[str], held_out: bool) -> list[str]:
    """The held-out HOLDOUT_FRACTION of one class's files (lowest SHA-1 of the file name), or the rest."""
    ranked = sorted(paths, key=lambda p: hashlib.sha1(pathlib.Path(p).name.encode()).hexdigest())
    chosen = set(ranked[: round(HOLDOUT_FRACTION * len(paths))])
    return [p for p in paths if (p in chosen) == held_out]


def split_files(root: pathlib.Path, split: str) -> tuple[list[str], list[int], tuple[str, ...], tuple[str, ...]]:
    """(paths, labels, class names, skipped corrupt paths) of `split` in a fixed order (class, then file name)."""
    names = class_names(root)
    has_validation = (root / "validation").is_dir()
    if split == "train" or (split == "validation" and not has_validation):
        by_class, skipped = scan(root / "train", names)
        if not has_validation:
            want_held_out = split == "validation"
            by_class = {c: _select(ps, want_held_out) for c, ps in by_class.items()}
    elif split in ("validation", "test"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root} has no {split}/ folder")
        by_class, skipped = scan(root / split, names)
    else:
        raise ValueError(f"image folders have the splits train, validation, test, not {split!r}")
    paths = [p for c in names for p in by_class.get(c, [])]
    labels = [i for i, c in enumerate(names) for _ in by_class.get(c, [])]
    return paths, labels, names, skipped
