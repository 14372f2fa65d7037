"""The compiled (Numba) backend behind :mod:`tinyvae.kernels`. Private: import kernels instead.

    numba_flags  the one place that owns the Numba flags (njit, njit_parallel, threads)
    simd         the vector type (one register, 256 or 512 bits), vector exp / log1p / sqrt
    threads      a small persistent thread pool: split outputs over threads, never sums
    gemm         packed, register-tiled GEMM with a bias + activation epilogue
    fused        single-pass activations, Bernoulli NLL, reparameterization + KL
    updates      vectorised Adam / SGD / Adagrad steps
    nb_kernels   the wrappers kernels.py calls: arrange memory, pick threads, call the above

Imports run downwards in that list; nothing here imports the rest of tinyvae.
"""
