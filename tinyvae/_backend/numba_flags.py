"""The one place that owns tinyvae's Numba flags.

Every kernel is compiled through :func:`njit` or :func:`njit_parallel` (its small
helpers through :func:`njit_inline`) so the flags (caching, fastmath, nogil) are chosen
once. ``cache=True`` stores compiled code on
disk, so only the first process on a machine pays the compile time.
"""

from __future__ import annotations

import numba

# Reassociation and FMA contraction let LLVM vectorise reductions; our kernels
# never rely on IEEE summation order. We deliberately leave out "nnan"/"ninf":
# the training loop must see NaN and inf to stop on them, and the stable
# log-sigmoid relies on inf arithmetic being honest.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

njit = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")
njit_parallel = numba.njit(
    cache=True, fastmath=FASTMATH, nogil=True, parallel=True, error_model="numpy"
)
# For the small helpers of a kernel (a formula, a select, a flag): their Numba IR is
# inlined into each caller before typing, so they do not go through a compilation
# pipeline of their own (Adam's formula, once for vectors and once for the scalar tail,
# and the parts' flags: ~0.5 s of a cold float32 step, 8.7 -> 8.2 s on Zen 4). Not for
# helpers inside a sum (the log-sigmoid of the Bernoulli loss): there the inlined IR was
# vectorised differently and changed the float64 loss's last bits; nor for the GEMM's
# stores, whose many call sites made _gemm_tile's own compile slower than it saved.
njit_inline = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy",
                         inline="always")


# Without reassociation: every sum runs in the order the code writes it, on any CPU and
# in any compilation. For code that must match another library's floating point (the
# boosted trees of tinyvae._backend.boosting, compared with scikit-learn's), where a
# sum regrouped for a wider vector unit (AVX-512 against AVX2) can flip a near tie.
njit_in_order = numba.njit(cache=True, nogil=True, error_model="numpy")
njit_parallel_in_order = numba.njit(cache=True, nogil=True, parallel=True,
                                    error_model="numpy")


def set_num_threads(n: int) -> None:
    """Set the number of threads tinyvae's kernels use (1..NUMBA_NUM_THREADS)."""
    numba.set_num_threads(int(n))


def get_num_threads() -> int:
    return numba.get_num_threads()
