"""GFLOP/s of tinyvae's GEMM forms against numpy.matmul; the same as ``tinyvae bench gemm``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_gemm.py [options]

The benchmark itself lives in :mod:`tinyvae.bench` so the installed command has it.
"""

import sys

from tinyvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "gemm", *sys.argv[1:]]))
