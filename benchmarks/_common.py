"""Shared helpers for the benchmarks: thread control, interleaved timing, tables.

Timings on a shared 2-core VM are noisy (PERF_NOTES: p99 stalls of 5-40 ms), so
every comparison runs its contenders alternately in one loop and reports
medians: a stall hits both sides rather than one.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time


@contextlib.contextmanager
def threads(n: int):
    """Run the body with n threads in Numba, OpenBLAS (threadpoolctl) and, if loaded, PyTorch."""
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch else None
    numba.set_num_threads(n)
    if torch:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(before)
        if torch:
            torch.set_num_threads(torch_before)


def interleaved_times(fns, min_time=0.3, min_reps=7, warmup=2):
    """Per-call wall times of each function in `fns`, calling them in turn.

    Returns one list of times (seconds) per function.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times[0]) < min_reps:
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return times


def median(xs):
    return statistics.median(xs)


def environment_report() -> str:
    """One paragraph on the machine and libraries, for the head of a benchmark's output."""
    import numba
    import numpy as np
    from threadpoolctl import threadpool_info

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = f"{numba.config.THREADING_LAYER} (not started)"
    lines = [f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}, "
             f"{os.cpu_count()} CPUs, numba threading layer {layer}"]
    for pool in threadpool_info():
        lines.append(f"  {pool['internal_api']} {pool.get('version')} "
                     f"kernel={pool.get('architecture')} threads={pool['num_threads']}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            lines.append(f"  warning: {var}={os.environ[var]} is set; OpenBLAS may not use "
                         "its best kernel (unset it in the benchmark command)")
    return "\n".join(lines)


def print_table(headers, rows, out=sys.stdout):
    """Print rows (lists of already formatted strings) under headers, columns aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(fmt.format(*headers), file=out)
    print(fmt.format(*("-" * w for w in widths)), file=out)
    for r in rows:
        print(fmt.format(*r), file=out)
