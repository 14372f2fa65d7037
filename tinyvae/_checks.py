"""Argument validation shared by every module: models, training, metrics, plots, datasets, CLI.

Each check takes ``(name, value, ...)``, returns the value in its canonical form,
and otherwise raises an error whose message names the argument, what was expected
and what was given. Bad input never reaches the maths.

Three wordings exist because users already match them: the engine and the CLI say
"batch_size: expected a positive integer, got 0"; metrics and plots, which take
counts with larger minima, say "k: expected an int >= 2, got 1"; the data sets,
like every data-set message, say "n must be a positive integer, got 0".

This module imports nothing from tinyvae: anything may import it.
"""

from __future__ import annotations

import numpy as np


def is_int(value) -> bool:
    """True for Python and NumPy integers; False for bools (True is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name, value) -> int:
    """value as an int >= 1, else ValueError "name: expected a positive integer, got v"."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def int_at_least(name, value, minimum=1) -> int:
    """value as an int >= minimum; TypeError for a non-integer, ValueError below minimum."""
    if not is_int(value):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def seed(name, value) -> int:
    """value as an int >= 0 (a NumPy integer too), else ValueError naming the argument."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0 (a seed), got {value!r}")
    return int(value)


def sizes(name, value) -> tuple:
    """A positive int or a sequence of them (() for none), as a tuple of ints (layer widths)."""
    if is_int(value):
        value = (value,)
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"{name}: expected a positive integer or a sequence of them, "
                         f"got {value!r}")
    return tuple(positive_int(name, v) for v in value)


def number(name, value, minimum=None, strict=False) -> float:
    """A finite real (Python or NumPy, not bool) as a float, optionally > or >= minimum."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))
    ok = real and np.isfinite(value) and (
        minimum is None or (value > minimum if strict else value >= minimum))
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return float(value)


def count(name, value) -> int:
    """The data sets' wording of positive_int: "n must be a positive integer, got 0"."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def parse_int(text, minimum) -> int:
    """A command-line integer >= minimum from its text; ValueError names what was typed.

    The CLI's argparse types wrap this (argparse then prefixes the option's name).
    """
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"expected {wanted}, got {text!r}")
    return value


def all_finite(x) -> bool:
    """np.isfinite(x).all(), in the usual case without a boolean array the size of x.

    A sum is finite only if every term is (NaN and inf propagate through it), so one
    pass of np.sum decides; only a sum that overflows sends us element by element.
    On the main job's 100,000 dSprites images (410 MB) this is 5x faster. (The training
    loop's per-step check, training._FiniteCheck, uses g . 0 instead, which never
    overflows but needs a zero vector the size of g: fine for gradients it checks every
    step, not for a data set checked once.)
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(x)):
            return True
    return bool(np.isfinite(x).all())


def value_range(x, block_bytes=1 << 18):
    """(min, max) of a C-contiguous array x; NaN if x holds a NaN.

    Read in blocks of rows of about block_bytes, so that max finds in cache what min has
    just read: one pass over memory instead of two (the main job's 100,000 images, 410
    MB, in ~48 ms against ~65 for x.min() then x.max() on an Intel Xeon, family 6
    model 207).
    """
    rows = max(1, block_bytes // max(1, x[:1].nbytes))
    if len(x) <= rows:
        return float(x.min()), float(x.max())
    starts = range(0, len(x), rows)
    lows, highs = np.empty(len(starts), x.dtype), np.empty(len(starts), x.dtype)
    for k, i in enumerate(starts):
        block = x[i:i + rows]
        lows[k], highs[k] = block.min(), block.max()
    return float(lows.min()), float(highs.max())


def _not_finite(name, x):
    row = int(np.argwhere(~np.isfinite(x))[0, 0])
    return ValueError(f"{name}: expected finite values, got NaN or inf (first in row {row})")


def as_batch(name, x, width, dtype, unit_interval=False):
    """Validate a (n, width) float batch and return it as a contiguous `dtype` array.

    unit_interval: also require values in [0, 1] (the Bernoulli decoder's targets).
    """
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, {width}), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got an empty array {x.shape}")
    if x.shape[1] != width:
        raise ValueError(f"{name}: expected {width} columns, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        hint = " (for images stored as 0..255 integers, divide by 255)" if np.issubdtype(
            x.dtype, np.integer) else ""
        raise TypeError(f"{name}: expected a float array, got dtype {x.dtype}{hint}")
    # Values in [0, 1] are finite: when that range is checked on x's own values (no cast
    # between), it alone decides, and the data set is read once, not three times.
    range_decides = unit_interval and x.dtype == dtype
    if not range_decides and not all_finite(x):
        raise _not_finite(name, x)
    given = x
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=dtype)
    if x.dtype != given.dtype and not all_finite(x):   # finite before the cast: too large
        raise ValueError(f"{name}: values up to {float(np.abs(given).max()):.3g} overflow "
                         f"{np.dtype(dtype).name} (largest {np.finfo(dtype).max:.3g}); rescale "
                         "the data or use a float64 model")
    if unit_interval:
        lo, hi = value_range(x)
        if not (lo >= 0 and hi <= 1):
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise _not_finite(name, x)
            raise ValueError(
                f"{name}: expected values in [0, 1] for a Bernoulli decoder, got range "
                f"[{lo:.4g}, {hi:.4g}] (rescale the data, or use likelihood='gaussian')"
            )
    return x


def one_of(name, value, choices):
    """value if it is one of choices, else ValueError "name: expected one of (...), got v"."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value
