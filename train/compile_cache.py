"""JAX's persistent compilation cache in the user's cache directory, so a second run compiles nothing.

XLA compiles every jitted step of a run afresh (LeNet-5's train and eval steps: seconds; ResNet-50's: half a
minute and more). With the cache on, a run whose model, shapes, config and JAX version match an earlier run
loads the compiled programs from disk instead (benchmarks/NOTES.md has the figures).

Where: `$JAXCNN_HOME/xla` when JAXCNN_HOME is set, else `~/.cache/jaxcnn/xla` (`$XDG_CACHE_HOME/jaxcnn/xla`
when that is set). Every compiled program is kept (JAX's own default skips those that compiled in under a
second, which is most of a small model's), up to MAX_BYTES in all, least recently used out first.
Opt-out: JAXCNN_NO_COMPILE_CACHE=1. A cache directory the user gave JAX itself (JAX_COMPILATION_CACHE_DIR)
is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

OPT_OUT = "JAXCNN_NO_COMPILE_CACHE"
MAX_BYTES = 4 << 30  # a cap on the user's disk (LeNet-5's 22 programs take 0.4 MB)


def cache_dir(environ=os.environ) -> Path:
    """The directory the compiled programs go to (not created here)."""
    if environ.get("JAXCNN_HOME"):
        return Path(environ["JAXCNN_HOME"]).expanduser() / "xla"
    base = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "jaxcnn" / "xla"


def enable(environ=os.environ) -> Path | None:
    """Turn the persistent compilation cache on (before the first compilation); returns its directory, or
    None when opted out or when the user configured JAX's cache themselves."""
    if environ.get(OPT_OUT) or environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    import jax

    directory = cache_dir(environ)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return directory
