"""Numba kernels for the minibatch total-correlation estimators (beta-TCVAE).

The NumPy definition is :func:`tinyvae.losses.tc_terms_forward` / ``_backward``: it
builds the whole (B, B, d) matrix L[i, j, k] = log q(z_ik | x_j) and three
arrays like it. These kernels make one pass over the pairs (i, j) for the forward
and one for the backward, and keep what the backward needs of the softmaxes:

    joint[i, j]        = softmax_j (lw_ij + sum_k L_ijk)     (B, B), kept whole
    marginal[i, k, j]  = softmax_j (lw_ij + L_ijk)           (B, d, B), kept as the
                         shift peak[i, k] and 1 / sum inv_total[i, k] of each softmax

and the backward computes each marginal weight again where it uses it, with the
forward's own arithmetic (:func:`_log_density`). Kept whole, the marginal weights
were 42 MB at B = 1,024, d = 10, written once and read again a step (and a fresh
mapping of memory each step, paid in page faults): computing them again is
cheaper than the memory.

The posterior parameters come in transposed, (d, B), so that every inner loop
runs over j, the long contiguous axis, and vectorises (d is ~10, B ~256).
Rows i are independent in the forward; in the backward dmu and dlogvar sum over
i, so it walks the pairs by latent dimensions k: each output has one writer, and
results do not depend on the number of threads.

exp goes through :func:`tinyvae._backend.simd.exp_nonpositive` (its argument is a - max <= 0),
which vectorises where a call to libm's exp does not.
"""

from __future__ import annotations

import math

import numpy as np

from tinyvae._backend.numba_flags import njit, njit_inline
from tinyvae._backend.simd import exp_nonpositive, lanes, scalar_like, vload, vmax, vstore
from tinyvae._backend.threads import claim, part_done, part_started


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
def _log_density(zik, mu, iv, c, half):
    """log q(z_ik | x_j) = c - (z_ik - mu)^2 iv / 2, with iv = e^-logvar_jk and
    c = -(log 2 pi + logvar_jk) / 2."""
    diff = zik - mu
    return c - half * diff * diff * iv


@njit_inline
def _row_forward(i, z, muT, ivT, cT, lw, row, a, lane_max, exps, joint, r, peaks, inv_totals,
                 terms):
    """Row i of the forward: terms[:, i], the marginal softmaxes' peaks[i] and
    inv_totals[i], their unnormalised weights exps (d, B), and the joint softmax
    weights in joint[r]. row, a (B,) and lane_max are scratch.

    Inlined into both kernels (njit_inline): called as a compiled function of its own,
    the kernel compiled in this process and the one loaded from Numba's cache summed in
    different orders (1e-6 relative in float32), so a cold run was another run."""
    B, d = z.shape
    half = scalar_like(z, 0.5)
    one = scalar_like(z, 1)
    own = scalar_like(z, 0)
    marginal_sum = scalar_like(z, 0)
    for j in range(B):
        row[j] = lw[i, j]
    for k in range(d):
        zik = z[i, k]
        for j in range(B):
            L = _log_density(zik, muT[k, j], ivT[k, j], cT[k, j], half)
            row[j] += L
            a[j] = lw[i, j] + L
        peak = _max_of(a, lane_max)
        total = scalar_like(z, 0)
        for j in range(B):
            e = exp_nonpositive(a[j] - peak)
            exps[k, j] = e
            total += e
        peaks[i, k] = peak
        inv_totals[i, k] = one / total
        marginal_sum += peak + math.log(total)
        diff = zik - muT[k, i]
        own += cT[k, i] - half * diff * diff * ivT[k, i]
    peak = _max_of(row, lane_max)
    total = scalar_like(z, 0)
    for j in range(B):
        e = exp_nonpositive(row[j] - peak)
        joint[r, j] = e
        total += e
    inv_total = one / total
    for j in range(B):
        joint[r, j] *= inv_total
    terms[0, i] = own
    terms[1, i] = peak + math.log(total)
    terms[2, i] = marginal_sum


@njit
def tc_forward_rows(z, muT, ivT, cT, lw, joint, peaks, inv_totals, terms, lo, hi, progress):
    """Rows lo..hi of the forward: the softmax weights and terms[:, i].

    z (B, d); muT, ivT = exp(-logvar).T, cT = -0.5 (log 2 pi + logvar).T (d, B);
    lw (B, B) log importance weights. L_ijk = cT_kj - 0.5 (z_ik - muT_kj)^2 ivT_kj.
    Writes joint (B, B), the marginal softmaxes' peaks and inv_totals (B, d) and terms
    (3, B): log q(z_i|x_i), log q(z_i), sum_k log q(z_ik).
    """
    part_started(progress)
    B, d = z.shape
    row, a = np.empty(B, z.dtype), np.empty(B, z.dtype)
    lane_max = np.empty(lanes(row), z.dtype)
    exps = np.empty((d, B), z.dtype)
    for i in range(lo, hi):
        _row_forward(i, z, muT, ivT, cT, lw, row, a, lane_max, exps, joint, i, peaks,
                     inv_totals, terms)
    part_done(progress)


@njit
def tc_forward_backward_rows(z, muT, ivT, cT, lw, g_own, g_joint, g_marginal, g_prior, terms,
                             dz, dmuT_parts, dlogvarT_parts, rows_per_part, next_block, n_blocks,
                             progress):
    """The forward and the backward for the upstream gradients g_* (B,) of the rows
    in blocks of rows_per_part: what tc_forward_rows and then tc_backward_dims give, in
    one walk.

    Each row keeps its marginal weights (d, B) and joint weights (B,) from its
    forward for its backward, so no exp is made twice. dz_i is the row's own;
    dmu and dlogvar sum over rows, so each block p adds its rows, in order, into
    dmuT_parts[p], dlogvarT_parts[p] (d, B), and the caller sums the blocks in order.
    Threads take the blocks one at a time from next_block (threads.claim), so a thread
    on a faster core takes more; the sums do not depend on which thread ran a block.
    """
    part_started(progress)
    B, d = z.shape
    half = scalar_like(z, 0.5)
    one = scalar_like(z, 1)
    row, a = np.empty(B, z.dtype), np.empty(B, z.dtype)
    lane_max = np.empty(lanes(row), z.dtype)
    exps, joint = np.empty((d, B), z.dtype), np.empty((1, B), z.dtype)
    peaks, inv_totals = np.empty((B, d), z.dtype), np.empty((B, d), z.dtype)
    block = claim(next_block)
    while block < n_blocks:
        _block_forward_backward(z, muT, ivT, cT, lw, g_own, g_joint, g_marginal, g_prior,
                                terms, dz, dmuT_parts, dlogvarT_parts, rows_per_part, block,
                                half, one, row, a, lane_max, exps, joint, peaks, inv_totals)
        block = claim(next_block)
    part_done(progress)


@njit_inline
def _block_forward_backward(z, muT, ivT, cT, lw, g_own, g_joint, g_marginal, g_prior, terms,
                            dz, dmuT_parts, dlogvarT_parts, rows_per_part, block, half, one,
                            row, a, lane_max, exps, joint, peaks, inv_totals):
    """tc_forward_backward_rows on the rows of one block, summed into its slot p = block."""
    B, d = z.shape
    lo = block * rows_per_part
    hi = min(B, lo + rows_per_part)
    p = block
    dmuT_parts[p] = 0
    dlogvarT_parts[p] = 0
    for i in range(lo, hi):
        _row_forward(i, z, muT, ivT, cT, lw, row, a, lane_max, exps, joint, 0, peaks,
                     inv_totals, terms)
        gj, gm, g_self = g_joint[i], g_marginal[i], g_own[i]
        for k in range(d):
            zik, gm_k = z[i, k], gm * inv_totals[i, k]
            dz_sum = scalar_like(z, 0)
            for j in range(B):
                G = gj * joint[0, j] + gm_k * exps[k, j]
                diff = zik - muT[k, j]
                GD = G * diff * ivT[k, j]
                dz_sum += GD
                dmuT_parts[p, k, j] += GD
                dlogvarT_parts[p, k, j] += half * (GD * diff - G)
            # G's own-posterior term, g_own_i [i = j]
            diff = zik - muT[k, i]
            GD = g_self * diff * ivT[k, i]
            dz_sum += GD
            dmuT_parts[p, k, i] += GD
            dlogvarT_parts[p, k, i] += g_self * half * (diff * diff * ivT[k, i] - one)
            dz[i, k] = -dz_sum - g_prior[i] * zik


@njit
def tc_backward_dims(z, muT, ivT, cT, lw, joint, peaks, inv_totals, g_own, g_joint,
                     g_marginal, g_prior, dzT, dmuT, dlogvarT, lo, hi, progress):
    """dz, dmu, dlogvar (transposed, (d, B)) in latent dimensions k = lo..hi.

    With G_ijk = g_own_i [i = j] + g_joint_i joint_ij + g_marginal_i marginal_ikj and
    D_ijk = (z_ik - mu_jk) e^-logvar_jk (the marginal weights computed again):

        dz_ik = -sum_j G_ijk D_ijk - g_prior_i z_ik
        dmu_jk = sum_i G_ijk D_ijk,   dlogvar_jk = sum_i G_ijk 0.5 ((z_ik - mu_jk) D_ijk - 1)

    One walk over the pairs gives all three: each G_ijk D_ijk (and its exp) is made
    once. Threads split the dimensions k, so every output has one writer (results do
    not depend on the number of threads) and the inner loop runs over all of j from 0,
    which the compiler vectorises without taking a view of a row (a view of an array
    another thread also takes views of writes to a reference count both threads
    share: split by columns, two threads ran the posterior pass no faster than one,
    B = 1,024, Zen 4).
    """
    part_started(progress)
    B = z.shape[0]
    half = scalar_like(z, 0.5)
    one = scalar_like(z, 1)
    for k in range(lo, hi):
        for j in range(B):
            dmuT[k, j] = 0
            dlogvarT[k, j] = 0
    for i in range(B):
        gj, gm = g_joint[i], g_marginal[i]
        for k in range(lo, hi):
            zik, peak, inv_total = z[i, k], peaks[i, k], inv_totals[i, k]
            dz_sum = scalar_like(z, 0)
            for j in range(B):
                a = lw[i, j] + _log_density(zik, muT[k, j], ivT[k, j], cT[k, j], half)
                G = gj * joint[i, j] + gm * exp_nonpositive(a - peak) * inv_total
                diff = zik - muT[k, j]
                GD = G * diff * ivT[k, j]
                dz_sum += GD
                dmuT[k, j] += GD
                dlogvarT[k, j] += half * (GD * diff - G)
            dz_sum += g_own[i] * (zik - muT[k, i]) * ivT[k, i]
            dzT[k, i] = -dz_sum - g_prior[i] * zik
    for k in range(lo, hi):
        for j in range(B):
            diff = z[j, k] - muT[k, j]
            D = diff * ivT[k, j]
            dmuT[k, j] += g_own[j] * D
            dlogvarT[k, j] += g_own[j] * half * (diff * D - one)
    part_done(progress)
