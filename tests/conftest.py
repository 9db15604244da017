"""Test set-up: 8 forced CPU devices, set before jax is imported anywhere."""

import atexit
import os
import shutil
import tempfile

from jaxcnn import xla_flags  # no jax import: only string handling

# Tests run many small programs once each, so XLA's compile time dominates: trade the generated code's speed
# for a compiler about 2-4x faster (same fp32 semantics; checked against torch/TF at the same tolerances).
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
# Plus the flags every entry point sets (jaxcnn/xla_flags.py), so that a test's in-process reference is compiled
# as the `python -m train.main` run it compares with bit for bit.
os.environ["XLA_FLAGS"] = xla_flags.with_defaults(" ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8", FAST_COMPILE]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The trainer's compilation cache (train/compile_cache.py) goes to a directory of this session, not the user's,
# made by the first process (xdist's workers inherit the variable) and removed when it exits.
if "JAXCNN_HOME" not in os.environ:
    os.environ["JAXCNN_HOME"] = tempfile.mkdtemp(prefix="jaxcnn-tests-")
    atexit.register(shutil.rmtree, os.environ["JAXCNN_HOME"], ignore_errors=True)

# torch must be imported before TensorFlow: the other order segfaults while torch probes for triton
# (TF's bundled LLVM symbols clash with triton's). Importing it here fixes the order for every test module.
try:
    import torch  # noqa: F401,E402
    import torchvision  # noqa: F401,E402
except ImportError:  # the torch extra is optional; torch-based tests guard themselves
    pass


# The modules whose tests run longest (minutes of compilation each: the CLI runs of whole models, forward mode op
# by op, two processes), first: pytest-xdist hands tests out in collection order, so started last they leave one
# worker running them alone for the suite's last minutes. Whole modules move, so module fixtures set up once.
LONGEST_FIRST = ("test_recipes.py", "test_forward_mode.py", "test_multihost.py", "test_notebooks.py",
                 "test_reliability.py", "test_nnx.py", "test_models_resnet.py", "test_models_inception.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the collection order within each rank
