"""Pictures of a network and its training, written as PNG files.

    filter_grid(kernel, "filters.png")                           # first-layer kernels, one small image each
    feature_maps(model, variables, image, ["c1", "c3"], "maps.png")  # what chosen layers make of one image
    training_curves("workdir/metrics.jsonl", "curves.png")       # loss and top-1, train and validation
    confusion_matrix(labels, preds, class_names, "confusion.png")

Every function draws on its own `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no global state, no
display needed), saves it at `DPI` and returns the path. Figures have fixed pixel sizes (below), so the files are
predictable: a notebook shows them with `IPython.display.Image(path)`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
FILTER_CELL = 64  # pixels per kernel in filter_grid
FEATURE_ROW = (1000, 250)  # feature_maps: width x height of each row (the input, then one row per layer)
CURVES_SIZE = (1000, 400)
CONFUSION_SIZE = (700, 600)
MAX_MAPS = 32  # feature maps shown per layer
MAP_COLUMNS = 8


# ------------------------------------------------------------------------------------------- helpers


def _figure(width: int, height: int) -> Figure:
    """A figure of exactly width x height pixels at DPI, on the Agg canvas."""
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # no bbox_inches='tight': it would change the pixel size
    return path


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for n cells (or `cols` wide)."""
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    cols = min(cols, max(n, 1))
    return math.ceil(n / cols), cols


def unit_range(x: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Min-max scale to [0, 1] over `axes` (all when None); a constant array becomes 0.5."""
    x = np.asarray(x, np.float64)
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5)


def mosaic(images: np.ndarray, cols: int | None = None, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tile images [N, h, w, c] into one [rows*(h+pad)-pad, cols*(w+pad)-pad, c] image, row by row."""
    n, h, w, c = images.shape
    rows, cols = grid_shape(n, cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), fill, np.float64)
    for i, image in enumerate(images):
        r, col = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = image
    return out


def _show(ax, image: np.ndarray, cmap: str = "gray", aspect: str = "equal") -> None:
    """imshow of an [h, w, 1] or [h, w, 3] image in [0, 1], without ticks."""
    grey = image.shape[-1] == 1
    colours = matplotlib.colormaps[cmap].with_extremes(bad="white")  # NaN gaps of a mosaic show white
    ax.imshow(image[..., 0] if grey else image, cmap=colours if grey else None, vmin=0.0, vmax=1.0,
              interpolation="nearest", aspect=aspect)
    ax.set_axis_off()


# ------------------------------------------------------------------------------------------- filters


def filter_images(kernel: np.ndarray) -> np.ndarray:
    """A conv kernel (kh, kw, in, out) as `out` images [out, kh, kw, 1 or 3], each scaled to [0, 1] on its own.

    Kernels reading 1 or 3 channels show as grey or colour images (AlexNet's Fig. 3); any other input count
    is averaged over the inputs, as grey.
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"expected a conv kernel (kh, kw, in, out), got shape {kernel.shape}")
    filters = np.transpose(kernel, (3, 0, 1, 2))
    if filters.shape[-1] not in (1, 3):
        filters = filters.mean(axis=-1, keepdims=True)
    return unit_range(filters, axes=(1, 2, 3))


def filter_grid(kernel: np.ndarray, path: str | Path, cell: int = FILTER_CELL) -> Path:
    """First-layer filters as a grid of small images, `cell` pixels each: a (rows*cell) x (cols*cell) PNG
    with a near-square grid (`grid_shape`), one-pixel white gaps between kernels."""
    images = filter_images(kernel)
    rows, cols = grid_shape(len(images))
    fig = _figure(cols * cell, rows * cell)
    ax = fig.add_axes((0, 0, 1, 1))
    _show(ax, mosaic(images, cols), aspect="auto")  # the axes fill the figure: one cell per kernel
    return _save(fig, path)


def first_conv_kernel(model: nn.Module, variables: Mapping, input_shape: Sequence[int]) -> tuple[str, np.ndarray]:
    """(path, kernel) of the first `nn.Conv` the model calls on an input of `input_shape` (H, W, C).

    Call order comes from tracing the model (`summary.trace_calls`), not from the variable tree, whose keys
    may come back sorted from a checkpoint (GoogLeNet's 'aux1' would sort before 'conv1').
    """
    from jaxcnn.summary import trace_calls

    _, calls, _ = trace_calls(model, input_shape)
    for path, kind, _ in calls:
        if kind == "Conv":
            node = variables["params"]
            for name in path:
                node = node[name]
            return "/".join(path), np.asarray(node["kernel"])
    raise ValueError(f"{model.name or type(model).__name__} has no nn.Conv layer")


# ------------------------------------------------------------------------------------------- feature maps


def layer_outputs(model: nn.Module, input_shape: Sequence[int], top_level: bool = True) -> list[tuple[str, tuple]]:
    """(path, output shape) of the module calls on an input of `input_shape`, in call order (top-level
    modules only unless `top_level=False`); the names `feature_maps` accepts."""
    from jaxcnn.summary import trace_calls

    _, calls, _ = trace_calls(model, input_shape)
    return [("/".join(p), out) for p, _, out in calls if p and (len(p) == 1 or not top_level)]


def default_layers(model: nn.Module, input_shape: Sequence[int], count: int = 3) -> list[str]:
    """Up to `count` top-level layers with spatial outputs (more than 1x1), spread from first to last."""
    spatial = [p for p, out in layer_outputs(model, input_shape)
               if isinstance(out, tuple) and len(out) == 4 and out[1] * out[2] > 1]
    if len(spatial) <= count:
        return spatial
    picks = np.linspace(0, len(spatial) - 1, count).round().astype(int)
    return [spatial[i] for i in sorted(set(picks))]


def capture(model: nn.Module, variables: Mapping, images: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs of the modules at `layers` (paths like 'c1' or 'layer1_0/conv1') for a batch of images,
    in eval mode, via flax `capture_intermediates` filtered on the module paths."""
    wanted = set(layers)

    def keep(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and "/".join(module.path) in wanted

    @jax.jit
    def run(variables, x):
        _, state = model.apply(variables, x, train=False, capture_intermediates=keep, mutable=["intermediates"])
        return state.get("intermediates", {})  # absent when no module matched

    captured = run({k: v for k, v in variables.items() if k in ("params", "batch_stats")},
                   jnp.asarray(images, jnp.float32))
    out = {}
    for layer in layers:
        node = captured
        for name in layer.split("/"):
            node = node.get(name) if isinstance(node, Mapping) else None
        if node is None:
            names = ", ".join(p for p, _ in layer_outputs(model, images.shape[1:], top_level=False))
            raise ValueError(f"no layer {layer!r}; the model's layers are: {names}")
        value = node["__call__"][0]  # a module called twice would add a second entry; we show its first call
        out[layer] = np.asarray(jax.tree.leaves(value)[0])
    return out


def map_images(activation: np.ndarray, max_maps: int = MAX_MAPS) -> np.ndarray:
    """One image's activation as grey images [n, h, w, 1] in [0, 1]: the first `max_maps` channels of an
    [h, w, c] map, each scaled on its own; a vector [d] becomes one near-square image."""
    a = np.asarray(activation, np.float64)
    if a.ndim == 3:
        maps = np.transpose(a[..., :max_maps], (2, 0, 1))[..., None]
        return unit_range(maps, axes=(1, 2, 3))
    flat = a.reshape(-1)
    rows, cols = grid_shape(flat.size)
    square = np.full(rows * cols, flat.min())
    square[: flat.size] = flat
    return unit_range(square.reshape(1, rows, cols, 1))


def feature_maps(model: nn.Module, variables: Mapping, image: np.ndarray, layers: Sequence[str],
                 path: str | Path, max_maps: int = MAX_MAPS) -> Path:
    """The feature maps one (preprocessed) image [H, W, C] produces at `layers`.

    Row 0 shows the input, then one row per layer with its first `max_maps` channels (each scaled to
    [0, 1] on its own, `MAP_COLUMNS` per line). The PNG is FEATURE_ROW[0] x FEATURE_ROW[1]*(len(layers)+1).
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"feature_maps takes one image [H, W, C], got shape {image.shape}")
    if not layers:
        raise ValueError("feature_maps needs at least one layer")
    outputs = capture(model, variables, image[None], layers)
    width, row = FEATURE_ROW
    fig = _figure(width, row * (len(layers) + 1))
    axes = fig.subplots(len(layers) + 1, 1)
    _show(axes[0], unit_range(image))
    axes[0].set_title(f"input {'x'.join(map(str, image.shape))}", fontsize=9)
    for ax, layer in zip(axes[1:], layers):
        activation = outputs[layer][0]
        maps = map_images(activation, max_maps)
        _show(ax, mosaic(maps, MAP_COLUMNS if activation.ndim == 3 else 1, fill=np.nan), cmap="viridis")
        shown = f", first {len(maps)}" if activation.ndim == 3 and activation.shape[-1] > len(maps) else ""
        ax.set_title(f"{layer}: {'x'.join(map(str, activation.shape))}{shown}", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, hspace=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- curves


def read_metrics(metrics_jsonl: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file; a torn last line (a run killed mid-write) is left out."""
    records = []
    for line in Path(metrics_jsonl).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def curve(records: Sequence[Mapping], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` for `split`, in step order; non-finite values (logged as strings) are NaN."""
    points = sorted((int(r["step"]), float(r[key])) for r in records if r.get("split") == split and key in r)
    steps, values = zip(*points) if points else ((), ())
    return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def training_curves(metrics_jsonl: str | Path, path: str | Path) -> Path:
    """Loss (left) and top-1 accuracy (right) against step, train and validation, from metrics.jsonl;
    a CURVES_SIZE PNG."""
    records = read_metrics(metrics_jsonl)
    if not any(r.get("split") in ("train", "validation") for r in records):
        raise ValueError(f"{metrics_jsonl} has no train or validation records")
    fig = _figure(*CURVES_SIZE)
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(axes, ("loss", "top1"), ("loss", "top-1 accuracy")):
        for split, style in (("train", "-"), ("validation", "o-")):
            steps, values = curve(records, split, key)
            if len(steps):
                ax.plot(steps, values, style, label=split, markersize=4)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()  # layout within the figure; the pixel size stays
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- confusion


def confusion_counts(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts: row = true class, column = predicted class."""
    labels, preds = np.asarray(labels, np.int64).ravel(), np.asarray(preds, np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"{labels.size} labels but {preds.size} predictions")
    if labels.size and (min(labels.min(), preds.min()) < 0 or max(labels.max(), preds.max()) >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str],
                     path: str | Path) -> Path:
    """The confusion matrix as a CONFUSION_SIZE PNG: colour = fraction of each true class (rows sum to 1),
    counts written in the cells and class names on the axes when there are few enough classes to read."""
    n = len(class_names)
    counts = confusion_counts(labels, preds, n)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(*CONFUSION_SIZE)
    ax = fig.add_subplot()
    im = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), [str(c) for c in class_names], rotation=90 if n > 10 else 0, fontsize=8)
        ax.set_yticks(range(n), [str(c) for c in class_names], fontsize=8)
    if n <= 20:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if fractions[i, j] > 0.5 else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{counts.sum()} images, top-1 {accuracy:.3f}")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return _save(fig, path)


__all__ = [
    "DPI", "capture", "confusion_counts", "confusion_matrix", "default_layers", "feature_maps", "filter_grid",
    "filter_images", "first_conv_kernel", "grid_shape", "layer_outputs", "mosaic", "read_metrics",
    "training_curves", "unit_range",
]
