"""Numba kernels for the spatial broadcast decoder, run image by image.

The NumPy definition is :func:`tinyvae.layers.pixel_decoder_forward` / ``_backward``:
``broadcast_forward``, a ``dense_forward`` per hidden layer and a linear output
layer, each over all n P (image, pixel) rows at once. At the main job's size
(128 images x 1,024 pixels x 32 units) every hidden array is 16 MB, so each of
those passes goes to memory and back, and the 32 -> 1 output layer is a GEMM with
one column. Here the same network runs one image at a time: its P rows of each
layer (P x 32 floats, 128 KB) stay in cache from one layer to the next, the
output layer is a dot product per pixel, and images are split over threads.

No image's layers are kept. Each thread computes an image's hidden layers into its
own scratch (``_hidden_layers``), uses them and moves on to the next image:

* ``forward_images``  the logits;
* ``backward_images`` the layers again, then the image's backward (computing them
  again costs what storing 2 x 16 MB and reading it back cost: 0.99x, Zen 4);
* ``train_images``    forward, Bernoulli NLL and backward of an image in one go, so
  the backward reads the layers the forward has just left in cache (1.24-1.34x the
  forward, NLL and backward as three passes over the batch, Zen 4).

Layout. Every array is flat (1-D, C order). Hidden widths are padded to ``2 *
lanes`` columns (zero weights and biases: a padded unit holds act(0), and the
next layer's padded weight rows are zero, so it adds nothing) and each image's
pixel rows to a multiple of 4 (the register tile's height). Padded pixels get a
zero output gradient, so they add nothing to any weight gradient.

Weight gradients are written per image and summed over images by the caller in
image order: results do not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np

from tinyvae._backend.fused import (
    RELU,
    activation_grad_into,
    apply_activation,
    bernoulli_row,
    relu_lanes,
    slope_lanes,
)
from tinyvae._backend.numba_flags import njit, njit_inline
from tinyvae._backend.simd import (
    VECTOR_BYTES,
    add_in_order,
    cache_line_aligned,
    lanes,
    transpose_block,
    vbroadcast,
    vfma,
    vload,
    vsplat,
    vstore,
)
from tinyvae._backend.threads import claim, part_done, part_started

#: pixel rows of one register tile; every image's rows are padded to a multiple of it
TILE_ROWS = 4
#: AVX-512 (32 vector registers): tiles of 2 TILE_ROWS rows where they fit
TALL_TILES = VECTOR_BYTES == 64
#: pixel rows per block of the weight-gradient product (a tile of dW is stored and loaded
#: again between blocks, which leaves the sums' order as it is). With AVX2: 32, so the two
#: (32, 32) float32 blocks (8 KB) stay in L1 while every tile of dW passes over them; 128
#: rows (32 KB, all of a Zen 3's L1) ran 1.6x slower, its L2 delivering the row's lines
#: no faster than the FMAs took them. With AVX-512 (TALL_TILES) a row's 16 FMAs take 8
#: cycles or more for its 3 lines from L2, well within L2's bandwidth, so a whole image is
#: one block and its dW tile stays in registers: 17.3 -> 13.3 us an image (Intel Xeon
#: family 6 model 207; 64 rows 15.1, 256 rows 13.8)
GRAD_BLOCK_ROWS = 1 << 30 if TALL_TILES else 32


#: what tile_products does to each result before it stores it: nothing, the ReLU, or
#: multiply by the ReLU's slope read through the layer it was applied to (its backward)
AS_IS, THEN_RELU, TIMES_RELU_SLOPE = 0, 1, 2


@njit_inline
def _finish(acc, finish, gate, at, zeros, ones):
    """acc as tile_products stores it at C[at] (see AS_IS ..); gate is read at the same
    place as C. The selects are fused.relu_lanes / slope_lanes: the bits of a separate
    ReLU pass (fused.apply_activation) or of its gradient (fused.activation_grad_into)."""
    if finish == THEN_RELU:
        return relu_lanes(acc, zeros)
    if finish == TIMES_RELU_SLOPE:
        return acc * slope_lanes(vload(gate, at), zeros, ones, zeros)
    return acc


@njit_inline
def _store_row(C, at, acc0, acc1, finish, gate, zeros, ones):
    """One row of a register tile, two vectors, finished (_finish), into C[at:]."""
    vstore(C, at, _finish(acc0, finish, gate, at, zeros, ones))
    vstore(C, at + lanes(C), _finish(acc1, finish, gate, at + lanes(C), zeros, ones))


@njit
def tile_products(A, a_off, a_rs, a_ts, B, b_off, b_ts, T, C, c_off, c_rs, M, N, bias,
                  accumulate, finish, gate):
    """C[m, c] = finish(init + sum_t A[a_off + m a_rs + t a_ts] B[b_off + t b_ts + c]),
    m < M, c < N.

    init is C[m, c] itself (accumulate) or bias[c]; finish one of AS_IS, THEN_RELU,
    TIMES_RELU_SLOPE (gate laid out as C; pass C itself when unused), applied to the
    registers before they are stored, instead of in a pass of its own over C. Callers
    pass accumulate and finish as runtime values (np.bool_, np.int64): a literal
    argument would compile another copy of the kernel for each value (~0.9 s each). A GEMM
    on flat arrays with arbitrary strides for A, so one register tile (4 rows x 2 vectors,
    8 FMAs per t; 8 rows, 16 FMAs, on AVX-512: _tall_tile_products) serves x @ W (a_rs =
    row stride, a_ts = 1), d @ W.T (the same with W.T) and x.T @ d (a_rs = 1, a_ts = row
    stride). M is a multiple of 4, N of 2 lanes.
    """
    L = lanes(C)
    zeros, ones = vsplat(C, 0), vsplat(C, 1)
    tall = M // (2 * TILE_ROWS) * (2 * TILE_ROWS) if TALL_TILES else 0
    if tall:
        _tall_tile_products(A, a_off, a_rs, a_ts, B, b_off, b_ts, T, C, c_off, c_rs, tall, N,
                            bias, accumulate, finish, gate)
    for m in range(tall, M, TILE_ROWS):
        for c in range(0, N, 2 * L):
            c0 = c_off + m * c_rs + c
            if accumulate:
                acc00, acc01 = vload(C, c0), vload(C, c0 + L)
                acc10, acc11 = vload(C, c0 + c_rs), vload(C, c0 + c_rs + L)
                acc20, acc21 = vload(C, c0 + 2 * c_rs), vload(C, c0 + 2 * c_rs + L)
                acc30, acc31 = vload(C, c0 + 3 * c_rs), vload(C, c0 + 3 * c_rs + L)
            else:
                acc00, acc01 = vload(bias, c), vload(bias, c + L)
                acc10, acc11 = acc00, acc01
                acc20, acc21 = acc00, acc01
                acc30, acc31 = acc00, acc01
            a0 = a_off + m * a_rs
            for t in range(T):
                bp = b_off + t * b_ts + c
                b0, b1 = vload(B, bp), vload(B, bp + L)
                ap = a0 + t * a_ts
                x = vbroadcast(A, ap)
                acc00, acc01 = vfma(x, b0, acc00), vfma(x, b1, acc01)
                x = vbroadcast(A, ap + a_rs)
                acc10, acc11 = vfma(x, b0, acc10), vfma(x, b1, acc11)
                x = vbroadcast(A, ap + 2 * a_rs)
                acc20, acc21 = vfma(x, b0, acc20), vfma(x, b1, acc21)
                x = vbroadcast(A, ap + 3 * a_rs)
                acc30, acc31 = vfma(x, b0, acc30), vfma(x, b1, acc31)
            _store_row(C, c0, acc00, acc01, finish, gate, zeros, ones)
            _store_row(C, c0 + c_rs, acc10, acc11, finish, gate, zeros, ones)
            _store_row(C, c0 + 2 * c_rs, acc20, acc21, finish, gate, zeros, ones)
            _store_row(C, c0 + 3 * c_rs, acc30, acc31, finish, gate, zeros, ones)


@njit
def _tall_tile_products(A, a_off, a_rs, a_ts, B, b_off, b_ts, T, C, c_off, c_rs, M, N, bias,
                        accumulate, finish, gate):
    """tile_products' rows m < M (a multiple of 8) in tiles of 8 rows x 2 vectors: 16
    accumulators, for AVX-512's 32 registers (TALL_TILES). Each pair of B vectors loaded
    feeds 16 FMAs instead of 8. Every element is the same FMA chain: the same bits."""
    L = lanes(C)
    zeros, ones = vsplat(C, 0), vsplat(C, 1)
    for m in range(0, M, 2 * TILE_ROWS):
        for c in range(0, N, 2 * L):
            c0 = c_off + m * c_rs + c
            if accumulate:
                acc00, acc01 = vload(C, c0), vload(C, c0 + L)
                acc10, acc11 = vload(C, c0 + c_rs), vload(C, c0 + c_rs + L)
                acc20, acc21 = vload(C, c0 + 2 * c_rs), vload(C, c0 + 2 * c_rs + L)
                acc30, acc31 = vload(C, c0 + 3 * c_rs), vload(C, c0 + 3 * c_rs + L)
                acc40, acc41 = vload(C, c0 + 4 * c_rs), vload(C, c0 + 4 * c_rs + L)
                acc50, acc51 = vload(C, c0 + 5 * c_rs), vload(C, c0 + 5 * c_rs + L)
                acc60, acc61 = vload(C, c0 + 6 * c_rs), vload(C, c0 + 6 * c_rs + L)
                acc70, acc71 = vload(C, c0 + 7 * c_rs), vload(C, c0 + 7 * c_rs + L)
            else:
                acc00, acc01 = vload(bias, c), vload(bias, c + L)
                acc10, acc11, acc20, acc21 = acc00, acc01, acc00, acc01
                acc30, acc31, acc40, acc41 = acc00, acc01, acc00, acc01
                acc50, acc51, acc60, acc61 = acc00, acc01, acc00, acc01
                acc70, acc71 = acc00, acc01
            a0 = a_off + m * a_rs
            for t in range(T):
                bp = b_off + t * b_ts + c
                b0, b1 = vload(B, bp), vload(B, bp + L)
                ap = a0 + t * a_ts
                x = vbroadcast(A, ap)
                acc00, acc01 = vfma(x, b0, acc00), vfma(x, b1, acc01)
                x = vbroadcast(A, ap + a_rs)
                acc10, acc11 = vfma(x, b0, acc10), vfma(x, b1, acc11)
                x = vbroadcast(A, ap + 2 * a_rs)
                acc20, acc21 = vfma(x, b0, acc20), vfma(x, b1, acc21)
                x = vbroadcast(A, ap + 3 * a_rs)
                acc30, acc31 = vfma(x, b0, acc30), vfma(x, b1, acc31)
                x = vbroadcast(A, ap + 4 * a_rs)
                acc40, acc41 = vfma(x, b0, acc40), vfma(x, b1, acc41)
                x = vbroadcast(A, ap + 5 * a_rs)
                acc50, acc51 = vfma(x, b0, acc50), vfma(x, b1, acc51)
                x = vbroadcast(A, ap + 6 * a_rs)
                acc60, acc61 = vfma(x, b0, acc60), vfma(x, b1, acc61)
                x = vbroadcast(A, ap + 7 * a_rs)
                acc70, acc71 = vfma(x, b0, acc70), vfma(x, b1, acc71)
            _store_row(C, c0, acc00, acc01, finish, gate, zeros, ones)
            _store_row(C, c0 + c_rs, acc10, acc11, finish, gate, zeros, ones)
            _store_row(C, c0 + 2 * c_rs, acc20, acc21, finish, gate, zeros, ones)
            _store_row(C, c0 + 3 * c_rs, acc30, acc31, finish, gate, zeros, ones)
            _store_row(C, c0 + 4 * c_rs, acc40, acc41, finish, gate, zeros, ones)
            _store_row(C, c0 + 5 * c_rs, acc50, acc51, finish, gate, zeros, ones)
            _store_row(C, c0 + 6 * c_rs, acc60, acc61, finish, gate, zeros, ones)
            _store_row(C, c0 + 7 * c_rs, acc70, acc71, finish, gate, zeros, ones)


@njit
def _lane_products(x, off, w, K):
    """The L lanes of sum_k x[off + k] w[k] before they are added (K a multiple of L):
    lane j holds x[off + j] w[j] + x[off + L + j] w[L + j] + ..., FMAs in that order."""
    L = lanes(x)
    acc = vfma(vload(x, off), vload(w, 0), vsplat(x, x[off] * 0))
    for k in range(L, K, L):
        acc = vfma(vload(x, off + k), vload(w, k), acc)
    return acc


@njit
def _dot(x, off, w, K, lane_sums):
    """sum_k x[off + k] w[k] in a fixed order: _lane_products, then the lanes added one by
    one (add_in_order: a fast-math chain of adds was regrouped into a tree where _dot
    was inlined into _output_layer's tail, on Intel with AVX-512, and not elsewhere)."""
    vstore(lane_sums, 0, _lane_products(x, off, w, K))
    total = lane_sums[0]
    for j in range(1, lanes(x)):
        total = add_in_order(total, lane_sums[j])
    return total


@njit
def _output_layer(last, i, P, K, w_out, b_out, logits, block):
    """logits[i, p] = b_out + _dot(row p of last, w_out) for p < P: last (Pp K) holds
    image i's last hidden layer.

    L pixels at a time: their lane vectors are transposed in registers, so that one
    vector holds lane j of L pixels, and added lane after lane with exact FMAs (1 v + t,
    never regrouped, see _bias_grad): every pixel's total is _dot's sum in _dot's order,
    without L scalar adds after each pixel. block: scratch of 2 L^2 elements.
    """
    L = lanes(last)
    one, bias = vsplat(last, 1), vsplat(last, b_out)
    p = 0
    while p + L <= P:
        for q in range(L):
            vstore(block, q * L, _lane_products(last, (p + q) * K, w_out, K))
        transpose_block(block, 0, L, L, block, L * L, L)
        total = vload(block, L * L)
        for j in range(1, L):
            total = vfma(one, vload(block, L * L + j * L), total)
        vstore(logits, i * P + p, vfma(one, bias, total))
        p += L
    for q in range(p, P):
        logits[i * P + q] = b_out + _dot(last, q * K, w_out, K, block)


@njit
def _first_layer(zW, cwb, h, i, Pp, H, act, alpha):
    """Layer 1 of image i into h (Pp H): h[p] = act(zW[i] + cwb[p]), cwb = coords @ Wxy + b."""
    L = lanes(h)
    z = vsplat(h, 0)
    for p in range(Pp):
        for j in range(0, H, L):
            v = vload(zW, i * H + j) + vload(cwb, p * H + j)
            if act == RELU:
                v = relu_lanes(v, z)   # the ReLU on the vector, before it is stored
            vstore(h, p * H + j, v)
    if act != RELU:
        apply_activation(h[:Pp * H], act, alpha)


@njit
def _scratch_layers(dims, Pp, dtype):
    """One thread's scratch for an image's hidden layers: row l holds layer l + 1 (Pp
    rows of dims[l] units), reused by every image the thread runs. It starts on a cache
    line, as do the backward's buffers (_backward_scratch) and the padded weights
    (nb_kernels._padded), so no vector of the tiles straddles two lines: the fused
    training kernel 0.89-1.00x the time, ~5 % on average (interleaved, Intel Xeon
    family 6 model 207)."""
    width = Pp * dims.max()
    return cache_line_aligned(dims.size * width, np.empty(0, dtype)).reshape((dims.size, width))


@njit
def _hidden_layers(zW, cwb, Ws, bs, layers, i, dims, Pp, act, alpha):
    """Image i's hidden layers into layers (_scratch_layers): layer 1 from zW[i] and cwb,
    then h_(l+1) = act(h_l @ W_l + b_l).

    zW (n H_1) = z @ Wz; cwb (Pp H_1) = coords @ Wxy + b; Ws[l - 1] (H_l x H_(l+1)) and
    bs[l - 1] the dense layers.
    """
    _first_layer(zW, cwb, layers[0], i, Pp, dims[0], act, alpha)
    for l in range(1, dims.size):
        K, N = dims[l - 1], dims[l]
        # a ReLU goes on the tile's registers, before they are stored
        finish = THEN_RELU if act == RELU else AS_IS
        tile_products(layers[l - 1], 0, K, 1, Ws[l - 1], 0, N, K, layers[l], 0, N, Pp, N,
                      bs[l - 1], np.bool_(False), finish, layers[l])
        if act != RELU:
            apply_activation(layers[l][:Pp * N], act, alpha)


@njit
def forward_images(zW, cwb, Ws, bs, w_out, b_out, logits, dims, P, Pp, act, alpha, next_image,
                   n, progress):
    """logits (n P) of images 0..n-1, each taken from next_image as train_images takes
    them; w_out (H_K,), b_out scalar; the rest as _hidden_layers."""
    part_started(progress)
    layers = _scratch_layers(dims, Pp, w_out.dtype)
    block = np.empty(2 * lanes(w_out) ** 2, w_out.dtype)
    i = claim(next_image)
    while i < n:
        _hidden_layers(zW, cwb, Ws, bs, layers, i, dims, Pp, act, alpha)
        _output_layer(layers[dims.size - 1], i, P, dims[-1], w_out, b_out, logits, block)
        i = claim(next_image)
    part_done(progress)


@njit
def _output_layer_backward(dlogits, last, w_out, d, i, P, K, Pp, dw_out, relu, db, db_off):
    """d[p] = dlogits[i, p] w_out (dh of the last hidden layer) and image i's dw_out,
    last (Pp K) image i's last hidden layer; with relu, d[p] also times relu'(a)
    through last (fused.slope_lanes). Where db has room (a dense layer feeds the last
    hidden layer), db[db_off:] = the sum of d over pixels: that layer's bias gradient,
    _bias_grad's sums while d is still in registers (2.5 us an image less, Intel Xeon
    family 6 model 207).

    Column blocks outer, two at a time (K is a multiple of 2 lanes), pixels inner: each
    block's sum stays in a register, and the two sums are independent FMA chains, so
    one does not wait on the other's latency (one block at a time ran at one FMA per
    FMA latency). Each block still sums its pixels in order: the same bits.
    """
    L = lanes(d)
    # image i's own element: the fused kernel's other threads may not have written
    # another image's dlogits yet (dlogits[0] read here was uninitialised memory for
    # a thread that reached image i before image 0's NLL: a NaN there made dw_out NaN)
    zero = dlogits[i * P] * 0
    zeros, ones = vsplat(d, 0), vsplat(d, 1)
    bias = db.size >= db_off + K
    # _bias_grad starts its chains at d[0] * 0; d[0] has the sign of this product
    start = vsplat(d, dlogits[i * P] * w_out[0] * 0)
    for j in range(0, K, 2 * L):
        w0, w1 = vload(w_out, j), vload(w_out, j + L)
        acc0, acc1 = vsplat(d, zero), vsplat(d, zero)
        sum0, sum1 = start, start
        for p in range(P):
            g = vbroadcast(dlogits, i * P + p)
            row = p * K + j
            y0, y1 = vload(last, row), vload(last, row + L)
            d0, d1 = g * w0, g * w1
            if relu:
                d0 = d0 * slope_lanes(y0, zeros, ones, zeros)
                d1 = d1 * slope_lanes(y1, zeros, ones, zeros)
            vstore(d, p * K + j, d0)
            vstore(d, p * K + j + L, d1)
            acc0 = vfma(g, y0, acc0)
            acc1 = vfma(g, y1, acc1)
            if bias:
                sum0, sum1 = vfma(ones, d0, sum0), vfma(ones, d1, sum1)
        vstore(dw_out, i * K + j, acc0)
        vstore(dw_out, i * K + j + L, acc1)
        if bias:
            vstore(db, db_off + j, sum0)
            vstore(db, db_off + j + L, sum1)
    for p in range(P * K, Pp * K):   # padded pixels: no gradient
        d[p] = zero


@njit
def _bias_grad(d, rows, N, db, off):
    """db[off + j] = sum over rows of d[r, j] (a register per column block).

    Sums are FMA chains, acc = 1 * d + acc (exact): the compiler may reorder a chain of
    fast-math adds differently from one compilation to the next, never an FMA chain.
    """
    L = lanes(d)
    one = vsplat(d, 1)
    for j in range(0, N, L):
        acc = vsplat(d, d[0] * 0)
        for r in range(rows):
            acc = vfma(one, vload(d, r * N + j), acc)
        vstore(db, off + j, acc)


@njit
def _weight_grad(h, K, d, N, Pp, dW, w_off, zeros):
    """dW[w_off:] (K x N) = h.T @ d over Pp rows, in blocks of GRAD_BLOCK_ROWS rows."""
    for r0 in range(0, Pp, GRAD_BLOCK_ROWS):
        rows = min(GRAD_BLOCK_ROWS, Pp - r0)
        tile_products(h, r0 * K, 1, K, d, r0 * N, N, rows, dW, w_off, N, K, N, zeros,
                      r0 > 0, np.int64(AS_IS), dW)


@njit
def _first_layer_backward(d, coords, P, H, i, g, gxy):
    """g[i] = sum_p d[p] (the gradient of z_i @ Wz + b), gxy[i] = coords.T @ d (of Wxy)."""
    L = lanes(d)
    zero = d[0] * 0
    one = vsplat(d, 1)
    for j in range(0, H, L):
        acc, acc_x, acc_y = vsplat(d, zero), vsplat(d, zero), vsplat(d, zero)
        for p in range(P):
            v = vload(d, p * H + j)
            acc = vfma(one, v, acc)     # an FMA chain: see _bias_grad
            acc_x = vfma(vbroadcast(coords, 2 * p), v, acc_x)
            acc_y = vfma(vbroadcast(coords, 2 * p + 1), v, acc_y)
        vstore(g, i * H + j, acc)
        vstore(gxy, i * 2 * H + j, acc_x)
        vstore(gxy, i * 2 * H + H + j, acc_y)


@njit
def _backward_scratch(dims, Pp, dtype):
    """(d, e, zeros) for _image_backward: one image's layer gradients, two buffers of Pp
    max(dims), and max(dims) zeros; made once a part and reused by every image (allocated
    per image, each 128 KB buffer was a fresh mapping of memory, paid in page faults)."""
    width = dims.max()
    like = np.empty(0, dtype)
    return (cache_line_aligned(Pp * width, like), cache_line_aligned(Pp * width, like),
            np.zeros(width, dtype))


@njit
def _image_backward(dlogits, coords, layers, WTs, w_out, dims, P, Pp, act, alpha, dWs, dbs,
                    dw_out, g, gxy, i, d, e, zeros):
    """Image i's backward from its hidden layers (_hidden_layers), each weight gradient
    written per image.

    dlogits (n P); WTs[l - 1] (H_(l+1) x H_l) the dense weights transposed; dWs[l - 1]
    (n H_l H_(l+1)), dbs[l - 1] (n H_(l+1)), dw_out (n H_K), g (n H_1), gxy (n 2 H_1):
    per image, summed over images by the caller (who also sums dlogits for b_out).
    d, e: scratch of Pp max(dims) elements each; zeros: max(dims) zeros.
    """
    l = dims.size - 1
    N = dims[l]
    fused_bias = act == RELU and l > 0
    # with the ReLU, d is final in the registers: its sum is the last dense layer's bias
    # gradient (an empty db when there is none)
    _output_layer_backward(dlogits, layers[l], w_out, d, i, P, N, Pp, dw_out, act == RELU,
                           dbs[l - 1] if fused_bias else zeros[:0], i * N)
    size = Pp * N
    if act != RELU:
        activation_grad_into(d[:size], layers[l][:size], act, alpha, d[:size])
    while l > 0:
        K, N = dims[l - 1], dims[l]
        if not (fused_bias and l == dims.size - 1):
            _bias_grad(d, P, N, dbs[l - 1], i * N)
        _weight_grad(layers[l - 1], K, d, N, Pp, dWs[l - 1], i * K * N, zeros)
        # times the ReLU's slope on the registers, before they are stored
        finish = TIMES_RELU_SLOPE if act == RELU else AS_IS
        tile_products(d, 0, N, 1, WTs[l - 1], 0, K, N, e, 0, K, Pp, K, zeros, np.bool_(False),
                      finish, layers[l - 1])
        if act != RELU:
            size = Pp * K
            activation_grad_into(e[:size], layers[l - 1][:size], act, alpha, e[:size])
        d, e = e, d
        l -= 1
    _first_layer_backward(d, coords, P, dims[0], i, g, gxy)


@njit
def backward_images(zW, cwb, Ws, bs, dlogits, coords, WTs, w_out, dims, P, Pp, act, alpha,
                    dWs, dbs, dw_out, g, gxy, next_image, n, progress):
    """The backward of images 0..n-1, each taken from next_image as train_images takes
    them: its hidden layers again (_hidden_layers), then _image_backward. Arguments as
    those two take them."""
    part_started(progress)
    layers = _scratch_layers(dims, Pp, w_out.dtype)
    d, e, zeros = _backward_scratch(dims, Pp, w_out.dtype)
    i = claim(next_image)
    while i < n:
        _hidden_layers(zW, cwb, Ws, bs, layers, i, dims, Pp, act, alpha)
        _image_backward(dlogits, coords, layers, WTs, w_out, dims, P, Pp, act, alpha, dWs, dbs,
                        dw_out, g, gxy, i, d, e, zeros)
        i = claim(next_image)
    part_done(progress)


@njit
def train_images(zW, cwb, Ws, bs, w_out, b_out, x, grad_scale, coords, WTs, dims, P, Pp, act,
                 alpha, nll, logits, dlogits, dWs, dbs, dw_out, g, gxy, next_image, n, progress):
    """Images 0..n-1, each in one go: its hidden layers, logits, Bernoulli NLL against
    x (n P) with dlogits = grad_scale (sigmoid(logits) - x) (fused.bernoulli_row), and
    its backward while its layers are still in cache. nll (n); the rest as
    forward_images and backward_images take them.

    Every part of a run_parts call takes the next image from next_image (threads.claim)
    until none is left: an image writes only its own rows of the outputs (its own slots of
    the weight gradients too, summed later in image order), so the bits do not depend on
    which thread ran it."""
    part_started(progress)
    layers = _scratch_layers(dims, Pp, w_out.dtype)
    block = np.empty(2 * lanes(w_out) ** 2, w_out.dtype)
    d, e, zeros = _backward_scratch(dims, Pp, w_out.dtype)
    i = claim(next_image)
    while i < n:
        _hidden_layers(zW, cwb, Ws, bs, layers, i, dims, Pp, act, alpha)
        _output_layer(layers[dims.size - 1], i, P, dims[-1], w_out, b_out, logits, block)
        lo_p, hi_p = i * P, (i + 1) * P
        nll[i] = bernoulli_row(logits[lo_p:hi_p], x[lo_p:hi_p], grad_scale, dlogits[lo_p:hi_p])
        _image_backward(dlogits, coords, layers, WTs, w_out, dims, P, Pp, act, alpha, dWs, dbs,
                        dw_out, g, gxy, i, d, e, zeros)
        i = claim(next_image)
    part_done(progress)
