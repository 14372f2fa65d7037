"""Data for the lessons and the models: offline toys and dSprites, verified downloads.

Every loader returns model-ready floats in [0, 1] shaped (n, features); the image shape
to plot them with is in :data:`IMAGE_SHAPES` (or ``ds.image_shape`` for dSprites).

Offline, always available:

- :func:`spiral`, :func:`swiss_roll`: 1-D and 2-D manifolds in 3-D, with their true
  intrinsic coordinates.
- :func:`load_digits`: scikit-learn's bundled 8 x 8 handwritten digits.
- :class:`DSprites`: a procedural renderer of DeepMind's dSprites (3 shapes x 6 scales x
  40 orientations x 32 x 32 positions), lazy, Numba-fast, any resolution >= 8.

Downloaded on first use into :func:`data_dir` (``$TINYVAE_DATA``, else the user's cache
directory), each file checked against its published checksum and written atomically:

- :func:`load_mnist` (MNIST and Fashion-MNIST, parsed by :func:`read_idx`);
- :func:`load_dsprites` (the official dSprites ``.npz``, same interface as :class:`DSprites`).

:func:`load` picks any of them by name.

The package, one module per job (each imports only the ones above it):

    downloads     cache directory, verified atomic downloads, the data-file errors
    toys          spiral, swiss_roll
    mnist         load_digits, the IDX reader, load_mnist / load_fashion_mnist, as_model_input,
                  binarize
    dsprites      the procedural renderer and DSprites
    dsprites_npz  the official dSprites .npz, read without unpickling: load_dsprites
"""

from __future__ import annotations

from tinyvae.datasets.downloads import ChecksumError, DatasetError, DownloadError, data_dir
from tinyvae.datasets.dsprites import (
    DSPRITES_FILE,
    DSPRITES_MD5,
    DSPRITES_URL,
    ELLIPSE_A,
    ELLIPSE_B,
    FACTOR_GRIDS,
    FACTOR_NAMES,
    FACTOR_SIZES,
    HEART_DY,
    HEART_SX,
    HEART_SY,
    SHAPE_NAMES,
    SQUARE_HALF,
    DSprites,
    render_sprites,
    render_sprites_numpy,
)
from tinyvae.datasets.dsprites_npz import load_dsprites
from tinyvae.datasets.mnist import (
    as_model_input,
    binarize,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from tinyvae.datasets.toys import spiral, swiss_roll

__all__ = [
    "IMAGE_SHAPES",
    "DatasetError",
    "ChecksumError",
    "DownloadError",
    "DSprites",
    "as_model_input",
    "binarize",
    "data_dir",
    "load",
    "load_digits",
    "load_dsprites",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "render_sprites",
    "render_sprites_numpy",
    "spiral",
    "swiss_roll",
    # the dSprites geometry and the official file's address and digest
    "DSPRITES_FILE", "DSPRITES_MD5", "DSPRITES_URL", "ELLIPSE_A", "ELLIPSE_B", "FACTOR_GRIDS",
    "FACTOR_NAMES", "FACTOR_SIZES", "HEART_DY", "HEART_SX", "HEART_SY", "SHAPE_NAMES",
    "SQUARE_HALF",
]

#: Image shape of each named data set, for reshaping rows of X back into pictures.
IMAGE_SHAPES = {
    "digits": (8, 8),
    "mnist": (28, 28),
    "fashion-mnist": (28, 28),
    "dsprites": (64, 64),
}


# ---------------------------------------------------------------------------------------
# By name
# ---------------------------------------------------------------------------------------

_LOADERS = {
    "spiral": spiral,
    "swiss-roll": swiss_roll,
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "dsprites": DSprites,
    "dsprites-official": load_dsprites,
}


def load(name, **kwargs):
    """Load a data set by name; keyword arguments go to its loader.

    Names: "spiral", "swiss-roll", "digits", "mnist", "fashion-mnist" -> (X, targets);
    "dsprites" -> a :class:`DSprites` renderer; "dsprites-official" -> the official file
    (:func:`load_dsprites`). Underscores and case are ignored ("swiss_roll" works).
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(_LOADERS)}")
    return _LOADERS[key](**kwargs)

