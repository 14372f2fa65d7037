"""Numba kernels for the minibatch total-correlation estimators (beta-TCVAE).

The NumPy definition is :func:`tinyvae.losses.tc_terms_forward` / ``_backward``: it
builds the whole (B, B, d) matrix L[i, j, k] = log q(z_ik | x_j) and three
arrays like it. These kernels make one pass over the pairs (i, j) for the forward
and two for the backward, and keep only the softmax weights the backward needs:

    joint[i, j]        = softmax_j (lw_ij + sum_k L_ijk)     (B, B)
    marginal[i, k, j]  = softmax_j (lw_ij + L_ijk)           (B, d, B)

The posterior parameters come in transposed, (d, B), so that every inner loop
runs over j, the long contiguous axis, and vectorises (d is ~10, B ~256).
Rows i are independent in the forward and in dz; dmu and dlogvar sum over i, so
the backward walks the pairs twice, by rows i for dz and by columns j for the
posterior gradients: each output has one writer, and results do not depend on
the number of threads.

exp goes through :func:`tinyvae._backend.simd.exp_nonpositive` (its argument is a - max <= 0),
which vectorises where a call to libm's exp does not.
"""

from __future__ import annotations

import math

import numpy as np

from tinyvae._backend.numba_flags import njit
from tinyvae._backend.simd import exp_nonpositive, lanes, scalar_like, vload, vmax, vstore
from tinyvae._backend.threads import part_done, part_started


@njit
def _max_of(a, lane_max):
    """max(a) of a 1-D array, lane_max scratch of one vector (a NaN in a makes the row's
    sums NaN whatever the peak, so its handling does not matter). In explicit
    vectors: without the "nnan" fast-math flag (left out, see numba_flags) LLVM keeps a
    max reduction scalar, each compare waiting on the one before (the forward at B =
    1,024 took 18.8 ms with it, 14.2 ms with this, one thread, Zen 4). A max is exact
    in any order, so the bits stay."""
    L = lanes(a)
    peak = a[0]
    j = 0
    if a.size >= L:
        m = vload(a, 0)
        for j in range(L, a.size - L + 1, L):
            m = vmax(m, vload(a, j))
        vstore(lane_max, 0, m)
        for q in range(L):
            peak = max(peak, lane_max[q])
        j = a.size - a.size % L
    for q in range(j, a.size):
        peak = max(peak, a[q])
    return peak


@njit
def tc_forward_rows(z, muT, ivT, cT, lw, joint, marginal, terms, lo, hi, progress):
    """Rows lo..hi of the forward: the softmax weights and terms[:, i].

    z (B, d); muT, ivT = exp(-logvar).T, cT = -0.5 (log 2 pi + logvar).T (d, B);
    lw (B, B) log importance weights. L_ijk = cT_kj - 0.5 (z_ik - muT_kj)^2 ivT_kj.
    Writes joint (B, B), marginal (B, d, B) and terms (3, B): log q(z_i|x_i),
    log q(z_i), sum_k log q(z_ik).
    """
    part_started(progress)
    B, d = z.shape
    half = scalar_like(z, 0.5)
    one = scalar_like(z, 1)
    row = np.empty(B, z.dtype)
    lane_max = np.empty(lanes(row), z.dtype)
    for i in range(lo, hi):
        own = scalar_like(z, 0)
        marginal_sum = scalar_like(z, 0)
        for j in range(B):
            row[j] = lw[i, j]
        for k in range(d):
            zik = z[i, k]
            a = marginal[i, k]
            for j in range(B):
                diff = zik - muT[k, j]
                L = cT[k, j] - half * diff * diff * ivT[k, j]
                row[j] += L
                a[j] = lw[i, j] + L
            peak = _max_of(a, lane_max)
            total = scalar_like(z, 0)
            for j in range(B):
                e = exp_nonpositive(a[j] - peak)
                a[j] = e
                total += e
            inv_total = one / total
            for j in range(B):
                a[j] *= inv_total
            marginal_sum += peak + math.log(total)
            diff = zik - muT[k, i]
            own += cT[k, i] - half * diff * diff * ivT[k, i]
        peak = _max_of(row, lane_max)
        total = scalar_like(z, 0)
        for j in range(B):
            e = exp_nonpositive(row[j] - peak)
            joint[i, j] = e
            total += e
        inv_total = one / total
        for j in range(B):
            joint[i, j] *= inv_total
        terms[0, i] = own
        terms[1, i] = peak + math.log(total)
        terms[2, i] = marginal_sum
    part_done(progress)


@njit
def tc_dz_rows(z, muT, ivT, joint, marginal, g_own, g_joint, g_marginal, g_prior, dz, lo, hi,
               progress):
    """dz for rows lo..hi: dz_ik = -sum_j G_ijk D_ijk - g_prior_i z_ik.

    G_ijk = g_own_i [i = j] + g_joint_i joint_ij + g_marginal_i marginal_ikj,
    D_ijk = (z_ik - mu_jk) e^-logvar_jk.
    """
    part_started(progress)
    B, d = z.shape
    for i in range(lo, hi):
        gj, gm = g_joint[i], g_marginal[i]
        for k in range(d):
            zik = z[i, k]
            a = marginal[i, k]
            acc = scalar_like(z, 0)
            for j in range(B):
                acc += (gj * joint[i, j] + gm * a[j]) * (zik - muT[k, j]) * ivT[k, j]
            acc += g_own[i] * (zik - muT[k, i]) * ivT[k, i]
            dz[i, k] = -acc - g_prior[i] * zik
    part_done(progress)


@njit
def tc_posterior_columns(z, muT, ivT, joint, marginal, g_own, g_joint, g_marginal,
                         dmuT, dlogvarT, lo, hi, progress):
    """dmu, dlogvar (transposed, (d, B)) for posteriors j = lo..hi.

    dmu_jk = sum_i G_ijk D_ijk,  dlogvar_jk = sum_i G_ijk 0.5 ((z_ik - mu_jk) D_ijk - 1).
    """
    part_started(progress)
    B, d = z.shape
    half = scalar_like(z, 0.5)
    for k in range(d):
        for j in range(lo, hi):
            dmuT[k, j] = 0
            dlogvarT[k, j] = 0
    one = scalar_like(z, 1)
    n = hi - lo
    for i in range(B):
        gj, gm = g_joint[i], g_marginal[i]
        weights = joint[i, lo:hi]
        for k in range(d):
            # views of the columns lo..hi, indexed from 0: with range(lo, hi) the index
            # could be negative as far as the compiler knows, and the loop stays scalar
            zik, a, m, iv = z[i, k], marginal[i, k, lo:hi], muT[k, lo:hi], ivT[k, lo:hi]
            dm, dl = dmuT[k, lo:hi], dlogvarT[k, lo:hi]
            for j in range(n):
                G = gj * weights[j] + gm * a[j]
                diff = zik - m[j]
                D = diff * iv[j]
                dm[j] += G * D
                dl[j] += G * half * (diff * D - one)
    for j in range(lo, hi):
        for k in range(d):
            diff = z[j, k] - muT[k, j]
            D = diff * ivT[k, j]
            dmuT[k, j] += g_own[j] * D
            dlogvarT[k, j] += g_own[j] * half * (diff * D - one)
    part_done(progress)
