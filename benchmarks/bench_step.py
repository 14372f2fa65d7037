"""Training steps per second: tinyvae (Numba backend, NumPy backend) against PyTorch.

One step = forward + backward + Adam(lr=1e-3) on a fixed batch with fixed noise
eps, float32. PyTorch runs the same architecture with torch.optim.Adam(fused=True)
and the same thread count. Models:

    canonical   784-400-20     (the pytorch/examples VAE, Bernoulli decoder)
    deep        784-512-256-10

"GEMM floor" is the time the step's matrix products alone would take at the rate
numpy.matmul reaches on the first layer's shape: floor / step is the fraction of
the step spent at BLAS speed, 1.0 being the limit for this design.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_step.py
"""

from __future__ import annotations

import argparse

import numpy as np

try:
    from benchmarks._common import environment_report, interleaved_times, median, print_table
    from benchmarks._common import threads as thread_limit
except ImportError:  # run as a script from benchmarks/
    from _common import environment_report, interleaved_times, median, print_table
    from _common import threads as thread_limit

MODELS = {"canonical": (784, (400,), 20), "deep": (784, (512, 256), 10)}


def layer_shapes(input_dim, hidden, latent):
    """(fan_in, fan_out) of every dense layer, encoder first; the mu and logvar heads separately."""
    enc = list(zip((input_dim, *hidden[:-1]), hidden, strict=True))
    heads = [(hidden[-1], latent)] * 2
    dec_dims = (latent, *hidden[::-1], input_dim)
    dec = list(zip(dec_dims[:-1], dec_dims[1:], strict=True))
    return enc + heads + dec


def gemm_flops(batch, shapes):
    """Forward + weight gradients + input gradients (all layers but the first)."""
    per = [2.0 * batch * fi * fo for fi, fo in shapes]
    return 2 * sum(per) + sum(per[1:])


def tinyvae_step(dims, batch, x, eps, backend):
    import tinyvae as tv

    input_dim, hidden, latent = dims
    model = tv.VAE(input_dim=input_dim, hidden=hidden, latent_dim=latent,
                   likelihood="bernoulli", dtype=np.float32, seed=0)
    opt = tv.Adam(lr=1e-3)

    def step():
        with tv.use_backend(backend):
            loss, grads = model.loss(x, eps=eps)
            opt.step(model.params, grads)
        return loss

    return step


def torch_step(dims, batch, x, eps):
    import torch
    from torch import nn
    from torch.nn import functional as F

    input_dim, hidden, latent = dims
    torch.manual_seed(0)

    def mlp(sizes):
        mods = []
        for fi, fo in zip(sizes[:-1], sizes[1:], strict=True):
            mods += [nn.Linear(fi, fo), nn.ReLU()]
        return nn.Sequential(*mods)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = mlp((input_dim, *hidden))
            self.mu = nn.Linear(hidden[-1], latent)
            self.logvar = nn.Linear(hidden[-1], latent)
            self.dec = nn.Sequential(mlp((latent, *hidden[::-1])), nn.Linear(hidden[0], input_dim))

        def loss(self, x, eps):
            h = self.enc(x)
            mu, logvar = self.mu(h), self.logvar(h)
            z = mu + torch.exp(0.5 * logvar) * eps
            logits = self.dec(z)
            n = x.shape[0]
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
            kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum() / n
            return rec + kl

    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    tx, teps = torch.from_numpy(x), torch.from_numpy(eps)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tx, teps)
        loss.backward()
        opt.step()
        return loss

    return step


def blas_rate(batch, fan_in, fan_out):
    """numpy.matmul GFLOP/s at (batch, fan_in) @ (fan_in, fan_out), float32 (current threads)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, fan_in)).astype(np.float32)
    b = rng.standard_normal((fan_in, fan_out)).astype(np.float32)
    (t,) = interleaved_times([lambda: np.matmul(a, b)], min_time=0.2)
    return 2.0 * batch * fan_in * fan_out / median(t)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="seconds of timing per configuration (default 2)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = parser.parse_args(argv)
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch not installed: skipping it (pip install torch==2.13.0)")
            args.no_torch = True
    print(environment_report())

    rows, results = [], {}
    for name in args.model:
        dims = MODELS[name]
        for batch in args.batch:
            rng = np.random.default_rng(0)
            x = (rng.random((batch, dims[0])) < 0.3).astype(np.float32)
            eps = rng.standard_normal((batch, dims[2])).astype(np.float32)
            contenders = {"numba": tinyvae_step(dims, batch, x, eps, "numba"),
                          "numpy": tinyvae_step(dims, batch, x, eps, "numpy")}
            if not args.no_torch:
                contenders["torch"] = torch_step(dims, batch, x, eps)
            for nt in args.threads:
                with thread_limit(nt):
                    times = interleaved_times(list(contenders.values()), args.min_time, warmup=5)
                    floor = gemm_flops(batch, layer_shapes(*dims)) / blas_rate(batch, dims[0],
                                                                               dims[1][0])
                t = {k: median(v) for k, v in zip(contenders, times, strict=True)}
                results[(name, batch, nt)] = t
                row = [name, str(batch), str(nt)]
                row += [f"{1 / t[k]:.0f}" for k in ("numba", "numpy")]
                row += [f"{1 / t['torch']:.0f}" if "torch" in t else "-"]
                row += [f"{t['numpy'] / t['numba']:.2f}"]
                row += [f"{t['torch'] / t['numba']:.2f}" if "torch" in t else "-"]
                row += [f"{t['numba'] * 1e3:.2f}", f"{floor * 1e3:.2f}", f"{floor / t['numba']:.2f}"]
                rows.append(row)
    print("\nsteps/s (median step), float32, Adam lr=1e-3")
    print_table(["model", "batch", "threads", "numba", "numpy", "torch", "vs numpy", "vs torch",
                 "step ms", "floor ms", "floor/step"], rows)
    return results


if __name__ == "__main__":
    main()
