"""Reused scratch memory (tinyvae._backend.workspace): an array is handed out again only
once nothing outside the pool refers to it, and the pool stays within its bound."""

import gc
import threading
import time

import numpy as np
import pytest

from tinyvae._backend import workspace


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    """A pool holding nothing but what other tests still use; small arrays pooled."""
    monkeypatch.setattr(workspace, "MIN_BYTES", 64)
    gc.collect()
    workspace.release()
    yield workspace.pooled_bytes()
    workspace.release()


def test_an_array_in_use_is_never_handed_out_again():
    a = workspace.empty(100, np.float32)
    b = workspace.empty(100, np.float32)
    assert a is not b and not np.shares_memory(a, b)
    view = b[10:20]
    del b
    c = workspace.empty(100, np.float32)
    assert not np.shares_memory(c, view)   # a view keeps its base in use
    assert not np.shares_memory(c, a)


def test_a_released_array_is_reused_and_keeps_shape_and_dtype():
    a = workspace.empty(100, np.float64)
    address = a.__array_interface__["data"][0]
    del a
    b = workspace.empty(100, np.float64)
    assert b.__array_interface__["data"][0] == address
    assert b.shape == (100,) and b.dtype == np.float64
    other = workspace.empty(100, np.float32)   # another dtype: another array
    assert not np.shares_memory(other, b)


def test_small_arrays_are_not_pooled(empty_pool):
    a = workspace.empty(3, np.float32)   # 12 bytes < MIN_BYTES
    assert a.shape == (3,)
    assert workspace.pooled_bytes() == empty_pool


def test_the_pool_drops_unused_arrays_past_its_bound(monkeypatch, empty_pool):
    monkeypatch.setattr(workspace, "MAX_BYTES", empty_pool + 1000)
    kept = workspace.empty(100, np.float32)        # 400 bytes, in use
    for size in (101, 102, 103, 104):              # each dropped once it is unused
        workspace.empty(size, np.float32)
        assert workspace.pooled_bytes() <= empty_pool + 1000 + 4 * size
    assert workspace.pooled_bytes() <= empty_pool + 1000
    assert kept.size == 100
    del kept
    workspace.release()
    assert workspace.pooled_bytes() == empty_pool


def test_threads_never_share_an_array():
    """Each thread fills the arrays it holds with its own mark and checks them again
    after the others have run: an array handed to two threads at once would show."""
    errors = []
    barrier = threading.Barrier(4)

    def take(mark):
        try:
            barrier.wait()
            mine = []
            for _ in range(300):
                a = workspace.empty(256, np.float32)
                a.fill(mark)
                mine.append(a)
                if len(mine) > 3:
                    mine.pop(0)
                time.sleep(0)
                for b in mine:
                    if not (b == mark).all():
                        errors.append(f"thread {mark} lost an array")
                        return
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=take, args=(mark,)) for mark in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
