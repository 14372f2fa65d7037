"""Smoke tests of ``tinyvae bench``: the commands run and print their tables (no timing checks)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyvae import bench, cli


@pytest.fixture(autouse=True)
def _keep_numpy_error_state():
    # cli.main sets np.seterr for the process; give the other tests theirs back
    state = np.geterr()
    yield
    np.seterr(**state)


def test_bench_gemm_quick_prints_a_table(capsys):
    assert cli.main(["bench", "gemm", "--quick", "--threads", "1", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "GEMM float32, 1 thread(s)" in out
    for form in ("A@B", "A.T@B", "A@B.T"):
        assert form in out
    assert "summary: tinyvae / numpy.matmul speed ratio" in out


def test_bench_step_quick_prints_a_table(capsys):
    assert cli.main(["bench", "step", "--quick", "--threads", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "training steps/s" in out
    assert "floor/step" in out


def test_bench_rejects_bad_thread_count(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "gemm", "--quick", "--threads", "0"])
    assert "--threads" in capsys.readouterr().err


def test_layer_shapes_merge_the_heads_and_count_flops():
    shapes = bench.layer_shapes(784, (400,), 20)
    assert shapes == [(784, 400), (400, 40), (20, 400), (400, 784)]
    # forward + weight grads for every layer, input grads for all but the first
    per = [2.0 * 64 * fi * fo for fi, fo in shapes]
    assert bench.gemm_flops(64, shapes) == 2 * sum(per) + sum(per[1:])


def test_interleaved_times_settles_each_turn_untimed():
    calls = []
    times = bench.interleaved_times([lambda: calls.append("a"), lambda: calls.append("b")],
                                    min_time=0.0, min_reps=1, warmup=0, block=3, settle=1,
                                    settle_seconds=0.02)
    assert [len(t) for t in times] == [2, 2]  # block - settle timed calls per turn
    assert calls.count("a") > 3 and calls.count("b") > 3  # plus the untimed settling runs
