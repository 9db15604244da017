"""oneDNN's convolutions inside XLA:CPU programs: the kernels torch runs on the CPU, for our convolutions.

XLA:CPU's convolutions ran 2-6x slower than oneDNN's on a 2-core machine, most of all the weight gradient
(28-100 GFLOP/s against 130-200 for ResNet-18's 3x3 layers at batch 32; benchmarks/NOTES.md). Here the forward
pass and both gradients of an NHWC x HWIO float32 convolution are three JAX primitives lowered on the CPU to
custom calls into `onednn_conv.cc`, and to `lax` everywhere else:

    conv(x, w)              the forward pass                      [n, oh, ow, co]
    input_grad(dy, w)       its transpose in x                     [n, h, w, ci]
    weight_grad(x, dy)      its transpose in w                     [kh, kw, ci / groups, co]

Each is bilinear and each one's transposes are the other two, so every order of differentiation (grad, jvp,
jacfwd, Hessian-vector products forward-over-reverse or reverse-over-reverse) stays within the three.

oneDNN is a system library here (Debian/Ubuntu: `apt install libdnnl-dev`; conda: `onednn`; `ONEDNN_ROOT`
names any other install). `onednn_conv.cc` is compiled with the system's C++ compiler at first use, against
that oneDNN and the XLA FFI headers jaxlib ships, into the user's cache directory, once per version of each.
Without oneDNN, a compiler or an x86-64 Linux, `available()` is False, one log line says why, and the
convolutions stay XLA's (jaxcnn.conv). `JAXCNN_ONEDNN=0` turns it off.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

SOURCE = Path(__file__).with_name("onednn_conv.cc")
SWITCH = "JAXCNN_ONEDNN"  # "0" keeps XLA's convolutions
ROOT = "ONEDNN_ROOT"      # a oneDNN install outside the usual prefixes
_TARGETS = {"forward": "JaxcnnConvForward", "input_grad": "JaxcnnConvBackwardData",
            "weight_grad": "JaxcnnConvBackwardWeights"}
_NHWC = ("NHWC", "HWIO", "NHWC")

log = logging.getLogger(__name__)


# --- finding oneDNN and building the custom calls -----------------------------------------------------------

def _prefixes() -> list[Path]:
    named = [os.environ.get(ROOT), os.environ.get("CONDA_PREFIX"), sys.prefix, "/usr/local", "/usr"]
    return [Path(p) for p in dict.fromkeys(p for p in named if p)]


def _cpu_runtime(include: Path) -> str:
    """DNNL_CPU_RUNTIME from dnnl_config.h: OMP, TBB, SEQ or THREADPOOL work; a SYCL build needs a SYCL CPU
    device (PyPI's `onednn` wheel is one, and finds none on a plain CPU)."""
    for line in (include / "oneapi/dnnl/dnnl_config.h").read_text().splitlines():
        if line.startswith("#define DNNL_CPU_RUNTIME "):
            return line.split()[-1].removeprefix("DNNL_RUNTIME_")
    return "unknown"


def find_onednn() -> tuple[Path, Path] | str:
    """(include directory, library directory) of the first usable oneDNN, or why there is none."""
    seen = []
    for prefix in _prefixes():
        include = prefix / "include"
        if not (include / "oneapi/dnnl/dnnl.hpp").is_file():
            continue
        libraries = sorted(prefix.glob("lib*/libdnnl.so")) + sorted(prefix.glob("lib/*-linux-gnu/libdnnl.so"))
        runtime = _cpu_runtime(include)
        if not libraries:
            seen.append(f"{prefix} (headers, no libdnnl.so)")
        elif runtime not in ("OMP", "TBB", "SEQ", "THREADPOOL"):
            seen.append(f"{prefix} (a {runtime} build)")
        else:
            return include, libraries[0].parent
    found = f"; found only {', '.join(seen)}" if seen else ""
    return (f"no oneDNN with a CPU runtime under {', '.join(map(str, _prefixes()))}{found} "
            f"(Debian/Ubuntu: apt install libdnnl-dev; or set {ROOT})")


def cache_dir() -> Path:
    """`$JAXCNN_HOME/onednn`, else `~/.cache/jaxcnn/onednn` (`$XDG_CACHE_HOME/jaxcnn/onednn`): beside the XLA cache."""
    if os.environ.get("JAXCNN_HOME"):
        return Path(os.environ["JAXCNN_HOME"]).expanduser() / "onednn"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxcnn" / "onednn"


def _build(include: Path, libdir: Path) -> Path:
    """The compiled custom calls, built once per (source, oneDNN, jaxlib, compiler) and kept in cache_dir()."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++ or $CXX) to build the oneDNN custom calls")
    ffi_include = Path(jax.ffi.include_dir())
    version = (include / "oneapi/dnnl/dnnl_version.h").read_bytes()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), version, str(ffi_include).encode(), str(libdir).encode(),
                                     jax.__version__.encode(), compiler.encode()])).hexdigest()[:16]
    target = cache_dir() / f"onednn_conv-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Processes starting together (pytest-xdist workers, the hosts of one job) build it once: the first takes
    # the lock, the others find the file when they get it.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", str(SOURCE), f"-I{include}",
                       f"-I{ffi_include}", f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-ldnnl", "-fopenmp", "-o", str(built)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode:
                raise RuntimeError(f"building the oneDNN custom calls failed: {result.stderr.strip()[-2000:]}")
            os.replace(built, target)
    return target


@functools.cache
def available() -> bool:
    """Whether the oneDNN custom calls are built and registered: once per process, one log line if not."""
    why = _unavailable()
    if why:  # a warning where the convolutions run on this CPU, which is where it costs
        level = logging.WARNING if jax.default_backend() == "cpu" and switched_on() else logging.INFO
        log.log(level, "oneDNN convolutions off, XLA's are used: %s", why)
    return not why


def switched_on() -> bool:
    """JAXCNN_ONEDNN: 1 (or unset) for oneDNN's convolutions, 0 for XLA's; anything else is refused."""
    value = os.environ.get(SWITCH, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{SWITCH}={value!r}: set it to 1 (oneDNN's convolutions, the default) or 0 (XLA's)")
    return value == "1"


def _unavailable() -> str:
    if not switched_on():
        return f"{SWITCH}=0"
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for x86-64 Linux only, not {sys.platform} {platform.machine()}"
    found = find_onednn()
    if isinstance(found, str):
        return found
    try:
        library = ctypes.CDLL(str(_build(*found)))
    except (OSError, RuntimeError) as error:
        return str(error)
    for name, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(f"jaxcnn_onednn_{name}", jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
    return ""


# --- the three primitives ------------------------------------------------------------------------------------

def output_hw(in_hw, kernel_hw, strides, padding) -> tuple[int, int]:
    """A convolution's output height and width, for explicit (low, high) padding."""
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, padding))


def _lax_conv(x, w, *, strides, padding, groups):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, feature_group_count=groups)


def _lax_input_grad(dy, w, *, strides, padding, groups, input_hw):
    x = jax.ShapeDtypeStruct((dy.shape[0], *input_hw, w.shape[2] * groups), dy.dtype)
    conv = functools.partial(_lax_conv, w=w, strides=strides, padding=padding, groups=groups)
    return jax.linear_transpose(conv, x)(dy)[0]


def _lax_weight_grad(x, dy, *, strides, padding, groups, kernel_hw):
    w = jax.ShapeDtypeStruct((*kernel_hw, x.shape[3] // groups, dy.shape[3]), x.dtype)
    conv = functools.partial(_lax_conv, x, strides=strides, padding=padding, groups=groups)
    return jax.linear_transpose(conv, w)(dy)[0]


def _attributes(strides, padding, groups) -> dict:
    (pt, pb), (pl, pr) = padding
    values = {"sh": strides[0], "sw": strides[1], "pt": pt, "pb": pb, "pl": pl, "pr": pr, "groups": groups}
    return {k: np.int64(v) for k, v in values.items()}


def _varying(aval) -> frozenset:
    """The manual mesh axes (shard_map with check_vma) over which a value varies; none outside shard_map."""
    return getattr(getattr(aval, "mat", None), "varying", frozenset())


def _output_aval(shape, *operands):
    """A float32 result that varies over every manual mesh axis an operand varies over, as lax's own
    convolution's does under shard_map's check_vma (where lax inserts the casts that make its operands agree)."""
    widest = max(operands, key=lambda a: len(_varying(a)))
    if any(not _varying(a) <= _varying(widest) for a in operands):
        raise ValueError(f"a oneDNN convolution's operands vary over different mesh axes "
                         f"({[sorted(_varying(a)) for a in operands]}): cast them with jax.lax.pcast first")
    if not _varying(widest):
        return jax.core.ShapedArray(shape, jnp.float32)
    return widest.update(shape=shape, dtype=jnp.float32)


@functools.cache
def _eager(primitive: Primitive, params: tuple):
    return jax.jit(functools.partial(primitive.bind, **dict(params)))


def _primitive(name: str, shape, reference) -> Primitive:
    """A primitive evaluated by the custom call `name` on the CPU and by `reference` (lax) elsewhere and under
    vmap."""
    primitive = Primitive(f"jaxcnn_onednn_{name}")
    # Outside jit (a model's eager init), one compiled program per primitive and parameters, reused.
    primitive.def_impl(lambda a, b, **params: _eager(primitive, tuple(sorted(params.items())))(a, b))
    primitive.def_abstract_eval(lambda a, b, **params: _output_aval(shape(a, b, **params), a, b))

    def cpu(ctx, a, b, *, strides, padding, groups, **shapes):
        if not available():  # registers the custom calls
            raise RuntimeError(f"jaxcnn.onednn.conv needs oneDNN, which is not available: {_unavailable()}")
        out = jax.ShapeDtypeStruct(shape(*ctx.avals_in, strides=strides, padding=padding, groups=groups, **shapes),
                                   jnp.float32)
        call = jax.ffi.ffi_call(f"jaxcnn_onednn_{name}", out)
        return mlir.lower_fun(lambda a, b: call(a, b, **_attributes(strides, padding, groups)),
                              multiple_results=False)(ctx, a, b)

    mlir.register_lowering(primitive, cpu, platform="cpu")
    mlir.register_lowering(primitive, mlir.lower_fun(reference, multiple_results=False))

    def vmapped(args, dims, **params):
        return jax.vmap(functools.partial(reference, **params), in_axes=dims)(*args), 0
    batching.primitive_batchers[primitive] = vmapped
    return primitive


conv_p = _primitive(
    "forward",
    lambda x, w, *, strides, padding, groups: (x.shape[0], *output_hw(x.shape[1:3], w.shape[:2], strides, padding),
                                               w.shape[3]),
    _lax_conv)
input_grad_p = _primitive(
    "input_grad",
    lambda dy, w, *, strides, padding, groups, input_hw: (dy.shape[0], *input_hw, w.shape[2] * groups),
    _lax_input_grad)
weight_grad_p = _primitive(
    "weight_grad",
    lambda x, dy, *, strides, padding, groups, kernel_hw: (*kernel_hw, x.shape[3] // groups, dy.shape[3]),
    _lax_weight_grad)


def _shape_of(a):
    """The shape of a transpose rule's operand: an array, or the placeholder of the one being transposed."""
    return a.aval.shape if hasattr(a, "aval") else np.shape(a)


# conv(x, w): dx -> input_grad(dy, w), dw -> weight_grad(x, dy)
ad.defbilinear(
    conv_p,
    lambda ct, x, w, **p: input_grad_p.bind(ct, w, **p, input_hw=_shape_of(x)[1:3]),
    lambda ct, x, w, **p: weight_grad_p.bind(x, ct, **p, kernel_hw=_shape_of(w)[:2]))
# input_grad(dy, w) = conv's transpose in x: in dy its transpose is conv(., w), in w weight_grad(., dy).
ad.defbilinear(
    input_grad_p,
    lambda ct, dy, w, *, input_hw, **p: conv_p.bind(ct, w, **p),
    lambda ct, dy, w, *, input_hw, **p: weight_grad_p.bind(ct, dy, **p, kernel_hw=_shape_of(w)[:2]))
# weight_grad(x, dy) = conv's transpose in w: in x its transpose is input_grad(dy, .), in dy conv(x, .).
ad.defbilinear(
    weight_grad_p,
    lambda ct, x, dy, *, kernel_hw, **p: input_grad_p.bind(dy, ct, **p, input_hw=_shape_of(x)[1:3]),
    lambda ct, x, dy, *, kernel_hw, **p: conv_p.bind(x, ct, **p))


def conv(x, w, strides, padding, groups: int = 1):
    """x * w through oneDNN on the CPU: NHWC x HWIO float32, explicit non-negative padding, no dilation."""
    x, w = _vary_alike(x, w)
    return conv_p.bind(x, w, strides=tuple(strides), padding=tuple(map(tuple, padding)), groups=int(groups))


def _vary_alike(*operands):
    """Under shard_map's check_vma, cast each operand to vary over the mesh axes any of them varies over, as lax
    does before its own primitives: the weight gradient of replicated weights is then summed over the shards
    (the transpose of that cast), as lax's is."""
    axes = frozenset().union(*(_varying(jax.typeof(a)) for a in operands))
    return [jax.lax.pcast(a, tuple(sorted(axes - _varying(jax.typeof(a)))), to="varying")
            if axes - _varying(jax.typeof(a)) else a for a in operands]


def supports(x, w, padding) -> bool:
    """Whether `conv` takes these operands: float32 both, padding that adds rather than crops."""
    return (x.dtype == jnp.float32 and w.dtype == jnp.float32 and x.ndim == 4
            and all(lo >= 0 and hi >= 0 for lo, hi in padding))


__all__ = ["available", "cache_dir", "conv", "find_onednn", "output_hw", "supports"]
