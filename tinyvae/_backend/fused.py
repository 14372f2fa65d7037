"""Fused elementwise Numba kernels: activations, losses, reparameterization.

Each kernel makes one pass over its inputs and writes every output in that pass
(the NumPy references in :mod:`tinyvae.kernels` make one pass per operation).
Arrays are contiguous; 2-D kernels take (n, d) arrays, the rest 1-D views.

exp and log1p come from :mod:`tinyvae._backend.simd` (``exp_nonpositive``,
``log1p_unit``): written as plain arithmetic, they vectorise where a call to
libm's expf / log1pf (~20 ns per element) would not.

Two rules keep float32 loops in float32 (and so vectorised 8 wide): every
literal goes through ``scalar_like(x, value)`` (a bare ``1`` next to a float32
promotes the expression to float64), and scalar arguments arrive already cast
to the arrays' dtype.
"""

from __future__ import annotations

import math

from tinyvae._backend.activations import ACTIVATION_CODES
from tinyvae._backend.numba_flags import njit, njit_inline
from tinyvae._backend.simd import (
    exp_nonpositive,
    lanes,
    log1p_unit,
    scalar_like,
    vload,
    vsplat,
    vstore,
    vwhere_less,
)
from tinyvae._backend.threads import part_done, part_started

IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, SOFTPLUS = (
    ACTIVATION_CODES[name]
    for name in ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus"))
#: the Bernoulli kernel splits rows over threads above this many elements (below
#: it handing work to a thread costs more than it saves)
PARALLEL_MIN_SIZE = 1 << 16


# ----------------------------------------------------------------------------
# scalar building blocks (inlined into the loops below)
# ----------------------------------------------------------------------------


@njit
def _sigmoid_from(v, e, one):
    """sigmoid(v) given e = exp(-|v|): 1/(1+e) for v >= 0, e/(1+e) below; never overflows."""
    return one / (one + e) if v >= 0 else e / (one + e)


@njit
def _positive_part(v, zero):
    # `zero if v < zero else v` keeps NaN (max(v, 0) would turn it into 0)
    return zero if v < zero else v


# ----------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------

# The two activations that leave part of x unchanged are written with explicit vectors:
# as scalar loops LLVM turns them into masked stores (see simd.vwhere_less).


@njit_inline
def relu_lanes(v, zeros):
    """ReLU of a vector, lane by lane: zeros where v < 0, else v (NaN and -0 kept, as
    _positive_part keeps them). Every vector ReLU uses this select, so all give the
    same bits."""
    return vwhere_less(v, zeros, zeros, v)


@njit_inline
def slope_lanes(y, zeros, ones, below):
    """The slope of ReLU (below = 0) or leaky ReLU (below = alpha) written through its
    output y, lane by lane: ones where y > 0, else below."""
    return vwhere_less(zeros, y, ones, below)


@njit
def relu_in_place(x, zero):
    """x = _positive_part(x, 0), lane by lane, then a scalar tail."""
    L = lanes(x)
    z = vsplat(x, zero)
    i = 0
    while i + L <= x.size:
        vstore(x, i, relu_lanes(vload(x, i), z))
        i += L
    for j in range(i, x.size):
        x[j] = _positive_part(x[j], zero)


@njit
def _leaky_relu_in_place(x, zero, alpha):
    """x = x if x > 0 else alpha x, lane by lane, then a scalar tail."""
    L = lanes(x)
    z = vsplat(x, zero)
    i = 0
    while i + L <= x.size:
        v = vload(x, i)
        vstore(x, i, vwhere_less(z, v, v, v * alpha))
        i += L
    for j in range(i, x.size):
        v = x[j]
        x[j] = v if v > zero else alpha * v


@njit
def apply_activation(x, act, alpha):
    """x = act(x) in place, x 1-D contiguous; act in ACTIVATION_CODES; alpha for leaky_relu."""
    zero = scalar_like(x, 0)
    one = scalar_like(x, 1)
    # one loop per activation so each is a branch-free loop the compiler vectorises
    if act == RELU:
        relu_in_place(x, zero)
    elif act == LEAKY_RELU:
        _leaky_relu_in_place(x, zero, alpha)
    elif act == TANH:
        for i in range(x.size):
            x[i] = math.tanh(x[i])
    elif act == SIGMOID:
        for i in range(x.size):
            v = x[i]
            x[i] = _sigmoid_from(v, exp_nonpositive(-abs(v)), one)
    elif act == SOFTPLUS:
        for i in range(x.size):
            # log(1 + e^v) = max(v, 0) + log1p(e^-|v|), finite for every v
            v = x[i]
            x[i] = _positive_part(v, zero) + log1p_unit(exp_nonpositive(-abs(v)))


@njit
def _scale_by_slope(dy, y, zero, one, below, da):
    """da = dy * (one if y > 0 else below): the gradient of ReLU (below = 0) and leaky ReLU.

    Explicit vectors, then a scalar tail: with da = dy (in place) the scalar loop leaves
    the lanes it multiplies by one unstored and becomes a masked store (simd.vwhere_less).
    """
    L = lanes(y)
    z, ones, belows = vsplat(y, zero), vsplat(y, one), vsplat(y, below)
    i = 0
    while i + L <= y.size:
        vstore(da, i, vload(dy, i) * slope_lanes(vload(y, i), z, ones, belows))
        i += L
    for j in range(i, y.size):
        da[j] = dy[j] * (one if y[j] > zero else below)


@njit
def activation_grad_into(dy, y, act, alpha, da):
    """da = dy * act'(a), act' written through y = act(a). All 1-D contiguous, same size."""
    zero = scalar_like(y, 0)
    one = scalar_like(y, 1)
    if act == IDENTITY:
        for i in range(y.size):
            da[i] = dy[i] * one
    elif act == RELU:
        _scale_by_slope(dy, y, zero, one, zero, da)
    elif act == LEAKY_RELU:
        _scale_by_slope(dy, y, zero, one, alpha, da)
    elif act == TANH:
        for i in range(y.size):
            da[i] = dy[i] * (one - y[i] * y[i])
    elif act == SIGMOID:
        for i in range(y.size):
            da[i] = dy[i] * (y[i] * (one - y[i]))
    else:
        # softplus' = sigmoid(a) = 1 - e^-y
        for i in range(y.size):
            da[i] = dy[i] * -math.expm1(-y[i])


@njit
def _add_into(acc, x):
    """acc += x, 1-D, with explicit vectors (LLVM will not vectorise it across the 2-D loop)."""
    L = lanes(acc)
    j = 0
    while j + L <= acc.size:
        vstore(acc, j, vload(acc, j) + vload(x, j))
        j += L
    for jj in range(j, acc.size):
        acc[jj] += x[jj]


@njit
def activation_bias_grad_into(dy, y, act, alpha, da, db):
    """da = dy * act'(a) and db = sum over rows of da (rows added in order), one pass.

    dy, y, da (n, d) C-contiguous; db (d,)
    """
    db[:] = 0
    for i in range(y.shape[0]):
        activation_grad_into(dy[i], y[i], act, alpha, da[i])
        _add_into(db, da[i])


@njit
def relu_bias_grad_into(dy, y, da, db):
    """activation_bias_grad_into for the ReLU (the hidden layers of the canonical VAE and
    of the main job), the same calls on each row: compiled without the other activations'
    gradients it takes 0.47-0.50 s to compile against 0.80-0.90 s, part of every cold
    training step (Intel Xeon family 6 model 207).

    dy, y, da (n, d) C-contiguous; db (d,)
    """
    zero, one = scalar_like(y, 0), scalar_like(y, 1)
    db[:] = 0
    for i in range(y.shape[0]):
        _scale_by_slope(dy[i], y[i], zero, one, zero, da[i])
        _add_into(db, da[i])


# ----------------------------------------------------------------------------
# Bernoulli negative log-likelihood from logits, with its gradient
# ----------------------------------------------------------------------------


@njit
def bernoulli_row(logits, x, grad_scale, dlogits):
    """One row's sum_j softplus(l_j) - x_j l_j (returned) and dlogits = grad_scale
    (sigmoid(l) - x); all 1-D. The row is summed on one thread, in one call."""
    zero = scalar_like(logits, 0)
    one = scalar_like(logits, 1)
    total = zero
    for j in range(logits.size):
        v = logits[j]
        t = x[j]
        e = exp_nonpositive(-abs(v))
        # softplus(v) - t v: the BCE of sigmoid(v) against t, with no log(0)
        total += _positive_part(v, zero) + log1p_unit(e) - t * v
        dlogits[j] = grad_scale * (_sigmoid_from(v, e, one) - t)
    return total


@njit
def bernoulli_rows(logits, x, grad_scale, nll, dlogits, r0, r1, progress):
    """For rows r0 <= i < r1 of (n, d) arrays: nll[i] and dlogits[i] by bernoulli_row.
    Splitting rows over threads leaves the bits unchanged."""
    part_started(progress)
    for i in range(r0, r1):
        nll[i] = bernoulli_row(logits[i], x[i], grad_scale, dlogits[i])
    part_done(progress)


# ----------------------------------------------------------------------------
# reparameterization + analytic KL
# ----------------------------------------------------------------------------


@njit
def reparam_kl_forward_into(mu, logvar, eps, z, sigma, kl):
    """sigma = e^(logvar/2); z = mu + sigma eps; kl = (mu^2 + sigma^2 - 1 - logvar) / 2. 1-D."""
    half = scalar_like(mu, 0.5)
    one = scalar_like(mu, 1)
    for i in range(mu.size):
        s = math.exp(half * logvar[i])
        sigma[i] = s
        z[i] = mu[i] + s * eps[i]
        kl[i] = half * (mu[i] * mu[i] + s * s - one - logvar[i])


@njit
def reparam_kl_backward_into(dz, mu, eps, sigma, kl_scale, dmu, dlogvar):
    """dmu = dz + k mu;  dlogvar = dz eps sigma / 2 + k (sigma^2 - 1) / 2. 1-D."""
    half = scalar_like(mu, 0.5)
    one = scalar_like(mu, 1)
    for i in range(mu.size):
        s = sigma[i]
        dmu[i] = dz[i] + kl_scale * mu[i]
        dlogvar[i] = half * dz[i] * eps[i] * s + kl_scale * half * (s * s - one)
