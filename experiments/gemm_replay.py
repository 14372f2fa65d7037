"""How near BLAS itself comes to the benchmark's GEMM floor on a training step's own products.

usage: python experiments/gemm_replay.py THREADS BATCH [BATCH ...]

`tinyvae bench step`'s floor prices every FLOP of the step's products at the rate of one
hot numpy.matmul, the first layer's (batch x 784 @ 784 x 400). The step's other products
(the latent heads, the k = 20 decoder input, the weight gradients X.T @ dY) are shapes BLAS
runs slower, and in a step they meet their operands cold. This records the products of one
real step of the canonical 784-400-20 VAE (every call of gemm.gemm_into, its operands
copied) and times, interleaved in one process:

  hot floor   the benchmark's floor (bench.gemm_flops at the first layer's numpy rate)
  numpy       the recorded products replayed with numpy.matmul, fresh outputs
  tinyvae     the same products replayed with tinyvae's GEMM
  step        a whole training step (loss, gradients, Adam)
  Adam        the optimizer's step alone, on the step's own gradients
  rest        what a step costs besides its products where no kernel has work: the loss
              and gradients of an 8-4-2 VAE on a batch of 2 less its own products
              replayed with tinyvae's GEMM (Python, checks, dispatches, hand-offs)

and prints hot floor / each: what floor/step would read if a step were nothing but its
products at numpy's speed, at ours, and what the step reads; and the bound

  floor / (numpy's products + Adam + rest)

the best floor/step a step can read whose products run at BLAS's own speed on their own
shapes, whose optimizer moves its 653k parameters as Adam does, and whose other work costs
no more than it does in a VAE with no work at all; and the same with every product at the
floor itself, floor / (floor + Adam + rest), which no GEMM beats by much (the first
layer's product runs at 107-128 GFLOP/s a core in this VM's fast hours, where two 16-lane
FMA units at 2.1 GHz give 134).
"""

import sys

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import tinyvae as tv
from tinyvae import bench
from tinyvae._backend import gemm, nb_kernels


def recorded_products(model, x, eps):
    """[(a, b, trans_a, trans_b, (m, n), args, kwargs)] of one loss-and-gradients call,
    operands copied: every call of gemm_into, under both names it is called by (nb_kernels,
    imported above, binds its own)."""
    products, original = [], gemm.gemm_into

    def record(c, a, b, trans_a, trans_b, *args, **kwargs):
        products.append((a.copy(), b.copy(), trans_a, trans_b, c.shape, args, kwargs))
        return original(c, a, b, trans_a, trans_b, *args, **kwargs)

    gemm.gemm_into = nb_kernels.gemm_into = record
    try:
        model.loss(x, eps=eps)
    finally:
        gemm.gemm_into = nb_kernels.gemm_into = original
    return products


def vae_and_data(input_dim, hidden, latent, batch):
    """A float32 VAE, a binary batch x and its eps, seeded."""
    rng = np.random.default_rng(0)
    x = (rng.random((batch, input_dim)) < 0.3).astype(np.float32)
    eps = rng.standard_normal((batch, latent)).astype(np.float32)
    return tv.VAE(input_dim, hidden, latent, dtype=np.float32, seed=0), x, eps


def numpy_replay(products):
    """A function that runs the recorded products with numpy.matmul, fresh outputs."""
    def run():
        for a, b, ta, tb, _, _, _ in products:
            np.matmul(a.T if ta else a, b.T if tb else b)
    return run


def tinyvae_replay(products):
    """A function that runs the recorded products with tinyvae's GEMM, fresh outputs."""
    def run():
        for a, b, ta, tb, (m, n), args, kwargs in products:
            k = a.shape[0] if ta else a.shape[1]
            gemm.gemm_into(gemm.empty_output(m, n, k, a.dtype), a, b, ta, tb, *args, **kwargs)
    return run


def replay_row(batch, threads):
    """ms at one batch (medians): hot floor, numpy's products, tinyvae's products, whole
    step, Adam, rest (see the module's docstring)."""
    model, x, eps = vae_and_data(784, (400,), 20, batch)
    opt = tv.Adam(lr=1e-3)
    products = recorded_products(model, x, eps)
    grads = model.loss(x, eps=eps)[1]
    tiny, tiny_x, tiny_eps = vae_and_data(8, (4,), 2, 2)
    tiny_products = recorded_products(tiny, tiny_x, tiny_eps)

    def step():
        opt.step(model.params, model.loss(x, eps=eps)[1])

    first_layer, flops = bench._first_layer_product(batch, 784, 400)
    fns = [first_layer, numpy_replay(products), tinyvae_replay(products), step,
           lambda: opt.step(model.params, grads), lambda: tiny.loss(tiny_x, eps=tiny_eps),
           tinyvae_replay(tiny_products)]
    times = bench.interleaved_times(fns, 1.5,
                                    settle_seconds=bench.SETTLE_SECONDS if threads > 1 else 0)
    t_first, t_numpy, t_ours, t_step, t_adam, t_tiny, t_tiny_products = (
        1e3 * bench.median(t) for t in times)
    floor = bench.gemm_flops(batch, bench.layer_shapes(784, (400,), 20)) / flops * t_first
    return floor, t_numpy, t_ours, t_step, t_adam, t_tiny - t_tiny_products


def main(threads, batches):
    numba.set_num_threads(threads)
    threadpool_limits(threads)
    print(f"canonical VAE, float32, {threads} thread(s); ms a step (median), hot floor / each")
    for batch in batches:
        floor, t_numpy, t_ours, t_step, t_adam, t_rest = replay_row(batch, threads)
        bound = floor / (t_numpy + t_adam + t_rest)
        at_floor = floor / (floor + t_adam + t_rest)
        print(f"batch {batch:5d}: hot floor {floor:7.2f} | numpy's products {t_numpy:7.2f} "
              f"({floor / t_numpy:.2f}) | tinyvae's {t_ours:7.2f} ({floor / t_ours:.2f}) | "
              f"step {t_step:7.2f} ({floor / t_step:.2f}) | Adam {t_adam:5.2f} | "
              f"rest {t_rest:5.2f} | bound {bound:.2f}, at the floor {at_floor:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(b) for b in sys.argv[2:]])
