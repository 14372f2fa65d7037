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


def test_bench_step_times_the_main_job_model(capsys):
    assert cli.main(["bench", "step", "--quick", "--threads", "1", "--no-torch",
                     "--model", "main-job"]) == 0
    assert "main-job" in capsys.readouterr().out


def test_main_job_flops_count_every_pixel_row():
    config = bench.main_job_config()
    assert config["model"] == "beta-tcvae" and config["decoder"] == "broadcast"
    P, (h1, h2) = config["resolution"] ** 2, config["decoder_hidden"]
    encoder = bench.layer_shapes(P, tuple(config["hidden"]), config["latent"])[:3]
    per_pixel = 2.0 * 64 * P * (h1 * h2 + h2)
    rest = 3 * 2.0 * 64 * config["latent"] * h1 + 2 * 2.0 * P * 2 * h1
    assert bench.main_job_gemm_flops(64, config) == bench.gemm_flops(64, encoder) \
        + 3 * per_pixel + rest


def test_torch_main_job_computes_tinyvaes_loss():
    """Same model, same loss: the PyTorch contender, given tinyvae's parameters, gives the
    loss tinyvae's BetaTCVAE gives on the same batch and noise."""
    torch = pytest.importorskip("torch")
    import tinyvae as tv
    from tinyvae import run

    for estimator in ("mss", "mws"):
        _check_torch_main_job_loss(torch, tv, run, {**bench.main_job_config(quick=True),
                                                    "estimator": estimator})


def _check_torch_main_job_loss(torch, tv, run, config):
    side = config["resolution"]
    model = run.build_model(config, side * side, (side, side))
    rng = np.random.default_rng(0)
    x = (rng.random((7, side * side)) < 0.3).astype(np.float32)
    eps = rng.standard_normal((7, config["latent"])).astype(np.float32)
    with tv.use_backend("numpy"):
        loss, _ = model.loss(x, eps=eps)
    theirs = bench.TorchMainJob(config)
    theirs.load_from(model.params)
    with torch.no_grad():
        torch_loss = theirs.loss(torch.from_numpy(x), torch.from_numpy(eps)).item()
    assert torch_loss == pytest.approx(float(loss), rel=1e-5)
