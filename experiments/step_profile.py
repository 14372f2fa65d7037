"""Where a training step of the canonical 784-400-20 VAE goes: medians of each piece.

usage: python experiments/step_profile.py BATCH THREADS
Times one whole step (loss + gradients + Adam), then its pieces called through
tinyvae.layers / losses with the Numba backend, each beside numpy.matmul on the same
GEMM shapes, and the step's GEMM floor (every product at numpy.matmul's rate on the
first layer). Timings of single calls on a quiet machine; the profile of issue 15.
"""

import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import tinyvae as tv
from tinyvae import bench, layers, losses


def median_ms(f, n=200):
    for _ in range(10):
        f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main(batch, threads):
    numba.set_num_threads(threads)
    threadpool_limits(threads)
    rng = np.random.default_rng(0)
    x = (rng.random((batch, 784)) < 0.3).astype(np.float32)
    eps = rng.standard_normal((batch, 20)).astype(np.float32)
    model, opt = tv.VAE(784, (400,), 20, dtype=np.float32, seed=0), tv.Adam(lr=1e-3)
    p = model.params
    _, grads = model.loss(x, eps=eps)
    z = rng.standard_normal((batch, 20)).astype(np.float32)
    h = layers.dense_forward(x, p["enc1.W"], p["enc1.b"], "relu")[0]
    hd, dec_cache = layers.dense_forward(z, p["dec1.W"], p["dec1.b"], "relu")
    out, out_cache = layers.dense_forward(hd, p["out.W"], p["out.b"])
    enc_cache = layers.dense_forward(x, p["enc1.W"], p["enc1.b"], "relu")[1]
    dout = rng.standard_normal((batch, 784)).astype(np.float32)
    dh = rng.standard_normal((batch, 400)).astype(np.float32)
    mu = rng.standard_normal((batch, 20)).astype(np.float32)
    rows = {
        "whole step": lambda: opt.step(p, model.loss(x, eps=eps)[1]),
        "loss + gradients": lambda: model.loss(x, eps=eps),
        "Adam": lambda: opt.step(p, grads),
        "enc1 forward 784 -> 400": lambda: layers.dense_forward(x, p["enc1.W"], p["enc1.b"], "relu"),
        "  numpy.matmul, same shape": lambda: np.matmul(x, p["enc1.W"]),
        "heads forward 400 -> 2 x 20": lambda: layers.two_heads_forward(
            h, p["mu.W"], p["mu.b"], p["logvar.W"], p["logvar.b"]),
        "dec1 forward 20 -> 400": lambda: layers.dense_forward(z, p["dec1.W"], p["dec1.b"], "relu"),
        "out forward 400 -> 784": lambda: layers.dense_forward(hd, p["out.W"], p["out.b"]),
        "  numpy.matmul, same shape ": lambda: np.matmul(hd, p["out.W"]),
        "Bernoulli NLL + gradient": lambda: model._reconstruction(out, x, 1.0 / batch),
        "out backward (dW, dx)": lambda: layers.dense_backward(dout, out_cache),
        "  numpy.matmul, same shapes": lambda: (np.matmul(hd.T, dout), np.matmul(dout, p["out.W"].T)),
        "dec1 backward": lambda: layers.dense_backward(dh, dec_cache),
        "enc1 backward (dW)": lambda: layers.dense_backward(dh, enc_cache, need_dx=False),
        "  numpy.matmul, same shape  ": lambda: np.matmul(x.T, dh),
        "reparameterization + KL": lambda: losses.reparam_kl_forward(mu, 0.1 * mu, eps),
    }
    results = {name: median_ms(f) for name, f in rows.items()}
    rate = 2.0 * batch * 784 * 400 / (results["  numpy.matmul, same shape"] / 1e3)
    results["GEMM floor"] = 1e3 * bench.gemm_flops(batch, bench.layer_shapes(784, (400,), 20)) / rate
    print(f"batch {batch}, {threads} thread(s), float32")
    for name, ms in results.items():
        print(f"{name:32s} {ms:8.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
