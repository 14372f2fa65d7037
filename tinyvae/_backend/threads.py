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
done. This is what OpenMP runtimes do (GOMP_SPINCOUNT); the price is a core kept busy
for a millisecond after the last parallel call.

The GIL. A worker needs the GIL to call its kernel, and a thread that asks for
the GIL while another holds it goes to sleep in the kernel (a futex), which costs
tens of microseconds to wake on a VM. So the two threads take turns and never ask
at the same time: the caller posts the parts from compiled code (GIL already
released, so a worker that sees its part finds the GIL free) and waits there until
the workers' kernels have *started* (each parallel kernel says so with
:func:`part_started` as its first statement, after Numba has released the GIL);
only then does it take the GIL back and run its own part. At the end it waits,
GIL released, until each worker is *idle* again: back in its compiled spin, past the
few lines of Python after its kernel. Returning at the kernel's :func:`part_done`
instead let the worker ask for the GIL while this thread ran Python, so it slept on
the GIL and the next hand-off waited for it to wake: 8-9 context switches and ~0.2 ms
of system time per canonical training step on a 2-vCPU Zen 4 VM (EPYC, family 25
model 17), and no gain from the second thread on the n = 40 head products.
Each kernel handed to :func:`run_parts` takes the part's flags as its last
argument, ``progress``; a kernel that does not signal still runs correctly (the
worker's Python code marks the part done after the call), only with slower
hand-offs. Measured on a 2-vCPU Zen 3 VM (EPYC, family 25 model 1), two empty
parts: ~16 us a hand-off, against ~22-24 us when the two threads asked for the GIL
at once (the protocol before).

Native parts. A kernel whose parts are many and short (the GEMM: 20-100 us products,
~25 a training step) can skip Python in the worker altogether: :func:`run_native_parts`
writes each part's arguments as integers (addresses and sizes of its arrays, and its
scalars) into the worker's *slot*, and the worker's compiled spin loop (:func:`_serve`)
calls the kernel itself, through its machine-code address, without the GIL and without
returning to Python. The caller then need not wait for the worker's kernel to start
before it takes the GIL back. Split in two, interleaved in one process on an Intel Xeon
with AVX-512 (family 6 model 207): 128 x 256 @ 256 x 40 took 36.1 us as native parts
against 41.6 as Python parts (46.8 on one thread, numpy.matmul 30.1), 256 x 256 @ 256 x
40 52.7 against 58.1 (numpy 54.0), 64 x 784 @ 784 x 400 298 against 317 (numpy 295).
Calling through the address, rather than from a compiled function that names the
kernel, leaves the kernel compiled once: a compiled caller links the callee's code
into its own and compiles it all again (a second compiled driver of the GEMM doubled
its cold compile, see above). The slot writer, runner and spin loop add ~0.8 s.

Unequal cores. The two vCPUs of a VM need not run at one speed: on a 2-vCPU Intel
Xeon VM (family 6 model 207) one vCPU's half of a product split in two took 1.5x the
other's, and which one was slow changed from one second to the next. A native part's
runner is timed (``BUSY``, in time-stamp counter cycles, as the caller times its own
part), each worker's speed against the caller's is smoothed into the pool's ``speeds``,
and :func:`part_shares` gives the shares in which the next product is cut
(:func:`split_shares`): the canonical VAE's training step at batch 64-1,024 on two
threads 1.04-1.18x faster than with equal halves (interleaved in one process). The
ranges of elementwise kernels (``nb_kernels._run_ranges``) are cut in the same shares.
Every output element is computed the same whatever the cut, so the bits do not move.

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
from numba.np.ufunc import parallel as numba_parallel

from tinyvae._backend.numba_flags import njit, njit_inline
from tinyvae._backend.simd import _indexed_pointer

#: pause-loop iterations a worker spins before it sleeps: ~1 ms here (a pause takes
#: ~25 ns on this Zen core; newer cores vary from a few ns to ~40 ns)
WORKER_SPINS = 40_000
#: iterations the caller spins per wait before it looks again from Python
CALLER_SPINS = 400_000
#: a worker's measured speed over the caller's is kept within this range, and each
#: native call moves the estimate this fraction of the way to its new measurement
SPEED_RANGE = (0.25, 4.0)
SPEED_SMOOTHING = 0.3


# ----------------------------------------------------------------------------
# spinning on a flag, GIL released
# ----------------------------------------------------------------------------


def _int64_flags(flags):
    return isinstance(flags, types.Array) and flags.dtype == types.int64


@intrinsic
def _load_acquire(typingctx, flags, i):
    """flags[i] read with an atomic acquire load, so the loop re-reads memory every time."""
    if not _int64_flags(flags):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_indexed_pointer(context, builder, sig, args), "acquire", align=8)

    return types.int64(flags, i), codegen


def _flag_and_value(context, builder, sig, args):
    """For an intrinsic (flags, i, value): the pointer to flags[i], and value as an int64."""
    return (_indexed_pointer(context, builder, sig, args[:2]),
            context.cast(builder, args[2], sig.args[2], types.int64))


def _atomic_store(ordering):
    def store(typingctx, flags, i, value):
        if not _int64_flags(flags):
            return None

        def codegen(context, builder, sig, args):
            ptr, value = _flag_and_value(context, builder, sig, args)
            builder.store_atomic(value, ptr, ordering, align=8)
            return context.get_dummy_value()

        return types.none(flags, i, value), codegen

    return intrinsic(store)


@intrinsic
def _fetch_add(typingctx, flags, i, value):
    """flags[i] += value as one atomic step; returns flags[i] as it was before."""
    if not _int64_flags(flags):
        return None

    def codegen(context, builder, sig, args):
        ptr, value = _flag_and_value(context, builder, sig, args)
        return builder.atomic_rmw("add", ptr, value, "monotonic")

    return types.int64(flags, i, value), codegen


#: flags[i] = value, every earlier write visible to a thread that then reads the value
_store_release = _atomic_store("release")
#: the same and a full fence: a load after it is not done before it (x86 reorders a load
#: before an earlier store; the sleep protocol below relies on that not happening)
_store_fenced = _atomic_store("seq_cst")


@intrinsic
def _cpu_pause(typingctx):
    """The x86 ``pause`` hint: a polite spin (frees pipeline resources, saves power)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _cycle_counter(typingctx):
    """The CPU's time-stamp counter (``llvm.readcyclecounter``, rdtsc on x86): a clock
    that every core reads at the same constant rate (the ``constant_tsc`` flag)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@njit
def cycles():
    """The time-stamp counter, for timing a part on this thread as _serve times a worker's."""
    return _cycle_counter()


@intrinsic
def pointer_to(typingctx, address, like):
    """The integer address as a pointer to elements of like's type (a scalar of the
    dtype), for ``numba.carray``: a native part's arrays arrive as addresses."""
    if not isinstance(address, types.Integer) or not isinstance(like, (types.Float, types.Integer)):
        return None
    pointer = types.CPointer(like)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


@intrinsic
def call_native(typingctx, address, args):
    """Call the compiled Numba function at `address` (Numba's own calling convention, a
    function returning None) with the tuple `args`, whose types must be the ones it was
    compiled for (see :func:`native_address`); return whether it raised."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    arg_types = tuple(args.types)

    def codegen(context, builder, sig, llargs):
        call_conv = context.call_conv
        fnty = call_conv.get_function_type(types.none, arg_types)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        values = [builder.extract_value(llargs[1], i) for i in range(len(arg_types))]
        result_type = call_conv.get_return_type(types.none).pointee
        result = cgutils.alloca_once(builder, result_type)
        builder.store(cgutils.get_null_value(result_type), result)
        excinfo = cgutils.alloca_once(builder, fnty.args[1].pointee)
        packed = list(call_conv._get_arg_packer(arg_types).as_arguments(builder, values))
        code = builder.call(fn, [result, excinfo, *packed])
        status = call_conv._get_return_status(builder, code, builder.load(excinfo))
        return builder.zext(status.is_error, ir.IntType(64))

    return types.int64(address, args), codegen


def native_address(kernel, arg_types) -> int:
    """The machine-code address of `kernel` (an njit dispatcher) compiled for arg_types,
    compiling it (or loading it from Numba's cache) if it is not yet; for
    :func:`call_native` and :func:`run_native_parts`."""
    arg_types = tuple(arg_types)
    if arg_types not in kernel.overloads:
        kernel.compile(arg_types)
    compiled = kernel.overloads[arg_types]
    address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    if not address:
        raise RuntimeError(f"no machine code found for {kernel.__name__}{arg_types}")
    return address


# A part's flags, one row of PROGRESS_WORDS (a cache line) per worker: the part's
# number, written by the caller; the number of the part that has started and of the
# part that is done, written by the kernel (and by the worker's Python code); the number
# of the last part after which the worker is idle again, spinning without the GIL.
# FAILED is set by a worker whose native part raised, BUSY to the time-stamp counter
# cycles its last native part took.
SEQUENCE, STARTED, DONE, IDLE, FAILED, BUSY, PROGRESS_WORDS = 0, 1, 2, 3, 4, 5, 8
#: int64 words of a worker's slot: RUNNER, the address of the compiled function that
#: runs its native part, runner(slot, progress), or 0 for a Python part; then the
#: part's arguments, as the runner reads them
RUNNER, SLOT_WORDS = 0, 32


@njit_inline
def part_started(progress):
    """First statement of a kernel run by :func:`run_parts`: this part is running."""
    _store_release(progress, STARTED, progress[SEQUENCE])


@njit_inline
def part_done(progress):
    """Last statement of a kernel run by :func:`run_parts`: its outputs are written."""
    _store_release(progress, DONE, progress[SEQUENCE])


@njit_inline
def claim(counter):
    """The next index of a range that the parts of one run_parts call share: counter[0]
    (an int64 array, 0 at the start) is taken and raised by one, atomically, so every
    index goes to exactly one part. A part on a core that runs faster takes more of them
    (a dynamic schedule): on 2-vCPU VMs whose two vCPUs ran at 72-152 GFLOP/s from one
    second to the next, a static half each left one thread waiting for the other. For
    work whose every index writes only its own outputs, so the results do not depend on
    which part took it."""
    return _fetch_add(counter, 0, 1)


#: the flags passed to a part run on the calling thread (nobody waits for them)
NO_PROGRESS = np.zeros(PROGRESS_WORDS, np.int64)


@njit
def _serve(posted, w, seen, progress, slot, spins):
    """Worker w, its part `seen` finished: say it is idle (the GIL released), then spin
    until a part is posted, running native parts here as they come (their runner
    through its address, see call_native) and spinning again after each. Returns
    (number of a Python part posted, True), or (the last part seen, False) once
    `spins` pauses have passed with nothing posted."""
    _store_release(progress, IDLE, seen)
    left = spins
    while left > 0:
        current = _load_acquire(posted, w)
        if current == seen:
            _cpu_pause()
            left -= 1
            continue
        if slot[RUNNER] == 0:
            return current, True
        start = _cycle_counter()
        if call_native(slot[RUNNER], (slot, progress)):
            progress[FAILED] = current
        progress[BUSY] = _cycle_counter() - start
        _store_release(progress, DONE, current)
        _store_release(progress, IDLE, current)
        seen = current
        left = spins
    return seen, False


@njit_inline
def _reached(progress, row, flag, seq):
    """Whether a worker's part `seq` has reached `flag` or a later one (a part that is done
    has also started: a kernel that does not signal is only marked done by Python)."""
    for later in range(flag, IDLE + 1):
        if _load_acquire(progress, row + later) == seq:
            return True
    return False


@njit
def _spin_until_reached(progress, n, flag, spins):
    """Spin until every worker w < n has reached `flag` of its part, or `spins` pauses
    have passed; return whether they all have."""
    for w in range(n):
        row = w * PROGRESS_WORDS
        seq = progress[row + SEQUENCE]
        while not _reached(progress, row, flag, seq):
            if spins == 0:
                return False
            spins -= 1
            _cpu_pause()
    return True


# what _post_and_wait found
STARTED_ALL, TIMED_OUT, SOME_ASLEEP = 0, 1, 2


@njit
def _post_and_wait(posted, progress, asleep, n, spins):
    """Hand workers 0..n-1 their next part, then wait until their kernels have started.

    Compiled, so it runs with the GIL released: a worker sees its part only once this
    thread no longer holds the GIL, and takes the GIL without waiting for it. Returns
    SOME_ASLEEP at once if a worker may be asleep (the caller must wake it).
    """
    for w in range(n):
        seq = posted[w] + 1
        progress[w * PROGRESS_WORDS + SEQUENCE] = seq
        _store_fenced(posted, w, seq)
    for w in range(n):
        if _load_acquire(asleep, w):
            return SOME_ASLEEP
    # (the flag as a runtime int: the literal STARTED would compile a second
    # _spin_until_reached beside the one Python calls)
    started = np.int64(STARTED)
    return STARTED_ALL if _spin_until_reached(progress, n, started, spins) else TIMED_OUT


@njit
def _announce_sleep(asleep, posted, w):
    """Worker w says it is going to sleep, then reads posted[w] (see _SpinPool)."""
    _store_fenced(asleep, w, 1)
    return _load_acquire(posted, w)


# ----------------------------------------------------------------------------
# the worker pool
# ----------------------------------------------------------------------------


class _SpinPool:
    """Worker threads that each run one posted part at a time.

    Worker w's protocol: ``posted[w]`` counts the parts handed to it and
    ``progress[w]`` holds the current part's number and how far it got. The worker
    spins on ``posted[w]``; after WORKER_SPINS it takes ``wakeup``'s lock, sets
    ``asleep[w]``, reads ``posted[w]`` once more, and waits if nothing came. The caller
    writes ``posted`` and then reads ``asleep`` (each store fenced, so neither side
    can read before its own write is visible): either the worker sees the new part or
    the caller sees the worker asleep and notifies it under the lock, under which the
    worker re-checks ``posted`` before it waits. No wake-up is lost.
    """

    def __init__(self):
        self.posted = np.zeros(0, np.int64)
        self.asleep = np.zeros(0, np.int64)
        self.progress = np.zeros(0, np.int64)
        self.slots = np.zeros((0, SLOT_WORDS), np.int64)
        #: per worker, its speed over this thread's in its recent native parts (work done
        #: per cycle, smoothed): the shares in which part_shares cuts the next product
        self.speeds: list = []
        self.rows: list = []
        self.tasks: list = []
        self.errors: list = []
        self.wakeup = threading.Condition()
        self.busy = threading.Lock()  # one caller at a time owns the workers
        self._grow(max(1, numba.config.NUMBA_NUM_THREADS - 1))

    def _grow(self, n):
        """Room for n workers. The arrays are replaced (their values kept) under the
        lock, under which a worker also announces its sleep, so no announcement lands
        in an old array; a spinning worker reads the new ones after its spin."""
        with self.wakeup:
            self.posted = _extended(self.posted, n)
            self.asleep = _extended(self.asleep, n)
            self.progress = _extended(self.progress, n * PROGRESS_WORDS)
            self.slots = _extended(self.slots, n)
            self.speeds += [1.0] * (n - len(self.speeds))
            self.rows = [self.progress[w * PROGRESS_WORDS:(w + 1) * PROGRESS_WORDS]
                         for w in range(n)]

    def ensure_workers(self, n):
        if n <= len(self.tasks):
            return
        if n > len(self.posted):
            self._grow(n)
        old = len(self.tasks)
        self.tasks += [None] * (n - old)
        self.errors += [None] * (n - old)
        for w in range(old, n):
            threading.Thread(target=self._work, args=(w,), name=f"tinyvae-{w}", daemon=True).start()

    def _work(self, w):
        seen = 0
        while True:
            seen, python_part = _serve(self.posted, w, seen, self.rows[w], self.slots[w],
                                       WORKER_SPINS)
            if not python_part:
                with self.wakeup:
                    while _announce_sleep(self.asleep, self.posted, w) == seen:
                        self.wakeup.wait()
                    self.asleep[w] = 0
                continue  # _serve takes the part that came, native or not
            kernel, args = self.tasks[w]
            self.tasks[w] = None
            try:
                kernel(*args)
            except BaseException as error:  # handed to the caller, which re-raises it
                self.errors[w] = error
            # already said by a kernel that signals; needed for one that does not (or raised)
            self.rows[w][DONE] = seen

    def run(self, kernel, parts):
        """kernel(*parts[0]) here and kernel(*parts[w + 1]) on worker w, each with its
        progress flags appended; wait for all."""
        n = len(parts) - 1
        self.ensure_workers(n)
        for w in range(n):
            self.tasks[w] = (kernel, (*parts[w + 1], self.rows[w]))
            self.slots[w, RUNNER] = 0  # a Python part
        found = _post_and_wait(self.posted, self.progress, self.asleep, n, CALLER_SPINS)
        if found == SOME_ASLEEP:
            # waking takes ~50 us: this thread does its part meanwhile
            with self.wakeup:
                self.wakeup.notify_all()
        elif found == TIMED_OUT:
            self._wait(n, STARTED)
        try:
            kernel(*parts[0], NO_PROGRESS)
        finally:
            # idle, not only done: a worker whose kernel has returned still needs the
            # GIL for a few lines of Python (see the module docstring, The GIL)
            self._wait(n, IDLE)
        error = None
        for w in range(n):
            if self.errors[w] is not None:
                error, self.errors[w] = error or self.errors[w], None
        if error is not None:
            raise error

    def run_native(self, kernel, parts, post, addresses, what, work):
        """kernel(*parts[0]) here and, on worker w, the native part that post(slot,
        *addresses, *parts[w + 1]) writes into its slot; wait for all. No waiting for the
        workers to start: they never take the GIL. With `work` (the parts' sizes), each
        worker's speed against this thread's is measured and smoothed into self.speeds."""
        n = len(parts) - 1
        self.ensure_workers(n)
        for w in range(n):
            post(self.slots[w], *addresses, *parts[w + 1])
        if _post_and_wait(self.posted, self.progress, self.asleep, n, 0) == SOME_ASLEEP:
            with self.wakeup:
                self.wakeup.notify_all()
        start = cycles()
        try:
            kernel(*parts[0], NO_PROGRESS)
        finally:
            own = cycles() - start
            self._wait(n, IDLE)
        for w in range(n):
            if self.rows[w][FAILED] == self.posted[w]:
                raise RuntimeError(f"{what} failed on worker thread {w} (out of memory?)")
        if work is not None and own > 0:
            self._measure_speeds(n, work, own)

    def _measure_speeds(self, n, work, own):
        """Move each worker's speed estimate towards its speed in this call: its work per
        cycle (BUSY) over this thread's (`own` cycles for work[0])."""
        low, high = SPEED_RANGE
        for w in range(n):
            busy = int(self.rows[w][BUSY])
            if busy > 0:
                speed = min(max(work[w + 1] * own / (busy * work[0]), low), high)
                self.speeds[w] += SPEED_SMOOTHING * (speed - self.speeds[w])

    def _wait(self, n, flag):
        """Spin, GIL released, until workers 0..n-1 have reached `flag` of their part."""
        while not _spin_until_reached(self.progress, n, flag, CALLER_SPINS):
            pass


def _extended(a, size):
    """a followed by zeros up to `size` rows (elements of a 1-D a): a new array."""
    return np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


#: the pool and the process that made it: a child made by fork inherits the pool
#: object but not its threads, so it must make its own
_pool: dict = {"pid": None, "pool": None}


def _the_pool() -> _SpinPool:
    if _pool["pid"] != os.getpid():
        _pool["pool"] = _SpinPool()
        _pool["pid"] = os.getpid()
    return _pool["pool"]


def num_threads() -> int:
    """Threads the kernels may use: Numba's setting for the calling thread."""
    if not _thread_count:
        _thread_count.append(_thread_count_reader())
    return _thread_count[0]()


#: the function num_threads calls, found on first use
_thread_count: list = []


def _thread_count_reader():
    """The function that reads Numba's thread count. numba.get_num_threads takes two
    locks before it reads the count (~0.9 us, and a training step asks ~30 times); once
    Numba's threading layer is loaded, the C function it then calls reads the same
    per-thread count in ~0.1 us. Numba's public function where that one is missing."""
    numba.get_num_threads()  # loads the threading layer
    read = getattr(numba_parallel, "_get_num_threads", None)
    return read if callable(read) else numba.get_num_threads


def run_parts(kernel, parts) -> None:
    """Call kernel(*args, progress) for every args in parts: the first on this thread,
    the rest on worker threads; return when all are done (re-raising the first error).
    `progress` is the part's flags, for :func:`part_started` and :func:`part_done`.

    If another thread is already using the workers, the parts run here one after
    another: the same results, computed without parallelism.
    """
    pool = _claim_pool(parts)
    if pool is None:
        for args in parts:
            kernel(*args, NO_PROGRESS)
        return
    try:
        pool.run(kernel, parts)
    finally:
        pool.busy.release()


def _claim_pool(parts):
    """The pool, its workers taken (busy), for a call of these parts; None when they need
    no worker (one part or none: an empty range) or another thread holds the workers, and
    the caller runs every part itself."""
    if len(parts) <= 1:
        return None
    pool = _the_pool()
    return pool if pool.busy.acquire(blocking=False) else None


def part_shares(n_parts):
    """The shares of work for a call of n_parts parts, this thread's first: 1 for this
    thread and each worker's measured speed against it (see the module docstring,
    Unequal cores); all ones until the pool has that many workers."""
    speeds = _the_pool().speeds
    if len(speeds) < n_parts - 1:
        return [1.0] * n_parts
    return [1.0, *speeds[:n_parts - 1]]


def run_native_parts(kernel, parts, post, addresses, what="a native part", work=None) -> None:
    """run_parts for a kernel whose worker parts run without Python (see the module
    docstring, Native parts): kernel(*parts[0], progress) on this thread and, on worker w,
    what post(slot, *addresses, *parts[w + 1]) writes into its slot: the address of a
    runner and the arguments it reads (the runner calls the kernel through call_native,
    with the worker's progress flags). A failed worker part raises RuntimeError naming
    `what`.
    work: the parts' sizes (in any unit, e.g. elements of the output), from which each
    worker's speed is measured for :func:`part_shares`.

    If another thread is already using the workers, the parts run here one after another
    through kernel itself: the same results.
    """
    pool = _claim_pool(parts)
    if pool is None:
        for args in parts:
            kernel(*args, NO_PROGRESS)
        return
    try:
        pool.run_native(kernel, parts, post, addresses, what, work)
    finally:
        pool.busy.release()


def split_shares(n: int, shares, multiple: int = 1) -> list[tuple[int, int]]:
    """Cut range(n) into len(shares) contiguous [lo, hi) pieces (fewer if n is short), piece
    p about shares[p] / sum(shares) of it, inner edges on multiples of `multiple`, each at
    least one multiple long."""
    units = -(-n // multiple)
    parts = min(len(shares), units)
    if parts <= 1:
        return [(0, n)] if n > 0 else []
    total = sum(shares[:parts])
    pieces, lo, edge, before = [], 0, 0, 0
    for p in range(parts - 1):
        before += shares[p]
        # rounded down (for equal shares units * c // parts exactly: the quotient of two
        # whole numbers is rounded correctly); at least one unit for this piece and for
        # each one after it
        edge = min(max(int(units * before / total), edge + 1), units - (parts - 1 - p))
        pieces.append((lo, edge * multiple))
        lo = edge * multiple
    pieces.append((lo, n))
    return pieces
