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
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import http.client
import os
import sys
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numba import prange

from tinyvae._backend.numba_flags import njit, njit_parallel
from tinyvae.io import atomic_path

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
]

#: Image shape of each named data set, for reshaping rows of X back into pictures.
IMAGE_SHAPES = {
    "digits": (8, 8),
    "mnist": (28, 28),
    "fashion-mnist": (28, 28),
    "dsprites": (64, 64),
}


class DatasetError(ValueError):
    """A data file is malformed, truncated or corrupted."""


class ChecksumError(DatasetError):
    """A file's digest differs from the published one."""


class DownloadError(OSError):
    """No mirror delivered a verified file (for instance: offline)."""


# ---------------------------------------------------------------------------------------
# Manifold toys
# ---------------------------------------------------------------------------------------


def _check_count(n, name="n"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _check_noise(noise):
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return float(noise)


def _finish_toy(clean, noise, rng, dtype):
    """Map clean points, each coordinate in [0, 1], into [0.1, 0.9]; add noise; clip.

    The margin keeps moderate noise (up to ~0.05) from piling up on the clip boundary.
    """
    X = 0.1 + 0.8 * clean
    if noise > 0:
        X = X + noise * rng.standard_normal(X.shape)
    return np.clip(X, 0.0, 1.0).astype(dtype)


def spiral(n=1000, noise=0.0, seed=0, turns=2.0, dtype=np.float32):
    """A 1-D conical spiral embedded in 3-D: the simplest curved manifold.

    The curve is (r cos a, r sin a, t) with t ~ U[0, 1], a = 2 pi turns t and radius
    r = 0.3 + 0.7 t, mapped affinely into [0.1, 0.9]^3; ``noise`` is the standard deviation
    of isotropic Gaussian noise added afterwards (the result is clipped to [0, 1]).

    Returns:
        X: (n, 3) ``dtype`` in [0, 1].
        t: (n,) float64 in [0, 1], the true intrinsic coordinate of each point.
    """
    n = _check_count(n)
    noise = _check_noise(noise)
    rng = np.random.default_rng(seed)
    t = rng.random(n)
    angle = 2.0 * np.pi * turns * t
    radius = 0.3 + 0.7 * t
    clean = np.stack(
        [0.5 + 0.5 * radius * np.cos(angle), 0.5 + 0.5 * radius * np.sin(angle), t], axis=1
    )
    return _finish_toy(clean, noise, rng, dtype), t


def swiss_roll(n=1000, noise=0.0, seed=0, dtype=np.float32):
    """The swiss roll: a 2-D sheet rolled up in 3-D.

    The classic parametrisation: angle a = 1.5 pi (1 + 2 u) with u ~ U[0, 1], height
    h ~ U[0, 1], point (a cos a, h, a sin a), mapped affinely into [0.1, 0.9]^3, then
    Gaussian noise of standard deviation ``noise`` (clipped to [0, 1]).

    Returns:
        X: (n, 3) ``dtype`` in [0, 1].
        coords: (n, 2) float64 in [0, 1], the true coordinates (u along the roll, h across).
    """
    n = _check_count(n)
    noise = _check_noise(noise)
    rng = np.random.default_rng(seed)
    coords = rng.random((n, 2))
    a = 1.5 * np.pi * (1.0 + 2.0 * coords[:, 0])
    a_max = 4.5 * np.pi  # |a cos a| and |a sin a| never exceed the largest angle
    clean = np.stack(
        [0.5 + 0.5 * a * np.cos(a) / a_max, coords[:, 1], 0.5 + 0.5 * a * np.sin(a) / a_max],
        axis=1,
    )
    return _finish_toy(clean, noise, rng, dtype), coords


# ---------------------------------------------------------------------------------------
# Digits (scikit-learn's bundled copy; never downloaded)
# ---------------------------------------------------------------------------------------


def load_digits(dtype=np.float32):
    """scikit-learn's 1,797 real 8 x 8 handwritten digits, offline.

    Returns:
        X: (1797, 64) ``dtype`` in [0, 1] (the 0..16 grey levels divided by 16).
        y: (1797,) int64 labels 0..9.
    Reshape a row with ``IMAGE_SHAPES["digits"]`` == (8, 8) to plot it.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    X = (bunch.data / 16.0).astype(dtype)
    return X, bunch.target.astype(np.int64)


# ---------------------------------------------------------------------------------------
# Turning images into model input
# ---------------------------------------------------------------------------------------


def as_model_input(images, dtype=np.float32):
    """Flatten images with values in [0, 1] into model rows.

    Args:
        images: (n, H, W) array, e.g. dSprites' uint8 {0, 1} images.
    Returns:
        (n, H * W) ``dtype`` array in [0, 1].
    """
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"images must have shape (n, H, W), got shape {images.shape}")
    X = images.reshape(images.shape[0], -1).astype(dtype, copy=False)
    if X.size and (X.min() < 0 or X.max() > 1):
        # uint8 grey levels (0..255) are the usual mistake: refuse rather than guess.
        raise ValueError(
            f"images must hold values in [0, 1], got range [{X.min()}, {X.max()}]; "
            "divide 8-bit grey levels by 255 first"
        )
    return X


def binarize(X, method="threshold", threshold=0.5, seed=0):
    """Binarize intensities in [0, 1] for a Bernoulli likelihood.

    Args:
        X: array of intensities in [0, 1].
        method: "threshold" (x > threshold, the same every time) or "stochastic" (each
            pixel drawn once from Bernoulli(x), reproducibly from ``seed``).
    Returns:
        an array of X's shape and float dtype holding 0.0 and 1.0.
    """
    X = np.asarray(X)
    if method == "threshold":
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        out = X > threshold
    elif method == "stochastic":
        out = np.random.default_rng(seed).random(X.shape) < X
    else:
        raise ValueError(f"binarize must be None, 'threshold' or 'stochastic', got {method!r}")
    return out.astype(X.dtype if X.dtype.kind == "f" else np.float32)


_binarize = binarize  # load_mnist's argument of the same name hides it


# ---------------------------------------------------------------------------------------
# dSprites: geometry measured from real frames
# ---------------------------------------------------------------------------------------
#
# Units: pixels of the 64 x 64 frame at scale 1 ("canonical units"); x to the right,
# y downwards (image rows). Pixel i covers [i, i + 1]: it is 'on' when its centre
# (i + 0.5) falls inside the shape. No anti-aliasing. Other resolutions scale by R / 64.
#
# Fitted (by IoU) to the 320 real frames of the official README animation; see
# benchmarks/dsprites_fidelity.py. The three sizes all come out as 0.3 x 64 = 19.2 px:
SQUARE_HALF = 9.6  # side 19.2 (rotated frames rule out 20: they lose 8% of the area)
ELLIPSE_A, ELLIPSE_B = 12.75, 7.225  # semi-axes, long axis horizontal at orientation 0
# Heart: the classic curve x = 16 sin^3 t, y = -(13 cos t - 5 cos 2t - 2 cos 3t - cos 4t)
# (tip down), scaled to a 19.2 x 19.2 box and shifted up by 1.45 px.
HEART_SX, HEART_SY, HEART_DY = 0.6, 0.663, -1.45

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
# The values of each factor, as in the official latents_values (shape is 1, 2, 3 there).
FACTOR_GRIDS = (
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2.0 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)
DSPRITES_URL = (
    "https://github.com/deepmind/dsprites-dataset/raw/master/"
    "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
)
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
# Only an MD5 is published for this file (by the loaders that have used it for years).
DSPRITES_MD5 = "7da33b31b13a06f4b04a70402ce90c2e"


def _heart_table(samples=1025):
    """Top and bottom of the heart's vertical cross-section at |x| = 0 .. half width.

    x = 16 sin^3 t is monotone on [0, pi/2] (upper edge, notch to lobe) and on
    [pi/2, pi] (lower edge, lobe to tip), so each |x| has one top and one bottom.
    Returns (samples, 2) float64: column 0 top, column 1 bottom, in canonical units.
    """
    x = np.linspace(0.0, 1.0, samples)  # |x| / half width
    t_upper = np.arcsin(np.cbrt(x))
    t_lower = np.pi - t_upper

    def y(t):
        return HEART_DY - HEART_SY * (
            13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        )

    return np.stack([y(t_upper), y(t_lower)], axis=1)


_HEART = _heart_table()
_HEART_HALF_WIDTH = 16.0 * HEART_SX
# Farthest point of each shape from its centre: bounds the pixels a sprite can touch.
_RADIUS = np.array(
    [
        SQUARE_HALF * np.sqrt(2.0),
        ELLIPSE_A,
        np.hypot(np.linspace(0, _HEART_HALF_WIDTH, len(_HEART))[:, None], _HEART).max(),
    ]
)


@njit
def _inside(shape, u, v, heart):
    """Whether the point (u, v), in the sprite's own canonical frame, is in the shape."""
    if shape == 0:
        return abs(u) <= SQUARE_HALF and abs(v) <= SQUARE_HALF
    if shape == 1:
        return (u / ELLIPSE_A) ** 2 + (v / ELLIPSE_B) ** 2 <= 1.0
    x = abs(u) / _HEART_HALF_WIDTH * (heart.shape[0] - 1)
    if x > heart.shape[0] - 1:
        return False
    k = min(int(x), heart.shape[0] - 2)
    frac = x - k
    top = heart[k, 0] + frac * (heart[k + 1, 0] - heart[k, 0])
    bottom = heart[k, 1] + frac * (heart[k + 1, 1] - heart[k, 1])
    return v >= top and v <= bottom


@njit
def _draw(out, shape, unit, cos_a, sin_a, cx, cy, radius, heart):
    """Set the pixels of ``out`` (R, R) whose centres fall inside one sprite.

    ``unit`` is pixels per canonical unit (scale * R / 64); (cx, cy) the centre in pixels.
    """
    R = out.shape[0]
    reach = radius * unit + 1.0
    i0, i1 = max(0, int(cy - reach)), min(R, int(cy + reach) + 1)
    j0, j1 = max(0, int(cx - reach)), min(R, int(cx + reach) + 1)
    for i in range(i0, i1):
        dy = (i + 0.5 - cy) / unit
        for j in range(j0, j1):
            dx = (j + 0.5 - cx) / unit
            # The sprite turns counter-clockwise on screen as orientation grows (as in
            # the real frames), so turn the pixel the other way to reach the sprite frame.
            u = cos_a * dx - sin_a * dy
            v = sin_a * dx + cos_a * dy
            if _inside(shape, u, v, heart):
                out[i, j] = 1


@njit_parallel
def _render_kernel(out, shape, unit, cos_a, sin_a, cx, cy, radius, heart):
    """out (n, R, R) uint8, zeroed; one sprite per image, images in parallel."""
    for k in prange(out.shape[0]):
        _draw(out[k], shape[k], unit[k], cos_a[k], sin_a[k], cx[k], cy[k],
              radius[shape[k]], heart)


def _sprite_geometry(classes, resolution):
    """Per-image drawing parameters from full-grid classes (n, 5).

    Returns shape, unit, cos, sin, cx, cy (each (n,)). The angle of orientation k is
    2 pi k / 39, taken in (-pi, pi] so that k and 39 - k give exactly mirrored sines
    and k = 39 gives exactly the image of k = 0.
    """
    f = resolution / 64.0
    shape = classes[:, 0].astype(np.int64)
    unit = FACTOR_GRIDS[1][classes[:, 1]] * f
    k = classes[:, 2] % 39
    k = np.where(k > 19, k - 39, k)
    angle = 2.0 * np.pi * k / 39.0
    cx = (16.0 + 32.0 * FACTOR_GRIDS[3][classes[:, 3]]) * f
    cy = (16.0 + 32.0 * FACTOR_GRIDS[4][classes[:, 4]]) * f
    return shape, unit, np.cos(angle), np.sin(angle), cx, cy


def render_sprites(classes, resolution=64):
    """Render full-grid dSprites classes (n, 5) into (n, R, R) uint8 {0, 1} images."""
    shape, unit, cos_a, sin_a, cx, cy = _sprite_geometry(classes, resolution)
    out = np.zeros((len(classes), resolution, resolution), dtype=np.uint8)
    _render_kernel(out, shape, unit, cos_a, sin_a, cx, cy, _RADIUS, _HEART)
    return out


def render_sprites_numpy(classes, resolution=64):
    """NumPy reference for :func:`render_sprites`: the same maths, vectorised and slow.

    Every pixel centre of every image is taken into the sprite's own frame and tested.
    """
    shape, unit, cos_a, sin_a, cx, cy = (a[:, None, None] for a in
                                         _sprite_geometry(classes, resolution))
    centres = np.arange(resolution) + 0.5
    dx = (centres[None, None, :] - cx) / unit
    dy = (centres[None, :, None] - cy) / unit
    u = cos_a * dx - sin_a * dy
    v = sin_a * dx + cos_a * dy
    square = (np.abs(u) <= SQUARE_HALF) & (np.abs(v) <= SQUARE_HALF)
    ellipse = (u / ELLIPSE_A) ** 2 + (v / ELLIPSE_B) ** 2 <= 1.0
    x = np.abs(u)
    table_x = np.linspace(0.0, _HEART_HALF_WIDTH, len(_HEART))
    heart = ((x <= _HEART_HALF_WIDTH) & (v >= np.interp(x, table_x, _HEART[:, 0]))
             & (v <= np.interp(x, table_x, _HEART[:, 1])))
    inside = np.where(shape == 0, square, np.where(shape == 1, ellipse, heart))
    return inside.astype(np.uint8)


def _check_resolution(resolution):
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise TypeError(f"resolution must be an int >= 8, got {resolution!r}")
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
    return int(resolution)


def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {rng!r}")


class DSprites:
    """DeepMind's dSprites, rendered on demand: same factors, order and geometry.

    737,280 binary images = 3 shapes (square, ellipse, heart) x 6 scales
    linspace(0.5, 1, 6) x 40 orientations linspace(0, 2 pi, 40) x 32 pos_x x 32 pos_y
    linspace(0, 1, 32), in the official order (pos_y fastest). Nothing is stored: images
    are drawn by a Numba kernel when asked for (10,000 at 64 x 64 in a few milliseconds).

    Geometry (fitted to real frames): sprite centre (16 + 32 pos) * R / 64 pixels from the
    top-left corner, pos_y growing downwards; square side 19.2 s, ellipse 25.5 s x 14.45 s,
    heart 19.2 s x 19.2 s with its tip down at orientation 0; orientation turns
    counter-clockwise on screen; a pixel is on when its centre is inside the shape.

    ``classes`` are (n, 5) int factor indices into this set's own grids; a subset (see
    :meth:`subset`) has smaller ``factor_sizes`` and indexes only what it kept.

    >>> ds = DSprites(resolution=64)
    >>> ds.factor_sizes
    (3, 6, 40, 32, 32)
    >>> images, classes = ds.sample(16, np.random.default_rng(0))   # (16, 64, 64) uint8
    >>> X = as_model_input(images)                                   # (16, 4096) float32
    """

    factor_names = FACTOR_NAMES
    shape_names = SHAPE_NAMES

    def __init__(self, resolution=64):
        self.resolution = _check_resolution(resolution)
        # For each factor, the full-grid class of each of this set's classes.
        self._keep = tuple(np.arange(size) for size in FACTOR_SIZES)
        self.parent = None

    # -- sizes and shapes ---------------------------------------------------------------

    @property
    def factor_sizes(self):
        """Number of values of each factor in this set, e.g. (3, 6, 40, 32, 32)."""
        return tuple(len(k) for k in self._keep)

    @property
    def image_shape(self):
        return (self.resolution, self.resolution)

    @property
    def input_dim(self):
        """Features per flattened image, R * R: the ``input_dim`` of a model."""
        return self.resolution * self.resolution

    @property
    def factor_grids(self):
        """The values each factor takes in this set: a tuple of 5 float arrays."""
        return tuple(grid[keep] for grid, keep in zip(FACTOR_GRIDS, self._keep, strict=True))

    def __len__(self):
        return int(np.prod(self.factor_sizes))

    def __repr__(self):
        kind = "subset of " if self.parent is not None else ""
        return (
            f"{type(self).__name__}({kind}resolution={self.resolution}, "
            f"factor_sizes={self.factor_sizes}, n={len(self)})"
        )

    # -- classes, index and values ------------------------------------------------------

    def _strides(self):
        sizes = self.factor_sizes
        return np.array([int(np.prod(sizes[i + 1:])) for i in range(5)], dtype=np.int64)

    def _check_classes(self, classes):
        classes = np.asarray(classes)
        if classes.ndim == 1 and classes.shape[0] == 5:
            classes = classes[None, :]
        if classes.ndim != 2 or classes.shape[1] != 5:
            raise ValueError(
                f"classes must have shape (n, 5) (one column per factor "
                f"{self.factor_names}), got shape {classes.shape}"
            )
        if classes.dtype.kind not in "iu":
            raise TypeError(f"classes must be integer factor indices, got dtype {classes.dtype}")
        classes = classes.astype(np.int64, copy=False)
        for f, (name, size) in enumerate(zip(self.factor_names, self.factor_sizes, strict=True)):
            column = classes[:, f]
            if column.size and (column.min() < 0 or column.max() >= size):
                bad = column[(column < 0) | (column >= size)][0]
                raise IndexError(
                    f"classes[:, {f}] ({name}) must be in [0, {size}), found {bad}"
                )
        return classes

    def classes_to_index(self, classes):
        """(n, 5) classes -> (n,) int64 positions in this set's official order."""
        return self._check_classes(classes) @ self._strides()

    def index_to_classes(self, index):
        """(n,) positions in the official order -> (n, 5) int64 classes."""
        index = np.asarray(index)
        if index.dtype.kind not in "iu":
            raise TypeError(f"index must be integers, got dtype {index.dtype}")
        index = index.astype(np.int64).reshape(-1)
        n = len(self)
        if index.size and (index.min() < 0 or index.max() >= n):
            bad = index[(index < 0) | (index >= n)][0]
            raise IndexError(f"index must be in [0, {n}), found {bad}")
        return (index[:, None] // self._strides()) % np.array(self.factor_sizes)

    def factor_values(self, classes):
        """(n, 5) classes -> (n, 5) float64 values: shape 1..3 (as in the official file),
        scale in [0.5, 1], orientation in radians [0, 2 pi], positions in [0, 1]."""
        classes = self._check_classes(classes)
        grids = self.factor_grids
        return np.stack([grids[f][classes[:, f]] for f in range(5)], axis=1)

    def values_to_classes(self, values):
        """(n, 5) factor values -> (n, 5) classes of the nearest grid values."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1 and values.shape[0] == 5:
            values = values[None, :]
        if values.ndim != 2 or values.shape[1] != 5:
            raise ValueError(f"values must have shape (n, 5), got shape {values.shape}")
        grids = self.factor_grids
        return np.stack(
            [np.abs(values[:, f, None] - grids[f][None, :]).argmin(axis=1) for f in range(5)],
            axis=1,
        ).astype(np.int64)

    def to_full_classes(self, classes):
        """This set's (n, 5) classes -> classes of the full (3, 6, 40, 32, 32) grid."""
        classes = self._check_classes(classes)
        return np.stack([self._keep[f][classes[:, f]] for f in range(5)], axis=1)

    def from_full_classes(self, full_classes):
        """Full-grid (n, 5) classes -> this set's classes; an error if one is not kept."""
        full = DSprites(self.resolution)._check_classes(full_classes)
        out = np.empty_like(full)
        for f, name in enumerate(self.factor_names):
            lookup = np.full(FACTOR_SIZES[f], -1, dtype=np.int64)
            lookup[self._keep[f]] = np.arange(len(self._keep[f]))
            out[:, f] = lookup[full[:, f]]
            if (out[:, f] < 0).any():
                bad = full[out[:, f] < 0, f][0]
                raise IndexError(f"{name} class {bad} of the full grid is not in this subset")
        return out

    # -- images ---------------------------------------------------------------------------

    def _render_full(self, full_classes):
        return render_sprites(full_classes, self.resolution)

    def render(self, classes):
        """(n, 5) int classes -> (n, R, R) uint8 images in {0, 1}."""
        return self._render_full(self.to_full_classes(classes))

    def sample_classes(self, n, rng=None):
        """n classes drawn uniformly from this set (each factor independently)."""
        n = _check_count(n)
        rng = _as_rng(rng)
        return np.stack([rng.integers(0, size, n) for size in self.factor_sizes], axis=1)

    def sample(self, n, rng=None):
        """n images drawn uniformly from this set.

        Args:
            rng: a ``np.random.Generator`` (or an int seed); the same seed gives the same
                images.
        Returns:
            images (n, R, R) uint8 in {0, 1}, classes (n, 5) int64.
        """
        classes = self.sample_classes(n, rng)
        return self.render(classes), classes

    def __getitem__(self, index):
        """ds[i] -> (R, R) image; ds[a:b] or ds[int array] -> (n, R, R), official order."""
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        elif isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            return self.render(self.index_to_classes([i]))[0]
        return self.render(self.index_to_classes(index))

    def all_images(self):
        """Every image in the official order: (len, R, R) uint8. Memory: len * R * R bytes
        (2.9 GB for the full set at 64 x 64), so prefer :meth:`batches` or a subset."""
        return self[:]

    def batches(self, batch_size=1024, rng=None):
        """Iterate over the whole set in batches of (images, classes).

        In the official order when ``rng`` is None, else in a random order drawn from it.
        """
        batch_size = _check_count(batch_size, "batch_size")
        order = np.arange(len(self))
        if rng is not None:
            _as_rng(rng).shuffle(order)
        for start in range(0, len(order), batch_size):
            classes = self.index_to_classes(order[start:start + batch_size])
            yield self.render(classes), classes

    # -- subsets --------------------------------------------------------------------------

    def subset(self, fixed=None, step=None, keep=None):
        """A smaller data set with the same interface, sampled uniformly by ``sample``.

        Args:
            fixed: {factor name: class} factors held at one value (size 1 afterwards).
            step: {factor name: k} keep every k-th value of a factor (0, k, 2k, ...): the
                "sparse sampling" experiment, e.g. ``step={"pos_x": 4}``.
            keep: {factor name: sequence of classes} keep exactly these values.
        Classes are this set's own. In the subset, classes index the kept values only; use
        :meth:`to_full_classes` / :meth:`factor_values` to compare across sets.
        """
        chosen = [np.arange(size) for size in self.factor_sizes]
        for arg, spec in (("fixed", fixed), ("step", step), ("keep", keep)):
            for name, value in (spec or {}).items():
                if name not in self.factor_names:
                    raise ValueError(
                        f"{arg} names unknown factor {name!r}; factors are {self.factor_names}"
                    )
                f = self.factor_names.index(name)
                size = self.factor_sizes[f]
                if arg == "step":
                    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                            or not 1 <= value <= size:
                        raise ValueError(f"step[{name!r}] must be an int in [1, {size}], "
                                         f"got {value!r}")
                    picked = np.arange(0, size, value)
                else:
                    picked = np.atleast_1d(np.asarray(value))
                    if picked.dtype.kind not in "iu" or picked.ndim != 1 or picked.size == 0:
                        raise ValueError(f"{arg}[{name!r}] must be one or more int classes, "
                                         f"got {value!r}")
                    if picked.min() < 0 or picked.max() >= size:
                        raise IndexError(f"{arg}[{name!r}] must be in [0, {size}), "
                                         f"got {value!r}")
                    if arg == "fixed" and picked.size != 1:
                        raise ValueError(f"fixed[{name!r}] must be a single class, got {value!r}")
                chosen[f] = np.intersect1d(chosen[f], picked)
                if chosen[f].size == 0:
                    raise ValueError(f"the subset keeps no value of factor {name!r}")
        sub = copy.copy(self)
        sub._keep = tuple(k[c] for k, c in zip(self._keep, chosen, strict=True))
        sub.parent = self
        return sub


# ---------------------------------------------------------------------------------------
# Files: cache directory, verified atomic downloads
# ---------------------------------------------------------------------------------------

# Every download goes through this opener; the tests swap it for a local one.
_opener = urllib.request.build_opener()
_TIMEOUT = 60.0
_CHUNK = 1 << 20


def data_dir(path=None):
    """The directory downloads are cached in (created if missing).

    ``path`` if given, else ``$TINYVAE_DATA``, else the user's cache directory
    (``$XDG_CACHE_HOME/tinyvae`` or ``~/.cache/tinyvae``; ``%LOCALAPPDATA%\\tinyvae`` on
    Windows; ``~/Library/Caches/tinyvae`` on macOS).
    """
    if path is None:
        path = os.environ.get("TINYVAE_DATA")
    if not path:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Caches"
        else:
            base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "tinyvae"
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


_cache_root = data_dir  # loaders take an argument named data_dir


def _file_digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path, algorithm, expected):
    actual = _file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(
            f"{path} has {algorithm} {actual}, expected {expected}: the file is corrupted or "
            "not the published one; delete it and try again"
        )


def _transfer(url, path, algorithm, expected):
    """Write the bytes at ``url`` to ``path``; raise unless complete and of the expected digest."""
    h = hashlib.new(algorithm)
    with open(path, "wb") as out, _opener.open(url, timeout=_TIMEOUT) as response:
        # A dropped connection can look like a clean end of data: compare lengths.
        expected_length = getattr(response, "headers", {}).get("Content-Length")
        received = 0
        for chunk in iter(lambda r=response: r.read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
            received += len(chunk)
    if expected_length is not None and received != int(expected_length):
        raise DownloadError(f"transfer interrupted: {received} of {expected_length} bytes")
    if h.hexdigest() != expected:
        raise ChecksumError(f"{algorithm} {h.hexdigest()}, expected {expected}")


def _download(urls, dest, algorithm, expected):
    """Fetch the first of ``urls`` whose bytes have the expected digest into ``dest``.

    Bytes go to a temporary file next to ``dest`` and are renamed onto it only once
    complete and verified, so an interrupted or corrupted transfer leaves nothing behind.
    """
    dest = Path(dest)
    failures = []
    for url in urls:
        try:
            with atomic_path(dest, ".part") as tmp:
                _transfer(url, tmp, algorithm, expected)
            return dest
        except (OSError, ValueError, EOFError, http.client.HTTPException) as err:
            # URLError is an OSError; a cut-off transfer raises http.client.IncompleteRead.
            failures.append(f"  {url}: {type(err).__name__}: {err}")
    raise DownloadError(
        f"could not download {dest.name}:\n" + "\n".join(failures)
        + f"\nIf you are offline, place a copy of {dest.name} in {dest.parent}"
    )


def _fetch(name, subdir, urls, algorithm, expected, root=None, download=True):
    """Path of a verified cached file, downloading it first if needed."""
    folder = data_dir(root) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.exists():
        _verify(path, algorithm, expected)
        return path
    if not download:
        raise FileNotFoundError(
            f"{name} is not in {folder} and download=False; place it there (from {urls[0]})"
        )
    return _download(urls, path, algorithm, expected)


# ---------------------------------------------------------------------------------------
# IDX files (MNIST's format) and MNIST / Fashion-MNIST
# ---------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path):
    """The bytes of a file, gunzipped if it is gzip (by its magic bytes, not its name)."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DatasetError(f"{path} is a truncated or corrupted gzip file: {err}") from err


def read_idx(path, dtype=None, ndim=None):
    """Read an IDX file (optionally gzipped) into an array, validating it fully.

    Format: two zero bytes, a type code, the number of dimensions d, then d big-endian
    uint32 sizes, then the data, big-endian, in C order.

    Args:
        dtype, ndim: when given, what the file must hold (e.g. np.uint8, 3).
    Returns:
        ndarray of the file's shape, native byte order.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} has magic number 0x{raw[:4].hex()}, expected 0x0000TTDD with type TT one "
            f"of {', '.join(f'{c:02x}' for c in _IDX_DTYPES)}: not an IDX file"
        )
    file_dtype, file_ndim = _IDX_DTYPES[raw[2]], raw[3]
    if dtype is not None and file_dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise DatasetError(f"{path} holds {file_dtype.name}, expected {np.dtype(dtype).name}")
    if ndim is not None and file_ndim != ndim:
        raise DatasetError(f"{path} has rank {file_ndim}, expected {ndim}")
    header = 4 + 4 * file_ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its header")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", file_ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * file_dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {what}: shape {shape} of {file_dtype.name} needs {expected} bytes, "
            f"found {len(raw)}"
        )
    data = np.frombuffer(raw, file_dtype, offset=header).reshape(shape)
    return data.astype(file_dtype.newbyteorder("="))


_MNIST_MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}
# SHA-256 of the gzipped files, as published in torchvision's dataset definitions.
_MNIST_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz":
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz":
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz":
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz":
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz":
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz":
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz":
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz":
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}


def _mnist_files(kind, split):
    if kind not in _MNIST_SHA256:
        raise ValueError(f"kind must be one of {tuple(_MNIST_SHA256)}, got {kind!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def load_mnist(split="train", kind="mnist", binarize=None, threshold=0.5, seed=0,
               data_dir=None, download=True, dtype=np.float32):
    """MNIST or Fashion-MNIST, downloaded once and verified by SHA-256.

    Args:
        split: "train" (60,000) or "test" (10,000).
        kind: "mnist" or "fashion-mnist".
        binarize: None (grey levels / 255), "threshold" (x > ``threshold``) or
            "stochastic" (Bernoulli(x), fixed by ``seed``), for Bernoulli models.
        data_dir: cache root (default :func:`data_dir`); files go to <root>/<kind>/.
        download: False to use only files already in the cache.
    Returns:
        X (n, 784) ``dtype`` in [0, 1]; y (n,) int64 labels 0..9. Images are 28 x 28.
    """
    if binarize not in (None, "threshold", "stochastic"):
        raise ValueError(f"binarize must be None, 'threshold' or 'stochastic', got {binarize!r}")
    names = _mnist_files(kind, split)
    mirrors = _MNIST_MIRRORS[kind]
    folder = _cache_root(data_dir) / kind
    missing = []
    paths = []
    for name in names:
        try:
            paths.append(_fetch(name, kind, [m + name for m in mirrors], "sha256",
                                _MNIST_SHA256[kind][name], root=data_dir, download=download))
        except (DownloadError, FileNotFoundError) as err:
            missing.append((name, err))
    if missing:
        listed = "\n".join(f"  {name}  (from {mirrors[0]}{name})" for name, _ in missing)
        raise DownloadError(
            f"{kind} {split} split unavailable. Place these files in {folder}:\n{listed}\n"
            f"First error: {missing[0][1]}"
        )
    images = read_idx(paths[0], dtype=np.uint8, ndim=3)
    labels = read_idx(paths[1], dtype=np.uint8, ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DatasetError(
            f"{kind} {split}: images {images.shape} and labels {labels.shape} do not match"
        )
    X = images.reshape(len(images), -1).astype(dtype) / dtype(255)
    if binarize is not None:
        X = _binarize(X, binarize, threshold=threshold, seed=seed)
    return X.astype(dtype, copy=False), labels.astype(np.int64)


def load_fashion_mnist(split="train", **kwargs):
    """Fashion-MNIST: :func:`load_mnist` with ``kind="fashion-mnist"``."""
    return load_mnist(split, kind="fashion-mnist", **kwargs)


# ---------------------------------------------------------------------------------------
# The official dSprites file
# ---------------------------------------------------------------------------------------


class _OfficialDSprites(DSprites):
    """dSprites backed by the official images, bit-packed in memory (368 MB)."""

    def __init__(self, packed):
        super().__init__(resolution=64)
        self._packed = packed  # (737280, 64, 8) uint8, np.packbits of each image row

    def _render_full(self, full_classes):
        index = full_classes @ np.array([245760, 40960, 1024, 32, 1])
        return np.unpackbits(self._packed[index], axis=-1)


def _npz_member(zf, key, path):
    try:
        return zf.open(f"{key}.npy")
    except KeyError:
        raise DatasetError(f"{path} has no array {key!r}; found {zf.namelist()}") from None


def _read_npy_header(f, path, key):
    try:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
    except ValueError as err:
        raise DatasetError(f"{path}: array {key!r} has a bad header: {err}") from err
    if dtype.hasobject or fortran:
        raise DatasetError(f"{path}: array {key!r} must be a plain C-order array, "
                           f"got dtype {dtype}, fortran_order={fortran}")
    return shape, dtype


def _read_npz_images(path, chunk=8192):
    """Stream the official ``imgs`` (737280, 64, 64) uint8 {0, 1} into bit-packed rows,
    never holding the 2.9 GB array, and check the factor order of ``latents_classes``."""
    n, expected_shape = 737280, (737280, 64, 64)
    try:
        with zipfile.ZipFile(path) as zf:
            with _npz_member(zf, "latents_classes", path) as f:
                shape, dtype = _read_npy_header(f, path, "latents_classes")
                if shape != (n, 6) or dtype.kind not in "iu":
                    raise DatasetError(f"{path}: latents_classes has shape {shape} and dtype "
                                       f"{dtype}, expected ({n}, 6) integers")
                classes = np.frombuffer(f.read(), dtype=dtype).reshape(shape)
            official = DSprites().index_to_classes(np.arange(n))
            if not np.array_equal(classes[:, 1:], official):
                raise DatasetError(f"{path}: latents_classes are not in the official order")
            with _npz_member(zf, "imgs", path) as f:
                shape, dtype = _read_npy_header(f, path, "imgs")
                if shape != expected_shape or dtype != np.uint8:
                    raise DatasetError(f"{path}: imgs has shape {shape} and dtype {dtype}, "
                                       f"expected {expected_shape} uint8")
                packed = np.empty((n, 64, 8), dtype=np.uint8)
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    block = f.read((stop - start) * 4096)
                    if len(block) != (stop - start) * 4096:
                        raise DatasetError(f"{path}: imgs is truncated at image {start}")
                    block = np.frombuffer(block, np.uint8).reshape(-1, 64, 64)
                    if block.max() > 1:
                        raise DatasetError(f"{path}: imgs must be binary, found {block.max()}")
                    packed[start:stop] = np.packbits(block, axis=-1)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        # A bad CRC or a cut-off deflate stream: the file is damaged.
        raise DatasetError(f"{path} is a truncated or corrupted npz file: {err}") from err
    return packed


def load_dsprites(path=None, download=True, data_dir=None, verify=True):
    """The official dSprites file, behind the same interface as :class:`DSprites`.

    Args:
        path: the ``.npz`` if you have it; else it is looked for in (or downloaded to)
            <data_dir>/dsprites/ from the official repository, verified by MD5 (the only
            digest published for it).
        verify: check the MD5 of ``path`` too.
    Returns:
        a :class:`DSprites` at resolution 64 whose images come from the file (about
        370 MB in memory, bit-packed). Loading never unpickles.
    """
    if path is None:
        path = _fetch(DSPRITES_FILE, "dsprites", [DSPRITES_URL], "md5", DSPRITES_MD5,
                      root=data_dir, download=download)
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path {path} does not exist")
        if verify:
            _verify(path, "md5", DSPRITES_MD5)
    return _OfficialDSprites(_read_npz_images(path))


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

