"""Training steps/s: tinyvae (Numba, NumPy) against PyTorch; the same as ``tinyvae bench step``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_step.py [options]

The benchmark itself lives in :mod:`tinyvae.bench` so the installed command has it.
"""

import sys

from tinyvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "step", *sys.argv[1:]]))
