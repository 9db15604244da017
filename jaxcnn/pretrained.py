"""Published ImageNet weights by name: find, download, verify, convert once, cache.

    model, variables = jaxcnn.pretrained.load("resnet50")                 # torchvision's default weights
    model, variables = jaxcnn.pretrained.load("vgg16", source="keras")    # keras.applications VGG16

The table of files (jaxcnn/data/pretrained_weights.json, written by scripts/make_pretrained_table.py from the
installed torchvision and Keras) gives each file's URL and hash: torchvision's file names carry the first hex
digits of the file's sha256, Keras lists an md5 per file. A file is looked for, in order, in
`$JAXCNN_HOME/downloads` (default ~/.cache/jaxcnn), torch's cache (`$TORCH_HOME/hub/checkpoints`) and Keras's
(`~/.keras/models`), and downloaded otherwise; `JAXCNN_WEIGHTS_MIRROR=URL` replaces the publisher's address up
to the file name. Every file is verified before it is converted. A download goes to a temporary file that is
renamed into the cache only once complete and verified, so an interrupted or corrupt download never becomes a
cache entry. The converted variables are cached under `$JAXCNN_HOME/converted` (orbax, through
jaxcnn.checkpoint), so later calls neither read the publisher's file nor import torch or Keras.

Failures raise `PretrainedError` (a ValueError) with a one-line message that says what to do.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from jaxcnn.errors import first_line

TABLE_FILE = Path(__file__).parent / "data" / "pretrained_weights.json"
SOURCES = ("torchvision", "keras")
CHUNK = 1 << 20


class PretrainedError(ValueError):
    """Weights that cannot be had (unknown name, unreachable server, bad hash); one line saying what to do."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published weights file and how its model expects images (an entry of the table)."""

    model: str
    source: str  # 'torchvision' | 'keras'
    weights: str  # torchvision's enum name (IMAGENET1K_V1...) or 'imagenet'
    default: bool  # the publisher's default for this model
    url: str
    hash_algorithm: str  # 'sha256' | 'md5'
    hash: str  # the hex digest, or its leading digits (torchvision's file names carry 8)
    resize: int  # shorter side before the centre crop
    crop: int
    channels: str  # 'RGB' | 'BGR'
    mean: tuple[float, ...]  # on the [0, 1] scale, in `channels` order
    std: tuple[float, ...]
    top1: float  # ImageNet-1k validation accuracy (%) as the publisher reports it
    top5: float
    num_params: int | None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]

    @property
    def preprocessing(self) -> dict:
        """Keyword arguments of `jaxcnn.imagenet.eval_transform` for this file's model."""
        return dict(resize=self.resize, crop=self.crop, mean=list(self.mean), std=list(self.std),
                    channels=self.channels)

    @property
    def cache_name(self) -> str:
        return f"{self.model}-{self.weights}-{self.hash[:8]}"


@functools.cache
def table() -> tuple[Weights, ...]:
    entries = json.loads(TABLE_FILE.read_text())
    return tuple(Weights(**{**e, "mean": tuple(e["mean"]), "std": tuple(e["std"])}) for e in entries)


def available(source: str | None = None) -> dict[str, list[str]]:
    """{source: sorted model names with published weights}."""
    out: dict[str, list[str]] = {}
    for w in table():
        if source in (None, w.source) and w.model not in out.setdefault(w.source, []):
            out[w.source].append(w.model)
    return {s: sorted(names) for s, names in out.items()}


def find(name: str, source: str = "torchvision", weights: str | None = None) -> Weights:
    """The table entry for `name` from `source` (`weights`: a tag such as IMAGENET1K_V1; None: the default)."""
    if source not in SOURCES:
        raise PretrainedError(f"unknown weights source {source!r}: choose one of {', '.join(SOURCES)}")
    entries = [w for w in table() if w.source == source and w.model == name]
    if not entries:
        others = [s for s, names in available().items() if name in names]
        hint = f" ({', '.join(others)} has them)" if others else ""
        raise PretrainedError(f"no {source} weights for {name!r}{hint}; {source} publishes: "
                              f"{', '.join(available(source)[source])}")
    for w in entries:
        if w.weights == weights or (weights is None and w.default):
            return w
    raise PretrainedError(f"no {source} weights {weights!r} for {name!r}; there are: "
                          f"{', '.join(w.weights for w in entries)}")


# ------------------------------------------------------------------------------------------- places


def home() -> Path:
    return Path(os.environ.get("JAXCNN_HOME") or Path.home() / ".cache" / "jaxcnn")


def torch_cache() -> Path:
    """torch.hub's checkpoint directory (its own rule: $TORCH_HOME, else $XDG_CACHE_HOME/torch)."""
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                      Path.home() / ".cache") / "torch"
    return Path(torch_home) / "hub" / "checkpoints"


def keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def download_path(w: Weights) -> Path:
    return home() / "downloads" / w.filename


def converted_path(w: Weights) -> Path:
    return home() / "converted" / w.source / w.cache_name


def url_for(w: Weights) -> str:
    """The publisher's URL, or `$JAXCNN_WEIGHTS_MIRROR/<file name>`."""
    mirror = os.environ.get("JAXCNN_WEIGHTS_MIRROR")
    return f"{mirror.rstrip('/')}/{w.filename}" if mirror else w.url


# ------------------------------------------------------------------------------------- the file


def digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def matches(path: Path, w: Weights) -> tuple[bool, str]:
    """(whether `path` has the file's hash, its actual digest)."""
    actual = digest(path, w.hash_algorithm)
    return actual.startswith(w.hash), actual


def fetch(w: Weights, progress: bool = True) -> Path:
    """The verified file of `w`: from a cache (jaxcnn's, torch's, Keras's) or downloaded into jaxcnn's."""
    for path in (download_path(w), torch_cache() / w.filename, keras_cache() / w.filename):
        if not path.is_file():
            continue
        ok, actual = matches(path, w)
        if not ok:  # not ours to delete: someone put it there
            raise PretrainedError(f"{path} has {w.hash_algorithm} {actual}, but {w.filename} should have "
                                  f"{w.hash}: remove that file and retry")
        return path
    return download(url_for(w), download_path(w), w, progress)


def download(url: str, dest: Path, w: Weights, progress: bool = True) -> Path:
    """Download `url` to a temporary file next to `dest`, verify it, then rename it to `dest`."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        size = tmp.stat().st_size
        if total is not None and size != total:
            raise PretrainedError(f"the download of {url} stopped after {size} of {total} bytes; nothing was "
                                  f"kept: retry")
        ok, actual = matches(tmp, w)
        if not ok:
            raise PretrainedError(f"{url} has {w.hash_algorithm} {actual}, expected {w.hash}: the file was "
                                  f"removed (a wrong mirror, or a corrupt download)")
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        plain_url_error = isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
        reason = str(e.reason) if plain_url_error else first_line(e)
        raise PretrainedError(f"cannot download {url} ({reason}): download it by hand and put it at {dest}, "
                              f"or set JAXCNN_WEIGHTS_MIRROR to a server that has {w.filename}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ------------------------------------------------------------------------------------- conversion


def convert_file(model_name: str, path: str | Path, source: str) -> dict:
    """Flax variables for `model_name` from a torchvision .pth or a Keras .h5 file."""
    from jaxcnn import convert

    if source == "torchvision":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise PretrainedError(f"reading {Path(path).name} (a torch file) needs torch: "
                                  f"pip install 'jaxcnn[torch]'") from None
        from jaxcnn.convert.__main__ import load_torch_state_dict

        return convert.torchvision_to_flax(model_name, current_keys(load_torch_state_dict(str(path))))
    return convert.keras_to_flax(model_name, str(path))


def current_keys(state_dict: dict) -> dict:
    """The published DenseNet files predate torchvision's renaming of 'denselayerN.norm.1' to 'norm1' (and
    'conv.2' to 'conv2'...), which torchvision undoes when it loads them; so do we."""
    import re

    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", key): value
            for key, value in state_dict.items()}


def model_kwargs(variables: dict) -> dict:
    """Builder arguments the converted variables need: auxiliary heads when the file had them."""
    from jaxcnn.convert.tv_inception import AUX_PARAM_NAMES

    return {"aux_logits": True} if set(AUX_PARAM_NAMES) & set(variables["params"]) else {}


def count_classes(model_name: str, variables: dict, image_shape) -> int:
    """The number of classes the variables produce (read off the shapes; aux heads left aside)."""
    from jaxcnn.convert.__main__ import output_classes
    from jaxcnn.convert.tv_inception import AUX_PARAM_NAMES

    main = {c: {k: v for k, v in tree.items() if k not in AUX_PARAM_NAMES} for c, tree in variables.items()}
    return output_classes(model_name, main, image_shape)


def load_variables(name: str, source: str = "torchvision", weights: str | None = None, *,
                   progress: bool = True) -> tuple[dict, dict]:
    """(variables, metadata) of published weights; converted on the first call, read from the cache after."""
    from jaxcnn import checkpoint
    from jaxcnn.models import get_spec

    w = find(name, source, weights)
    cached = converted_path(w)
    if cached.is_dir():
        return checkpoint.load_variables(cached)
    variables = convert_file(name, fetch(w, progress), source)
    image_shape = [w.crop, w.crop, get_spec(name).input_shape[-1]]
    metadata = {"model": name, "num_classes": count_classes(name, variables, image_shape),
                "image_shape": image_shape, "source": f"{source}:{w.filename}",
                "weights": w.weights, "preprocessing": w.preprocessing, "model_kwargs": model_kwargs(variables)}
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:  # orbax writes a temporary directory, then renames it: a reader never sees half a copy
        checkpoint.save_variables(cached, variables, metadata)
    except (ValueError, OSError):
        if not cached.is_dir():  # not another process that converted the same file meanwhile
            raise
    return checkpoint.load_variables(cached)


def build_model(metadata: dict) -> Any:
    """The flax module that `metadata` (of `load_variables` / `load_init`) describes."""
    from jaxcnn.models import get_model

    return get_model(metadata["model"], num_classes=int(metadata["num_classes"]),
                     **dict(metadata.get("model_kwargs") or {}))


def load(name: str, source: str = "torchvision", weights: str | None = None, *,
         progress: bool = True) -> tuple[Any, dict]:
    """(model, variables) with the published ImageNet weights of `name` from `source` ('torchvision' |
    'keras'); `weights` picks a file other than the default (e.g. 'IMAGENET1K_V1'). Feed the model images
    prepared by `jaxcnn.imagenet.eval_transform(image, **find(name, source).preprocessing)`."""
    variables, metadata = load_variables(name, source, weights, progress=progress)
    return build_model(metadata), variables


FILE_SUFFIXES = (".pth", ".pt", ".h5")


def handles(init_from: str) -> bool:
    """Whether `init_from` names published weights ('torchvision', 'keras:TAG') or a publisher's file."""
    return init_from.partition(":")[0] in SOURCES or Path(init_from).suffix in FILE_SUFFIXES


def load_init(init_from: str, model_name: str) -> tuple[dict, dict]:
    """(variables, metadata) for an `init_from` that `handles`: 'torchvision' / 'keras' (or
    'torchvision:IMAGENET1K_V1'...): the published weights of `model_name`; a .pth / .pt file: a torchvision
    state_dict, a .h5 file: Keras weights (both converted on the fly, not cached).

    `jaxcnn.weights.load_init_variables` is the entry point that also reads workdirs and saved variables.
    """
    from jaxcnn.models import get_spec

    source, _, tag = init_from.partition(":")  # 'torchvision:IMAGENET1K_V1' picks a non-default file
    if source in SOURCES:
        return load_variables(model_name, source, tag or None)
    suffix = Path(init_from).suffix
    if suffix not in FILE_SUFFIXES:
        raise PretrainedError(f"{init_from} is neither a weights source ({', '.join(SOURCES)}) nor a "
                              f"{'/'.join(FILE_SUFFIXES)} file")
    if not Path(init_from).is_file():
        raise PretrainedError(f"--init_from {init_from} does not exist")
    source = "keras" if suffix == ".h5" else "torchvision"
    variables = convert_file(model_name, init_from, source)
    metadata = {"model": model_name, "source": f"{source}:{Path(init_from).name}",
                "model_kwargs": model_kwargs(variables), "image_shape": list(get_spec(model_name).input_shape)}
    if model_name in available(source).get(source, []):  # an ImageNet model: its publisher's transform
        w = find(model_name, source)
        metadata.update(image_shape=[w.crop, w.crop, 3], preprocessing=w.preprocessing)
    metadata["num_classes"] = count_classes(model_name, variables, metadata["image_shape"])
    return variables, metadata
