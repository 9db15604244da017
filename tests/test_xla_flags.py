"""The XLA flags the entry points add (jaxcnn/xla_flags.py): added once, never over the user's, and doing what
they are there for: a donated parameter that is read by the backward pass is updated in place, not copied first."""

import json
import os
import subprocess
import sys

from jaxcnn import xla_flags

REGION_ANALYSIS = "--xla_cpu_copy_insertion_use_region_analysis"

# A two-layer net's SGD step with the parameters donated: w2 is read by the backward pass (for w1's gradient)
# and overwritten by its own update. Prints the compiled program's copies and the updated parameters.
PROGRAM = """
import json, re, jax, jax.numpy as jnp
def step(p, x):
    def loss(p):
        return jnp.sum(jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"]))
    return jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p))
p = {"w1": jnp.linspace(-1, 1, 64 * 256).reshape(64, 256), "w2": jnp.linspace(1, -1, 256 * 128).reshape(256, 128)}
x = jnp.linspace(0, 1, 8 * 64).reshape(8, 64)
compiled = jax.jit(step, donate_argnums=0).lower(p, x).compile()
out = compiled(p, x)
print(json.dumps({"copies": len(re.findall(r" copy\\(", compiled.as_text())),
                  "params": [jax.device_get(v).ravel().tolist() for v in jax.tree.leaves(out)]}))
"""


def test_defaults_are_added_once_and_never_over_the_users():
    assert xla_flags.with_defaults("") == f"{REGION_ANALYSIS}=true"
    assert xla_flags.with_defaults("--xla_force_host_platform_device_count=8") == \
        f"--xla_force_host_platform_device_count=8 {REGION_ANALYSIS}=true"
    assert xla_flags.with_defaults(f"{REGION_ANALYSIS}=false") == f"{REGION_ANALYSIS}=false"
    once = xla_flags.with_defaults("")
    assert xla_flags.with_defaults(once) == once
    environ = {"XLA_FLAGS": " --xla_dump_to=/tmp/x "}
    xla_flags.set_defaults(environ)
    assert environ["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", f"{REGION_ANALYSIS}=true"]


def run(xla_flags_value: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags_value, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_region_analysis_drops_the_copy_of_a_donated_parameter_and_changes_no_value():
    without, with_flag = run(f"{REGION_ANALYSIS}=false"), run(xla_flags.with_defaults(""))
    assert without["copies"] >= 1  # XLA's default copies w2 before overwriting it (if this fails, XLA changed)
    assert with_flag["copies"] < without["copies"]
    assert with_flag["params"] == without["params"]  # bit for bit
