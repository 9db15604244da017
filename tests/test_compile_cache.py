"""train.compile_cache: where the cache lives, and that a second process compiles nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

from train import compile_cache

ROOT = Path(__file__).resolve().parents[1]

# Compiles LeNet-5's forward pass with the cache enabled and prints JAX's own cache counters.
PROGRAM = """
import json
from train import compile_cache
directory = compile_cache.enable()
import jax, jax.numpy as jnp
counts = {"hits": 0, "misses": 0}
def listen(event, **kw):
    if event.endswith("/cache_hits"): counts["hits"] += 1
    if event.endswith("/cache_misses"): counts["misses"] += 1
jax.monitoring.register_event_listener(listen)
from jaxcnn.models import get_model
model = get_model("lenet5", num_classes=10)
x = jnp.zeros((2, 28, 28, 1))
variables = jax.jit(model.init)(jax.random.key(0), x)
jax.block_until_ready(jax.jit(model.apply)(variables, x))
print(json.dumps(dict(counts, directory=str(directory) if directory else None)))
"""


def run_program(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXCNN_HOME", compile_cache.OPT_OUT,
                                                             "JAX_COMPILATION_CACHE_DIR")}
    env.update(env_extra, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_dir_follows_jaxcnn_home_then_xdg_then_home(tmp_path):
    assert compile_cache.cache_dir({"JAXCNN_HOME": str(tmp_path)}) == tmp_path / "xla"
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxcnn" / "xla"
    assert compile_cache.cache_dir({}) == Path.home() / ".cache" / "jaxcnn" / "xla"


def test_second_process_compiles_nothing(tmp_path):
    first = run_program({"JAXCNN_HOME": str(tmp_path)})
    assert first["directory"] == str(tmp_path / "xla")
    assert first["misses"] >= 2 and first["hits"] == 0  # init and apply at least, all compiled fresh
    second = run_program({"JAXCNN_HOME": str(tmp_path)})
    assert second["misses"] == 0 and second["hits"] == first["misses"]


def test_opt_out_writes_no_cache(tmp_path):
    result = run_program({"JAXCNN_HOME": str(tmp_path), compile_cache.OPT_OUT: "1"})
    assert result["directory"] is None and result["hits"] == 0
    assert not (tmp_path / "xla").exists()
