"""Run one compiled kernel on disjoint parts of its output, one part per thread.

The Numba kernels are compiled ``nogil``, so plain Python threads run them in
parallel. We split work here rather than with ``parallel=True`` / ``prange``
because a parallel kernel is a second compiled copy of the whole call chain:
for the GEMM that doubled the cold compile time (~17 s per dtype) for a
speed-up only the large products see. Parts never share an output element and
each is computed exactly as on one thread, so results do not depend on the
number of threads.

The thread count is Numba's (``numba.set_num_threads`` or
``tinyvae._numba.set_num_threads``), so one knob controls every kernel.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba

#: the worker pool and the process that made it: a child made by fork inherits
#: the pool object but not its threads, so it must make its own
_pool: dict = {"pid": None, "executor": None}


def num_threads() -> int:
    """Threads the kernels may use (Numba's setting; ~1-2 us to ask)."""
    return numba.get_num_threads()


def _executor() -> ThreadPoolExecutor:
    # created on first use and kept: starting threads costs ~100 us each time
    if _pool["pid"] != os.getpid():
        _pool["executor"] = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                               thread_name_prefix="tinyvae")
        _pool["pid"] = os.getpid()
    return _pool["executor"]


def run_parts(kernel, parts) -> None:
    """Call kernel(*args) for every args in parts: the first on this thread, the rest
    on worker threads; return when all are done (re-raising the first error)."""
    if len(parts) == 1:
        kernel(*parts[0])
        return
    futures = [_executor().submit(kernel, *args) for args in parts[1:]]
    try:
        kernel(*parts[0])
    finally:
        for f in futures:
            f.result()


def split(n: int, parts: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Cut range(n) into at most `parts` contiguous [lo, hi) pieces whose inner edges are
    multiples of `multiple` (a vector width, a register-tile height)."""
    units = -(-n // multiple)
    parts = max(1, min(parts, units))
    edges = [min(n, (units * c // parts) * multiple) for c in range(parts + 1)]
    edges[-1] = n
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
