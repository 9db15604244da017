"""TensorFlow for tf.data, imported at its first use, without the Keras it loads eagerly, and off the GPUs.

Its import is ~4 s of CPU, more than the rest of the trainer's imports together, and the embedded MNIST
pipeline (jaxcnn.data.batch_numpy) never needs it: modules of the package write `tf.` as usual against
`tf` here, which imports TensorFlow at the first attribute read. It then hides the GPUs from TensorFlow (the
accelerators belong to JAX).

`import tensorflow` ends by importing Keras (`keras.src.optimizers`, which pulls in all of Keras 3 and
matplotlib) only to register Keras optimizers for SavedModel; the input pipeline never uses Keras. That import
is ~1.1 s of the ~5 s of CPU time `import tensorflow` takes on the 2-core CI machine (benchmarks/NOTES.md),
paid at every start of the trainer. TensorFlow skips it when TF_USE_LEGACY_KERAS asks for the `tf_keras`
package and that package is absent; the variable is set only while TensorFlow imports and removed at once,
so `tf.keras` (resolved on first use) and a later `import keras` behave as usual.

Left alone when TensorFlow is already imported, when the user set TF_USE_LEGACY_KERAS, or when `tf_keras` is
installed (there the variable would switch `tf.keras` to Keras 2).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

_FLAG = "TF_USE_LEGACY_KERAS"


def import_tensorflow():
    """The `tensorflow` module, imported without its eager Keras import where that is safe."""
    skip_keras = ("tensorflow" not in sys.modules and _FLAG not in os.environ
                  and importlib.util.find_spec("tf_keras") is None)
    if skip_keras:
        os.environ[_FLAG] = "1"
    try:
        import tensorflow
    finally:
        if skip_keras:
            del os.environ[_FLAG]
    return tensorflow


@functools.cache
def tensorflow():
    """The `tensorflow` module, imported once (without Keras where safe) with the GPUs hidden from it."""
    tf = import_tensorflow()
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices elsewhere; too late to hide them, harmless on CPU
        pass
    return tf


class _OnFirstUse:
    """Stands for the tensorflow module; the first attribute read imports it (`tensorflow()`)."""

    def __getattr__(self, name: str):
        return getattr(tensorflow(), name)


tf = _OnFirstUse()
