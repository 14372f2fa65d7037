"""GFLOP/s of tinyvae's GEMM forms against numpy.matmul (OpenBLAS) at the VAE's layer shapes.

For each batch size n and layer fan_in -> fan_out (784->512, 512->256, 256->40):

    forward       x @ W        (n, fan_in) @ (fan_in, fan_out)    tinyvae.kernels.matmul
    weight grad   x.T @ dout   (fan_in, n) @ (n, fan_out)         tinyvae.kernels.matmul_tn
    input grad    dout @ W.T   (n, fan_out) @ (fan_out, fan_in)   tinyvae.kernels.matmul_nt

NumPy gets the same views (x.T, W.T), so both sides see the same memory layout.
Run with OpenBLAS free to pick its kernel:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_gemm.py
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

LAYERS = ((784, 512), (512, 256), (256, 40))
BATCHES = (64, 128, 256)


def cases(batch, dtype, rng):
    """(label, tinyvae call, numpy call, flops) for the three GEMMs of each layer."""
    from tinyvae import kernels as K

    out = []
    for fan_in, fan_out in LAYERS:
        x = rng.standard_normal((batch, fan_in)).astype(dtype)
        W = rng.standard_normal((fan_in, fan_out)).astype(dtype)
        dout = rng.standard_normal((batch, fan_out)).astype(dtype)
        flops = 2.0 * batch * fan_in * fan_out
        out += [
            (f"{batch}x{fan_in} @ {fan_in}x{fan_out}", "A@B",
             lambda x=x, W=W: K.matmul(x, W), lambda x=x, W=W: np.matmul(x, W), flops),
            (f"{fan_in}x{batch} @ {batch}x{fan_out}", "A.T@B",
             lambda x=x, d=dout: K.matmul_tn(x, d), lambda x=x, d=dout: np.matmul(x.T, d), flops),
            (f"{batch}x{fan_out} @ {fan_out}x{fan_in}", "A@B.T",
             lambda d=dout, W=W: K.matmul_nt(d, W), lambda d=dout, W=W: np.matmul(d, W.T), flops),
        ]
    return out


def run(dtype, n_threads, batches, min_time):
    """Print one table; return the list of speed ratios tinyvae / numpy."""
    rng = np.random.default_rng(0)
    rows, ratios = [], []
    with thread_limit(n_threads):
        for batch in batches:
            for shape, form, ours, theirs, flops in cases(batch, dtype, rng):
                t_ours, t_theirs = (median(t) for t in interleaved_times([ours, theirs], min_time))
                ratio = t_theirs / t_ours
                ratios.append(ratio)
                rows.append([shape, form, f"{flops / t_ours / 1e9:.1f}",
                             f"{flops / t_theirs / 1e9:.1f}", f"{ratio:.2f}"])
    print(f"\n{np.dtype(dtype).name}, {n_threads} thread(s): GFLOP/s (median of calls)")
    print_table(["shape", "form", "tinyvae", "numpy", "ratio"], rows)
    print(f"ratio tinyvae/numpy: median {median(ratios):.2f}, min {min(ratios):.2f}")
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--min-time", type=float, default=0.25,
                        help="seconds of timing per shape (default 0.25)")
    args = parser.parse_args(argv)
    from tinyvae import kernels as K

    K.set_backend("numba")
    print(environment_report())
    # compile (or load from cache) before any timing
    for dt in args.dtype:
        a = np.ones((300, 300), dt)
        K.matmul(a, a), K.matmul_tn(a, a), K.matmul_nt(a, a)
    summary = {}
    for dt in args.dtype:
        for nt in args.threads:
            r = run(np.dtype(dt), nt, args.batch, args.min_time)
            summary[(dt, nt)] = (median(r), min(r))
    print("\nsummary: tinyvae / numpy.matmul speed ratio")
    print_table(["dtype", "threads", "median", "min"],
                [[dt, str(nt), f"{md:.2f}", f"{mn:.2f}"] for (dt, nt), (md, mn) in summary.items()])
    return summary


if __name__ == "__main__":
    main()
