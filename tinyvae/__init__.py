"""tinyvae: autoencoder -> VAE -> beta-VAE from scratch, every gradient by hand."""

from tinyvae import kernels
from tinyvae.kernels import get_backend, set_backend, use_backend

__version__ = "0.1.0"

__all__ = ["kernels", "set_backend", "get_backend", "use_backend", "__version__"]
