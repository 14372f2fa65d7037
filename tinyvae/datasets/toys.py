"""Manifold toys: 1-D and 2-D manifolds in 3-D with their true intrinsic coordinates."""

from __future__ import annotations

import numpy as np

from tinyvae import _checks


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
    n = _checks.count("n", n)
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
    n = _checks.count("n", n)
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
