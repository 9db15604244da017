"""jaxcnn.data imports TensorFlow at its first use only, without the Keras it would load eagerly, and tf.keras
still works."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import json, os, sys
import jaxcnn.data
from jaxcnn.data.tensorflow_import import tf
at_import = "tensorflow" in sys.modules
tf.constant(1.0)  # the first use imports it
skipped = "keras" not in sys.modules
left_set = "TF_USE_LEGACY_KERAS" in os.environ
import tensorflow as tf
print(json.dumps(dict(at_import=at_import, skipped=skipped, left_set=left_set, dense=tf.keras.layers.Dense.__module__)))
"""


def test_data_package_skips_keras_and_leaves_tf_keras_usable():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["at_import"] and result["skipped"] and not result["left_set"]
    assert result["dense"].startswith("keras.src.")  # tf.keras resolves to Keras 3, as without the skip
