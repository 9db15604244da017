"""jaxcnn: the classic convolutional networks in JAX/Flax."""

__version__ = "0.1.0"
