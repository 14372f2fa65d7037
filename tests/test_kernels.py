"""Every Numba kernel against its NumPy reference, on shapes and layouts chosen to break it.

The NumPy backend (``use_backend("numpy")``) is the definition; the Numba
backend must agree within a tolerance tied to the dtype and to the size of the
sum (for GEMM: sum_k |a_ik| |b_kj|, the scale rounding errors grow with), and
must give the same bits on every call and for any thread count.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyvae import kernels as K
from tinyvae import losses
from tinyvae._backend import gemm
from tinyvae._backend import threads as _threads
from tinyvae._backend.activations import ACTIVATION_CODES
from tinyvae._backend.numba_flags import njit as njit_kernel

DTYPES = (np.float32, np.float64)
#: relative error allowed against the scale of the computation
RTOL = {np.float32: 2e-6, np.float64: 1e-13}
FORMS = ("nn", "tn", "nt")  # C = A @ B, A.T @ B, A @ B.T
LAYOUTS = ("C", "F", "step2", "reversed")


def rtol(dtype):
    return RTOL[np.dtype(dtype).type]


def both(fn, *args, **kwargs):
    """(numba result, numpy reference result) of the same call."""
    with K.use_backend("numba"):
        got = fn(*args, **kwargs)
    with K.use_backend("numpy"):
        want = fn(*args, **kwargs)
    return got, want


def layout(x, kind):
    """The values of x, stored as `kind`: C order, Fortran order, a step-2 slice of a
    bigger array, or a view with negative strides."""
    if kind == "C":
        return np.ascontiguousarray(x)
    if kind == "F":
        return np.asfortranarray(x)
    if kind == "step2":
        big = np.zeros((2 * x.shape[0], 2 * x.shape[1]), x.dtype)
        big[::2, ::2] = x
        return big[::2, ::2]
    big = np.ascontiguousarray(x[::-1, ::-1])
    return big[::-1, ::-1]


def operands(rng, form, m, k, n, dtype, kinds=("C", "C")):
    """a, b such that the `form` product is (m, k) @ (k, n)."""
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    if form == "tn":
        a = a.T
    if form == "nt":
        b = b.T
    return layout(a, kinds[0]), layout(b, kinds[1])


def product(form, a, b, out=None):
    fn = {"nn": K.matmul, "tn": K.matmul_tn, "nt": K.matmul_nt}[form]
    return fn(a, b) if out is None else fn(a, b, out=out)


def assert_gemm_close(got, form, a, b):
    """|got - exact| <= rtol * (|op(a)| @ |op(b)|) elementwise, exact in float64 (or longdouble)."""
    opa = a.T if form == "tn" else a
    opb = b.T if form == "nt" else b
    exact = opa.astype(np.longdouble) @ opb.astype(np.longdouble)
    scale = np.abs(opa).astype(np.float64) @ np.abs(opb).astype(np.float64)
    assert got.shape == exact.shape
    assert got.dtype == a.dtype
    err = np.abs(got.astype(np.longdouble) - exact)
    assert np.all(err <= rtol(a.dtype) * scale + np.finfo(a.dtype).tiny), (
        f"max relative error {np.max(err / np.maximum(scale, 1e-300))}"
    )


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


# ----------------------------------------------------------------------------
# GEMM
# ----------------------------------------------------------------------------

# (m, k, n): ones, odd sizes, primes, around the 6 x 16 register tile and the
# 256-deep k-block, and the VAE layer shapes
SHAPES = [(1, 1, 1), (1, 9, 1), (7, 1, 5), (5, 3, 1), (6, 16, 16), (7, 17, 17), (13, 31, 37),
          (29, 257, 11), (64, 256, 40), (61, 513, 47), (3, 600, 200), (200, 5, 3),
          (128, 784, 20)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_matches_reference(rng, shape, form, dtype):
    a, b = operands(rng, form, *shape, dtype)
    got, want = both(product, form, a, b)
    assert_gemm_close(got, form, a, b)
    np.testing.assert_allclose(got, want, rtol=10 * rtol(dtype), atol=1e-4 if dtype ==
                               np.float32 else 1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kinds", [("F", "C"), ("C", "F"), ("step2", "reversed"),
                                   ("reversed", "step2"), ("F", "F")])
def test_gemm_non_contiguous(rng, kinds, form, dtype):
    a, b = operands(rng, form, 23, 41, 35, dtype, kinds)
    assert_gemm_close(product(form, a, b), form, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_mixed_sign_strides(rng, dtype):
    x = rng.standard_normal((30, 44)).astype(dtype)
    a = x[::-3, 1::2]  # negative row stride, positive column stride
    b = rng.standard_normal((40, 50)).astype(dtype)[5::, ::-2].T  # (25, 35)
    b = b[:22]
    assert_gemm_close(K.matmul(a, b), "nn", a, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 70), k=st.integers(1, 300), n=st.integers(1, 70),
       form=st.sampled_from(FORMS), dtype=st.sampled_from(DTYPES),
       kind_a=st.sampled_from(LAYOUTS), kind_b=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**32 - 1))
def test_gemm_hypothesis(m, k, n, form, dtype, kind_a, kind_b, seed):
    a, b = operands(np.random.default_rng(seed), form, m, k, n, dtype, (kind_a, kind_b))
    assert_gemm_close(product(form, a, b), form, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_kind", ["C", "F", "step2"])
def test_gemm_writes_into_out(rng, out_kind, dtype):
    a, b = operands(rng, "nn", 19, 33, 27, dtype)
    out = layout(np.full((19, 27), np.nan, dtype), out_kind)
    result = K.matmul(a, b, out=out)
    assert result is out
    assert_gemm_close(out, "nn", a, b)


def test_gemm_out_sliced_from_bigger_array(rng):
    a, b = operands(rng, "nt", 10, 12, 9, np.float64)
    big = np.full((12, 14), 7.0)
    K.matmul_nt(a, b, out=big[1:11, 2:11])
    assert_gemm_close(big[1:11, 2:11], "nt", a, b)
    assert np.all(big[0] == 7.0) and np.all(big[:, :2] == 7.0) and np.all(big[:, 11:] == 7.0)


def test_gemm_rejects_out_overlapping_an_input(rng):
    a = rng.standard_normal((8, 8))
    with pytest.raises(ValueError, match="overlap"):
        K.matmul(a, a.copy(), out=a)
    with pytest.raises(ValueError, match="overlap"):
        K.matmul_tn(a, a.copy(), out=a[::-1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_gemm_k_zero_gives_zeros(form, dtype):
    a = np.zeros((0, 5) if form == "tn" else (5, 0), dtype)
    b = np.zeros((4, 0) if form == "nt" else (0, 4), dtype)
    out = np.full((5, 4), np.nan, dtype)
    assert np.all(product(form, a, b) == 0)
    assert np.all(product(form, a, b, out=out) == 0)


def test_gemm_empty_output():
    assert K.matmul(np.ones((0, 3)), np.ones((3, 4))).shape == (0, 4)
    assert K.matmul(np.ones((2, 3)), np.ones((3, 0))).shape == (2, 0)


def test_gemm_inf_and_nan_propagate():
    a = np.array([[np.inf, 1.0], [np.nan, 0.0]])
    with np.errstate(invalid="ignore"):   # NumPy's reference warns on the NaN it propagates
        got, want = both(K.matmul, a, np.ones((2, 3)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_deterministic_across_calls_and_thread_counts(rng, dtype):
    # big enough for the multithreaded path, k spans several k-blocks
    a, b = operands(rng, "nt", 130, 700, 300, dtype)
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            runs += [K.matmul_nt(a, b) for _ in range(3)]
    finally:
        numba.set_num_threads(before)
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n", [4, 8, 20, 24, 28, 40, 65])
def test_gemm_narrow_outputs(rng, n, form, dtype):
    # narrow C takes the narrow 12-row kernel for its last panel, a vector of columns at a
    # time (20 and 24: 16 + 4 and 16 + 8 with 512-bit float32, 28: 16 + 8 + 4 or 16 + 12
    # with 256-bit float32 or 512-bit float64), and reads A in place
    # (a row-major A, or the transpose of one: both only when there are few column
    # panels), in one block of rows and in several
    for m in (64, 250):
        a, b = operands(rng, form, m, 300, n, dtype)
        assert_gemm_close(product(form, a, b), form, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m, k, n", [(13, 300, 8), (64, 600, 20), (96, 300, 28), (130, 257, 40),
                                     (257, 40, 37), (400, 64, 200)])
def test_gemm_each_row_has_the_bits_it_has_alone(rng, m, k, n, form, dtype):
    # one row alone goes through a padded edge tile; in a bigger product it is in a full
    # 6-row tile, a 12-row tile of two row panels (AVX-512), a 12-row narrow tile (the last
    # panel narrower than two vectors, a vector
    # of columns at a time, on half vectors for a piece at most half a vector wide), a
    # balanced block of A, or a tile of C large enough to be
    # prefetched (400 x 200). Every path must run the same FMAs in the same order.
    a, b = operands(rng, form, m, k, n, dtype)
    whole = product(form, a, b)
    rows = [product(form, a[:, i:i + 1] if form == "tn" else a[i:i + 1], b) for i in range(m)]
    np.testing.assert_array_equal(whole, np.concatenate(rows))


def test_gemm_read_only_inputs(rng):
    # A read in place must not be unified with the writable packing buffer (one
    # dtype only: each read-only signature compiles the GEMM chain again)
    a, b = operands(rng, "nn", 64, 300, 40, np.float32)
    a.flags.writeable = False
    b.flags.writeable = False
    assert_gemm_close(K.matmul(a, b), "nn", a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n", [(64, 512), (256, 256), (130, 300), (512, 256), (784, 512),
                                  (1024, 784), (301, 40), (13, 8), (40, 1000)])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 8])
@pytest.mark.parametrize("unequal", [False, True])
def test_gemm_thread_tiles_cover_c_once(m, n, n_threads, unequal, dtype):
    # disjoint tiles that cover C exactly once, cut across the longer side of C (each
    # thread packs all of the operand along the cut: the smaller one), with inner edges
    # on whole register tiles; also when cut in unequal shares (the threads' speeds)

    dtype = np.dtype(dtype)
    shares = [0.25, 4.0, 1.0, 0.6, 3.0, 1.0, 0.3, 2.0][:n_threads] if unequal else None
    tiles = gemm._thread_tiles(m, n, n_threads, dtype, shares)
    assert 1 <= len(tiles) <= n_threads
    covered = np.zeros((m, n), int)
    for i0, rows, j0, cols in tiles:
        covered[i0:i0 + rows, j0:j0 + cols] += 1
    np.testing.assert_array_equal(covered, 1)
    by_rows = all((j0, cols) == (0, n) for _, _, j0, cols in tiles)
    if m > n:
        assert by_rows
    nr = 2 * gemm.VECTOR_BYTES // dtype.itemsize
    tile_rows = 2 * gemm.MR if gemm.TALL_TILES else gemm.MR
    for i0, rows, j0, cols in tiles[:-1]:
        assert ((i0 + rows) % tile_rows == 0) if by_rows else ((j0 + cols) % nr == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [0, 1, 17, 8192])
def test_kernel_scratch_starts_on_a_cache_line(size, dtype):
    # the GEMM's packed panels, the broadcast decoder's scratch and padded weights (so no
    # vector load of them straddles two lines)
    from tinyvae._backend import nb_kernels, simd

    for _ in range(5):  # several allocations: NumPy's and Numba's starts vary
        buf = simd.cache_line_aligned(size, np.zeros(0, dtype))
        assert buf.size == size and buf.dtype == dtype and buf.flags.c_contiguous
        if size:
            assert buf.ctypes.data % simd.CACHE_LINE == 0
    a = np.arange(1, 1 + 3 * (size % 7 + 1), dtype=dtype).reshape(3, -1)
    padded = nb_kernels._padded(a, (4, a.shape[1] + 5))
    assert padded.ctypes.data % simd.CACHE_LINE == 0 and padded.dtype == dtype
    want = np.zeros((4, a.shape[1] + 5), dtype)
    want[:3, :a.shape[1]] = a
    np.testing.assert_array_equal(padded.reshape(want.shape), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 37, 256])
def test_tc_inputs_are_the_formulas_on_cache_lines(rng, B, dtype):
    # the estimator's (d, B) inputs: mu.T, exp(-logvar).T, -0.5 (log 2 pi + logvar).T,
    # to the bit of the NumPy expressions, each starting on a cache line
    from tinyvae._backend import nb_kernels, simd

    z, mu, logvar = (rng.standard_normal((B, 10)).astype(dtype) for _ in range(3))
    lw = np.full((B, B), -np.log(10.0 * B), dtype)
    _, mu_t, inv_var_t, const_t, lw_out = nb_kernels._tc_inputs(z, mu, logvar, lw)
    np.testing.assert_array_equal(mu_t, mu.T)
    np.testing.assert_array_equal(inv_var_t, np.exp(-logvar.T))
    np.testing.assert_array_equal(const_t, -0.5 * (dtype(np.log(2 * np.pi)) + logvar.T))
    np.testing.assert_array_equal(lw_out, lw)
    for a in (mu_t, inv_var_t, const_t):
        assert a.flags.c_contiguous and a.dtype == dtype
        assert a.ctypes.data % simd.CACHE_LINE == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, k", [(64, 400, 784), (1, 1, 4_000_000), (300, 7, 2000), (3, 5, 2)])
def test_gemm_outputs_of_big_products_start_on_a_cache_line(m, n, k, dtype):
    # (a cut between two threads' columns then falls between cache lines)

    c = gemm.empty_output(m, n, k, np.dtype(dtype))
    assert c.shape == (m, n) and c.dtype == dtype
    assert c.flags.c_contiguous and c.flags.writeable
    if 2 * m * n * k >= gemm.PARALLEL_MIN_FLOPS:
        assert c.ctypes.data % 64 == 0
    c[...] = 1  # the whole array is ours to write


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_gemm_tall_output_same_bits_for_any_thread_count(rng, form, dtype):
    # m > n: cut by rows (the weight gradient x.T @ dy of a wide layer)
    a, b = operands(rng, form, 520, 300, 200, dtype)
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            runs.append(product(form, a, b))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(runs[-1], runs[0])
    assert_gemm_close(runs[-1], form, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_narrow_output_same_bits_for_any_thread_count(rng, dtype):
    a, b = operands(rng, "nn", 301, 700, 40, dtype)  # > PARALLEL_MIN_FLOPS: split by rows
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            runs.append(K.matmul(a, b))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(runs[-1], runs[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_gemm_tiles_on_workers_same_bits_as_one_thread(rng, form, dtype):
    # the workers' tiles run through _gemm_tile's address (threads.run_native_parts): on 2,
    # 3 and 5 threads (more than the cores), with read-only operands and with the bias and
    # ReLU epilogue, C equals the one-thread product
    a, b = operands(rng, form, 150, 90, 130, dtype)
    a.flags.writeable = b.flags.writeable = False
    trans_a, trans_b = form[0] == "t", form[1] == "t"
    m, n = 150, 130
    bias = rng.standard_normal(n).astype(dtype)
    for act, with_bias in ((gemm.NO_EPILOGUE, None), (ACTIVATION_CODES["relu"], bias)):
        want = gemm.gemm_into(np.empty((m, n), dtype), a, b, trans_a, trans_b, bias=with_bias,
                              act=act, n_threads=1)
        for n_threads in (2, 3, 5):
            got = gemm.gemm_into(gemm.empty_output(m, n, 90, dtype), a, b, trans_a, trans_b,
                                 bias=with_bias, act=act, n_threads=n_threads)
            np.testing.assert_array_equal(got, want)


def _threaded_matmul_in_child(queue):
    a = np.ones((300, 300), np.float32)
    queue.put(float(K.matmul(a, a)[0, 0]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_gemm_threads_work_in_a_forked_child():
    # the parent's worker threads do not survive fork; the child must make its own
    # pool rather than wait forever on the inherited one
    before = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    try:
        K.matmul(np.ones((300, 300), np.float32), np.ones((300, 300), np.float32))
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_threaded_matmul_in_child, args=(queue,))
        child.start()
        child.join(timeout=120)
        if child.is_alive():
            child.terminate()
            pytest.fail("a threaded GEMM in a forked child hung")
        assert queue.get(timeout=5) == 300.0
    finally:
        numba.set_num_threads(before)


# ----------------------------------------------------------------------------
# fused dense layer and activations
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", K.ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (64, 256, 40), (37, 100, 33)])
def test_dense_forward_matches_reference_and_unfused(rng, shape, activation, dtype):
    m, k, n = shape
    x = rng.standard_normal((m, k)).astype(dtype)
    W = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    got, want = both(K.dense_forward, x, W, b, activation, 0.1)
    assert got.dtype == dtype and got.shape == (m, n)
    tol = 20 * rtol(dtype) * max(1.0, float(np.abs(x).max() * np.abs(W).sum(0).max()))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # the same numbers as the three kernels run one after another
    unfused = K.activate(K.matmul(x, W) + b, activation, 0.1)
    np.testing.assert_allclose(got, unfused, rtol=4 * np.finfo(dtype).eps,
                               atol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_non_contiguous_and_k_zero(rng, dtype):
    x = layout(rng.standard_normal((9, 14)).astype(dtype), "step2")
    W = layout(rng.standard_normal((14, 6)).astype(dtype), "reversed")
    b = rng.standard_normal(12).astype(dtype)[::2]
    got, want = both(K.dense_forward, x, W, b, "tanh")
    np.testing.assert_allclose(got, want, rtol=100 * rtol(dtype), atol=100 * rtol(dtype))
    got = K.dense_forward(np.ones((3, 0), dtype), np.ones((0, 6), dtype), b, "relu")
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(b, 0), (3, 6)))


def elementwise_tol(dtype):
    return {"rtol": 8 * np.finfo(dtype).eps, "atol": 8 * np.finfo(dtype).eps}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", K.ACTIVATIONS)
@pytest.mark.parametrize("kind", ["C", "F", "reversed"])
def test_activations_match_reference(rng, kind, activation, dtype):
    a = layout((4 * rng.standard_normal((17, 23))).astype(dtype), kind)
    a[0, :3] = [0, 60, -60]
    y, y_ref = both(K.activate, a, activation, 0.2)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **elementwise_tol(dtype))
    dy = layout(rng.standard_normal(a.shape).astype(dtype), kind)
    da, da_ref = both(K.activation_backward, dy, y_ref, activation, 0.2)
    np.testing.assert_allclose(da, da_ref, **elementwise_tol(dtype))
    (da2, db), (da2_ref, db_ref) = both(K.activation_bias_backward, dy, y_ref, activation, 0.2)
    np.testing.assert_allclose(da2, da_ref, **elementwise_tol(dtype))
    np.testing.assert_allclose(db, db_ref, rtol=50 * np.finfo(dtype).eps,
                               atol=50 * np.finfo(dtype).eps * np.abs(da_ref).sum(0).max())
    # the fused backward is the unfused one plus a column sum
    np.testing.assert_array_equal(da2, da)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (64, 400), (5, 33)])
def test_relu_bias_backward_kernel_gives_the_general_kernels_bits(rng, dtype, shape):
    """activation_bias_backward sends the ReLU to its own kernel (less to compile); it
    must give exactly what the all-activations kernel gives for the ReLU, zeros and
    NaN included."""
    from tinyvae._backend import fused

    dy = rng.standard_normal(shape).astype(dtype)
    y = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    y.flat[0], dy.flat[-1] = np.nan, np.nan
    relu = (np.empty(shape, dtype), np.empty(shape[1], dtype))
    general = (np.empty(shape, dtype), np.empty(shape[1], dtype))
    fused.relu_bias_grad_into(dy, y, *relu)
    fused.activation_bias_grad_into(dy, y, fused.RELU, dtype(0.0), *general)
    for a, b in zip(relu, general, strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.array_equal(np.signbit(a), np.signbit(b))


def test_activations_keep_nan():
    a = np.array([[np.nan, 1.0, -1.0]])
    for activation in K.ACTIVATIONS:
        assert np.isnan(K.activate(a, activation)[0, 0]), activation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 8, 17, 64, 301])
def test_relu_kernels_exact_on_special_values(rng, size, dtype):
    """The vector ReLU / leaky ReLU kernels and their gradients (in place too) give the
    scalar definitions' bits, lane loop and scalar tail alike: NaN kept, -0 kept as -0,
    infinities and tiny values."""
    from tinyvae._backend import fused

    specials = np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -1e-30, 1e-30, -2.5, 3.0], dtype)
    x = np.resize(specials, size) * rng.choice([1, -1], size).astype(dtype)
    alpha = dtype(0.2)
    want_value = {"relu": np.where(x < 0, dtype(0), x), "leaky_relu": np.where(x > 0, x, alpha * x)}
    dy = rng.standard_normal(size).astype(dtype)
    for name, want in want_value.items():
        code = fused.ACTIVATION_CODES[name]
        got = x.copy()
        fused.apply_activation(got, code, alpha)
        np.testing.assert_array_equal(got.view(f"u{x.itemsize}"), want.view(f"u{x.itemsize}"))
        slope = np.where(want > 0, dtype(1), dtype(0) if name == "relu" else alpha)
        for in_place in (False, True):
            da = dy.copy() if in_place else np.empty_like(dy)
            fused.activation_grad_into(da if in_place else dy, want, code, alpha, da)
            np.testing.assert_array_equal(da.view(f"u{x.itemsize}"),
                                          (dy * slope).view(f"u{x.itemsize}"))


def test_activation_bias_backward_deterministic(rng):
    dy = rng.standard_normal((300, 257)).astype(np.float32)
    y = np.abs(rng.standard_normal((300, 257))).astype(np.float32)
    first = K.activation_bias_backward(dy, y, "relu")
    for _ in range(3):
        again = K.activation_bias_backward(dy, y, "relu")
        np.testing.assert_array_equal(again[0], first[0])
        np.testing.assert_array_equal(again[1], first[1])


# ----------------------------------------------------------------------------
# fused losses
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 784), (300, 301)])
def test_bernoulli_nll_matches_reference(rng, shape, dtype):
    logits = (5 * rng.standard_normal(shape)).astype(dtype)
    x = (rng.random(shape) < 0.4).astype(dtype)
    x[0, 0] = 0.3  # targets need not be binary
    (nll, dl), (nll_ref, dl_ref) = both(losses.bernoulli_nll_logits, logits, x, 0.25)
    assert nll.shape == (shape[0],) and nll.dtype == dtype and dl.dtype == dtype
    scale = (np.abs(logits) + 1).sum(axis=1)
    np.testing.assert_allclose(nll, nll_ref, rtol=0, atol=4 * rtol(dtype) * scale.max())
    np.testing.assert_allclose(dl, dl_ref, **elementwise_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_nll_extreme_logits_are_exact(dtype):
    logits = np.array([[1000, -1000, 1000, -1000, 0]], dtype)
    x = np.array([[1, 0, 0, 1, 1]], dtype)
    nll, dl = losses.bernoulli_nll_logits(logits, x)
    assert np.all(np.isfinite(nll)) and np.all(np.isfinite(dl))
    # per element: 0, 0, 1000, 1000, log 2
    assert nll[0] == pytest.approx(2000 + np.log(2), rel=float(np.finfo(dtype).eps * 4))
    np.testing.assert_array_equal(dl, np.array([[0, 0, 1, -1, -0.5]], dtype))
    nll1, _ = losses.bernoulli_nll_logits(logits[:, :1], x[:, :1])
    assert nll1[0] == 0


def test_bernoulli_nll_non_contiguous(rng):
    logits = layout(rng.standard_normal((20, 30)), "F")
    x = layout((rng.random((20, 30)) < 0.5).astype(np.float64), "step2")
    (nll, dl), (nll_ref, dl_ref) = both(losses.bernoulli_nll_logits, logits, x, 1.0)
    np.testing.assert_allclose(nll, nll_ref, rtol=1e-13)
    np.testing.assert_allclose(dl, dl_ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["C", "F", "step2"])
def test_reparam_kl_matches_reference(rng, kind, dtype):
    mu, logvar, eps, dz = (layout(rng.standard_normal((13, 7)).astype(dtype), kind)
                           for _ in range(4))
    fwd, fwd_ref = both(losses.reparam_kl_forward, mu, logvar, eps)
    for got, want in zip(fwd, fwd_ref, strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **elementwise_tol(dtype))
    sigma = fwd_ref[1]
    bwd, bwd_ref = both(losses.reparam_kl_backward, dz, mu, eps, sigma, 0.7)
    for got, want in zip(bwd, bwd_ref, strict=True):
        np.testing.assert_allclose(got, want, **elementwise_tol(dtype))


# ----------------------------------------------------------------------------
# optimizer updates
# ----------------------------------------------------------------------------

#: empty, sizes around the vector width (8 / 4 lanes) and above the multithreading threshold
UPDATE_SIZES = (0, 1, 7, 8, 9, 1001, 300_007)


def run_updates(update, size, dtype, steps, rng, n_state, **hyper):
    """Run `steps` updates with both backends from the same start; return both final states."""
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(steps)]
    results = []
    for backend in ("numba", "numpy"):
        p = p0.copy()
        state = [np.zeros(size, dtype) for _ in range(n_state)]
        with K.use_backend(backend):
            for t, g in enumerate(grads, start=1):
                update(p, g, *state, t, **hyper)
        results.append([p, *state])
    return results


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", UPDATE_SIZES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_reference(rng, weight_decay, size, dtype):
    def adam(p, g, m, v, t, **hyper):
        K.adam_update(p, g, m, v, step=t, **hyper)

    got, want = run_updates(adam, size, dtype, 3, rng, 2, lr=1e-2, beta1=0.9, beta2=0.999,
                            eps=1e-8, weight_decay=weight_decay)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=16 * np.finfo(dtype).eps, atol=1e-6
                                   if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", UPDATE_SIZES)
@pytest.mark.parametrize("nesterov, weight_decay", [(False, 0.0), (True, 0.01)])
def test_sgd_matches_reference(rng, nesterov, weight_decay, size, dtype):
    def sgd(p, g, vel, t, **hyper):
        K.sgd_update(p, g, vel, **hyper)

    got, want = run_updates(sgd, size, dtype, 3, rng, 1, lr=0.1, momentum=0.9,
                            nesterov=nesterov, weight_decay=weight_decay)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=16 * np.finfo(dtype).eps,
                                   atol=16 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_optimizer_state_decaying_to_zero_stops_at_zero_not_in_the_subnormals(dtype, backend):
    """A weight whose gradient stays 0 (a dead unit, a blank pixel) has its momentum decay
    by beta1 every step; stored as subnormals, Adam over such state ran ~7x slower on an
    Intel core. Below the smallest normal float the state is 0, and the parameters follow
    the textbook update, subnormals kept, to rounding (the steps those would give are far
    below an ulp of p)."""
    tiny = np.finfo(dtype).tiny
    size = 37   # vector body and scalar tail
    p0 = np.linspace(-1, 1, size).astype(dtype)
    g0 = np.full(size, 0.3, dtype)
    zero = np.zeros(size, dtype)
    steps = int(np.log(tiny) / np.log(0.9)) + 30      # far enough for 0.9^t < tiny
    with K.use_backend(backend):
        p, m, v = p0.copy(), np.zeros(size, dtype), np.zeros(size, dtype)
        K.adam_update(p, g0, m, v, 1e-3, 0.9, 0.999, 1e-8, 1)
        for t in range(2, steps):
            K.adam_update(p, zero, m, v, 1e-3, 0.9, 0.999, 1e-8, t)
            assert not ((m != 0) & (np.abs(m) < tiny)).any(), t
        assert (m == 0).all() and (v > tiny).all()
        q, vel = p0.copy(), np.zeros(size, dtype)
        K.sgd_update(q, g0, vel, 0.1, 0.9)
        for _ in range(steps):
            K.sgd_update(q, zero, vel, 0.1, 0.9)
        assert (vel == 0).all()
    # the same steps with the subnormals kept, in float64 arithmetic rounded to dtype
    # at the end of each step, move p to the same values, to rounding
    pk, mk, vk = p0.copy(), np.zeros(size, dtype), np.zeros(size, dtype)
    for t in range(1, steps):
        g = g0 if t == 1 else zero
        mk[:] = 0.9 * mk + 0.1 * g
        vk[:] = 0.999 * vk + 0.001 * g * g
        update = 1e-3 * (mk / (1 - 0.9**t)) / (np.sqrt(vk / (1 - 0.999**t)) + 1e-8)
        pk[:] = pk - update.astype(dtype)
    np.testing.assert_allclose(p, pk, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", UPDATE_SIZES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adagrad_matches_reference(rng, weight_decay, size, dtype):
    def adagrad(p, g, acc, t, **hyper):
        K.adagrad_update(p, g, acc, **hyper)

    got, want = run_updates(adagrad, size, dtype, 3, rng, 1, lr=0.1, eps=1e-10,
                            weight_decay=weight_decay)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=16 * np.finfo(dtype).eps,
                                   atol=16 * np.finfo(dtype).eps)


def test_updates_reach_two_dimensional_parameters(rng):
    # kernels.py flattens (n, d) parameters; the update must land in the original array
    p = rng.standard_normal((40, 30)).astype(np.float32)
    p_ref = p.copy()
    g = rng.standard_normal((40, 30)).astype(np.float32)
    state = [np.zeros_like(p) for _ in range(2)]
    state_ref = [np.zeros_like(p) for _ in range(2)]
    K.adam_update(p, g, *state, 1e-3, 0.9, 0.999, 1e-8, 1)
    with K.use_backend("numpy"):
        K.adam_update(p_ref, g, *state_ref, 1e-3, 0.9, 0.999, 1e-8, 1)
    np.testing.assert_allclose(p, p_ref, rtol=1e-6)
    assert not np.array_equal(p, g)


# ----------------------------------------------------------------------------
# the worker pool behind every multithreaded kernel
# ----------------------------------------------------------------------------


@njit_kernel
def _fill_range(x, value, lo, hi, progress):
    _threads.part_started(progress)
    for i in range(lo, hi):
        x[i] = value + i
    _threads.part_done(progress)


@njit_kernel
def _fail_on_empty(x, lo, hi, progress):
    # says neither part_started nor part_done: the pool must cope with such a kernel
    if hi - lo == 0:
        raise ValueError("an empty part")
    x[lo:hi] = 1.0


@pytest.mark.parametrize("multiple", [1, 12, 32])
def test_split_shares_cuts_in_proportion_on_whole_multiples(multiple):
    for n in (0, 1, 5, 31, 32, 33, 100, 784, 1000):
        for shares in ([1.0], [1.0, 1.0], [1.0, 3.0], [0.25, 1.0, 4.0], [1.0] * 7, [2.0, 0.5]):
            pieces = _threads.split_shares(n, shares, multiple)
            units = -(-n // multiple)
            assert len(pieces) == min(len(shares), units)
            if n == 0:
                continue
            assert pieces[0][0] == 0 and pieces[-1][1] == n
            assert [lo for lo, _ in pieces[1:]] == [hi for _, hi in pieces[:-1]]
            assert all(hi > lo for lo, hi in pieces)
            assert all(hi % multiple == 0 for _, hi in pieces[:-1])
            # each piece within one multiple of its share (plus the one-unit minimum)
            total = sum(shares[:len(pieces)])
            for (lo, hi), share in zip(pieces[:-1], shares, strict=False):
                assert abs((hi - lo) - n * share / total) <= 2 * multiple or hi - lo == multiple
    # equal shares: piece c ends at units * c // parts whole multiples
    for n in (7, 100, 784, 1000):
        units = -(-n // multiple)
        for parts in (2, 3, 7):
            edges = [hi for _, hi in _threads.split_shares(n, [1.0] * parts, multiple)[:-1]]
            cuts = min(parts, units)  # at most one piece a unit
            assert edges == [units * c // cuts * multiple for c in range(1, cuts)]


def test_part_shares_follow_the_workers_measured_speed():
    # the speed estimate moves towards each call's measurement (work per BUSY cycle over
    # the caller's), within SPEED_RANGE; the shares of the next cut follow it (the cycle
    # counts are set here, not timed: the mechanism, not the machine's speed)
    pool = _threads._the_pool()
    pool.ensure_workers(1)
    before = list(pool.speeds)
    try:
        pool.speeds[0] = 1.0
        for _ in range(30):  # the worker took 4x the caller's cycles for the same work
            pool.rows[0][_threads.BUSY] = 4000
            pool._measure_speeds(1, [10, 10], 1000)
        assert pool.speeds[0] == pytest.approx(0.25, rel=1e-3)
        assert _threads.part_shares(2) == [1.0, pool.speeds[0]]
        assert _threads.split_shares(100, _threads.part_shares(2))[0][1] in (79, 80)  # 100 / 1.25
        pool.speeds[0] = 0.25
        pool.rows[0][_threads.BUSY] = 1  # far faster than the range allows: capped
        pool._measure_speeds(1, [10, 10], 1000)
        assert pool.speeds[0] == pytest.approx(0.25 + _threads.SPEED_SMOOTHING * (4.0 - 0.25))
        # a worker with half the work in the same cycles reads as half as fast
        pool.speeds[0] = 1.0
        pool.rows[0][_threads.BUSY] = 1000
        pool._measure_speeds(1, [10, 5], 1000)
        assert pool.speeds[0] == pytest.approx(1.0 + _threads.SPEED_SMOOTHING * (0.5 - 1.0))
        # a real call measures too: its worker part leaves its cycle count
        x = np.zeros(1000)
        _threads.run_native_parts(_fill_range, [(x, 1, 0, 500), (x, 1, 500, 1000)], _post_fill,
                                  _fill_runner(), "a fill", work=[500, 500])
        assert pool.rows[0][_threads.BUSY] > 0
        np.testing.assert_array_equal(x, 1.0 + np.arange(1000))
    finally:
        pool.speeds[:len(before)] = before


def _equal_pieces(n, parts, multiple=1):
    """range(n) cut into `parts` pieces of equal shares (threads.split_shares)."""
    return _threads.split_shares(n, [1] * parts, multiple)


@pytest.mark.parametrize("multiple", [1, 12, 32])
def test_equal_shares_cut_a_range_into_balanced_pieces_on_whole_multiples(multiple):
    for n in [0, 1, 5, 11, 12, 13, 40, 100, 256, 1000]:
        for parts in [1, 2, 3, 7, 64]:
            pieces = _equal_pieces(n, parts, multiple)
            units = -(-n // multiple)
            assert len(pieces) == min(parts, units)
            if n == 0:
                continue
            # contiguous, non-empty, covering [0, n)
            assert [lo for lo, _ in pieces] == [0] + [hi for _, hi in pieces[:-1]]
            assert pieces[-1][1] == n
            assert all(hi > lo for lo, hi in pieces)
            # inner edges on whole multiples, the pieces' units within one of each other
            assert all(hi % multiple == 0 for _, hi in pieces[:-1])
            sizes = [-(-(hi - lo) // multiple) for lo, hi in pieces]
            assert max(sizes) - min(sizes) <= 1


def test_num_threads_follows_numba_on_each_thread():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert _threads.num_threads() == 1
        numba.set_num_threads(before)
        assert _threads.num_threads() == before
        # the setting is per thread in Numba: a new thread starts at the default
        seen = []
        numba.set_num_threads(1)
        worker = threading.Thread(target=lambda: seen.append(_threads.num_threads()))
        worker.start()
        worker.join()
        assert seen == [numba.config.NUMBA_NUM_THREADS]
        assert _threads.num_threads() == 1
    finally:
        numba.set_num_threads(before)


def test_run_parts_runs_every_part_once_even_with_more_parts_than_cores():
    x = np.zeros(100)
    parts = [(x, 0.5, lo, hi) for lo, hi in _equal_pieces(100, 7)]
    for _ in range(50):  # repeated hand-offs to spinning and to sleeping workers
        x[:] = 0
        _threads.run_parts(_fill_range, parts)
        np.testing.assert_array_equal(x, 0.5 + np.arange(100))


@njit_kernel
def _claim_all(counter, n, taken, work, progress):
    _threads.part_started(progress)
    i = _threads.claim(counter)
    while i < n:
        # ~1 us of work an index (kept, in work), so that the parts run at the same time
        x = work[i]
        for _ in range(300):
            x = x * 0.999 + 1.0
        work[i] = x
        taken[i] += 1
        i = _threads.claim(counter)
    _threads.part_done(progress)


def test_claim_gives_every_index_to_exactly_one_part():
    """Parts sharing a counter (more parts than cores) take every index exactly once
    between them, and the counter ends one claim a part past the end (the claim that told
    the part to stop). A claim that is not one atomic step gives some index twice."""
    n = 3_000
    for _ in range(10):
        counter, taken, work = np.zeros(1, np.int64), np.zeros(n, np.int64), np.zeros(n)
        _threads.run_parts(_claim_all, [(counter, n, taken, work)] * 5)
        np.testing.assert_array_equal(taken, 1)
        assert counter[0] == n + 5


def test_run_parts_wakes_a_sleeping_worker():
    # a worker sleeps after ~1 ms without work; each call must still get all its parts done
    x = np.zeros(100)
    parts = [(x, 1.5, lo, hi) for lo, hi in _equal_pieces(100, 2)]
    for _ in range(5):
        time.sleep(0.01)
        x[:] = 0
        _threads.run_parts(_fill_range, parts)
        np.testing.assert_array_equal(x, 1.5 + np.arange(100))


def test_run_parts_adds_workers_while_the_others_sleep():
    # the pool's arrays are replaced when it grows; a sleeping worker must still be woken
    for n_parts in (2, 9, 12):
        time.sleep(0.01)
        x = np.zeros(100)
        _threads.run_parts(_fill_range, [(x, 2.5, lo, hi) for lo, hi in _equal_pieces(100, n_parts)])
        np.testing.assert_array_equal(x, 2.5 + np.arange(100))


@njit_kernel
def _done_early(x, lo, hi, progress):
    # says it is done, then stays busy for a time that grows with lo (the parts after the
    # first, which run on workers, return well after this thread's own part)
    _threads.part_started(progress)
    x[lo:hi] = 1.0
    _threads.part_done(progress)
    for _ in range(lo * 4000):
        _threads._load_acquire(progress, _threads.SEQUENCE)  # an atomic load: not optimised away


def test_run_parts_returns_once_its_workers_are_idle_again():
    # A worker whose kernel has returned still has Python to run (and the GIL to take).
    # Had run_parts returned before that, the worker would sleep on the GIL while this
    # thread runs Python, and the next hand-off would wait for it to wake. So each worker
    # must have said IDLE for its part, even when its kernel said DONE long before.
    pool = _threads._the_pool()
    for n_parts in (2, 3):
        for _ in range(5):
            x = np.zeros(100)
            _threads.run_parts(_done_early, [(x, lo, hi) for lo, hi in _equal_pieces(100, n_parts)])
            for w in range(n_parts - 1):
                assert pool.rows[w][_threads.IDLE] == pool.posted[w]
            np.testing.assert_array_equal(x, 1.0)
    with pytest.raises(ValueError, match="an empty part"):  # a raising kernel too
        _threads.run_parts(_fail_on_empty, [(x, 0, 5), (x, 5, 5)])
    assert pool.rows[0][_threads.IDLE] == pool.posted[0]


def test_run_parts_reraises_a_worker_error_and_stays_usable():
    x = np.zeros(10)
    with pytest.raises(ValueError, match="an empty part"):
        _threads.run_parts(_fail_on_empty, [(x, 0, 5), (x, 5, 5)])
    _threads.run_parts(_fill_range, [(x, 2.0, 0, 5), (x, 2.0, 5, 10)])
    np.testing.assert_array_equal(x, 2.0 + np.arange(10))


@njit_kernel
def _post_fill(slot, runner, x, value, lo, hi):
    # a native part of _fill_range: the runner's address, then x's address and size
    slot[_threads.RUNNER] = runner
    slot[1], slot[2], slot[3], slot[4], slot[5] = x.ctypes.data, x.size, lo, hi, value


@njit_kernel
def _run_fill(slot, progress):
    x = numba.carray(_threads.pointer_to(slot[1], np.float64(0)), slot[2])
    if slot[4] == slot[3]:
        raise ValueError("an empty part")
    _fill_range(x, np.float64(slot[5]), slot[3], slot[4], progress)


def _fill_runner():
    flags = numba.types.int64[::1]
    return (_threads.native_address(_run_fill, (flags, flags)),)


def test_run_native_parts_runs_every_part_once_on_workers_without_python():
    runner = _fill_runner()
    pool = _threads._the_pool()
    for n_parts in (2, 3, 5, 2):  # more parts than cores, and the pool grown meanwhile
        for pause in (0.0, 0.01):  # to spinning workers, and to sleeping ones
            x = np.zeros(100)
            parts = [(x, 3, lo, hi) for lo, hi in _equal_pieces(100, n_parts)]
            time.sleep(pause)
            _threads.run_native_parts(_fill_range, parts, _post_fill, runner, "a fill")
            np.testing.assert_array_equal(x, 3.0 + np.arange(100))
            for w in range(n_parts - 1):
                # each worker part was a native one, and its worker is idle again
                assert pool.slots[w][_threads.RUNNER] == runner[0]
                assert pool.rows[w][_threads.IDLE] == pool.posted[w]
    # a Python part after native ones runs as a Python part
    x = np.zeros(100)
    _threads.run_parts(_fill_range, [(x, 2.0, lo, hi) for lo, hi in _equal_pieces(100, 2)])
    np.testing.assert_array_equal(x, 2.0 + np.arange(100))


def test_run_native_parts_reports_a_failed_worker_part_and_stays_usable():
    runner = _fill_runner()
    x = np.zeros(10)
    with pytest.raises(RuntimeError, match="a fill failed on worker thread 0"):
        _threads.run_native_parts(_fill_range, [(x, 1, 0, 5), (x, 1, 5, 5)], _post_fill,
                                  runner, "a fill")
    _threads.run_native_parts(_fill_range, [(x, 4, 0, 5), (x, 4, 5, 10)], _post_fill, runner,
                              "a fill")
    np.testing.assert_array_equal(x, 4.0 + np.arange(10))


def test_run_native_parts_runs_here_when_the_workers_are_busy():
    runner = _fill_runner()
    pool = _threads._the_pool()
    x = np.zeros(10)
    with pool.busy:  # another caller owns the workers: every part runs on this thread
        _threads.run_native_parts(_fill_range, [(x, 5, 0, 5), (x, 5, 5, 10)], _post_fill,
                                  runner, "a fill")
    np.testing.assert_array_equal(x, 5.0 + np.arange(10))


def test_run_parts_from_several_python_threads_at_once():
    # a second caller finds the workers busy and runs its parts itself: same results
    outputs = [np.zeros(5000) for _ in range(4)]

    def work(x):
        for _ in range(30):
            _threads.run_parts(_fill_range, [(x, 1.0, lo, hi) for lo, hi in _equal_pieces(5000, 2)])

    callers = [threading.Thread(target=work, args=(x,)) for x in outputs]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    for x in outputs:
        np.testing.assert_array_equal(x, 1.0 + np.arange(5000))
