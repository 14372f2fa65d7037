"""Gradient checking: compare hand-derived gradients with central differences.

The central difference  (f(x + h) - f(x - h)) / 2h  has truncation error O(h^2)
and rounding error O(machine eps / h). In float64 with h = 1e-5 both are around
1e-10 relative, so a correct backward pass agrees to ~1e-8 or better; a wrong
one is usually off by 1e-2 or more. In float32 the rounding term alone is ~1e-2,
which hides real bugs, so these functions refuse float32.

What to expect from :func:`rel_error` on a correct float64 backward:
layers and losses < 1e-8, whole models < 1e-6 (more operations, more rounding).
"""

from __future__ import annotations

import numpy as np


def rel_error(a, b):
    """Relative error  ||a - b|| / max(||a|| + ||b||, 1e-30)  (Euclidean norms).

    A norm-wise ratio, not an element-wise one: an element whose true gradient is
    ~1e-12 cannot be resolved by any finite difference, and an element-wise ratio
    would report it as a large error.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"b: expected shape {a.shape} to match a, got {b.shape}")
    denom = max(float(np.linalg.norm(a) + np.linalg.norm(b)), 1e-30)
    return float(np.linalg.norm(a - b) / denom)


def _require_float64(name, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float64:
        raise TypeError(
            f"{name}: expected float64 (central differences in {x.dtype} are too "
            f"coarse to check a gradient), got {x.dtype}"
        )


def numerical_grad(f, x, h=1e-5):
    """Central-difference gradient of a scalar function, perturbing x in place.

    df/dx_i ~= (f(x + h e_i) - f(x - h e_i)) / (2h)
    Every element is restored to its original value, also if f raises.

    Inputs:  f callable taking x and returning a float (it may ignore its argument
             and read x through a closure, e.g. a model's parameter array);
             x float64 array of any shape (views are fine, they are perturbed in place)
    Returns: grad, same shape as x
    """
    _require_float64("x", x)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    for _ in it:
        i = it.multi_index
        original = x[i]
        try:
            x[i] = original + h
            f_plus = float(f(x))
            x[i] = original - h
            f_minus = float(f(x))
        finally:
            x[i] = original
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def numerical_vjp(f, x, dout, h=1e-5):
    """Central-difference vector-Jacobian product  d(sum(f(x) * dout)) / dx.

    This is what a backward pass computes for an array-valued forward f.
    Inputs:  f callable x -> array of dout's shape, x float64, dout float64
    Returns: dx, same shape as x
    """
    _require_float64("x", x)
    dout = np.asarray(dout)
    return numerical_grad(lambda z: float(np.sum(f(z) * dout)), x, h)


def check_grads(model, x, eps=None, h=1e-5, names=None):
    """Compare ``model.loss(x, eps)``'s gradients with central differences.

    Inputs:  model in float64 (any tinyvae model); x (n, input_dim) float64;
             eps (n, latent_dim) fixed noise for a VAE (drawn from seed 0 if None,
             then held fixed: the loss must be a deterministic function of the
             parameters); names: parameter names to check (all by default).
    Returns: {parameter name: rel_error(analytic, numerical)}
    """
    _require_float64("x", np.asarray(x))
    for name, p in model.params.items():
        _require_float64(f"model.params[{name!r}]", p)
    if eps is None and getattr(model, "latent_noise", False):
        eps = np.random.default_rng(0).standard_normal((x.shape[0], model.latent_dim))
    _, grads = model.loss(x, eps=eps)
    errors = {}
    for name in names or model.params:
        param = model.params[name]
        num = numerical_grad(lambda _p: model.loss(x, eps=eps)[0], param, h)
        errors[name] = rel_error(grads[name], num)
    return errors


def _constant_factor(got, want):
    """r if got == r * want elementwise (to 1e-9 relative) for a scalar r != 1, else None."""
    scale = float(np.vdot(want, want))
    if scale == 0.0:
        return None
    r = float(np.vdot(got, want)) / scale
    if not np.isfinite(r) or abs(r - 1.0) < 1e-9 or rel_error(got, r * want) > 1e-9:
        return None
    return r


def expect_close(name, got, want, tol=1e-8, factors=None):
    """Assert that a computed value matches an independent reference; say how it is wrong.

    The check cells of the lessons compare a student's answer with a reference they did
    not write (hard-coded numbers, the library, or quadrature), print one line
    ``name: rel_error 1.2e-16 (expect < 1e-08)`` and raise AssertionError when the
    answer is not finite, has another shape, or has rel_error >= tol. When the answer is
    the reference times a constant r, the message says so, and ``factors`` (a dict
    r -> hint) names the usual mistake behind each such r (a missing 1/n, a lost 1/2...).

    Inputs:  name str; got, want arrays or floats; tol float; factors dict or None
    Returns: None (a check cell's last line prints nothing more than the line above)
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: expected shape {want.shape}, got {got.shape}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{name}: expected finite numbers, got {int((~np.isfinite(got)).sum())} "
                             "inf or nan (an exp or log that overflows?)")
    err = rel_error(got, want)
    print(f"{name}: rel_error {err:.1e}   (expect < {tol:.0e})")
    if err < tol:
        return
    message = f"{name}: rel_error {err:.1e} against the reference, expected < {tol:.0e}"
    r = _constant_factor(got, want)
    if r is not None:
        message += f"; yours is {r:.4g} times the reference everywhere"
        for factor, hint in (factors or {}).items():
            if np.isclose(r, factor, rtol=1e-6):
                message += f": {hint}"
    raise AssertionError(message)
