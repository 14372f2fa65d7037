"""Run one compiled kernel on disjoint parts of its output, one part per thread.

The Numba kernels are compiled ``nogil``, so plain Python threads run them in
parallel. We split work here rather than with ``parallel=True`` / ``prange``
because a parallel kernel is a second compiled copy of the whole call chain:
for the GEMM that doubled the cold compile time (~17 s per dtype) for a
speed-up only the large products see. Parts never share an output element and
each is computed exactly as on one thread, so results do not depend on the
number of threads.

Hand-off. A training step makes ~25 parallel calls of 0.1-1 ms each, so the
cost of starting and joining a part matters. A ``ThreadPoolExecutor`` future
cost ~65 us per call on this 2-vCPU VM, mostly waking a sleeping thread (a
futex wake of an idle vCPU). Our workers instead *spin* (in ``nogil`` compiled
code, reading a per-worker sequence number with an atomic load and a ``pause``)
for about a millisecond after each part, and only then sleep on a condition
variable; the caller likewise spins, GIL released, until its workers report
done. A hand-off to a spinning worker costs ~20 us, most of it the GIL passing
between the two threads (the worker needs it to call the kernel). This is what
OpenMP runtimes do (GOMP_SPINCOUNT); the price is a core kept busy for a
millisecond after the last parallel call.

The thread count is Numba's (``numba.set_num_threads`` or
``tinyvae._backend.numba_flags.set_num_threads``), so one knob controls every kernel.
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from tinyvae._backend.numba_flags import njit
from tinyvae._backend.simd import _indexed_pointer

#: pause-loop iterations a worker spins before it sleeps: ~1 ms here (a pause takes
#: ~25 ns on this Zen core; newer cores vary from a few ns to ~40 ns)
WORKER_SPINS = 40_000
#: iterations the caller spins per wait before it looks again from Python
CALLER_SPINS = 400_000


# ----------------------------------------------------------------------------
# spinning on a flag, GIL released
# ----------------------------------------------------------------------------


@intrinsic
def _load_acquire(typingctx, flags, i):
    """flags[i] read with an atomic acquire load, so the loop re-reads memory every time."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_indexed_pointer(context, builder, sig, args), "acquire", align=8)

    return types.int64(flags, i), codegen


@intrinsic
def _cpu_pause(typingctx):
    """The x86 ``pause`` hint: a polite spin (frees pipeline resources, saves power)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@njit
def _spin_until_not(flags, i, value, spins):
    """Spin until flags[i] != value or `spins` pauses have passed; return flags[i]."""
    for _ in range(spins):
        current = _load_acquire(flags, i)
        if current != value:
            return current
        _cpu_pause()
    return _load_acquire(flags, i)


# ----------------------------------------------------------------------------
# the worker pool
# ----------------------------------------------------------------------------


class _SpinPool:
    """Worker threads that each run one posted part at a time.

    Worker w's protocol: ``posted[w]`` counts parts handed to it, ``finished[w]``
    the parts it has completed; it spins on ``posted[w]``, then sleeps on
    ``wakeup``. ``posted`` is only written under ``wakeup``'s lock, and a worker
    only sleeps after re-checking ``posted`` under it, so no wake-up is lost.
    """

    def __init__(self):
        self.posted = np.zeros(0, np.int64)
        self.finished = np.zeros(0, np.int64)
        self.tasks: list = []
        self.errors: list = []
        self.wakeup = threading.Condition()
        self.busy = threading.Lock()  # one caller at a time owns the workers

    def ensure_workers(self, n):
        if n <= len(self.tasks):
            return
        with self.wakeup:  # no worker reads the arrays while they are replaced
            old = len(self.tasks)
            self.posted = np.concatenate([self.posted, np.zeros(n - old, np.int64)])
            self.finished = np.concatenate([self.finished, np.zeros(n - old, np.int64)])
            self.tasks += [None] * (n - old)
            self.errors += [None] * (n - old)
        for w in range(old, n):
            threading.Thread(target=self._work, args=(w,), name=f"tinyvae-{w}", daemon=True).start()

    def _work(self, w):
        seen = 0
        while True:
            if _spin_until_not(self.posted, w, seen, WORKER_SPINS) == seen:
                with self.wakeup:
                    while self.posted[w] == seen:
                        self.wakeup.wait()
            seen = int(self.posted[w])
            kernel, args = self.tasks[w]
            self.tasks[w] = None
            try:
                kernel(*args)
            except BaseException as error:  # handed to the caller, which re-raises it
                self.errors[w] = error
            self.finished[w] = seen

    def run(self, kernel, parts):
        """kernel(*parts[0]) here and kernel(*parts[w + 1]) on worker w; wait for all."""
        helpers = parts[1:]
        self.ensure_workers(len(helpers))
        with self.wakeup:
            for w, args in enumerate(helpers):
                self.tasks[w] = (kernel, args)
                self.posted[w] += 1
            self.wakeup.notify_all()
        try:
            kernel(*parts[0])
        finally:
            self._join(len(helpers))

    def _join(self, n):
        error = None
        for w in range(n):
            target = self.posted[w]
            while _spin_until_not(self.finished, w, target - 1, CALLER_SPINS) != target:
                pass
            if self.errors[w] is not None:
                error, self.errors[w] = error or self.errors[w], None
        if error is not None:
            raise error


#: the pool and the process that made it: a child made by fork inherits the pool
#: object but not its threads, so it must make its own
_pool: dict = {"pid": None, "pool": None}


def _the_pool() -> _SpinPool:
    if _pool["pid"] != os.getpid():
        _pool["pool"] = _SpinPool()
        _pool["pid"] = os.getpid()
    return _pool["pool"]


def num_threads() -> int:
    """Threads the kernels may use (Numba's setting; ~1-2 us to ask)."""
    return numba.get_num_threads()


def run_parts(kernel, parts) -> None:
    """Call kernel(*args) for every args in parts: the first on this thread, the rest
    on worker threads; return when all are done (re-raising the first error).

    If another thread is already using the workers, the parts run here one after
    another: the same results, computed without parallelism.
    """
    if len(parts) == 1:
        kernel(*parts[0])
        return
    pool = _the_pool()
    if not pool.busy.acquire(blocking=False):
        for args in parts:
            kernel(*args)
        return
    try:
        pool.run(kernel, parts)
    finally:
        pool.busy.release()


def split(n: int, parts: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Cut range(n) into at most `parts` contiguous [lo, hi) pieces whose inner edges are
    multiples of `multiple` (a vector width, a register-tile height)."""
    units = -(-n // multiple)
    parts = max(1, min(parts, units))
    edges = [min(n, (units * c // parts) * multiple) for c in range(parts + 1)]
    edges[-1] = n
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
