"""How fast does the procedural dSprites renderer draw images?

    python benchmarks/bench_datasets.py [--n 10000] [--repeats 5]

Prints the first call (compile, or load from Numba's cache) and the best of ``repeats``
timed calls of ``DSprites(R).render`` on random classes, per resolution.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tinyvae import datasets
from tinyvae._backend.numba_flags import get_num_threads


def time_render(ds, classes, repeats):
    start = time.perf_counter()
    ds.render(classes[:8])
    first = time.perf_counter() - start
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        ds.render(classes)
        best = min(best, time.perf_counter() - start)
    return first, best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"rendering {args.n} dSprites images, {get_num_threads()} Numba threads")
    for resolution in (64, 32):
        ds = datasets.DSprites(resolution)
        classes = ds.sample_classes(args.n, np.random.default_rng(0))
        first, best = time_render(ds, classes, args.repeats)
        print(f"  {resolution:3d} x {resolution:<3d} first call {first:6.2f} s   "
              f"render {best * 1e3:7.1f} ms  ({args.n / best:,.0f} images/s)")


if __name__ == "__main__":
    main()
