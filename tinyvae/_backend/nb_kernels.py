"""Numba backend of :mod:`tinyvae.kernels`: one function per public kernel, same meaning.

:mod:`tinyvae.kernels` validates the arguments and calls these; they only
arrange memory (contiguous views, output arrays, scalars cast to the arrays'
dtype, one thread or all) and hand over to the compiled kernels in

* :mod:`tinyvae._backend.gemm`    packed, register-tiled GEMM with a bias + activation epilogue,
* :mod:`tinyvae._backend.fused`   single-pass activations, Bernoulli NLL, reparameterization + KL,
* :mod:`tinyvae._backend.tc`      the (B, B, d) pass of the total-correlation estimators,
* :mod:`tinyvae._backend.pixel_net` the spatial broadcast decoder, one image at a time,
* :mod:`tinyvae._backend.updates` vectorised Adam / SGD / Adagrad steps,
* :mod:`tinyvae._backend.simd`    the vector type (256 or 512 bits) and the operations they are written with.

Results never depend on the number of threads: threads split outputs, never sums.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from tinyvae._backend import fused as _fused
from tinyvae._backend import pixel_net as _pixel_net
from tinyvae._backend import tc as _tc
from tinyvae._backend import updates as _updates
from tinyvae._backend.gemm import empty_output, gemm, gemm_into
from tinyvae._backend.simd import VECTOR_BYTES, aligned_empty
from tinyvae._backend.threads import NO_PROGRESS, num_threads, part_shares, run_parts, split_shares

_LOG_2PI = math.log(2 * math.pi)

__all__ = [
    "gemm", "dense_forward", "activate", "activation_backward", "activation_bias_backward",
    "bernoulli_nll_logits", "reparam_kl_forward", "reparam_kl_backward",
    "adam_update", "sgd_update", "adagrad_update", "tc_terms_forward", "tc_terms_backward",
    "tc_terms_forward_backward",
    "pixel_decoder_forward", "pixel_decoder_backward", "pixel_decoder_bernoulli_nll",
]


def _flat(x):
    """A 1-D contiguous view of x (a copy only if x is not contiguous)."""
    return np.ascontiguousarray(x).reshape(-1)


def _chunks(size, threshold):
    """How many threads to use on an array of `size` elements (1 below the threshold)."""
    return num_threads() if size >= threshold else 1


def _run_ranges(kernel, args, n, parts, multiple=1):
    """kernel(*args, lo, hi) over [0, n) cut into `parts` ranges, one per thread, in
    proportion to the threads' speeds as the GEMM last measured them (threads.part_shares:
    every element is computed the same whatever the cut)."""
    if parts == 1:  # most calls (every small parameter's update): straight to the kernel
        if n > 0:
            kernel(*args, 0, n, NO_PROGRESS)
        return
    run_parts(kernel, [(*args, lo, hi) for lo, hi in split_shares(n, part_shares(parts), multiple)])


def _run_claimed(kernel, args, n, parts):
    """kernel(*args, counter, n) on `parts` threads (at most n) that take the indices of
    [0, n) one at a time from a shared counter (threads.claim)."""
    counter = np.zeros(1, np.int64)
    run_parts(kernel, [(*args, counter, n)] * max(1, min(parts, n)))


# ----------------------------------------------------------------------------
# dense layer and activations
# ----------------------------------------------------------------------------


def dense_forward(x, W, b, act_code, alpha):
    """y = act(x @ W + b); x (n, fan_in), W (fan_in, fan_out), b (fan_out,) -> y (n, fan_out)."""
    y = empty_output(x.shape[0], W.shape[1], W.shape[0], x.dtype)
    # gemm_into casts alpha to the data's dtype, for the activations that use it
    return gemm_into(y, x, W, False, False, bias=np.ascontiguousarray(b), act=act_code,
                     alpha=alpha)


def activate(a, act_code, alpha):
    """y = act(a), a new C-contiguous array of a's shape and dtype."""
    y = np.array(a, order="C", copy=True)
    _fused.apply_activation(y.reshape(-1), act_code, a.dtype.type(alpha))
    return y


def activation_backward(dy, y, act_code, alpha):
    """da = dy * act'(a) through y = act(a); dy, y (n, d) -> da (n, d)."""
    da = np.empty(y.shape, y.dtype)
    _fused.activation_grad_into(_flat(dy), _flat(y), act_code, y.dtype.type(alpha),
                                da.reshape(-1))
    return da


def activation_bias_backward(dy, y, act_code, alpha):
    """(da, db): da = dy * act'(a), db = da.sum(axis=0); dy, y (n, d) -> (n, d), (d,)."""
    dy = np.ascontiguousarray(dy)
    y = np.ascontiguousarray(y)
    da = np.empty(y.shape, y.dtype)
    db = np.empty(y.shape[1], y.dtype)
    if act_code == _fused.RELU:
        _fused.relu_bias_grad_into(dy, y, da, db)
    else:
        _fused.activation_bias_grad_into(dy, y, act_code, y.dtype.type(alpha), da, db)
    return da, db


# ----------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------


def bernoulli_nll_logits(logits, x, grad_scale):
    """(nll (n,), dlogits (n, D)): per-row BCE from logits and grad_scale * (sigmoid(l) - x)."""
    logits = np.ascontiguousarray(logits)
    x = np.ascontiguousarray(x, dtype=logits.dtype)
    nll = np.empty(logits.shape[0], logits.dtype)
    dlogits = np.empty(logits.shape, logits.dtype)
    scale = logits.dtype.type(grad_scale)
    _run_ranges(_fused.bernoulli_rows, (logits, x, scale, nll, dlogits), logits.shape[0],
                _chunks(logits.size, _fused.PARALLEL_MIN_SIZE))
    return nll, dlogits


def reparam_kl_forward(mu, logvar, eps):
    """(z, sigma, kl), each (n, d): z = mu + e^(logvar/2) eps, kl per dimension."""
    z, sigma, kl = (np.empty(mu.shape, mu.dtype) for _ in range(3))
    _fused.reparam_kl_forward_into(_flat(mu), _flat(logvar), _flat(eps),
                                   z.reshape(-1), sigma.reshape(-1), kl.reshape(-1))
    return z, sigma, kl


def reparam_kl_backward(dz, mu, eps, sigma, kl_scale):
    """(dmu, dlogvar), each (n, d), for L = f(z) + kl_scale * sum(kl)."""
    dmu, dlogvar = np.empty(mu.shape, mu.dtype), np.empty(mu.shape, mu.dtype)
    _fused.reparam_kl_backward_into(_flat(dz), _flat(mu), _flat(eps), _flat(sigma),
                                    mu.dtype.type(kl_scale), dmu.reshape(-1),
                                    dlogvar.reshape(-1))
    return dmu, dlogvar


# ----------------------------------------------------------------------------
# optimizer updates (in place; p and the state must be contiguous)
# ----------------------------------------------------------------------------


# The updates below take 1-D contiguous arrays of one shape and dtype (tinyvae.kernels
# checks them: its _check_in_place), and change p and the state in place.


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay):
    """One bias-corrected Adam step in place on 1-D p, m, v (decoupled weight decay)."""
    args = (p, g, m, v, *_adam_constants(p.dtype, lr, beta1, beta2, eps, step, weight_decay))
    _run_ranges(_updates.adam_range, args, p.size,
                _chunks(p.size, _updates.PARALLEL_MIN_SIZE), VECTOR_BYTES // p.itemsize)


@functools.lru_cache(maxsize=16)
def _adam_constants(dtype, lr, beta1, beta2, eps, step, weight_decay):
    """adam_range's scalars, typed like the data. Every parameter of a step shares them,
    so they are made once a step, not once a parameter (~3 us each time)."""
    t = dtype.type
    return (t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(lr),
            t(1 / (1 - beta1**step)), t(1 / (1 - beta2**step)), t(eps),
            t(lr * weight_decay), weight_decay != 0)


def sgd_update(p, g, vel, lr, momentum, nesterov, weight_decay):
    """One SGD step with heavy-ball or Nesterov momentum, in place on 1-D p and vel."""
    t = p.dtype.type
    args = (p, g, vel, t(lr), t(momentum), bool(nesterov), t(weight_decay), weight_decay != 0)
    _run_ranges(_updates.sgd_range, args, p.size,
                _chunks(p.size, _updates.PARALLEL_MIN_SIZE), VECTOR_BYTES // p.itemsize)


def adagrad_update(p, g, accum, lr, eps, weight_decay):
    """One Adagrad step in place on 1-D p and accum."""
    t = p.dtype.type
    args = (p, g, accum, t(lr), t(eps), t(weight_decay), weight_decay != 0)
    _run_ranges(_updates.adagrad_range, args, p.size,
                _chunks(p.size, _updates.PARALLEL_MIN_SIZE), VECTOR_BYTES // p.itemsize)


# ----------------------------------------------------------------------------
# total-correlation estimators (beta-TCVAE)
# ----------------------------------------------------------------------------


def tc_terms_forward(z, mu, logvar, log_weights):
    """(terms (3, B), cache): log q(z_i|x_i), log q(z_i), sum_k log q(z_ik) per sample."""
    z, mu_t, inv_var_t, const_t, lw = _tc_inputs(z, mu, logvar, log_weights)
    B, d = z.shape
    joint = aligned_empty((B, B), z.dtype)
    peaks, inv_totals = np.empty((B, d), z.dtype), np.empty((B, d), z.dtype)
    terms = np.empty((3, B), z.dtype)
    _run_ranges(_tc.tc_forward_rows, (z, mu_t, inv_var_t, const_t, lw, joint, peaks, inv_totals,
                                      terms), B, _chunks(B * B * d, _fused.PARALLEL_MIN_SIZE))
    return terms, (z, mu_t, inv_var_t, const_t, lw, joint, peaks, inv_totals)


#: rows whose dmu, dlogvar one block of tc_forward_backward_rows sums: fixed, so that the
#: sums do not depend on the number of threads (threads take whole blocks)
TC_ROWS_PER_PART = 64


def _tc_inputs(z, mu, logvar, log_weights):
    """z, mu.T, exp(-logvar).T, -0.5 (log 2 pi + logvar).T, log_weights: as the kernels
    of _backend.tc take them (contiguous, z's dtype). The (d, B) arrays, whose rows the
    kernels read as vectors, start on a cache line (simd.aligned_empty), as do the block
    sums they write: with NumPy's starts, 48 bytes before a line,
    tc_forward_backward_rows took 1.11-1.17x as long at B = 1,024 (interleaved, Intel
    Xeon family 6 model 207)."""
    z = np.ascontiguousarray(z)
    B, d = z.shape
    mu_t, inv_var_t, const_t = (aligned_empty((d, B), z.dtype) for _ in range(3))
    mu_t[...] = mu.T
    const_t[...] = logvar.T            # holds logvar.T until the last two lines
    np.exp(np.negative(const_t, out=inv_var_t), out=inv_var_t)
    const_t += z.dtype.type(_LOG_2PI)
    const_t *= -0.5
    return z, mu_t, inv_var_t, const_t, np.ascontiguousarray(log_weights, dtype=z.dtype)


def tc_terms_forward_backward(z, mu, logvar, log_weights, g_own, g_joint, g_marginal,
                              g_prior):
    """(terms (3, B), (dz, dmu, dlogvar) each (B, d)): tc_terms_forward, then
    tc_terms_backward of the upstream gradients g_* (B,), in one walk over the pairs."""
    inputs = _tc_inputs(z, mu, logvar, log_weights)
    z = inputs[0]
    B, d = z.shape
    upstream = [np.ascontiguousarray(g, dtype=z.dtype)
                for g in (g_own, g_joint, g_marginal, g_prior)]
    terms, dz = np.empty((3, B), z.dtype), np.empty((B, d), z.dtype)
    n_parts = -(-B // TC_ROWS_PER_PART)
    dmu_parts = aligned_empty((n_parts, d, B), z.dtype)
    dlogvar_parts = aligned_empty((n_parts, d, B), z.dtype)
    _run_claimed(_tc.tc_forward_backward_rows, (*inputs, *upstream, terms, dz, dmu_parts,
                                                dlogvar_parts, TC_ROWS_PER_PART), n_parts,
                 _chunks(B * B * d, _fused.PARALLEL_MIN_SIZE))
    # the blocks in order: numpy adds the slices of axis 0 one after another
    return terms, (dz, np.ascontiguousarray(dmu_parts.sum(axis=0).T),
                   np.ascontiguousarray(dlogvar_parts.sum(axis=0).T))


def tc_terms_backward(g_own, g_joint, g_marginal, g_prior, cache):
    """(dz, dmu, dlogvar), each (B, d), given the upstream gradient of each term (B,)."""
    z = cache[0]
    B, d = z.shape
    g_own, g_joint, g_marginal, g_prior = (np.ascontiguousarray(g, dtype=z.dtype)
                                           for g in (g_own, g_joint, g_marginal, g_prior))
    dz_t, dmu_t, dlogvar_t = (np.empty((d, B), z.dtype) for _ in range(3))
    parts = min(_chunks(B * B * d, _fused.PARALLEL_MIN_SIZE), d)
    _run_ranges(_tc.tc_backward_dims, (*cache, g_own, g_joint, g_marginal, g_prior, dz_t,
                                       dmu_t, dlogvar_t), d, parts)
    return tuple(np.ascontiguousarray(a.T) for a in (dz_t, dmu_t, dlogvar_t))


# ----------------------------------------------------------------------------
# spatial broadcast decoder, image by image
# ----------------------------------------------------------------------------


def _padded(a, shape):
    """A zero array of `shape` with a in its top-left corner (flat, C order), starting on a
    cache line (the decoder's tiles load its rows as whole vectors)."""
    out = aligned_empty(shape, a.dtype)
    out[...] = 0
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out.reshape(-1)


def _image_sum(per_image, padded_shape, shape):
    """The sum over images (axis 0, in order) of a flat per-image array, padding cut off."""
    total = per_image.reshape(padded_shape).sum(axis=0)
    return np.ascontiguousarray(total[tuple(slice(0, s) for s in shape)])


class _PixelNetwork(NamedTuple):
    """The decoder's arrays as the kernels take them (see _backend.pixel_net's layout):
    widths padded to whole blocks of 2 vectors, pixel rows to whole register tiles."""

    zW: np.ndarray        # (n H_1) = z @ Wz
    cwb: np.ndarray       # (Pp H_1) = coords @ Wxy + b
    Ws: tuple             # the dense layers' weights (H_l H_(l+1)) ...
    bs: tuple             # ... their biases
    WTs: tuple            # ... and their weights transposed
    w_out: np.ndarray     # (H_K,)
    b_out: np.floating
    coords: np.ndarray    # (P 2)
    dims: np.ndarray      # the padded widths H_1 .. H_K
    real: list            # the widths
    shapes: list          # (H_l, H_(l+1)) of the dense layers, padded
    P: int                # pixels
    Pp: int               # pixels padded
    parts: int            # threads for the n images


def _pixel_network(z, coords, first, hidden, out):
    """_PixelNetwork of the decoder (first, hidden, out) at latents z (n, d), coords (P, 2)."""
    dtype = z.dtype
    n, P = z.shape[0], coords.shape[0]
    block = 2 * VECTOR_BYTES // dtype.itemsize
    real = [first[0].shape[1]] + [W.shape[1] for W, _ in hidden]
    dims = np.array([-(-h // block) * block for h in real], np.int64)
    Pp = -(-P // _pixel_net.TILE_ROWS) * _pixel_net.TILE_ROWS
    Wz, Wxy, b = first
    coords = _flat(coords.astype(dtype, copy=False))
    shapes = list(zip(dims[:-1], dims[1:], strict=True))
    # a dummy entry keeps the tuples non-empty (typed) for a decoder with one hidden layer
    dummy = (np.zeros(1, dtype),)
    return _PixelNetwork(
        zW=_padded(gemm(np.ascontiguousarray(z), np.ascontiguousarray(Wz), False, False, None),
                   (n, dims[0])),
        cwb=_padded(coords.reshape(P, 2) @ Wxy + b, (Pp, dims[0])),
        Ws=tuple(_padded(W, s) for (W, _), s in zip(hidden, shapes, strict=True)) or dummy,
        bs=tuple(_padded(bh, (s[1],)) for (_, bh), s in zip(hidden, shapes, strict=True)) or dummy,
        WTs=tuple(_padded(W.T, s[::-1]) for (W, _), s in zip(hidden, shapes, strict=True)) or dummy,
        w_out=_padded(out[0][:, 0], (dims[-1],)), b_out=dtype.type(out[1][0]), coords=coords,
        dims=dims, real=real, shapes=shapes, P=P, Pp=Pp,
        parts=_chunks(n * Pp * int(dims.sum()), _fused.PARALLEL_MIN_SIZE))


def _pixel_gradient_arrays(n, net, dtype):
    """Per-image gradient arrays the backward kernels write: dWs, dbs, dw_out, g, gxy."""
    dims, shapes = net.dims, net.shapes
    return (tuple(np.empty(n * K * N, dtype) for K, N in shapes) or (net.w_out,),
            tuple(np.empty(n * N, dtype) for _, N in shapes) or (net.w_out,),
            np.empty(n * dims[-1], dtype), np.empty(n * dims[0], dtype),
            np.empty(n * 2 * dims[0], dtype))


def _pixel_gradients(z, Wz, dlogits, net, dWs, dbs, dw_out, g, gxy):
    """(dz, (dWz, dWxy, db), [(dW, db), ...], (dW_out, db_out)) from the per-image arrays,
    summed over images in image order (the same on any thread count)."""
    n, P, dims, real = z.shape[0], net.P, net.dims, net.real
    g = np.ascontiguousarray(g.reshape(n, dims[0])[:, :real[0]])
    first_grads = (gemm(np.ascontiguousarray(z), g, True, False, None),
                   _image_sum(gxy, (n, 2, dims[0]), (2, real[0])), g.sum(axis=0))
    hidden_grads = [(_image_sum(dW, (n, K, N), (k, m)), _image_sum(db, (n, N), (m,)))
                    # strict=False: with no dense layer dWs and dbs hold one dummy entry
                    for dW, db, (K, N), k, m in zip(dWs, dbs, net.shapes, real[:-1], real[1:],
                                                    strict=False)]
    out_grads = (_image_sum(dw_out, (n, dims[-1]), (real[-1],))[:, None],
                 dlogits.reshape(n, P).sum(axis=1).sum(keepdims=True))
    dz = gemm(g, np.ascontiguousarray(Wz), False, True, None)
    return dz, first_grads, hidden_grads, out_grads


def pixel_decoder_forward(z, coords, first, hidden, out, act_code, alpha):
    """(logits (n, P), cache) of the spatial broadcast decoder; see _backend.pixel_net.

    z (n, d), coords (P, 2), first = (Wz (d, h_1), Wxy (2, h_1), b (h_1,)),
    hidden = [(W (h_l, h_(l+1)), b), ...], out = (W (h_K, 1), b (1,)). The cache keeps
    the network's arrays, not its layers: the backward computes those again.
    """
    n = z.shape[0]
    net = _pixel_network(z, coords, first, hidden, out)
    logits = np.empty(n * net.P, z.dtype)
    args = (net.zW, net.cwb, net.Ws, net.bs, net.w_out, net.b_out, logits,
            net.dims, net.P, net.Pp, act_code, z.dtype.type(alpha))
    _run_claimed(_pixel_net.forward_images, args, n, net.parts)
    return logits.reshape(n, net.P), (z, first[0], net, act_code, alpha)


def pixel_decoder_backward(dlogits, cache):
    """(dz, (dWz, dWxy, db), [(dW, db), ...], (dW_out, db_out)) from dlogits (n, P)."""
    z, Wz, net, act_code, alpha = cache
    dtype = z.dtype
    n = z.shape[0]
    dlogits = _flat(dlogits.astype(dtype, copy=False))
    grads = _pixel_gradient_arrays(n, net, dtype)
    args = (net.zW, net.cwb, net.Ws, net.bs, dlogits, net.coords, net.WTs,
            net.w_out, net.dims, net.P, net.Pp, act_code, dtype.type(alpha), *grads)
    _run_claimed(_pixel_net.backward_images, args, n, net.parts)
    return _pixel_gradients(z, Wz, dlogits, net, *grads)


def pixel_decoder_bernoulli_nll(z, coords, first, hidden, out, x, grad_scale, act_code, alpha):
    """(nll (n,), dlogits (n, P), gradients as pixel_decoder_backward returns them): the
    decoder's forward, the Bernoulli NLL of x (n, P) and the backward, image by image
    (_backend.pixel_net.train_images)."""
    dtype = z.dtype
    n = z.shape[0]
    net = _pixel_network(z, coords, first, hidden, out)
    x = _flat(np.asarray(x, dtype=dtype))
    nll = np.empty(n, dtype)
    logits, dlogits = np.empty(n * net.P, dtype), np.empty(n * net.P, dtype)
    grads = _pixel_gradient_arrays(n, net, dtype)
    args = (net.zW, net.cwb, net.Ws, net.bs, net.w_out, net.b_out, x,
            dtype.type(grad_scale), net.coords, net.WTs, net.dims, net.P, net.Pp,
            act_code, dtype.type(alpha), nll, logits, dlogits, *grads)
    _run_claimed(_pixel_net.train_images, args, n, net.parts)
    return nll, dlogits.reshape(n, net.P), _pixel_gradients(z, first[0], dlogits, net, *grads)
