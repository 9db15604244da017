"""The XLA compiler flags this project's programs run with, added to XLA_FLAGS before jax starts its backend.

`--xla_cpu_copy_insertion_use_region_analysis=true`: a step donates its state, so each updated parameter is
written into the buffer of the old one. XLA:CPU's default copy insertion could not prove that every read of
the old value (the forward and backward matmuls) comes before that write, and copied each such parameter
first, every step: VGG-16's 400 MB first FC kernel included, 33 copies in all. Region analysis proves it and
drops 22 of them (the rest are real transposes): VGG-16's Adam step at 32x32, batch 32, 26.4 -> 31.4 img/s, with
parameters after two steps bit-identical to those without the flag for vgg11_bn and resnet18, though not in
every program: the test suite's small BatchNorm model ended 1e-8 apart (XLA fuses the copy-free program
differently), so tests/conftest.py sets the same flags, and in-process references match the CLI's runs bit for
bit (benchmarks/NOTES.md). Only XLA:CPU reads the flag.

A flag the user already put in XLA_FLAGS (either value) is left as the user set it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = ("--xla_cpu_copy_insertion_use_region_analysis=true",)


def with_defaults(xla_flags: str) -> str:
    """`xla_flags` with each of DEFAULTS appended unless a value for that flag is already there."""
    present = {flag.split("=", 1)[0] for flag in xla_flags.split()}
    missing = [flag for flag in DEFAULTS if flag.split("=", 1)[0] not in present]
    return " ".join([xla_flags.strip(), *missing]).strip()


def set_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Add DEFAULTS to environ['XLA_FLAGS']. Call before jax's backend starts: XLA reads the variable once."""
    environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))
