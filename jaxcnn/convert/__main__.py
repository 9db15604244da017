"""Convert torchvision or Keras weights into an orbax checkpoint that `train.main --init_from=DIR` starts from.

    python -m jaxcnn.convert --from=torchvision --model=resnet50 --weights=resnet50.pth --out=ckpt/resnet50
    python -m jaxcnn.convert --from=keras --model=vgg16 --weights=vgg16.weights.h5 --out=ckpt/vgg16

A torchvision file is a `state_dict` saved with `torch.save` (what `torchvision.models.get_weight(...)`'s
`get_state_dict()` returns, or a full model); a Keras file is a `.keras` model or `.weights.h5` weights file.
Bad input (unknown model, missing file, wrong architecture, existing output) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def load_torch_state_dict(path: str) -> dict:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(obj, "state_dict"):  # a whole saved nn.Module
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a torch state_dict")
    return obj


def convert(source: str, model: str, weights: str) -> dict:
    """Flax variables for `model` from the `source` ('torchvision' | 'keras') weights file."""
    from jaxcnn import convert as jconvert

    if source == "torchvision":
        return jconvert.torchvision_to_flax(model, load_torch_state_dict(weights))
    return jconvert.keras_to_flax(model, weights)


def output_classes(model_name: str, variables: dict, image_shape) -> int:
    """The number of classes the converted variables produce (one forward shape-evaluation, no FLOPs)."""
    import jax
    import jax.numpy as jnp

    from jaxcnn.models import get_model, get_spec

    spec = get_spec(model_name)
    others = sorted(_candidate_widths(variables) - {spec.num_classes})
    for num_classes in [spec.num_classes, *others]:  # the default first: one trace in the common case
        model = get_model(model_name, num_classes=num_classes)
        try:
            shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape))))
        except ValueError:
            continue
        same = jax.tree_util.tree_map(lambda s, v: s.shape == np.shape(v), shapes["params"], variables["params"])
        if all(jax.tree_util.tree_leaves(same)):
            return num_classes
    raise ValueError(f"cannot tell how many classes the converted {model_name} weights have")


def _candidate_widths(variables: dict) -> set[int]:
    import jax

    return {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(variables["params"]) if np.ndim(x) == 1}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcnn.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", choices=["torchvision", "keras"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights", required=True, help="torch state_dict file, or .keras / .weights.h5 file")
    parser.add_argument("--out", required=True, help="directory to create (an orbax checkpoint)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.source == "torchvision":
        import torch  # noqa: F401  (torch before TensorFlow: the other order crashes on triton's import)
    try:
        from jaxcnn import checkpoint
        from jaxcnn.models import get_spec

        spec = get_spec(args.model)
        if not os.path.exists(args.weights):
            raise ValueError(f"weights file {args.weights} does not exist")
        if os.path.exists(args.out):
            raise ValueError(f"--out {args.out} already exists: choose a new directory (nothing was written)")
        variables = convert(args.source, args.model, args.weights)
        num_classes = output_classes(args.model, variables, spec.input_shape)
        path = checkpoint.save_variables(args.out, variables, {
            "model": args.model, "num_classes": num_classes, "image_shape": list(spec.input_shape),
            "source": f"{args.source}:{os.path.basename(args.weights)}"})
    except (ValueError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    import jax

    count = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"wrote {path}: {args.model}, {num_classes} classes, {count:,} params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
