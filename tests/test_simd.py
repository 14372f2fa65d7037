"""The half-width vector operations the GEMM's narrow tail kernel is written with, the
scalar add that fast-math may not regroup, and the index LLVM may not fold into another."""

import numba
import numpy as np
import pytest

from tinyvae._backend.numba_flags import FASTMATH, njit
from tinyvae._backend.simd import (
    VECTOR_BYTES,
    add_in_order,
    flush_subnormal,
    lanes,
    opaque,
    vbroadcast_like,
    vfma,
    vload,
    vload_like,
    vstore,
    vzero_half,
)


@njit
def _half_fma_into(x, i, a, j, out, o):
    """out[o : o + W] = a[j] * x[i : i + W] + 0 with half-width vectors (W their lanes)."""
    z = vzero_half(out)
    vstore(out, o, vfma(vbroadcast_like(z, a, j), vload_like(z, x, i), z))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_half_vectors_are_half_a_register_and_touch_only_their_lanes(dtype):
    half = VECTOR_BYTES // np.dtype(dtype).itemsize // 2
    x = np.arange(1, 3 * half + 2, dtype=dtype)
    a = np.array([0.5, -2.0, 3.0], dtype)
    out = np.full(3 * half, np.nan, dtype)
    # odd offsets: the loads and the store are unaligned
    _half_fma_into(x, 3, a, 1, out, 1)
    expected = np.full(3 * half, np.nan, dtype)
    expected[1:1 + half] = -2.0 * x[3:3 + half]
    np.testing.assert_array_equal(out, expected)


# compiled in every run, not loaded from Numba's cache (a cached function has no LLVM IR
# to inspect), with the kernels' fast-math flags
@numba.njit(fastmath=FASTMATH)
def _sum_in_order(x):
    total = x[0]
    for j in range(1, x.size):
        total = add_in_order(total, x[j])
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_in_order_sums_as_written_under_fast_math(dtype):
    """The adds carry no reassociation flag (Numba's fast-math pass gives one to every float
    add without flags of its own), and the sum is the left-to-right one: 1 is lost in
    1e20 first, where a regrouped sum (1e20 - 1e20 first) would keep it."""
    x = np.array([1.0, 1e20, -1e20] * 7, dtype)
    assert _sum_in_order(x) == 0
    ir = next(iter(_sum_in_order.inspect_llvm().values()))
    adds = [line for line in ir.splitlines() if " fadd " in line]
    assert adds and all("reassoc" not in line and "fast" not in line for line in adds)


@numba.njit(fastmath=FASTMATH)
def _three_rows_sum(x, stride, steps):
    """sum over p < steps of x[p] + x[stride + p] + x[2 stride + p], each row's index its
    own (opaque) register, as the GEMM's in-place kernels walk the rows of A."""
    total = x[0] * 0
    i0, i1, i2 = 0, stride, 2 * stride
    for _ in range(steps):
        total += x[i0] + x[i1] + x[i2]
        i0, i1, i2 = opaque(i0 + 1), opaque(i1 + 1), opaque(i2 + 1)
    return total


def test_opaque_is_the_identity_and_hides_the_index_from_llvm():
    """Each index stays the value it is given (the sum is NumPy's), and every update goes
    through an inline asm that LLVM cannot see through, so its loop strength reduction
    cannot fold the three indices into one pointer walked by a chain of adds."""
    x = np.arange(35, dtype=np.float64)
    assert _three_rows_sum(x, 7, 5) == x.reshape(5, 7)[:3, :5].sum()
    ir = next(iter(_three_rows_sum.inspect_llvm().values()))
    calls = ir.count('call i64 asm "", "=r,0"')
    assert calls >= 3 and calls % 3 == 0


def test_opaque_accepts_integers_only():
    with pytest.raises(numba.TypingError):
        numba.njit(lambda v: opaque(v))(1.5)


@njit
def _flush_scalars(x, out):
    for i in range(x.size):
        out[i] = flush_subnormal(x[i])


@njit
def _flush_vectors(x, out):
    L = lanes(x)
    for i in range(0, x.size - L + 1, L):
        vstore(out, i, flush_subnormal(vload(x, i)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("flush", [_flush_scalars, _flush_vectors])
def test_flush_subnormal_zeroes_exactly_the_subnormals(dtype, flush):
    tiny = np.finfo(dtype).tiny
    smallest = np.nextafter(dtype(0), dtype(1))
    special = [0.0, -0.0, tiny, -tiny, np.nextafter(tiny, 0), -tiny / 3, smallest, -smallest,
               np.nextafter(tiny, 1), 1.0, -2.5, np.inf, -np.inf, np.nan, 1e-30, 3.0]
    lanes_ = VECTOR_BYTES // np.dtype(dtype).itemsize
    x = np.resize(np.array(special, dtype), 2 * lanes_)
    out = np.full_like(x, 7)
    flush(x, out)
    want = np.where(np.abs(x) < tiny, dtype(0), x)   # NaN compares false: kept
    np.testing.assert_array_equal(out, want)
    assert not np.signbit(out[np.abs(x) < tiny]).any()   # -0 and negative subnormals: +0
