"""tinyvae: autoencoder -> VAE -> beta-VAE from scratch, every gradient by hand.

    import numpy as np, tinyvae as tv
    m = tv.VAE(input_dim=784, hidden=(400,), latent_dim=20, seed=0)
    loss, grads = m.loss(x)               # x (n, 784) in [0, 1]
    m.fit(X, epochs=10, optimizer=tv.Adam(lr=1e-3))
"""

import importlib

from tinyvae import gradcheck, kernels, layers, losses
from tinyvae.io import save
from tinyvae.kernels import get_backend, set_backend, use_backend
from tinyvae.models import VAE, Autoencoder, BetaTCVAE, BetaVAE, load
from tinyvae.optim import SGD, Adagrad, Adam, Optimizer

__version__ = "0.1.0"

# Imported on first attribute access: they pull in Numba, matplotlib and
# scikit-learn, which would make `import tinyvae` take seconds.
_LAZY_SUBMODULES = ("datasets", "metrics", "plots")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"tinyvae.{name}")
    raise AttributeError(f"module 'tinyvae' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_SUBMODULES))


__all__ = [
    "VAE", "Autoencoder", "BetaVAE", "BetaTCVAE", "SGD", "Adam", "Adagrad", "Optimizer",
    "load", "save", "set_backend", "get_backend", "use_backend",
    "kernels", "layers", "losses", "gradcheck", "datasets", "metrics", "plots", "__version__",
]
