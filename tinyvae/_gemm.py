"""Packed, register-tiled GEMM for float32 / float64, with a fused bias + activation epilogue.

    C = op(A) @ op(B)           op(A) (m, k), op(B) (k, n), C (m, n)
    C = act(op(A) @ op(B) + b)  (dense_forward: the epilogue runs while a tile is in L1)

The structure is the one BLIS and OpenBLAS use (Goto & van de Geijn 2008):

* op(A) and op(B) are read through (offset, row stride, column stride) in
  elements, so transposes, slices with steps and negative strides cost nothing:
  the packing routines gather the panels from wherever the elements are.
* k is cut into blocks of at most KC. For each block, a KC x tn slab of op(B)
  is packed into NR-wide micro-panels (L3/L2), and an MC x KC block of op(A)
  into MR-tall micro-panels (L2). Padding the edges with zeros lets one
  micro-kernel handle every tile.
* The micro-kernel keeps an MR x NR = 6 x (2 vectors) tile of C in 12 ymm
  registers and, per step of k, does 2 vector loads of B, 6 broadcasts of A and
  12 FMAs (:mod:`tinyvae._simd`). 12 accumulators + 2 B vectors + 1 broadcast
  = 15 of the 16 ymm registers.

Determinism: every element of C is the sum over k in a fixed order (FMA chains
within a k-block, blocks added in order), and the k-blocking depends only on k.
Threads split C into disjoint tiles, never k, so the bits do not depend on the
schedule, the tiling or even the number of threads.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from tinyvae._fused import apply_activation
from tinyvae._numba import njit, njit_parallel
from tinyvae._simd import (
    lanes,
    load,
    store,
    transpose_block,
    vadd,
    vbroadcast,
    vfma,
    vload,
    vstore,
    vzero,
)

MR = 6  # rows of the register tile (the columns are two vectors: 16 float32 or 8 float64)
NO_EPILOGUE = -1  # act code meaning "plain GEMM": no bias, no activation

#: cache blocking per dtype: (KC, MC). KC x NR of B (16 KB) stays in L1 while an
#: MC x KC block of A (~120-150 KB) stays in L2.
BLOCKING = {np.dtype(np.float32): (256, 120), np.dtype(np.float64): (256, 72)}
#: below this many flops the single-threaded path wins (a parallel launch costs ~5 us)
PARALLEL_MIN_FLOPS = 4_000_000


# ----------------------------------------------------------------------------
# micro-kernel: one MR x NR tile of C from packed panels
# ----------------------------------------------------------------------------


@njit
def _store_row(c, co, v0, v1, accumulate):
    """C[row, 0:NR] = (C[row, 0:NR] if accumulate else 0) + [v0 v1]."""
    L = lanes(c)
    if accumulate:
        v0 = vadd(vload(c, co), v0)
        v1 = vadd(vload(c, co + L), v1)
    vstore(c, co, v0)
    vstore(c, co + L, v1)


@njit
def _micro_kernel(kc, ap, ao, bp, bo, c, co, ldc, accumulate):
    """C[0:6, 0:NR] (+)= Ap.T @ Bp over kc steps.

    ap[ao + p*MR + r] = A[r, p], bp[bo + p*NR + j] = B[p, j]; C row r starts at c[co + r*ldc].
    """
    L = lanes(c)
    c00 = vzero(c)
    c01 = vzero(c)
    c10 = vzero(c)
    c11 = vzero(c)
    c20 = vzero(c)
    c21 = vzero(c)
    c30 = vzero(c)
    c31 = vzero(c)
    c40 = vzero(c)
    c41 = vzero(c)
    c50 = vzero(c)
    c51 = vzero(c)
    for _ in range(kc):
        b0 = vload(bp, bo)
        b1 = vload(bp, bo + L)
        a = vbroadcast(ap, ao)
        c00 = vfma(a, b0, c00)
        c01 = vfma(a, b1, c01)
        a = vbroadcast(ap, ao + 1)
        c10 = vfma(a, b0, c10)
        c11 = vfma(a, b1, c11)
        a = vbroadcast(ap, ao + 2)
        c20 = vfma(a, b0, c20)
        c21 = vfma(a, b1, c21)
        a = vbroadcast(ap, ao + 3)
        c30 = vfma(a, b0, c30)
        c31 = vfma(a, b1, c31)
        a = vbroadcast(ap, ao + 4)
        c40 = vfma(a, b0, c40)
        c41 = vfma(a, b1, c41)
        a = vbroadcast(ap, ao + 5)
        c50 = vfma(a, b0, c50)
        c51 = vfma(a, b1, c51)
        ao += MR
        bo += 2 * L
    _store_row(c, co, c00, c01, accumulate)
    _store_row(c, co + ldc, c10, c11, accumulate)
    _store_row(c, co + 2 * ldc, c20, c21, accumulate)
    _store_row(c, co + 3 * ldc, c30, c31, accumulate)
    _store_row(c, co + 4 * ldc, c40, c41, accumulate)
    _store_row(c, co + 5 * ldc, c50, c51, accumulate)


# ----------------------------------------------------------------------------
# packing: gather panels of op(A) and op(B) from any strides, zero-padded
# ----------------------------------------------------------------------------


@njit
def _pack_a(a, off, rs, cs, m, i0, rows, p0, kc, ap):
    """ap[q*kc + p*MR + r] = A[i0 + q + r, p0 + p] for panels q = 0, MR, ...

    Rows past m hold copies or zeros: they only reach rows of C that are never stored.
    ap needs lanes(ap) elements of slack at the end (transposed stores spill over).
    """
    L = lanes(ap)
    for q in range(0, rows, MR):
        base = q * kc
        valid = min(MR, m - i0 - q)
        src = off + (i0 + q) * rs + p0 * cs
        p = 0
        if cs == 1:
            # A row-major: transpose L x L blocks in registers. Row groups go last to
            # first so each group's spill past MR is overwritten by the group before it.
            while p + L <= kc:
                for r0 in range((MR - 1) // L * L, -1, -L):
                    if r0 < valid:
                        transpose_block(a, src + r0 * rs + p, rs, min(L, valid - r0),
                                        ap, base + p * MR + r0, MR)
                p += L
        elif rs == 1 and i0 + q + 2 * L <= m:
            # A = X.T with X row-major (the weight gradient X.T @ dY): each step of k
            # is MR adjacent elements; copy whole vectors, the spill is overwritten
            for p in range(kc):
                for r0 in range(0, MR, L):
                    vstore(ap, base + p * MR + r0, vload(a, src + p * cs + r0))
            p = kc
        for pp in range(p, kc):
            for r in range(MR):
                v = load(a, src + r * rs + pp * cs) if r < valid else 0
                store(ap, base + pp * MR + r, v)


@njit
def _pack_b(b, off, rs, cs, n, j0, cols, p0, kc, bp):
    """bp[q*kc + p*NR + j] = B[p0 + p, j0 + q + j] for panels q = 0, NR, ...; 0 past column n."""
    L = lanes(bp)
    NR = 2 * L
    for q in range(0, cols, NR):
        base = q * kc
        width = min(NR, n - j0 - q)
        src = off + p0 * rs + (j0 + q) * cs
        if width == NR and cs == 1:
            # B row-major (A @ B): each step of k is two vector copies
            for p in range(kc):
                vstore(bp, base + p * NR, vload(b, src + p * rs))
                vstore(bp, base + p * NR + L, vload(b, src + p * rs + L))
            continue
        p = 0
        if rs == 1:
            # B = W.T with W row-major (A @ W.T): columns of B are contiguous, so
            # transpose L x L blocks in registers
            while p + L <= kc:
                for half in range(0, NR, L):
                    if half < width:
                        transpose_block(b, src + half * cs + p, cs, min(L, width - half),
                                        bp, base + p * NR + half, NR)
                p += L
        for pp in range(p, kc):
            for j in range(NR):
                v = load(b, src + pp * rs + j * cs) if j < width else 0
                store(bp, base + pp * NR + j, v)


# ----------------------------------------------------------------------------
# epilogue: y = act(c + bias) on a tile that is still in L1
# ----------------------------------------------------------------------------


@njit
def _epilogue(c, co, ldc, rows, cols, bias, j0, act, alpha):
    for r in range(rows):
        row = co + r * ldc
        for j in range(cols):
            c[row + j] += bias[j0 + j]
        apply_activation(c[row:row + cols], act, alpha)


# ----------------------------------------------------------------------------
# one task: a tile of C (rows i0.., cols j0..), the whole k reduction
# ----------------------------------------------------------------------------


@njit
def _gemm_tile(a, ao, ars, acs, b, bo, brs, bcs, c, ldc, m, n, k,
               i0, tm, j0, tn, kc_max, mc, bias, act, alpha):
    """C[i0:i0+tm, j0:j0+tn] = op(A) @ op(B) (+ epilogue) for one tile, single thread."""
    L = lanes(c)
    NR = 2 * L
    rows = min(tm, m - i0)
    cols = min(tn, n - j0)
    col_panels = (cols + NR - 1) // NR
    mc = min(mc, (rows + MR - 1) // MR * MR)
    n_kblocks = (k + kc_max - 1) // kc_max
    bp = np.empty(col_panels * NR * kc_max, c.dtype)
    ap = np.empty(mc * kc_max + L, c.dtype)
    edge = np.empty(MR * NR, c.dtype)
    for kb in range(n_kblocks):
        # balanced k-blocks: their edges depend on k only, which keeps the bits fixed
        p0 = kb * k // n_kblocks
        kc = (kb + 1) * k // n_kblocks - p0
        accumulate = kb > 0
        last = kb == n_kblocks - 1
        _pack_b(b, bo, brs, bcs, n, j0, cols, p0, kc, bp)
        for ic in range(i0, i0 + rows, mc):
            ib_rows = min(mc, i0 + rows - ic)
            _pack_a(a, ao, ars, acs, m, ic, ib_rows, p0, kc, ap)
            for jq in range(0, cols, NR):
                j = j0 + jq
                width = min(NR, n - j)
                for iq in range(0, ib_rows, MR):
                    i = ic + iq
                    height = min(MR, m - i)
                    # full tiles go straight to C; edge tiles via a padded scratch tile
                    full = height == MR and width == NR
                    if full:
                        dst, dst_off, ldd = c, i * ldc + j, ldc
                    else:
                        dst, dst_off, ldd = edge, 0, NR
                    _micro_kernel(kc, ap, iq * kc, bp, jq * kc, dst, dst_off, ldd,
                                  accumulate and full)
                    if not full:
                        _store_edge(edge, NR, c, i * ldc + j, ldc, height, width, accumulate)
            if last and act != NO_EPILOGUE:
                # the block of C just finished is still in L2
                _epilogue(c, ic * ldc + j0, ldc, ib_rows, cols, bias, j0, act, alpha)


@njit
def _store_edge(edge, lde, c, co, ldc, rows, cols, accumulate):
    """Copy (or add) the valid rows x cols corner of a padded tile into C."""
    for r in range(rows):
        for j in range(cols):
            if accumulate:
                c[co + r * ldc + j] += edge[r * lde + j]
            else:
                c[co + r * ldc + j] = edge[r * lde + j]


@njit
def _fill_epilogue(c, m, n, ldc, bias, act, alpha):
    """C = act(0 + bias): the k = 0 case."""
    for i in range(m):
        c[i * ldc:i * ldc + n] = 0
    if act != NO_EPILOGUE:
        _epilogue(c, 0, ldc, m, n, bias, 0, act, alpha)


# ----------------------------------------------------------------------------
# drivers: one thread, or disjoint tiles of C over threads
# ----------------------------------------------------------------------------


@njit
def gemm_serial(a, ao, ars, acs, b, bo, brs, bcs, c, ldc, m, n, k, kc, mc, bias, act, alpha):
    """C = op(A) @ op(B) (+ epilogue) on the calling thread. Arrays are 1-D buffers."""
    if k == 0:
        _fill_epilogue(c, m, n, ldc, bias, act, alpha)
        return
    _gemm_tile(a, ao, ars, acs, b, bo, brs, bcs, c, ldc, m, n, k,
               0, m, 0, n, kc, mc, bias, act, alpha)


@njit_parallel
def gemm_parallel(a, ao, ars, acs, b, bo, brs, bcs, c, ldc, m, n, k, kc, mc, bias, act, alpha,
                  n_threads):
    """As gemm_serial, with C cut into n_threads tiles (by columns if n is wide enough)."""
    if k == 0:
        _fill_epilogue(c, m, n, ldc, bias, act, alpha)
        return
    NR = 2 * lanes(c)
    col_panels = (n + NR - 1) // NR
    row_panels = (m + MR - 1) // MR
    if col_panels >= 2 * n_threads or col_panels >= row_panels:
        col_tiles, row_tiles = min(n_threads, col_panels), 1
    else:
        col_tiles, row_tiles = 1, min(n_threads, row_panels)
    tn = (col_panels + col_tiles - 1) // col_tiles * NR
    tm = (row_panels + row_tiles - 1) // row_tiles * MR
    for t in prange(row_tiles * col_tiles):
        i0 = (t // col_tiles) * tm
        j0 = (t % col_tiles) * tn
        if i0 < m and j0 < n:
            _gemm_tile(a, ao, ars, acs, b, bo, brs, bcs, c, ldc, m, n, k,
                       i0, tm, j0, tn, kc, mc, bias, act, alpha)


# ----------------------------------------------------------------------------
# Python side: describe arrays as (buffer, offset, strides) and pick a driver
# ----------------------------------------------------------------------------


def strided_view(x):
    """(buf, off, rs, cs) with x[i, j] == buf[off + i*rs + j*cs]; buf 1-D contiguous.

    No copy unless the strides are not whole elements (exotic views).
    """
    if x.flags.c_contiguous:
        return x.reshape(-1), 0, x.shape[1], 1
    if x.flags.f_contiguous:
        return x.T.reshape(-1), 0, 1, x.shape[0]
    size = x.itemsize
    s0, s1 = x.strides
    if s0 % size or s1 % size:
        return strided_view(np.ascontiguousarray(x))
    rs, cs = s0 // size, s1 // size
    m, n = x.shape
    # the lowest-addressed element, from which a flat view can run upwards
    lo_i = m - 1 if rs < 0 else 0
    lo_j = n - 1 if cs < 0 else 0
    span = 1 + abs(rs) * (m - 1) + abs(cs) * (n - 1)
    buf = np.lib.stride_tricks.as_strided(x[lo_i:, lo_j:], shape=(span,), strides=(size,))
    off = -(min(rs, 0) * (m - 1) + min(cs, 0) * (n - 1))
    return buf, off, rs, cs


_NO_BIAS = {np.dtype(np.float32): np.zeros(0, np.float32),
            np.dtype(np.float64): np.zeros(0, np.float64)}


def gemm_into(c, a, b, trans_a, trans_b, bias=None, act=NO_EPILOGUE, alpha=None, n_threads=None):
    """c = op(a) @ op(b) (+ bias, activation); c C-contiguous (m, n). Returns c."""
    am, ak = a.shape
    m, k = (ak, am) if trans_a else (am, ak)
    n = b.shape[0] if trans_b else b.shape[1]
    if m == 0 or n == 0:
        return c
    ab, ao, ars, acs = strided_view(a)
    if trans_a:
        ars, acs = acs, ars
    bb, bo, brs, bcs = strided_view(b)
    if trans_b:
        brs, bcs = bcs, brs
    kc, mc = BLOCKING[c.dtype]
    if bias is None:
        bias = _NO_BIAS[c.dtype]
    # alpha typed like the data, so dense_forward and plain GEMM share one compilation
    alpha = c.dtype.type(0 if alpha is None else alpha)
    flat = c.reshape(-1)
    if n_threads is None:
        # asking Numba costs ~2 us, so only when threads could pay off
        n_threads = numba.get_num_threads() if 2 * m * n * k >= PARALLEL_MIN_FLOPS else 1
    if n_threads > 1 and 2 * m * n * k >= PARALLEL_MIN_FLOPS:
        gemm_parallel(ab, ao, ars, acs, bb, bo, brs, bcs, flat, n, m, n, k, kc, mc,
                      bias, act, alpha, n_threads)
    else:
        gemm_serial(ab, ao, ars, acs, bb, bo, brs, bcs, flat, n, m, n, k, kc, mc,
                    bias, act, alpha)
    return c


def gemm(a, b, trans_a, trans_b, out):
    """C = op(a) @ op(b), op = transpose when the flag is set; written into out if given."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        return gemm_into(np.empty((m, n), a.dtype), a, b, trans_a, trans_b)
    if out.flags.c_contiguous:
        return gemm_into(out, a, b, trans_a, trans_b)
    if out.flags.f_contiguous:
        # C^T = op(b)^T @ op(a)^T lands in out.T, which is C-contiguous; same sums, same bits
        gemm_into(out.T, b, a, not trans_b, not trans_a)
        return out
    out[...] = gemm_into(np.empty((m, n), a.dtype), a, b, trans_a, trans_b)
    return out
