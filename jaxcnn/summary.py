"""Model summaries: a layer table like Keras `model.summary()`, parameter totals, and multiply-adds.

Everything is computed from shapes alone (`jax.eval_shape`), so summarizing VGG-19 allocates no weights.

    python -m jaxcnn.summary resnet18            # one row per layer, then the totals
    python -m jaxcnn.summary resnet18 --depth 1  # one row per top-level block
    python -m jaxcnn.summary --table             # Markdown table of every registered model (the README's)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections import defaultdict
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcnn import conv, onednn
from jaxcnn.models import get_model, get_spec, list_models

STATE_COLLECTIONS = ("batch_stats",)  # variables that are not trained by gradient (Keras: "non-trainable")


@dataclasses.dataclass(frozen=True)
class Row:
    """One module call: its path in the variable tree, class, output shape(s) and variable counts.

    `params` and `state` count the module's whole subtree, so a row for a block includes its layers.
    """

    path: str
    kind: str
    output_shape: Any
    params: int
    state: int


@dataclasses.dataclass(frozen=True)
class Summary:
    """A model's layer rows and totals (`params` is the `params` collection, `state` the batch statistics)."""

    name: str
    input_shape: tuple[int, ...]
    rows: list[Row]
    output_shape: Any
    params: int
    state: int

    @property
    def total(self) -> int:
        return self.params + self.state

    def __str__(self) -> str:
        return format_summary(self)


# --- Counting ----------------------------------------------------------------------------------------------


def count_variables(variables, collections: Sequence[str] = ("params",)) -> int:
    """Number of scalars in the given collections of a (possibly abstract) variable tree."""
    return sum(int(np.prod(leaf.shape)) for c in collections if c in variables
               for leaf in jax.tree.leaves(variables[c]))


def subtree_counts(tree) -> dict[tuple[str, ...], int]:
    """Scalar count under every module path of one collection: {(): total, ('layer1',): ..., ...}."""
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for path, leaf in traverse_util.flatten_dict(tree).items():
        size = int(np.prod(leaf.shape))
        for end in range(len(path)):  # every module prefix; the last key is the variable's own name
            counts[path[:end]] += size
    return counts


def _resolve(model: str | nn.Module, input_shape, num_classes, model_kw) -> tuple[str, nn.Module, tuple]:
    """(display name, module, (H, W, C)) from a registered name or a module plus its input shape."""
    if isinstance(model, str):
        spec = get_spec(model)
        module = get_model(model, num_classes=num_classes, **model_kw)
        return model, module, tuple(input_shape or spec.input_shape)
    if input_shape is None:
        raise ValueError("summarizing a module needs its input_shape (H, W, C)")
    return model.name or type(model).__name__, model, tuple(input_shape)


def _shape(out):
    """Shapes of an output pytree: (1, 10) for one array."""
    return jax.tree.map(lambda a: tuple(a.shape), out)


def trace_calls(module: nn.Module, input_shape: Sequence[int]):
    """Abstractly initialize `module` (eval mode) on a batch of one.

    Returns (variables, calls in pre-order, output shapes). Each call is (path tuple, class name, output
    shapes), recorded by a method interceptor: it sees every `nn.Module` call, but not the plain functions
    between them (pooling from `jaxcnn.layers`, reshapes), which own no variables.
    """
    calls: list[list] = []

    def interceptor(method, args, kwargs, context):
        if context.method_name != "__call__":
            return method(*args, **kwargs)
        entry = [tuple(context.module.path), type(context.module).__name__, None]
        calls.append(entry)  # appended before the children run: pre-order, like reading the code
        out = method(*args, **kwargs)
        entry[2] = _shape(out)
        return out

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(interceptor):
        out, variables = jax.eval_shape(
            lambda x: module.init_with_output(jax.random.key(0), x, train=False), x)
    return variables, [tuple(c) for c in calls], _shape(out)


def _select(calls, depth: int | None):
    """The calls to show: leaves, cut at `depth` levels below the model (None: no cut)."""
    chosen = []
    for i, call in enumerate(calls):
        path = call[0]
        if not path or (depth is not None and len(path) > depth):
            continue
        # In pre-order a module's first child, if any, is the very next call.
        following = calls[i + 1][0] if i + 1 < len(calls) else ()
        is_leaf = not (len(following) > len(path) and following[:len(path)] == path)
        if is_leaf or len(path) == depth:
            chosen.append(call)
    return chosen


def summarize_model(model: str | nn.Module, input_shape: Sequence[int] | None = None,
                    num_classes: int | None = None, depth: int | None = None, **model_kw) -> Summary:
    """The structured summary behind `summarize`."""
    name, module, shape = _resolve(model, input_shape, num_classes, model_kw)
    variables, calls, output_shape = trace_calls(module, shape)
    params = subtree_counts(variables.get("params", {}))
    state = defaultdict(int)
    for c in STATE_COLLECTIONS:
        for path, n in subtree_counts(variables.get(c, {})).items():
            state[path] += n
    rows = [Row("/".join(path), kind, out, params.get(path, 0), state.get(path, 0))
            for path, kind, out in _select(calls, depth)]
    return Summary(name, shape, rows, output_shape, count_variables(variables),
                   count_variables(variables, STATE_COLLECTIONS))


def format_summary(s: Summary) -> str:
    """Keras-style text: a row per layer, then the totals."""
    def shape_text(shape):
        return str(shape).replace("'", "")

    table = [("Layer (type)", "Output shape", "Params")]
    table += [(f"{r.path} ({r.kind})", shape_text(r.output_shape), f"{r.params:,}") for r in s.rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    line = lambda row: f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}"  # noqa: E731
    rule = "=" * (sum(widths) + 4)
    h, w, c = s.input_shape
    lines = [f'Model: "{s.name}"  input {h}x{w}x{c}, output {shape_text(s.output_shape)}',
             rule, line(table[0]), rule, *map(line, table[1:]), rule,
             f"Total params: {s.params:,}",
             f"Non-trainable state ({', '.join(STATE_COLLECTIONS)}): {s.state:,}",
             f"Total (params + state): {s.total:,}"]
    return "\n".join(lines)


def summarize(model_name_or_module: str | nn.Module, input_shape: Sequence[int] | None = None,
              num_classes: int | None = None, depth: int | None = None, **model_kw) -> str:
    """Keras `model.summary()` for a registered model name (or a module with its `input_shape` (H, W, C)).

    One row per module (its path in the variable tree, output shape for a batch of one, parameters in
    its subtree), cut `depth` levels below the model when given, then total params (the `params`
    collection, what torch calls parameters), the BatchNorm statistics, and both together. `model_kw` go to
    the builder (e.g. `aux_logits=True`).
    """
    return str(summarize_model(model_name_or_module, input_shape, num_classes, depth, **model_kw))


# --- Compute -----------------------------------------------------------------------------------------------


def _abstract_forward(module: nn.Module, input_shape: Sequence[int]):
    """(eval-mode forward function, abstract variables, abstract batch of one): nothing is allocated."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
    return (lambda v, x: module.apply(v, x, train=False)), variables, x


def _sub_jaxprs(params):
    """The jaxprs nested in an equation's parameters (jit, custom_jvp, remat, cond branches...)."""
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def _jaxpr_multiply_adds(jaxpr) -> int:
    """Multiply-adds of the convolutions and matrix products in a jaxpr, full kernel windows counted."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated" or eqn.primitive is onednn.conv_p:
            # Every output element takes one MAC per kernel tap and input channel of its group.
            rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
            # oneDNN's kernel is HWIO: its output features are the last axis
            out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0] if name == "conv_general_dilated" else 3
            total += math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        elif name == "cond":  # one branch runs (e.g. the per-platform choice of jaxcnn.conv): the costliest
            total += max(_jaxpr_multiply_adds(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            repeat = eqn.params.get("length", 1) if name == "scan" else 1
            total += repeat * sum(_jaxpr_multiply_adds(sub) for sub in _sub_jaxprs(eqn.params))
    return total


def forward_multiply_adds(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one eval-mode forward pass on one image: convolutions and dense layers.

    Counted as torchvision's "GFLOPS" column and docs/reference.md count them: every tap of every kernel window,
    padding included, and nothing for activations, normalization or pooling. Read off the traced jaxpr,
    so it needs no compile. (XLA's cost analysis, `xla_flops`, skips the taps that fall on padding,
    which puts AlexNet 8% and VGG-11 4% lower.)
    """
    forward, variables, x = _abstract_forward(module, input_shape)
    return _jaxpr_multiply_adds(jax.make_jaxpr(forward)(variables, x).jaxpr)


def forward_xla_flops(module: nn.Module, input_shape: Sequence[int]) -> float:
    """XLA's flop estimate of one eval-mode forward pass on one image (its unoptimized HLO).

    XLA counts a multiply-add as 2 flops (a bias-free Dense(n -> m) reports 2nm), only convolution taps that
    land on real input, and element-wise work at one flop per operation: the work the hardware does, for
    throughput figures, rather than the conventional multiply-add count.
    """
    forward, variables, x = _abstract_forward(module, input_shape)
    with conv.xla_convolutions():  # XLA's cost analysis counts no flops in oneDNN's custom calls
        cost = jax.jit(forward).lower(variables, x).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per device program
        cost = cost[0]
    return float(cost["flops"])


def _registered(model_name: str, image_size: int | None, num_classes: int | None, model_kw):
    h, w, c = get_spec(model_name).input_shape
    shape = (h, w, c) if image_size is None else (image_size, image_size, c)
    return get_model(model_name, num_classes=num_classes, **model_kw), shape


def multiply_adds(model_name: str, image_size: int | None = None, num_classes: int | None = None,
                  **model_kw) -> int:
    """Multiply-adds per forward image of a registered model (at `image_size`, or its default input)."""
    return forward_multiply_adds(*_registered(model_name, image_size, num_classes, model_kw))


def xla_flops(model_name: str, image_size: int | None = None, num_classes: int | None = None,
              **model_kw) -> float:
    """XLA's flops per forward image of a registered model (see `forward_xla_flops`)."""
    return forward_xla_flops(*_registered(model_name, image_size, num_classes, model_kw))


# --- The model table ---------------------------------------------------------------------------------------


def model_table() -> list[dict[str, Any]]:
    """One row per registered model: name, paper, year, params (the reference count) and input size.

    Counts come from the registry (the tests check each against the model); a model without a reference
    count is counted from its shapes.
    """
    rows = []
    for name in list_models():
        spec = get_spec(name)
        params = spec.params
        if params is None:
            params = summarize_model(name).params
        h, w, c = spec.input_shape
        rows.append(dict(name=name, paper=spec.paper, year=spec.year, params=params, input=f"{h}×{w}×{c}"))
    return rows


def markdown_table(rows: list[dict[str, Any]] | None = None) -> str:
    """`model_table()` as the README's Markdown table."""
    rows = model_table() if rows is None else rows
    lines = ["| model | paper | year | params | input |", "|---|---|---|---:|---|"]
    for r in rows:
        paper = r["paper"].replace("|", "/")  # a bar would end the cell
        lines.append(f"| {r['name']} | {paper} | {r['year']} | {r['params']:,} | {r['input']} |")
    return "\n".join(lines)


def _si(n: float) -> str:
    """413398 -> '413.4 K'; 2834161664 -> '2.834 G'."""
    scale, unit = next(((s, u) for s, u in ((1e9, "G"), (1e6, "M"), (1e3, "K")) if n >= s), (1, ""))
    return f"{n / scale:.4g} {unit}".rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcnn.summary", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a registered model name")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of every model")
    parser.add_argument("--depth", type=int, default=None, help="rows only down to this module depth")
    parser.add_argument("--image_size", type=int, default=None, help="square input side (default: model's)")
    parser.add_argument("--num_classes", type=int, default=None)
    parser.add_argument("--macs", action="store_true", help="also print multiply-adds and XLA flops")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    if args.model is None:
        parser.print_usage(sys.stderr)
        return 2
    try:  # unknown names and sizes a model refuses are ValueErrors with a one-line message
        channels = get_spec(args.model).input_shape[2]
        shape = None if args.image_size is None else (args.image_size, args.image_size, channels)
        print(summarize(args.model, shape, args.num_classes, args.depth))
        if args.macs:
            macs = multiply_adds(args.model, args.image_size, args.num_classes)
            print(f"Multiply-adds per image: {macs:,} ({_si(macs)})")
            print(f"XLA flops per image: {_si(xla_flops(args.model, args.image_size, args.num_classes))}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
