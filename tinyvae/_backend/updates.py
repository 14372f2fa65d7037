"""Optimizer updates as single-pass Numba kernels over 1-D contiguous parameter arrays.

Each update is one formula (``_adam``, ``_sgd``, ``_adagrad``) written once and
applied twice: to SimdVectors over the bulk of the array, then to the
scalars of the tail. Explicit vectors matter here: LLVM leaves a loop that
calls sqrt scalar, and Adam over the 653k parameters of the canonical VAE went
from ~2.0 ms (scalar Numba) to ~0.3 ms with vectors (PERF_NOTES).

Every scalar argument arrives cast to the arrays' dtype, so float32 stays float32.
Large arrays are cut into chunks over threads (tinyvae._backend.threads); elements are
independent, so the result does not depend on the split.
"""

from __future__ import annotations

from tinyvae._backend.numba_flags import njit, njit_inline
from tinyvae._backend.simd import flush_subnormal, lanes, sqrt, vload, vstore
from tinyvae._backend.threads import part_done, part_started

#: arrays at least this long are updated by all threads (a hand-off costs ~10-30 us)
PARALLEL_MIN_SIZE = 1 << 17


# ----------------------------------------------------------------------------
# Adam
# ----------------------------------------------------------------------------


@njit_inline
def _adam(p, g, m, v, b1, c1, b2, c2, lr, inv_bc1, inv_bc2, eps, lr_wd, decay):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  p <- p - lr m_hat / (sqrt(v_hat) + eps).

    A moment below the smallest normal float is stored as 0 (simd.flush_subnormal): a
    weight whose gradient stays 0 (a dead unit, a pixel that is always blank) has its m
    decay by b1 every step into the subnormals, which made the whole update ~7x slower
    on an Intel core late in the main job (2.4 ms against 0.35 a step, two threads).
    With the default eps = 1e-8 what it drops moves no parameter: an m below 1.2e-38
    (float32) steps p by less than 1e-28 lr, and a v below it adds less than 1.1e-19 to
    sqrt(v_hat) + eps, under half an ulp of eps (so for any eps above ~2e-12).
    """
    m = flush_subnormal(b1 * m + c1 * g)
    v = flush_subnormal(b2 * v + c2 * (g * g))
    if decay:
        p = p - lr_wd * p
    p = p - lr * (m * inv_bc1) / (sqrt(v * inv_bc2) + eps)
    return p, m, v


@njit
def adam_range(p, g, m, v, b1, c1, b2, c2, lr, inv_bc1, inv_bc2, eps, lr_wd, decay, i0, i1,
               progress):
    part_started(progress)
    L = lanes(p)
    i = i0
    while i + L <= i1:
        pv, mv, vv = _adam(vload(p, i), vload(g, i), vload(m, i), vload(v, i), b1, c1, b2, c2,
                           lr, inv_bc1, inv_bc2, eps, lr_wd, decay)
        vstore(p, i, pv)
        vstore(m, i, mv)
        vstore(v, i, vv)
        i += L
    for j in range(i, i1):
        p[j], m[j], v[j] = _adam(p[j], g[j], m[j], v[j], b1, c1, b2, c2,
                                 lr, inv_bc1, inv_bc2, eps, lr_wd, decay)
    part_done(progress)


# ----------------------------------------------------------------------------
# SGD with momentum
# ----------------------------------------------------------------------------


@njit_inline
def _sgd(p, g, vel, lr, momentum, nesterov, wd, decay):
    """g' = g + wd p;  vel <- momentum vel + g' (0 if subnormal);  p <- p - lr (g' + momentum
    vel | vel)."""
    if decay:
        g = g + wd * p
    # a velocity decaying into the subnormals is stored as 0, as Adam's moments are (_adam)
    vel = flush_subnormal(momentum * vel + g)
    if nesterov:
        p = p - lr * (g + momentum * vel)
    else:
        p = p - lr * vel
    return p, vel


@njit
def sgd_range(p, g, vel, lr, momentum, nesterov, wd, decay, i0, i1, progress):
    part_started(progress)
    L = lanes(p)
    i = i0
    while i + L <= i1:
        pv, velv = _sgd(vload(p, i), vload(g, i), vload(vel, i), lr, momentum, nesterov, wd,
                        decay)
        vstore(p, i, pv)
        vstore(vel, i, velv)
        i += L
    for j in range(i, i1):
        p[j], vel[j] = _sgd(p[j], g[j], vel[j], lr, momentum, nesterov, wd, decay)
    part_done(progress)


# ----------------------------------------------------------------------------
# Adagrad
# ----------------------------------------------------------------------------


@njit_inline
def _adagrad(p, g, acc, lr, eps, wd, decay):
    """g' = g + wd p;  acc <- acc + g'^2;  p <- p - lr g' / (sqrt(acc) + eps)."""
    if decay:
        g = g + wd * p
    acc = acc + g * g
    p = p - lr * g / (sqrt(acc) + eps)
    return p, acc


@njit
def adagrad_range(p, g, acc, lr, eps, wd, decay, i0, i1, progress):
    part_started(progress)
    L = lanes(p)
    i = i0
    while i + L <= i1:
        pv, accv = _adagrad(vload(p, i), vload(g, i), vload(acc, i), lr, eps, wd, decay)
        vstore(p, i, pv)
        vstore(acc, i, accv)
        i += L
    for j in range(i, i1):
        p[j], acc[j] = _adagrad(p[j], g[j], acc[j], lr, eps, wd, decay)
    part_done(progress)
