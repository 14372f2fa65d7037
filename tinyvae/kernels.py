"""The hot path: GEMM family, activations, the fused dense layer and optimizer updates.

Every public function here has two implementations with the same signature:

* a plain NumPy version in this file, short enough to read as the definition of
  what the kernel computes (the activations' are ``reference_activate`` and
  ``reference_activation_grad``), and
* a Numba kernel in :mod:`tinyvae._backend.nb_kernels` (packed, register-tiled GEMM;
  single-pass fused elementwise loops).

The loss formulas (Bernoulli NLL, reparameterization + KL) live once, in
:mod:`tinyvae.losses`, whose functions reach their kernels through :func:`compiled`.

``set_backend("numba")`` (the default) or ``set_backend("numpy")`` picks one for
the whole library (the environment variable ``TINYVAE_BACKEND`` sets the
default); the tests compare the two on awkward shapes and dtypes.

Conventions: 2-D arrays, float32 or float64, both operands of one dtype.
Activations are named ``"identity" | "relu" | "leaky_relu" | "tanh" |
"sigmoid" | "softplus"``; each derivative is written through the activation's
*output* y, so the forward pass need not keep the pre-activation:

    relu' = [y > 0]          leaky_relu' = 1 if y > 0 else alpha
    tanh' = 1 - y^2          sigmoid'    = y (1 - y)
    softplus' = sigmoid(a) = 1 - exp(-y)
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from tinyvae._backend.activations import ACTIVATION_CODES, ACTIVATIONS

BACKENDS = ("numba", "numpy")

def check_backend_env() -> str:
    """The backend ``TINYVAE_BACKEND`` names (default numba); ValueError naming it if unknown."""
    name = os.environ.get("TINYVAE_BACKEND", "numba")
    if name not in BACKENDS:
        raise ValueError(f"TINYVAE_BACKEND: expected one of {BACKENDS}, got {name!r} "
                         "(unset it, or set it to one of these)")
    return name


# an unknown TINYVAE_BACKEND must not stop `import tinyvae` (the CLI reports it in one
# line): it is read on first use instead, where check_backend_env raises its error
_state = {"backend": None, "nb": None}


def set_backend(name: str) -> None:
    """Select ``"numba"`` (compiled kernels, default) or ``"numpy"`` (references)."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    _state["backend"] = name


def get_backend() -> str:
    """Return the name of the active backend."""
    if _state["backend"] is None:
        _state["backend"] = check_backend_env()
    return _state["backend"]


class use_backend:
    """Context manager that switches the backend and restores it afterwards."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.previous = get_backend()
        set_backend(self.name)
        return self

    def __exit__(self, *exc):
        set_backend(self.previous)


def _nb():
    # Imported on first use so `import tinyvae` never pays for Numba compilation.
    if _state["nb"] is None:
        _state["nb"] = importlib.import_module("tinyvae._backend.nb_kernels")
    return _state["nb"]


def _numba_active() -> bool:
    return get_backend() == "numba"


def compiled():
    """The compiled kernels (:mod:`tinyvae._backend.nb_kernels`) when the Numba backend is
    active, else None: how a module whose NumPy body is the definition (e.g. losses.py)
    hands the same computation to its kernel."""
    return _nb() if _numba_active() else None


# ----------------------------------------------------------------------------
# validation shared by the public wrappers
# ----------------------------------------------------------------------------


#: the dtypes the kernels take
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_operands(name_a, a, name_b, b):
    # the usual case first, in one expression: ~0.3 us instead of ~0.7 for the loop below,
    # which names what is wrong (every GEMM call of a training step passes here)
    if (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == 2 == b.ndim
            and a.dtype == b.dtype and a.dtype in _FLOAT_DTYPES):
        return
    for name, arr in ((name_a, a), (name_b, b)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array, got shape {arr.shape}")
        if arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: expected float32 or float64, got dtype {arr.dtype}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b}: expected one dtype, got {a.dtype} and {b.dtype}")


def _check_out(out, shape, dtype, *inputs):
    if out is None:
        return
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype:
        got = (getattr(out, "shape", None), getattr(out, "dtype", type(out).__name__))
        raise ValueError(f"out: expected an array of shape {shape} and dtype {dtype}, got {got}")
    for arr in inputs:
        if np.shares_memory(out, arr):
            raise ValueError("out: must not overlap an input (the kernel reads while it writes)")


def activation_code(activation: str) -> int:
    """The compiled kernels' integer code of an activation name (ValueError if unknown)."""
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(
            f"activation: expected one of {ACTIVATIONS}, got {activation!r}"
        ) from None


# ----------------------------------------------------------------------------
# GEMM family
# ----------------------------------------------------------------------------


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """C = A @ B.   a (m, k), b (k, n) -> (m, n)."""
    _check_operands("a", a, "b", b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"b: expected {a.shape[1]} rows to match a {a.shape}, got {b.shape}")
    _check_out(out, (a.shape[0], b.shape[1]), a.dtype, a, b)
    if _numba_active():
        return _nb().gemm(a, b, False, False, out)
    return np.matmul(a, b, out=out)


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """C = A.T @ B (the weight gradient x.T @ dout).   a (k, m), b (k, n) -> (m, n)."""
    _check_operands("a", a, "b", b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"b: expected {a.shape[0]} rows to match a {a.shape}, got {b.shape}")
    _check_out(out, (a.shape[1], b.shape[1]), a.dtype, a, b)
    if _numba_active():
        return _nb().gemm(a, b, True, False, out)
    return np.matmul(a.T, b, out=out)


def matmul_nt(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """C = A @ B.T (the input gradient dout @ W.T).   a (m, k), b (n, k) -> (m, n)."""
    _check_operands("a", a, "b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"b: expected {a.shape[1]} columns to match a {a.shape}, got {b.shape}")
    _check_out(out, (a.shape[0], b.shape[0]), a.dtype, a, b)
    if _numba_active():
        return _nb().gemm(a, b, False, True, out)
    return np.matmul(a, b.T, out=out)


# ----------------------------------------------------------------------------
# activations: forward through output, backward through output
# ----------------------------------------------------------------------------


def reference_activate(a, activation, alpha=0.01):
    if activation == "identity":
        return a
    if activation == "relu":
        return np.maximum(a, 0)
    if activation == "leaky_relu":
        return np.where(a > 0, a, alpha * a).astype(a.dtype, copy=False)
    if activation == "tanh":
        return np.tanh(a)
    if activation == "sigmoid":
        return reference_sigmoid(a)
    if activation == "softplus":
        # log(1 + e^a) = max(a, 0) + log1p(e^-|a|), finite for any a
        return np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def reference_activation_grad(y, activation, alpha):
    """d act(a) / da written through y = act(a)."""
    one = y.dtype.type(1)
    if activation == "identity":
        return np.ones_like(y)
    if activation == "relu":
        return (y > 0).astype(y.dtype)
    if activation == "leaky_relu":
        return np.where(y > 0, one, y.dtype.type(alpha))
    if activation == "tanh":
        return one - y * y
    if activation == "sigmoid":
        return y * (one - y)
    if activation == "softplus":
        return -np.expm1(-y)
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def reference_sigmoid(a):
    # Two branches so exp never overflows: e^-a for a >= 0, e^a / (1 + e^a) otherwise.
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1 / (1 + np.exp(-a[pos]))
    ea = np.exp(a[~pos])
    out[~pos] = ea / (1 + ea)
    return out


def sigmoid(a: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function 1 / (1 + exp(-a)), elementwise."""
    if _numba_active() and a.ndim == 2:
        return _nb().activate(a, ACTIVATION_CODES["sigmoid"], 0.0)
    return reference_sigmoid(np.asarray(a))


def activate(a: np.ndarray, activation: str, alpha: float = 0.01) -> np.ndarray:
    """y = act(a), elementwise, new array.   a (n, d) -> (n, d)."""
    code = activation_code(activation)
    if _numba_active() and a.ndim == 2:
        return _nb().activate(a, code, float(alpha))
    return reference_activate(a, activation, alpha)


def activation_backward(dy: np.ndarray, y: np.ndarray, activation: str,
                        alpha: float = 0.01) -> np.ndarray:
    """da = dy * act'(a), with act' expressed through y.   (n, d) -> (n, d)."""
    code = activation_code(activation)
    if _numba_active() and dy.ndim == 2:
        return _nb().activation_backward(dy, y, code, float(alpha))
    return dy * reference_activation_grad(y, activation, alpha)


# ----------------------------------------------------------------------------
# fused dense layer: GEMM with bias + activation epilogue, and its backward
# ----------------------------------------------------------------------------


def dense_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, activation: str = "identity",
                  alpha: float = 0.01) -> np.ndarray:
    """y = act(x @ W + b) in one pass over the output.

    x (n, fan_in), W (fan_in, fan_out), b (fan_out,) -> y (n, fan_out)
    """
    code = activation_code(activation)
    _check_operands("x", x, "W", W)
    if x.shape[1] != W.shape[0]:
        raise ValueError(f"W: expected {x.shape[1]} rows to match x {x.shape}, got {W.shape}")
    if b.shape != (W.shape[1],) or b.dtype != W.dtype:
        raise ValueError(f"b: expected shape ({W.shape[1]},) dtype {W.dtype}, got {b.shape} {b.dtype}")
    if _numba_active():
        return _nb().dense_forward(x, W, b, code, float(alpha))
    return reference_activate(np.matmul(x, W) + b, activation, alpha)


def activation_bias_backward(dy: np.ndarray, y: np.ndarray, activation: str,
                             alpha: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """da = dy * act'(a) and db = sum over rows of da, in one pass.

    dy, y (n, d) -> da (n, d), db (d,)
    """
    code = activation_code(activation)
    if dy.ndim != 2 or dy.shape != y.shape:
        raise ValueError(f"dy: expected a 2-D array shaped like y {y.shape}, got {dy.shape}")
    if _numba_active():
        return _nb().activation_bias_backward(dy, y, code, float(alpha))
    da = dy * reference_activation_grad(y, activation, alpha)
    return da, da.sum(axis=0)


# ----------------------------------------------------------------------------
# optimizer updates, in place on one parameter array
# ----------------------------------------------------------------------------


def _check_in_place(**arrays):
    """The update kernels work on flat views; a non-contiguous array would be copied
    by ravel() and the in-place update silently lost."""
    first = next(iter(arrays.values()))
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous numpy array (updated in place)")
        if arr.shape != first.shape or arr.dtype != first.dtype:
            raise ValueError(f"{name}: expected shape {first.shape} and dtype {first.dtype}, "
                             f"got {arr.shape} {arr.dtype}")


def _flush_subnormal(state):
    """state = 0 where |state| is below the smallest normal float, in place: optimizer
    state that decays towards zero (a weight whose gradient stays 0) would otherwise sink
    into the subnormals, where every operation on it takes a ~100-cycle microcode assist
    on Intel cores. With Adam's eps above ~2e-12 what it drops moves no parameter (see
    _backend.updates._adam)."""
    state[np.abs(state) < np.finfo(state.dtype).tiny] = 0


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
    """One Adam step in place (Kingma & Ba 2015, bias-corrected; decoupled weight decay).

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2   (each 0 where below the smallest
                                                         normal float: _flush_subnormal)
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr * wd * p
    All arrays share one shape and dtype; `step` t counts from 1.
    """
    _check_in_place(p=p, g=g, m=m, v=v)
    if _numba_active():
        _nb().adam_update(p.ravel(), g.ravel(), m.ravel(), v.ravel(),
                          float(lr), float(beta1), float(beta2), float(eps), int(step),
                          float(weight_decay))
        return
    t = p.dtype.type
    m *= t(beta1)
    m += t(1 - beta1) * g
    v *= t(beta2)
    v += t(1 - beta2) * (g * g)
    _flush_subnormal(m)
    _flush_subnormal(v)
    m_hat = m / t(1 - beta1**step)
    v_hat = v / t(1 - beta2**step)
    if weight_decay:
        p -= t(lr * weight_decay) * p
    p -= t(lr) * m_hat / (np.sqrt(v_hat) + t(eps))


def sgd_update(p, g, velocity, lr, momentum, nesterov=False, weight_decay=0.0):
    """One SGD step with (heavy-ball or Nesterov) momentum, in place.

    g' = g + wd p;  v <- momentum v + g' (0 where below the smallest normal float);
    p <- p - lr (g' + momentum v if nesterov else v)
    """
    _check_in_place(p=p, g=g, velocity=velocity)
    if _numba_active():
        _nb().sgd_update(p.ravel(), g.ravel(), velocity.ravel(), float(lr),
                         float(momentum), bool(nesterov), float(weight_decay))
        return
    t = p.dtype.type
    g_eff = g + t(weight_decay) * p if weight_decay else g
    velocity *= t(momentum)
    velocity += g_eff
    _flush_subnormal(velocity)
    step = g_eff + t(momentum) * velocity if nesterov else velocity
    p -= t(lr) * step


def adagrad_update(p, g, accum, lr, eps, weight_decay=0.0):
    """One Adagrad step in place (Duchi et al. 2011).

    g' = g + wd p;  a <- a + g'^2;  p <- p - lr g' / (sqrt(a) + eps)
    """
    _check_in_place(p=p, g=g, accum=accum)
    if _numba_active():
        _nb().adagrad_update(p.ravel(), g.ravel(), accum.ravel(), float(lr),
                             float(eps), float(weight_decay))
        return
    t = p.dtype.type
    g_eff = g + t(weight_decay) * p if weight_decay else g
    accum += g_eff * g_eff
    p -= t(lr) * g_eff / (np.sqrt(accum) + t(eps))
