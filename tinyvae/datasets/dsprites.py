"""dSprites: a procedural, Numba-fast renderer of DeepMind's dSprites at any resolution."""

from __future__ import annotations

import copy

import numpy as np
from numba import prange

from tinyvae import _checks
from tinyvae._backend.numba_flags import njit, njit_parallel

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


def render_sprites(classes, resolution=64, out=None):
    """Render full-grid dSprites classes (n, 5) into (n, R, R) {0, 1} images.

    out: a zeroed (n, R, R) array to draw into (any numeric dtype: a float32 one skips
    the uint8 copy and the cast a model's input would need); None makes a uint8 one.
    """
    shape, unit, cos_a, sin_a, cx, cy = _sprite_geometry(classes, resolution)
    if out is None:
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

    def render_into(self, out, classes):
        """Draw the images of (n, 5) classes into ``out`` (n, R, R), zeroed, any numeric
        dtype (e.g. float32 model input, without a uint8 copy). Returns out."""
        if out.shape != (len(classes), self.resolution, self.resolution):
            raise ValueError(f"out: expected shape {(len(classes), self.resolution, self.resolution)}"
                             f", got {out.shape}")
        full = self.to_full_classes(classes)
        if type(self)._render_full is DSprites._render_full:   # the procedural renderer
            return render_sprites(full, self.resolution, out=out)
        out[...] = self._render_full(full)                      # e.g. the official frames
        return out

    def sample_classes(self, n, rng=None):
        """n classes drawn uniformly from this set (each factor independently)."""
        n = _checks.count("n", n)
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
        batch_size = _checks.count("batch_size", batch_size)
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
