"""Layers as functional forward/backward pairs.

Each ``*_forward`` returns ``(out, cache)``; the matching ``*_backward(dout, cache)``
unpacks the cache in reverse and returns the gradient of the loss with respect to
each input. Gradients are always dLoss/d<name>: ``dout`` arrives, ``dx`` (and
``dW``, ``db``) leave. The backward pass stands directly under its forward pass.

Weights are stored (fan_in, fan_out) so a layer is ``y = x @ W + b`` on a batch of
row vectors x (n, fan_in).
"""

from __future__ import annotations

import numpy as np

from tinyvae import kernels
from tinyvae.kernels import ACTIVATIONS  # the names every layer and kernel accepts

# ---------------------------------------------------------------------- linear


def linear_forward(x, W, b):
    """Affine map y = x @ W + b.

    Inputs:  x (n, fan_in), W (fan_in, fan_out), b (fan_out,)
    Returns: out (n, fan_out), cache (x, W)
    """
    out = kernels.dense_forward(x, W, b, "identity")
    return out, (x, W)


def linear_backward(dout, cache):
    """Backward of y = x @ W + b.

    dx = dout @ W.T,  dW = x.T @ dout,  db = sum over rows of dout.
    Inputs:  dout (n, fan_out), cache from linear_forward
    Returns: dx (n, fan_in), dW (fan_in, fan_out), db (fan_out,)
    """
    x, W = cache
    dx = kernels.matmul_nt(dout, W)
    dW = kernels.matmul_tn(x, dout)
    db = dout.sum(axis=0)
    return dx, dW, db


# ----------------------------------------------------------------- activations
# Each activation caches its *output*: every derivative below can be written
# through y, which saves keeping the pre-activation alive.


def relu_forward(x):
    """y = max(x, 0).   x (any shape) -> out (same), cache y."""
    out = kernels.activate(x, "relu")
    return out, out


def relu_backward(dout, cache):
    """dx = dout * [y > 0]."""
    return kernels.activation_backward(dout, cache, "relu")


def leaky_relu_forward(x, alpha=0.01):
    """y = x if x > 0 else alpha * x, with 0 < alpha < 1.   cache (y, alpha)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected 0 < alpha < 1, got {alpha}")
    out = kernels.activate(x, "leaky_relu", alpha)
    return out, (out, alpha)


def leaky_relu_backward(dout, cache):
    """dx = dout * (1 if y > 0 else alpha); y > 0 exactly when x > 0 because alpha > 0."""
    out, alpha = cache
    return kernels.activation_backward(dout, out, "leaky_relu", alpha)


def tanh_forward(x):
    """y = tanh(x).   cache y."""
    out = kernels.activate(x, "tanh")
    return out, out


def tanh_backward(dout, cache):
    """dx = dout * (1 - y^2)."""
    return kernels.activation_backward(dout, cache, "tanh")


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), computed without overflow.   cache y."""
    out = kernels.activate(x, "sigmoid")
    return out, out


def sigmoid_backward(dout, cache):
    """dx = dout * y * (1 - y)."""
    return kernels.activation_backward(dout, cache, "sigmoid")


def softplus_forward(x):
    """y = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)).   cache y."""
    out = kernels.activate(x, "softplus")
    return out, out


def softplus_backward(dout, cache):
    """dx = dout * sigmoid(x), and sigmoid(x) = 1 - exp(-y) because y = softplus(x)."""
    return kernels.activation_backward(dout, cache, "softplus")


ACTIVATION_LAYERS = {
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "softplus": (softplus_forward, softplus_backward),
}


# ------------------------------------------------------------ fused dense layer


def dense_forward(x, W, b, activation="identity", alpha=0.01):
    """y = act(x @ W + b): a linear layer and its activation in one kernel.

    The models use this instead of linear_forward + relu_forward: the bias and
    activation are applied while each output tile is still in registers.
    Inputs:  x (n, fan_in), W (fan_in, fan_out), b (fan_out,), activation name
    Returns: out (n, fan_out), cache (x, W, out, activation, alpha)
    """
    out = kernels.dense_forward(x, W, b, activation, alpha)
    return out, (x, W, out, activation, alpha)


def dense_backward(dout, cache, need_dx=True):
    """Backward of y = act(x @ W + b).

    da = dout * act'(a)  (through y),  dx = da @ W.T,  dW = x.T @ da,  db = sum(da)
    need_dx=False skips the input-gradient GEMM for a network's first layer,
    whose input is data.
    Returns: dx (n, fan_in) or None, dW (fan_in, fan_out), db (fan_out,)
    """
    x, W, out, activation, alpha = cache
    if activation == "identity":
        da, db = dout, dout.sum(axis=0)
    else:
        da, db = kernels.activation_bias_backward(dout, out, activation, alpha)
    dW = kernels.matmul_tn(x, da)
    dx = kernels.matmul_nt(da, W) if need_dx else None
    return dx, dW, db


# ------------------------------------------------------ two linear heads, one GEMM


def two_heads_forward(h, W1, b1, W2, b2):
    """Two linear heads on one input: y1 = h @ W1 + b1 and y2 = h @ W2 + b2.

    A speed trick with the maths of two linear_forward calls: the heads run as one
    GEMM, h @ [W1 W2] + [b1 b2], one pass over h instead of two (and, for the VAE's
    2 x 20 latent columns, 40 columns fill the register tiles better than 20). The
    weights stay separate arrays; the concatenated copy is rebuilt every call, so
    in-place optimizer updates are always seen.
    Inputs:  h (n, fan_in), W1, W2 (fan_in, d), b1, b2 (d,)
    Returns: y1, y2 (n, d) (views into one array), cache
    """
    W = np.concatenate((W1, W2), axis=1)
    b = np.concatenate((b1, b2))
    y, cache = dense_forward(h, W, b)
    d = W1.shape[1]
    return y[:, :d], y[:, d:], (cache, d)


def two_heads_backward(dy1, dy2, cache, need_dx=True):
    """Backward of two_heads_forward: linear_backward of each head, dh summed over both.

    dh = dy1 @ W1.T + dy2 @ W2.T,  dW1 = h.T @ dy1,  db1 = sum(dy1)  (likewise W2, b2)
    Returns: dh (n, fan_in) or None, dW1, db1, dW2, db2
    """
    cache, d = cache
    dh, dW, db = dense_backward(np.concatenate((dy1, dy2), axis=1), cache, need_dx)
    return (dh, np.ascontiguousarray(dW[:, :d]), db[:d].copy(),
            np.ascontiguousarray(dW[:, d:]), db[d:].copy())


# ------------------------------------------------- spatial broadcast decoder layer


def pixel_coordinates(image_shape, dtype=np.float64):
    """(P, 2) coordinates (x_p, y_p) of every pixel, row-major (P = H W), each in [-1, 1].

    x runs along a row (the column index), y down the image (the row index).
    """
    H, W = image_shape
    y, x = np.meshgrid(np.linspace(-1.0, 1.0, H), np.linspace(-1.0, 1.0, W), indexing="ij")
    return np.ascontiguousarray(np.stack([x.ravel(), y.ravel()], axis=1), dtype=dtype)


def broadcast_forward(z, coords, Wz, Wxy, b, activation="relu", alpha=0.01):
    """First layer of a spatial broadcast decoder (Watters et al. 2019).

    Each image's latent z_i is copied to every pixel p and joined by that pixel's own
    coordinates; one dense layer then runs on the joined row:
        a[i, p] = act([z_i, x_p, y_p] @ [Wz; Wxy] + b) = act(z_i @ Wz + coords_p @ Wxy + b)
    Speed trick, same maths: the (n P, d + 2) joined matrix is never built; z @ Wz is
    taken once per image, coords @ Wxy once per pixel, and the two are added by
    broadcasting.
    Inputs:  z (n, d), coords (P, 2), Wz (d, h), Wxy (2, h), b (h,)
    Returns: out (n P, h), row i P + p for image i's pixel p; cache
    """
    n, P = z.shape[0], coords.shape[0]
    pre = kernels.matmul(z, Wz)[:, None, :] + (coords @ Wxy + b)[None, :, :]
    out = kernels.activate(pre.reshape(n * P, -1), activation, alpha)
    return out, (z, coords, Wz, out, activation, alpha)


def broadcast_backward(dout, cache):
    """Backward of broadcast_forward.

    da = dout * act'(a) (through the output); every pixel of image i used the same z_i,
    so its gradient sums over the pixels, g_i = sum_p da[i, p]:
    dz = g @ Wz.T,  dWz = z.T @ g,  dWxy = coords.T @ (sum_i da[i, p]),  db = sum da
    Inputs:  dout (n P, h), cache from broadcast_forward
    Returns: dz (n, d), dWz (d, h), dWxy (2, h), db (h,)
    """
    z, coords, Wz, out, activation, alpha = cache
    n, P = z.shape[0], coords.shape[0]
    da = kernels.activation_backward(dout, out, activation, alpha).reshape(n, P, -1)
    per_image, per_pixel = da.sum(axis=1), da.sum(axis=0)
    dz = kernels.matmul_nt(per_image, Wz)
    return dz, kernels.matmul_tn(z, per_image), coords.T @ per_pixel, per_pixel.sum(axis=0)



def pixel_decoder_forward(z, coords, first, hidden, out, activation="relu", alpha=0.01):
    """The whole spatial broadcast decoder: one small network, run on every pixel.

        h_1[i, p] = act(z_i @ Wz + coords_p @ Wxy + b)      broadcast_forward
        h_l[i, p] = act(h_(l-1)[i, p] @ W_l + b_l)          dense_forward, l = 2 .. K
        out[i, p] = h_K[i, p] @ W_out + b_out               dense_forward, identity
    The NumPy body below is the definition. Speed trick, same maths: the compiled
    kernel (tinyvae._backend.pixel_net) runs the network one image at a time, so an
    image's (P, h) rows stay in cache from layer to layer, and splits images over
    threads.
    Inputs:  z (n, d), coords (P, 2), first = (Wz (d, h_1), Wxy (2, h_1), b (h_1,)),
             hidden = [(W_l, b_l) for l = 2 .. K], out = (W_out (h_K, 1), b_out (1,))
    Returns: out (n, P), cache
    """
    compiled = kernels.compiled()
    if compiled is not None:
        code = kernels.activation_code(activation)
        out, cache = compiled.pixel_decoder_forward(z, coords, first, list(hidden), out, code,
                                                    alpha)
        return out, (compiled, cache)
    n, P = z.shape[0], coords.shape[0]
    h, cache = broadcast_forward(z, coords, *first, activation, alpha)
    caches = [cache]
    for W, b in hidden:
        h, cache = dense_forward(h, W, b, activation, alpha)
        caches.append(cache)
    y, cache = dense_forward(h, *out)
    caches.append(cache)
    return y.reshape(n, P), (None, caches)


def pixel_decoder_backward(dout, cache):
    """Backward of pixel_decoder_forward: each layer's backward, last to first.

    Inputs:  dout (n, P), cache from pixel_decoder_forward
    Returns: dz (n, d), (dWz, dWxy, db), [(dW_l, db_l) for l = 2 .. K], (dW_out, db_out)
    """
    compiled, caches = cache
    if compiled is not None:
        return compiled.pixel_decoder_backward(dout, caches)
    dh, dW_out, db_out = dense_backward(dout.reshape(-1, 1), caches[-1])
    hidden = []
    for c in caches[-2:0:-1]:
        dh, dW, db = dense_backward(dh, c)
        hidden.append((dW, db))
    dz, dWz, dWxy, db = broadcast_backward(dh, caches[0])
    return dz, (dWz, dWxy, db), hidden[::-1], (dW_out, db_out)

__all__ = [
    "linear_forward", "linear_backward", "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward", "tanh_forward", "tanh_backward",
    "sigmoid_forward", "sigmoid_backward", "softplus_forward", "softplus_backward",
    "dense_forward", "dense_backward", "two_heads_forward", "two_heads_backward",
    "pixel_coordinates", "broadcast_forward", "broadcast_backward",
    "pixel_decoder_forward", "pixel_decoder_backward",
    "ACTIVATION_LAYERS", "ACTIVATIONS",
]
