"""Packed, register-tiled GEMM for float32 / float64, with a fused bias + ReLU epilogue.

    C = op(A) @ op(B)           op(A) (m, k), op(B) (k, n), C (m, n)
    C = act(op(A) @ op(B) + b)  (dense_forward: the bias and a ReLU in the epilogue, while a
                                 block of C is in L2; other activations in a pass after)

The structure is the one BLIS and OpenBLAS use (Goto & van de Geijn 2008):

* op(A) and op(B) are read through (offset, row stride, column stride) in
  elements, so transposes, slices with steps and negative strides cost nothing:
  the packing routines gather the panels from wherever the elements are.
* k is cut into blocks of at most KC. For each block, op(B) is packed into
  NR-wide micro-panels and an MC x KC block of op(A) into MR-tall micro-panels
  (L2). With one block of A (m <= MC, the usual batch sizes) each B panel is
  packed just before its use, so it is in L1; otherwise the whole KC x n slab
  is packed once and reused by every block of A. Padding the edges with zeros
  lets one micro-kernel handle every tile.
* The micro-kernel keeps an MR x NR = 6 x (2 vectors) tile of C in 12 vector
  registers and, per step of k, does 2 vector loads of B, 6 broadcasts of A and
  12 FMAs (:mod:`tinyvae._backend.simd`). 12 accumulators + 2 B vectors + 1 broadcast
  = 15 of AVX2's 16 ymm registers (of AVX-512's 32 zmm, where the vectors are
  twice as wide). A narrow 12 x (1 vector) kernel takes a last column panel
  narrower than two vectors, a vector of columns at a time (n = 40 in float32 with 8
  lanes = 2 panels + 8 columns; n = 20 with 16 lanes = 16 + 4 columns, 26.4 -> 23.7 us
  at 128x256 @ 256x20 on a Zen 4, where the full kernel ran all 32 columns through a
  scratch tile), two row panels at a time so that it too has 12 independent FMA chains, and
  when there are only a few column panels A is read in place instead of packed
  (a row-major A, or the transpose of one). There a last panel at most half a
  vector wide (n = 40 in float32 on AVX-512: 32 + 8) runs on half-width vectors,
  stored straight into C: 64x256 @ 256x40 went from 18.9 to 16.1 us on a Zen 4,
  whose 512-bit FMAs cost two 256-bit ones (same FMAs per lane, same bits).
* A C too large to have stayed in L2 since the last step (the weight gradient
  x.T @ dy of a wide layer, 784 x 512) is fetched for writing (``prefetchw``) a
  tile at a time as the tile's FMAs start, instead of at its stores: on a Zen 3 the
  one-thread x.T @ dy products of the 784-input layer went from 0.75-0.92x to
  0.95-1.07x numpy.matmul (interleaved A/B, batch 64-256).

Determinism: every element of C is the sum over k in a fixed order (FMA chains
within a k-block, blocks added in order), and the k-blocking depends only on k;
packing or not, full or narrow kernel, the same FMAs run in the same order.
Threads (:mod:`tinyvae._backend.threads`) split C into disjoint tiles, never k, so the
bits do not depend on the schedule, the tiling or even the number of threads. A
worker's tile runs without Python (``threads.run_native_parts``): ``_post_tile`` writes
the call into the worker's slot as integers, and the worker's ``_run_tile`` calls
``_gemm_tile`` through its machine-code address, the same compiled function this
thread calls.

Compile time: there is one compiled entry point per dtype (``_gemm_tile``),
called directly on one thread and from worker threads on several; a second
``prange`` driver doubled the cold compile of this chain.
"""

from __future__ import annotations

import numpy as np
from numba import carray, from_dtype, types

from tinyvae._backend.fused import IDENTITY, RELU, apply_activation, relu_in_place
from tinyvae._backend.numba_flags import njit, njit_inline
from tinyvae._backend.simd import (
    VECTOR_BYTES,
    aligned_empty,
    cache_line_aligned,
    lanes,
    load,
    opaque,
    prefetch_for_write,
    scalar_like,
    store,
    transpose_block,
    vadd,
    vbroadcast,
    vbroadcast_like,
    vfma,
    vload,
    vload_like,
    vstore,
    vzero,
    vzero_half,
)
from tinyvae._backend.threads import (
    FAILED,
    NO_PROGRESS,
    RUNNER,
    SEQUENCE,
    call_native,
    native_address,
    num_threads,
    part_done,
    part_shares,
    part_started,
    pointer_to,
    run_native_parts,
    run_parts,
    split_shares,
)

MR = 6  # rows of the register tile (the columns are two vectors: 16 float32 or 8 float64)
#: AVX-512 has 32 vector registers: two row panels fit at once, 12 x NR (24 accumulators)
TALL_TILES = VECTOR_BYTES == 64
NO_EPILOGUE = -1  # act code meaning "plain GEMM": no bias, no activation

#: cache blocking per dtype: (KC, MC). KC x NR of B (16 KB) stays in L1 while an
#: MC x KC block of A (~120-150 KB) stays in L2.
BLOCKING = {np.dtype(np.float32): (256, 120), np.dtype(np.float64): (256, 72)}
#: at most this many NR-wide column panels: read a row-major A in place, unpacked
DIRECT_A_MAX_PANELS = 4
#: below this many flops the single-threaded path wins. A native hand-off (threads.
#: run_native_parts) costs ~7 us a call here: the post 3 + 1.6 us, the wait at the end ~3.
#: Split against one thread (interleaved, two threads, Intel Xeon family 6 model 207):
#: the 2.6 MFLOP heads (128 x 256 @ 256 x 40, all three forms) 1.16-1.35x faster (0.98x in an
#: hour when two threads ran each half 1.3x slower than one alone), the 1.0-1.3 MFLOP ones
#: 0.62-0.93x (the Python hand-off before needed 4 MFLOP)
PARALLEL_MIN_FLOPS = 2_000_000
#: a C tile at least this large (half of a 512 KB L2) is prefetched for writing
PREFETCH_C_MIN_BYTES = 256 * 1024


# ----------------------------------------------------------------------------
# micro-kernel: one MR x NR tile of C from packed panels
# ----------------------------------------------------------------------------


@njit
def _store_vector(c, co, v, accumulate):
    """C[row, 0:lanes of v] = (C[row, 0:lanes of v] if accumulate else 0) + v."""
    if accumulate:
        v = vadd(vload_like(v, c, co), v)
    vstore(c, co, v)


@njit
def _store_row(c, co, v0, v1, accumulate):
    """C[row, 0:NR] = (C[row, 0:NR] if accumulate else 0) + [v0 v1]."""
    _store_vector(c, co, v0, accumulate)
    _store_vector(c, co + lanes(c), v1, accumulate)


@njit
def _prefetch_tile(c, co, ldc, rows, width):
    """Fetch the cache lines of a rows x width tile of C (row r at c[co + r*ldc]) for
    writing, while the FMAs that will fill it run."""
    for r in range(rows):
        prefetch_for_write(c, co + r * ldc)
        prefetch_for_write(c, co + r * ldc + width - 1)


@njit
def _micro_kernel(kc, ap, ao, ars, aks, bp, bo, c, co, ldc, accumulate):
    """C[0:6, 0:NR] (+)= Ap.T @ Bp over kc steps.

    ap[ao + r*ars + p*aks] = A[r, p]: (ars, aks) = (1, MR) for a packed panel, (row
    stride, 1) for rows read in place; bp[bo + p*NR + j] = B[p, j]; C row r starts at
    c[co + r*ldc].
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
    ao3 = ao + 3 * ars  # rows 3-5 from an index of their own (see _micro_kernel_narrow)
    for _ in range(kc):
        b0 = vload(bp, bo)
        b1 = vload(bp, bo + L)
        a = vbroadcast(ap, ao)
        c00 = vfma(a, b0, c00)
        c01 = vfma(a, b1, c01)
        a = vbroadcast(ap, ao + ars)
        c10 = vfma(a, b0, c10)
        c11 = vfma(a, b1, c11)
        a = vbroadcast(ap, ao + 2 * ars)
        c20 = vfma(a, b0, c20)
        c21 = vfma(a, b1, c21)
        a = vbroadcast(ap, ao3)
        c30 = vfma(a, b0, c30)
        c31 = vfma(a, b1, c31)
        a = vbroadcast(ap, ao3 + ars)
        c40 = vfma(a, b0, c40)
        c41 = vfma(a, b1, c41)
        a = vbroadcast(ap, ao3 + 2 * ars)
        c50 = vfma(a, b0, c50)
        c51 = vfma(a, b1, c51)
        ao, ao3 = opaque(ao + aks), opaque(ao3 + aks)
        bo += 2 * L
    _store_row(c, co, c00, c01, accumulate)
    _store_row(c, co + ldc, c10, c11, accumulate)
    _store_row(c, co + 2 * ldc, c20, c21, accumulate)
    _store_row(c, co + 3 * ldc, c30, c31, accumulate)
    _store_row(c, co + 4 * ldc, c40, c41, accumulate)
    _store_row(c, co + 5 * ldc, c50, c51, accumulate)


@njit
def _micro_kernel_tall(kc, ap, ao, ao2, ars, aks, bp, bo, c, co, ldc, accumulate):
    """C[0:12, 0:NR] (+)= Ap.T @ Bp over kc steps: two row panels against one column panel,
    rows 0-5 from ap[ao + r*ars + p*aks], rows 6-11 from ap[ao2 + ...] (as
    _micro_kernel_narrow reads them).

    For AVX-512 only (TALL_TILES): 24 accumulators + 2 B vectors + 1 broadcast = 27 of
    its 32 registers. Each B vector loaded feeds 12 FMAs instead of 6: in L1 the 6-row
    kernel ran at 179 GFLOP/s on one core of an Intel Xeon with AVX-512 (family 6 model
    167), this one at 231. Every element is the same FMA chain over k: the same bits.
    """
    L = lanes(c)
    c00, c01, c10, c11 = vzero(c), vzero(c), vzero(c), vzero(c)
    c20, c21, c30, c31 = vzero(c), vzero(c), vzero(c), vzero(c)
    c40, c41, c50, c51 = vzero(c), vzero(c), vzero(c), vzero(c)
    c60, c61, c70, c71 = vzero(c), vzero(c), vzero(c), vzero(c)
    c80, c81, c90, c91 = vzero(c), vzero(c), vzero(c), vzero(c)
    ca0, ca1, cb0, cb1 = vzero(c), vzero(c), vzero(c), vzero(c)
    ao3, ao9 = ao + 3 * ars, ao2 + 3 * ars  # (see _micro_kernel_narrow)
    for _ in range(kc):
        b0 = vload(bp, bo)
        b1 = vload(bp, bo + L)
        a = vbroadcast(ap, ao)
        c00, c01 = vfma(a, b0, c00), vfma(a, b1, c01)
        a = vbroadcast(ap, ao + ars)
        c10, c11 = vfma(a, b0, c10), vfma(a, b1, c11)
        a = vbroadcast(ap, ao + 2 * ars)
        c20, c21 = vfma(a, b0, c20), vfma(a, b1, c21)
        a = vbroadcast(ap, ao3)
        c30, c31 = vfma(a, b0, c30), vfma(a, b1, c31)
        a = vbroadcast(ap, ao3 + ars)
        c40, c41 = vfma(a, b0, c40), vfma(a, b1, c41)
        a = vbroadcast(ap, ao3 + 2 * ars)
        c50, c51 = vfma(a, b0, c50), vfma(a, b1, c51)
        a = vbroadcast(ap, ao2)
        c60, c61 = vfma(a, b0, c60), vfma(a, b1, c61)
        a = vbroadcast(ap, ao2 + ars)
        c70, c71 = vfma(a, b0, c70), vfma(a, b1, c71)
        a = vbroadcast(ap, ao2 + 2 * ars)
        c80, c81 = vfma(a, b0, c80), vfma(a, b1, c81)
        a = vbroadcast(ap, ao9)
        c90, c91 = vfma(a, b0, c90), vfma(a, b1, c91)
        a = vbroadcast(ap, ao9 + ars)
        ca0, ca1 = vfma(a, b0, ca0), vfma(a, b1, ca1)
        a = vbroadcast(ap, ao9 + 2 * ars)
        cb0, cb1 = vfma(a, b0, cb0), vfma(a, b1, cb1)
        ao, ao3 = opaque(ao + aks), opaque(ao3 + aks)
        ao2, ao9 = opaque(ao2 + aks), opaque(ao9 + aks)
        bo += 2 * L
    _store_row(c, co, c00, c01, accumulate)
    _store_row(c, co + ldc, c10, c11, accumulate)
    _store_row(c, co + 2 * ldc, c20, c21, accumulate)
    _store_row(c, co + 3 * ldc, c30, c31, accumulate)
    _store_row(c, co + 4 * ldc, c40, c41, accumulate)
    _store_row(c, co + 5 * ldc, c50, c51, accumulate)
    _store_row(c, co + 6 * ldc, c60, c61, accumulate)
    _store_row(c, co + 7 * ldc, c70, c71, accumulate)
    _store_row(c, co + 8 * ldc, c80, c81, accumulate)
    _store_row(c, co + 9 * ldc, c90, c91, accumulate)
    _store_row(c, co + 10 * ldc, ca0, ca1, accumulate)
    _store_row(c, co + 11 * ldc, cb0, cb1, accumulate)


@njit
def _micro_kernel_narrow(z, kc, ap, ao, ao2, ars, aks, bp, bo, c, co, ldc, accumulate):
    """C[0:12, 0:W] (+)= Ap.T @ Bp[:, 0:W] over kc steps: two row panels against the last
    column panel when it is at most one vector wide (n = 40 in float32 is 2 full panels
    + 8 columns). z, a vector of zeros, sets the width W: a whole vector (vzero), or
    half of one (vzero_half) for a panel at most that wide.

    Rows 0-5 are read from ap[ao + r*ars + p*aks], rows 6-11 from ap[ao2 + ...] (the next
    packed panel, or the next rows read in place). 12 accumulators: with 6, the kernel
    waited on the FMA latency (4 cycles) instead of issuing two FMAs a cycle. B panels
    stay NR wide, zero-padded; the columns past W, which would multiply zeros, are skipped.
    """
    NR = 2 * lanes(c)
    c0 = z
    c1 = z
    c2 = z
    c3 = z
    c4 = z
    c5 = z
    c6 = z
    c7 = z
    c8 = z
    c9 = z
    c10 = z
    c11 = z
    # Rows 3-5 and 9-11 from indices of their own, and all four kept apart (opaque): with
    # A read in place (a runtime row stride) LLVM folded the 12 row indices into one
    # pointer and walked it through the rows by a chain of 12 dependent adds, 12 cycles a
    # k step for 6 cycles of FMAs. Now each row is an index plus 0, 1 or 2 row strides,
    # which x86 addressing computes. One core of an Intel Xeon (family 6 model 207):
    # 60x1024 @ 1024x8 45 -> 20 us; the heads 256x256 @ 256x20 57 -> 40 us and
    # 128x256 @ 256x40 35 -> 30 us (the tall kernel had the same chain). Same FMAs, same bits.
    ao3, ao9 = ao + 3 * ars, ao2 + 3 * ars
    for _ in range(kc):
        b0 = vload_like(z, bp, bo)
        c0 = vfma(vbroadcast_like(z, ap, ao), b0, c0)
        c1 = vfma(vbroadcast_like(z, ap, ao + ars), b0, c1)
        c2 = vfma(vbroadcast_like(z, ap, ao + 2 * ars), b0, c2)
        c3 = vfma(vbroadcast_like(z, ap, ao3), b0, c3)
        c4 = vfma(vbroadcast_like(z, ap, ao3 + ars), b0, c4)
        c5 = vfma(vbroadcast_like(z, ap, ao3 + 2 * ars), b0, c5)
        c6 = vfma(vbroadcast_like(z, ap, ao2), b0, c6)
        c7 = vfma(vbroadcast_like(z, ap, ao2 + ars), b0, c7)
        c8 = vfma(vbroadcast_like(z, ap, ao2 + 2 * ars), b0, c8)
        c9 = vfma(vbroadcast_like(z, ap, ao9), b0, c9)
        c10 = vfma(vbroadcast_like(z, ap, ao9 + ars), b0, c10)
        c11 = vfma(vbroadcast_like(z, ap, ao9 + 2 * ars), b0, c11)
        ao, ao3 = opaque(ao + aks), opaque(ao3 + aks)
        ao2, ao9 = opaque(ao2 + aks), opaque(ao9 + aks)
        bo += NR
    _store_column(c, co, ldc, c0, c1, c2, c3, c4, c5, accumulate)
    _store_column(c, co + MR * ldc, ldc, c6, c7, c8, c9, c10, c11, accumulate)


@njit
def _store_column(c, co, ldc, v0, v1, v2, v3, v4, v5, accumulate):
    """C[r, 0:W] = (C[r, 0:W] if accumulate else 0) + v_r for the MR rows r of a tile (W: the
    lanes of the v_r)."""
    _store_vector(c, co, v0, accumulate)
    _store_vector(c, co + ldc, v1, accumulate)
    _store_vector(c, co + 2 * ldc, v2, accumulate)
    _store_vector(c, co + 3 * ldc, v3, accumulate)
    _store_vector(c, co + 4 * ldc, v4, accumulate)
    _store_vector(c, co + 5 * ldc, v5, accumulate)


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
    """bp[q*kc + p*NR + j] = B[p0 + p, j0 + q + j] for panels q = 0, NR, ...

    Past column n a panel holds zeros (B row-major, and the element-by-element tail),
    copies of its last column (the in-register transposes of B = W.T), or nothing (a
    half panel the transposes skip): those columns of C are computed into the scratch
    tile and never stored, so what they hold does not matter.
    """
    L = lanes(bp)
    NR = 2 * L
    for q in range(0, cols, NR):
        base = q * kc
        width = min(NR, n - j0 - q)
        src = off + p0 * rs + (j0 + q) * cs
        if cs == 1:
            # B row-major (A @ B): each step of k copies whole vectors where they fit (two
            # in a full panel), then element by element, zeros past column n (the last
            # panel of n = 40 is one vector; element by element over all NR columns it
            # took ~4 us of a 30 us product)
            whole = width // L * L
            for p in range(kc):
                for h in range(0, whole, L):
                    vstore(bp, base + p * NR + h, vload(b, src + p * rs + h))
                for j in range(whole, NR):
                    store(bp, base + p * NR + j, load(b, src + p * rs + j) if j < width else 0)
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
def _epilogue(c, co, ldc, rows, cols, bias, j0, act):
    """C[r, j] = C[r, j] + bias[j0 + j], and the ReLU if act is RELU, for a rows x cols
    block starting at c[co].

    Only the ReLU (every hidden layer of the canonical VAE and of the main job): with all
    six activations (fused.apply_activation) this function compiled in 1.1-1.4 s, with
    the ReLU alone in 0.4-0.5 s (Numba's compile events, Intel Xeon family 6 model 207).
    gemm_into applies the others after the product."""
    L = lanes(c)
    zero = scalar_like(c, 0)
    for r in range(rows):
        row = co + r * ldc
        # explicit vectors: LLVM left this loop scalar (c and bias might alias)
        j = 0
        while j + L <= cols:
            vstore(c, row + j, vadd(vload(c, row + j), vload(bias, j0 + j)))
            j += L
        for jj in range(j, cols):
            c[row + jj] += bias[j0 + jj]
        if act == RELU:
            relu_in_place(c[row:row + cols], zero)


# ----------------------------------------------------------------------------
# one task: a tile of C (rows i0.., cols j0..), the whole k reduction
# ----------------------------------------------------------------------------


@njit
def _gemm_tile(a, ao, ars, acs, b, bo, brs, bcs, c, ldc, m, n, k,
               i0, tm, j0, tn, kc_max, mc, bias, act, progress):
    """C[i0:i0+tm, j0:j0+tn] = op(A) @ op(B) (+ epilogue) for one tile, on the calling thread.

    The compiled entry point: arrays are 1-D buffers read through (offset, row
    stride, column stride); k >= 1. Threads each run it on their own tile
    (`progress`: the part's flags, see threads.run_parts).
    """
    part_started(progress)
    L = lanes(c)
    NR = 2 * L
    rows = min(tm, m - i0)
    cols = min(tn, n - j0)
    col_panels = (cols + NR - 1) // NR
    # rows in blocks of at most mc, of even size in whole register tiles (of two row
    # panels where TALL_TILES): never a full block and a sliver
    a_blocks = (rows + mc - 1) // mc
    tile_rows = 2 * MR if TALL_TILES else MR
    mc = ((rows + a_blocks - 1) // a_blocks + tile_rows - 1) // tile_rows * tile_rows
    n_kblocks = (k + kc_max - 1) // kc_max
    # With one block of A (m <= mc: every batch-sized forward and input-gradient
    # product), each B panel is packed right before its only use, so it is still
    # in L1; a slab packed up front (up to KC x n, ~600 KB for n = 784) would have
    # left L2 by then. With several blocks of A the slab is packed once and reused.
    one_block = a_blocks == 1
    # With few column panels (n = 40: 2.5), packing A costs more than it saves: each
    # packed element would feed at most a few FMAs. A is then read in place, in every
    # block of rows: the rows of a row-major A (6 sequential streams), or for A = X.T
    # with X row-major (the weight gradient X.T @ dY of a latent head) the 6 adjacent
    # elements of each row of X. A last partial panel, which reading on past row m would
    # take out of the array, is the panel that ends at row m (it computes a few rows of C
    # twice and stores them once); only an A of fewer than MR rows is packed. (In place,
    # the heads' X.T @ dY products with 256 rows ran 1.15-1.20x faster on a Zen 4, and
    # 128 x 256 @ 256 x 40 1.13x.)
    direct = col_panels <= DIRECT_A_MAX_PANELS and (acs == 1 or ars == 1)
    # A tile of a C this large is not in cache when its first k-block is stored (no step
    # left it in L2): fetch its lines while its FMAs run
    prefetch_c = rows * cols * c.itemsize >= PREFETCH_C_MIN_BYTES
    # MR and 1 as runtime ints: a literal argument compiles a second copy of the callee,
    # here of _prefetch_tile (beside the one for 2 * MR) and of each micro-kernel (beside
    # the one that reads A in place, with runtime strides). With the row indices kept
    # apart (opaque) the packed copies were no faster: 27 products, 0.99-1.01x
    # (interleaved, one thread, Intel Xeon family 6 model 207); the cold compile of the
    # GEMM fell from 7.2 to 6.7 s (median of three, fresh caches).
    mr, one = np.int64(MR), np.int64(1)
    # the packed panels start on a cache line, so no vector load of B in the micro-kernels
    # straddles two (Numba's np.empty gave 32 KB at 32 bytes past one): 27 bench
    # products at one thread 0.99-1.11x, median 1.01 (interleaved, Intel Xeon family 6
    # model 207)
    bp = cache_line_aligned((NR if one_block else col_panels * NR) * kc_max, c)
    ap = cache_line_aligned(mc * kc_max + L, c)
    edge = np.empty(MR * NR, c.dtype)
    for kb in range(n_kblocks):
        # balanced k-blocks: their edges depend on k only, which keeps the bits fixed
        p0 = kb * k // n_kblocks
        kc = (kb + 1) * k // n_kblocks - p0
        accumulate = kb > 0
        last = kb == n_kblocks - 1
        if not one_block:
            _pack_b(b, bo, brs, bcs, n, j0, cols, p0, kc, bp)
        for ic in range(i0, i0 + rows, mc):
            ib_rows = min(mc, i0 + rows - ic)
            if not direct:
                _pack_a(a, ao, ars, acs, m, ic, ib_rows, p0, kc, ap)
            for jq in range(0, cols, NR):
                j = j0 + jq
                width = min(NR, n - j)
                if one_block:
                    _pack_b(b, bo, brs, bcs, n, j, min(NR, cols - jq), p0, kc, bp)
                    b_off = 0
                else:
                    b_off = jq * kc
                iq = 0
                while iq < ib_rows:
                    i = ic + iq
                    # (a and ap are passed in separate calls, never through one variable:
                    # a read-only input would not unify with the writable buffer)
                    if width < NR and iq + 2 * MR <= ib_rows:
                        # a column panel narrower than two vectors, two whole row panels at
                        # once (no FMAs on the zero padding), a vector of columns at a time:
                        # n = 40 in float32 with 8 lanes is 2 panels + 8 columns, n = 20 with
                        # 16 lanes 16 + 4 columns (the full kernel ran all 32, through the
                        # scratch tile). With A read in place (the latent heads) a piece
                        # at most half a vector wide runs on half vectors. A piece narrower
                        # than its vectors goes through the scratch tile, 2*MR x L.
                        for q in range(0, width, L):
                            piece = min(L, width - q)
                            half = direct and piece <= L // 2
                            full = piece == (L // 2 if half else L)
                            if full:
                                dst, dst_off, ldd = c, i * ldc + j + q, ldc
                            else:
                                dst, dst_off, ldd = edge, 0, L
                            acc = accumulate and full
                            if prefetch_c and full and not accumulate:
                                _prefetch_tile(c, dst_off, ldc, 2 * MR, piece)
                            if direct:
                                a_off = ao + i * ars + p0 * acs
                                # (two calls, not one with z in a variable: the two widths
                                # are two types, which one variable cannot hold)
                                if half:
                                    _micro_kernel_narrow(vzero_half(c), kc, a, a_off,
                                                         a_off + MR * ars, ars, acs, bp, b_off + q,
                                                         dst, dst_off, ldd, acc)
                                else:
                                    _micro_kernel_narrow(vzero(c), kc, a, a_off, a_off + MR * ars,
                                                         ars, acs, bp, b_off + q, dst, dst_off,
                                                         ldd, acc)
                            else:
                                _micro_kernel_narrow(vzero(c), kc, ap, iq * kc, (iq + MR) * kc, one,
                                                     mr, bp, b_off + q, dst, dst_off, ldd, acc)
                            if not full:
                                _store_edge(edge, L, c, i * ldc + j + q, ldc, 2 * MR, piece,
                                            accumulate)
                        iq += 2 * MR
                        continue
                    if TALL_TILES and width == NR and iq + 2 * MR <= ib_rows:
                        # two whole row panels at once (AVX-512): straight to C
                        dst_off = i * ldc + j
                        if prefetch_c and not accumulate:
                            _prefetch_tile(c, dst_off, ldc, 2 * mr, NR)
                        if direct:
                            a_off = ao + i * ars + p0 * acs
                            _micro_kernel_tall(kc, a, a_off, a_off + MR * ars, ars, acs, bp,
                                               b_off, c, dst_off, ldc, accumulate)
                        else:
                            _micro_kernel_tall(kc, ap, iq * kc, (iq + MR) * kc, one, mr, bp,
                                               b_off, c, dst_off, ldc, accumulate)
                        iq += 2 * MR
                        continue
                    # one row panel: full tiles go straight to C, edge tiles through the
                    # padded scratch tile
                    height = min(MR, m - i)
                    full = height == MR and width == NR
                    if full:
                        dst, dst_off, ldd = c, i * ldc + j, ldc
                    else:
                        dst, dst_off, ldd = edge, 0, NR
                    acc = accumulate and full
                    if prefetch_c and full and not accumulate:
                        _prefetch_tile(c, dst_off, ldc, mr, NR)
                    if direct and height == MR:
                        _micro_kernel(kc, a, ao + i * ars + p0 * acs, ars, acs, bp, b_off, dst,
                                      dst_off, ldd, acc)
                    elif direct and m >= MR:
                        # the last rows of A, fewer than a panel (64 = 5 x 12 + 4): the panel
                        # that ends at row m, read in place into the scratch tile, whose first
                        # rows (already in C) stay there. Packing the rows instead cost a
                        # 16 x 16 transpose per 16 steps of k: the n = 40 heads 1.02-1.05x
                        # (interleaved, Intel Xeon family 6 model 207). Same FMAs, same bits.
                        # (dst is the scratch tile here: its variables, not literals, which
                        # would compile another copy of the micro-kernel)
                        _micro_kernel(kc, a, ao + (m - MR) * ars + p0 * acs, ars, acs, bp, b_off,
                                      dst, dst_off, ldd, acc)
                        _store_edge(edge[(MR - height) * NR:], NR, c, i * ldc + j, ldc, height,
                                    width, accumulate)
                        iq += MR
                        continue
                    else:
                        if direct:
                            _pack_a(a, ao, ars, acs, m, i, height, p0, kc, ap)
                        a_off = 0 if direct else iq * kc
                        _micro_kernel(kc, ap, a_off, one, mr, bp, b_off, dst, dst_off, ldd, acc)
                    if not full:
                        _store_edge(edge, NR, c, i * ldc + j, ldc, height, width, accumulate)
                    iq += MR
            if last and act != NO_EPILOGUE:
                # the block of C just finished is still in L2
                _epilogue(c, ic * ldc + j0, ldc, ib_rows, cols, bias, j0, act)
    part_done(progress)


@njit
def _store_edge(edge, lde, c, co, ldc, rows, cols, accumulate):
    """Copy (or add) the valid rows x cols corner of a padded tile into C."""
    for r in range(rows):
        for j in range(cols):
            if accumulate:
                c[co + r * ldc + j] += edge[r * lde + j]
            else:
                c[co + r * ldc + j] = edge[r * lde + j]


# ----------------------------------------------------------------------------
# a tile on a worker thread, without Python (threads.run_native_parts)
# ----------------------------------------------------------------------------

# words of a worker's slot after threads.RUNNER: _gemm_tile's address, then its arrays'
# addresses and sizes, then its integer arguments in their order (ao .. act, 17 words)
_KERNEL, _A, _A_SIZE, _B, _B_SIZE, _C, _C_SIZE, _BIAS, _BIAS_SIZE, _INTS = range(1, 11)


@njit
def _post_tile(slot, runner, kernel, a, ao, ars, acs, b, bo, brs, bcs, c, ldc, m, n, k,
               i0, tm, j0, tn, kc_max, mc, bias, act):
    """Write a _gemm_tile call into a worker's slot, for _run_tile: the runner's and the
    kernel's addresses, each array's address and size, the integers."""
    slot[RUNNER], slot[_KERNEL] = runner, kernel
    slot[_A], slot[_A_SIZE] = a.ctypes.data, a.size
    slot[_B], slot[_B_SIZE] = b.ctypes.data, b.size
    slot[_C], slot[_C_SIZE] = c.ctypes.data, c.size
    slot[_BIAS], slot[_BIAS_SIZE] = bias.ctypes.data, bias.size
    ints = (ao, ars, acs, bo, brs, bcs, ldc, m, n, k, i0, tm, j0, tn, kc_max, mc, act)
    for q in range(len(ints)):
        slot[_INTS + q] = ints[q]


@njit_inline
def _run_tile(slot, progress, zero):
    """The _gemm_tile call _post_tile wrote into slot, made through the kernel's address
    (threads.call_native) with the worker's progress flags; zero: a scalar of C's dtype."""
    a = carray(pointer_to(slot[_A], zero), slot[_A_SIZE])
    b = carray(pointer_to(slot[_B], zero), slot[_B_SIZE])
    c = carray(pointer_to(slot[_C], zero), slot[_C_SIZE])
    bias = carray(pointer_to(slot[_BIAS], zero), slot[_BIAS_SIZE])
    q = _INTS
    # a tile that raised (out of memory) is reported through the flags (threads.FAILED):
    # cheaper to compile than raising again here
    if call_native(slot[_KERNEL], (a, slot[q], slot[q + 1], slot[q + 2],
                                   b, slot[q + 3], slot[q + 4], slot[q + 5],
                                   c, slot[q + 6], slot[q + 7], slot[q + 8], slot[q + 9],
                                   slot[q + 10], slot[q + 11], slot[q + 12], slot[q + 13],
                                   slot[q + 14], slot[q + 15], bias, slot[q + 16], progress)):
        progress[FAILED] = progress[SEQUENCE]


@njit
def _run_tile_float32(slot, progress):
    _run_tile(slot, progress, np.float32(0))


@njit
def _run_tile_float64(slot, progress):
    _run_tile(slot, progress, np.float64(0))


_RUNNERS = {np.dtype(np.float32): _run_tile_float32, np.dtype(np.float64): _run_tile_float64}
#: per dtype, the addresses (runner, _gemm_tile) of the native tile, found on first use
_NATIVE_TILE: dict = {}


def _native_tile(dtype):
    """(runner, kernel): the machine-code addresses of _run_tile for C's dtype and of the
    _gemm_tile it calls, compiled for 1-D contiguous writable arrays of that dtype."""
    found = _NATIVE_TILE.get(dtype)
    if found is None:
        array, i, flags = types.Array(from_dtype(dtype), 1, "C"), types.int64, types.int64[::1]
        tile = (array, i, i, i, array, i, i, i, array, *(i,) * 10, array, i, flags)
        found = _NATIVE_TILE[dtype] = (native_address(_RUNNERS[dtype], (flags, flags)),
                                       native_address(_gemm_tile, tile))
    return found


# ----------------------------------------------------------------------------
# Python side: describe arrays as (buffer, offset, strides) and pick a driver
# ----------------------------------------------------------------------------


def strided_view(x):
    """(buf, off, rs, cs) with x[i, j] == buf[off + i*rs + j*cs]; buf 1-D contiguous.

    No copy unless the strides are not whole elements (exotic views).
    """
    # (ravel: a view of a contiguous array, ~4x quicker to make than reshape(-1))
    if x.flags.c_contiguous:
        return x.ravel(), 0, x.shape[1], 1
    if x.flags.f_contiguous:
        return x.T.ravel(), 0, 1, x.shape[0]
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


#: per dtype: an empty bias, for plain GEMM
_NO_BIAS = {np.dtype(t): np.zeros(0, t) for t in (np.float32, np.float64)}
#: the act codes the GEMM's epilogue finishes (see _epilogue); gemm_into applies the
#: other activations after it
_IN_EPILOGUE = (NO_EPILOGUE, IDENTITY, RELU)


def gemm_into(c, a, b, trans_a, trans_b, bias=None, act=NO_EPILOGUE, alpha=None, n_threads=None):
    """c = op(a) @ op(b) (+ bias, activation); c C-contiguous (m, n). Returns c.

    The bias and a ReLU are added in the GEMM's epilogue, while a block of C is in L2;
    any other activation (alpha: leaky_relu's slope) in a pass over C after it."""
    am, ak = a.shape
    m, k = (ak, am) if trans_a else (am, ak)
    n = b.shape[0] if trans_b else b.shape[1]
    if m == 0 or n == 0:
        return c
    if k == 0:
        # an empty sum: C = act(0 + bias), done here so no kernel needs the case
        c.fill(0)
        if act != NO_EPILOGUE:
            c += bias
            # as one row of m n elements: apply_activation over the flat C, as always here
            _activate(c.ravel(), 1, m * n, act, alpha)
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
    flat = c.ravel()
    small = 2 * m * n * k < PARALLEL_MIN_FLOPS
    threads = 1 if small else (num_threads() if n_threads is None else n_threads)
    if threads == 1:
        # small products, and every product on one thread, kept short: every microsecond
        # here is paid ~15 times a step (cutting a product into one tile took ~5 us)
        _gemm_tile(ab, ao, ars, acs, bb, bo, brs, bcs, flat, n, m, n, k,
                   0, m, 0, n, kc, mc, bias, act, NO_PROGRESS)
    else:
        native = ab.dtype == bb.dtype == bias.dtype == c.dtype and bias.flags.c_contiguous
        # native tiles in proportion to the threads' measured speeds (threads.part_shares)
        tiles = _thread_tiles(m, n, threads, c.dtype, part_shares(threads) if native else None)
        parts = [(ab, ao, ars, acs, bb, bo, brs, bcs, flat, n, m, n, k,
                  i0, rows, j0, cols, kc, mc, bias, act) for i0, rows, j0, cols in tiles]
        if native:
            # the workers' tiles through _gemm_tile's address, no Python on their side
            run_native_parts(_gemm_tile, parts, _post_tile, _native_tile(c.dtype), "a GEMM tile",
                             [rows * cols for _, rows, _, cols in tiles])
        else:
            run_parts(_gemm_tile, parts)
    if act not in _IN_EPILOGUE:
        _activate(flat, m, n, act, alpha)
    return c


def _activate(flat, rows, cols, act, alpha):
    """C = act(C) in place, row by row (_activate_rows), C flat (rows x cols); alpha
    (leaky_relu's slope, or None) cast to C's dtype."""
    _activate_rows(flat, rows, cols, act, flat.dtype.type(0 if alpha is None else alpha))


@njit
def _activate_rows(c, m, n, act, alpha):
    """C = act(C) in place, row by row (c flat, m rows of n): each row's elements take
    the vector body or the scalar tail of apply_activation as in the epilogue before,
    whose softplus rounded its tail differently from its vector body."""
    for r in range(m):
        apply_activation(c[r * n:(r + 1) * n], act, alpha)


def _thread_tiles(m, n, n_threads, dtype, shares=None):
    """Cut C (m, n) into n_threads tiles (i0, rows, j0, cols), by columns or by rows: equal
    tiles, or tile t about shares[t] / sum(shares) of C (threads.split_shares).

    Each thread packs the part of op(A) its rows need and the part of op(B) its columns
    need, so a cut by columns packs all of A in every thread and a cut by rows all of B:
    the cut goes the way that repeats the smaller one. By columns (each thread its own
    slab of B) when C is at least as wide as it is tall and has enough column panels;
    by rows otherwise: the weight gradients x.T @ dy of the wide layers (784 x 512 from
    a batch of 64-1,024) and every product with m > n ran 1.04-1.29x faster so (median
    1.10, one 2-thread process, interleaved, on an Intel Xeon with AVX-512, family 6
    model 207). Edges fall on whole register tiles: row tiles of two panels where
    TALL_TILES (a cut at a single panel left each thread a 6-row or 2-row tile).
    """
    nr = 2 * VECTOR_BYTES // dtype.itemsize
    col_panels, row_panels = -(-n // nr), -(-m // MR)
    by_columns = m <= n and (col_panels >= 2 * n_threads or col_panels >= row_panels)
    length, multiple = (n, nr) if by_columns else (m, 2 * MR if TALL_TILES else MR)
    pieces = split_shares(length, shares or [1] * n_threads, multiple)
    if by_columns:
        return [(0, m, j0, j1 - j0) for j0, j1 in pieces]
    return [(i0, i1 - i0, 0, n) for i0, i1 in pieces]


def empty_output(m, n, k, dtype):
    """An uninitialised C (m, n) for a product over k, C-contiguous.

    A product that may be split over threads (PARALLEL_MIN_FLOPS) gets a C whose data
    starts on a cache line; NumPy's start 16 bytes past one, 48 bytes before the next,
    so a cut between two threads' columns (a multiple of NR, 128 bytes in float32) fell
    inside a cache line on every row of C, which both threads then wrote (false
    sharing), and every vector of C straddled two lines. Interleaved in one 2-thread
    process on an Intel Xeon with AVX-512 (family 6 model 207): 64x512 @ 512x256 114 us
    against 121, 128x40 @ 40x256 29 against 40, 256x512 @ 512x256 403 against 420.
    """
    if 2 * m * n * k < PARALLEL_MIN_FLOPS:
        return np.empty((m, n), dtype)
    return aligned_empty((m, n), dtype)


def gemm(a, b, trans_a, trans_b, out):
    """C = op(a) @ op(b), op = transpose when the flag is set; written into out if given."""
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        return gemm_into(empty_output(m, n, k, a.dtype), a, b, trans_a, trans_b)
    if out.flags.c_contiguous:
        return gemm_into(out, a, b, trans_a, trans_b)
    if out.flags.f_contiguous:
        # C^T = op(b)^T @ op(a)^T lands in out.T, which is C-contiguous; same sums, same bits
        gemm_into(out.T, b, a, not trans_b, not trans_a)
        return out
    out[...] = gemm_into(np.empty((m, n), a.dtype), a, b, trans_a, trans_b)
    return out
