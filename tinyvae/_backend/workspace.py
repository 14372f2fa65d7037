"""Large scratch arrays reused from one training step to the next.

The spatial broadcast decoder keeps every hidden layer of every (image, pixel) row
for its backward pass: at the main job's size, two arrays of 16 MB a step. Freshly
allocated each step, such arrays are fresh mappings of memory; the kernel then
pays for them in page faults (the operating system zeroing every page on first
touch), measured at a quarter of the main job's step on a 2-vCPU Zen 3 VM (sys
time 9-12 ms of a 38-49 ms step). :func:`empty` hands out an array that an
earlier call allocated, but only once nothing else refers to it any more (its
reference count says so), so reuse can never overwrite live data: a forward cache
kept alive by its caller keeps its arrays to itself.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: arrays smaller than this come from np.empty every time (malloc keeps them mapped)
MIN_BYTES = 1 << 20
#: at most this many bytes of arrays kept for reuse; past it the unused ones are dropped
MAX_BYTES = 256 << 20

_lock = threading.Lock()
_pool: dict[tuple[int, np.dtype], list[np.ndarray]] = {}


def _references(a) -> int:
    return sys.getrefcount(a)


def _free_references() -> int:
    """What _references says of a pooled array that nothing outside the pool refers to,
    asked from a loop over the pool's list (the list, the loop variable, the calls)."""
    for a in [np.empty(1)]:
        return _references(a)
    raise AssertionError("unreachable")


_FREE = _free_references()


def _first_free(arrays):
    for a in arrays:
        if _references(a) == _FREE:
            return a
    return None


def _drop_free():
    for key in list(_pool):
        kept = []
        for a in _pool[key]:
            if _references(a) != _FREE:
                kept.append(a)
        if kept:
            _pool[key] = kept
        else:
            del _pool[key]


def pooled_bytes() -> int:
    """Bytes of the arrays the pool holds, in use or not."""
    with _lock:
        return _total_bytes()


def _total_bytes():
    return sum(a.nbytes for arrays in _pool.values() for a in arrays)


def release() -> None:
    """Forget every pooled array that nothing else refers to (its memory is freed)."""
    with _lock:
        _drop_free()


def empty(size: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of `size` elements of `dtype`, like ``np.empty``, but
    one no longer referred to from an earlier call when the pool has it."""
    dtype = np.dtype(dtype)
    if size * dtype.itemsize < MIN_BYTES:
        return np.empty(size, dtype)
    key = (size, dtype)
    with _lock:
        arrays = _pool.setdefault(key, [])
        found = _first_free(arrays)
        if found is not None:
            return found
        if _total_bytes() + size * dtype.itemsize > MAX_BYTES:
            _drop_free()
            arrays = _pool.setdefault(key, [])
        fresh = np.empty(size, dtype)
        arrays.append(fresh)
        return fresh
