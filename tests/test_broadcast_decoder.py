"""The spatial broadcast decoder: its layer against the explicit tiling, its gradients,
and the models, checkpoints and command line that carry it."""

import json

import numpy as np
import pytest

import tinyvae as tv
from tinyvae import gradcheck, kernels, layers
from tinyvae import run as runs

BACKENDS = ["numpy", "numba"]


def joined_reference(z, coords, Wz, Wxy, b, activation):
    """The definition: build the (n P, d + 2) rows [z_i, x_p, y_p] and run one dense layer."""
    n, P = z.shape[0], coords.shape[0]
    rows = np.concatenate([np.repeat(z, P, axis=0), np.tile(coords, (n, 1))], axis=1)
    return layers.ACTIVATION_LAYERS[activation][0](rows @ np.concatenate([Wz, Wxy]) + b)[0]


def test_pixel_coordinates_are_x_along_rows_and_y_down_the_image():
    c = layers.pixel_coordinates((3, 5))
    assert c.shape == (15, 2)
    np.testing.assert_allclose(c[:5, 0], np.linspace(-1, 1, 5))    # first row: x moves
    np.testing.assert_allclose(c[:5, 1], -1.0)                     # ... at the top
    np.testing.assert_allclose(c[::5, 1], [-1, 0, 1])              # first column: y moves
    assert layers.pixel_coordinates((2, 2), np.float32).dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "d", "shape", "h"), [(1, 1, (1, 1), 1), (3, 5, (3, 7), 9),
                                                    (7, 2, (5, 1), 33)])
def test_forward_matches_the_explicit_tiling(backend, dtype, n, d, shape, h):
    rng = np.random.default_rng(n + h)
    z = rng.standard_normal((n, 2 * d)).astype(dtype)[:, ::2]       # non-contiguous
    coords = layers.pixel_coordinates(shape, dtype)
    Wz, Wxy, b = (rng.standard_normal(s).astype(dtype) for s in ((d, h), (2, h), (h,)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for act in ("relu", "tanh", "leaky_relu"):
        with tv.use_backend(backend):
            out, _ = layers.broadcast_forward(z, coords, Wz, Wxy, b, act)
        assert out.shape == (n * shape[0] * shape[1], h) and out.dtype == dtype
        np.testing.assert_allclose(out, joined_reference(z, coords, Wz, Wxy, b, act),
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "softplus", "tanh"])
def test_backward_matches_numerical_vjp(backend, activation):
    rng = np.random.default_rng(3)
    n, d, h, shape = 3, 4, 5, (2, 3)
    z = rng.standard_normal((n, d))
    coords = layers.pixel_coordinates(shape)
    Wz, Wxy, b = rng.standard_normal((d, h)), rng.standard_normal((2, h)), rng.standard_normal(h)
    dout = rng.standard_normal((n * 6, h))
    with tv.use_backend(backend):
        out, cache = layers.broadcast_forward(z, coords, Wz, Wxy, b, activation)
        dz, dWz, dWxy, db = layers.broadcast_backward(dout, cache)

    def f(_):
        return layers.broadcast_forward(z, coords, Wz, Wxy, b, activation)[0]

    for name, x, got in (("z", z, dz), ("Wz", Wz, dWz), ("Wxy", Wxy, dWxy), ("b", b, db)):
        num = gradcheck.numerical_vjp(f, x, dout)
        assert gradcheck.rel_error(got, num) < 1e-8, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cls", "kwargs"), [
    (tv.VAE, {}),
    (tv.BetaTCVAE, {"dataset_size": 40, "estimator": "mws"}),
    (tv.BetaTCVAE, {"dataset_size": 40, "estimator": "mss", "activation": "leaky_relu"}),
    (tv.BetaVAE, {"beta": 4.0, "activation": "tanh"}),
    (tv.Autoencoder, {}),
])
def test_model_gradients_in_float64(backend, cls, kwargs):
    rng = np.random.default_rng(1)
    model = cls(15, (7,), 3, dtype=np.float64, seed=2, decoder="broadcast",
                decoder_hidden=(5, 4), image_shape=(3, 5), **kwargs)
    for p in model.params.values():          # odd values: zeros hide backward bugs
        p += rng.normal(0, 0.3, p.shape)
    x = (rng.random((6, 15)) > 0.5).astype(np.float64)
    with tv.use_backend(backend):
        errors = gradcheck.check_grads(model, x)
    assert {"dec1.W", "dec1.Wxy", "dec1.b", "dec2.W", "out.W"} <= set(errors)
    assert max(errors.values()) < 1e-7, errors



def random_pixel_decoder(rng, dtype, n, d, shape, hidden, non_contiguous=False):
    """(z, coords, first, hidden layers, out) of a decoder with widths `hidden`."""
    z = rng.standard_normal((n, 2 * d) if non_contiguous else (n, d)).astype(dtype)
    z = z[:, ::2] if non_contiguous else z
    coords = layers.pixel_coordinates(shape, dtype)
    h1 = hidden[0]
    first = tuple(rng.standard_normal(s).astype(dtype) for s in ((d, h1), (2, h1), (h1,)))
    dense = [((rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype),
              rng.standard_normal(b).astype(dtype)) for a, b in zip(hidden[:-1], hidden[1:], strict=True)]
    out = (rng.standard_normal((hidden[-1], 1)).astype(dtype), rng.standard_normal(1).astype(dtype))
    return z, coords, first, dense, out


def flat_grads(grads):
    dz, first, hidden, out = grads
    return [dz, *first, *(g for layer in hidden for g in layer), *out]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "d", "shape", "hidden", "activation"), [
    (1, 1, (1, 1), (1,), "relu"),                  # every size 1
    (3, 5, (3, 5), (7, 9, 3), "relu"),             # odd everything, three hidden layers
    (2, 4, (4, 4), (32, 32), "sigmoid"),           # the main job's widths
    (2, 4, (4, 4), (32, 32), "relu"),              # ... and activation
    (3, 2, (5, 5), (9, 40), "relu"),               # a last layer of two column blocks
    (5, 3, (6, 7), (20,), "leaky_relu"),           # one hidden layer
    (2, 10, (8, 9), (16, 17), "softplus"),
    (4, 2, (1, 5), (33, 2), "tanh"),               # widths just past a vector block
])
def test_pixel_decoder_kernel_matches_its_numpy_definition(dtype, n, d, shape, hidden,
                                                           activation):
    """The compiled image-by-image decoder against the layer-by-layer NumPy body, forward
    and every gradient, on awkward shapes and a non-contiguous z."""
    rng = np.random.default_rng(sum(hidden) + n)
    z, coords, first, dense, out = random_pixel_decoder(rng, dtype, n, d, shape, hidden,
                                                        non_contiguous=True)
    dout = rng.standard_normal((n, shape[0] * shape[1])).astype(dtype)
    results = {}
    for backend in BACKENDS:
        with tv.use_backend(backend):
            y, cache = layers.pixel_decoder_forward(z, coords, first, dense, out, activation, 0.1)
            results[backend] = [y, *flat_grads(layers.pixel_decoder_backward(dout, cache))]
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for ref, got in zip(results["numpy"], results["numba"], strict=True):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_pixel_decoder_gradients_match_finite_differences(backend):
    rng = np.random.default_rng(5)
    z, coords, first, dense, out = random_pixel_decoder(rng, np.float64, 3, 4, (3, 5), (6, 5))
    dout = rng.standard_normal((3, 15))
    with tv.use_backend(backend):
        _, cache = layers.pixel_decoder_forward(z, coords, first, dense, out, "tanh")
        dz, dfirst, dhidden, dout_layer = layers.pixel_decoder_backward(dout, cache)
    inputs = [("z", z, dz), *zip(("Wz", "Wxy", "b"), first, dfirst, strict=True),
              ("W2", dense[0][0], dhidden[0][0]), ("b2", dense[0][1], dhidden[0][1]),
              ("W_out", out[0], dout_layer[0]), ("b_out", out[1], dout_layer[1])]

    def f(_):
        with tv.use_backend(backend):
            return layers.pixel_decoder_forward(z, coords, first, dense, out, "tanh")[0]

    for name, x, got in inputs:
        assert gradcheck.rel_error(got, gradcheck.numerical_vjp(f, x, dout)) < 1e-8, name


def test_pixel_decoder_kernel_gives_the_same_bits_on_any_thread_count():
    import numba

    rng = np.random.default_rng(7)
    z, coords, first, dense, out = random_pixel_decoder(rng, np.float32, 37, 10, (16, 16),
                                                        (32, 32))
    dout = rng.standard_normal((37, 256)).astype(np.float32)
    before, runs_by_threads = numba.get_num_threads(), []
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            with tv.use_backend("numba"):
                y, cache = layers.pixel_decoder_forward(z, coords, first, dense, out)
                runs_by_threads.append(
                    [y, *flat_grads(layers.pixel_decoder_backward(dout, cache))])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*runs_by_threads, strict=True):
        np.testing.assert_array_equal(a, b)

def test_fused_decoder_loss_gives_the_same_bits_on_any_thread_count():
    """The fused kernel's threads take images one at a time as they come free
    (threads.claim), so which thread runs an image changes from call to call; the results
    must not."""
    import numba

    from tinyvae import losses

    rng = np.random.default_rng(11)
    z, coords, first, dense, out = random_pixel_decoder(rng, np.float32, 37, 10, (16, 16),
                                                        (32, 32))
    x = (rng.random((37, 256)) < 0.4).astype(np.float32)
    before, runs = numba.get_num_threads(), []
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            with tv.use_backend("numba"):
                nll, dlogits, grads = losses.pixel_decoder_bernoulli_nll(
                    z, coords, first, dense, out, x, 0.5)
            runs.append([nll, dlogits, *flat_grads(grads)])
    finally:
        numba.set_num_threads(before)
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_part_that_reaches_an_image_before_image_0_gives_it_its_own_gradients():
    """In the fused kernel each thread takes the next image as it comes free, so a thread
    can finish image i's forward and NLL before another thread has written image 0's
    dlogits. Image i's backward must read its own dlogits only: it once took the sign of
    a zero from dlogits[0], uninitialised memory at that moment, and a NaN there made
    image i's output-layer gradient NaN (the rare two-thread non-finite gradients of the
    main job). Here one part starts at image 1 with image 0's dlogits still NaN."""
    from tinyvae._backend import nb_kernels, pixel_net
    from tinyvae._backend.threads import NO_PROGRESS

    rng = np.random.default_rng(5)
    n, shape = 3, (8, 8)
    z, coords, first, dense, out = random_pixel_decoder(rng, np.float32, n, 4, shape, (32, 32))
    P = shape[0] * shape[1]
    x = (rng.random(n * P) < 0.3).astype(np.float32)
    net = nb_kernels._pixel_network(z, coords, first, dense, out)
    results = []
    for start, fill in ((0, 0.0), (1, np.nan)):
        nll, logits = np.zeros(n, np.float32), np.zeros(n * P, np.float32)
        dlogits = np.full(n * P, fill, np.float32)
        grads = nb_kernels._pixel_gradient_arrays(n, net, np.float32)
        pixel_net.train_images(net.zW, net.cwb, net.Ws, net.bs, net.w_out, net.b_out, x,
                               np.float32(1 / n), net.coords, net.WTs, net.dims, net.P, net.Pp,
                               np.int64(kernels.activation_code("relu")), np.float32(0.01), nll,
                               logits, dlogits, *grads, np.array([start], np.int64), n,
                               NO_PROGRESS)
        per_image = [a.reshape(n, -1)[1:] for a in (nll, logits, dlogits, *grads[0], *grads[1],
                                                    *grads[2:])]
        results.append(per_image)
    for whole, late in zip(*results, strict=True):
        assert np.isfinite(late).all()
        np.testing.assert_array_equal(late, whole)


def test_a_kept_forward_cache_gives_its_own_gradients_after_other_forwards():
    """The compiled decoder's cache keeps its own copies of the network's arrays (its
    backward computes the layers again from them): forwards of other latents, and the
    parameters changing in place (as an optimizer step changes them), leave it alone."""
    rng = np.random.default_rng(11)
    z, coords, first, dense, out = random_pixel_decoder(rng, np.float32, 5, 3, (6, 7), (8, 9))
    z_other = rng.standard_normal(z.shape).astype(np.float32)
    dout = rng.standard_normal((5, 42)).astype(np.float32)
    with tv.use_backend("numba"):
        y, cache = layers.pixel_decoder_forward(z, coords, first, dense, out)
        want = [y.copy(), *flat_grads(layers.pixel_decoder_backward(dout, cache))]
        y, kept = layers.pixel_decoder_forward(z, coords, first, dense, out)
        y_other, _ = layers.pixel_decoder_forward(z_other, coords, first, dense, out)
        assert not np.array_equal(y_other, y)
        dense[0][0][...] += 1.0
        first[1][...] -= 1.0
        got = [y, *flat_grads(layers.pixel_decoder_backward(dout, kept))]
    # dz = g @ Wz.T reads Wz itself, as every layer's backward reads its weights
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "d", "shape", "hidden", "activation"), [
    (1, 1, (1, 1), (1,), "relu"),
    (3, 5, (3, 5), (7, 9, 3), "relu"),
    (2, 4, (4, 4), (32, 32), "sigmoid"),
    (2, 4, (4, 4), (32, 32), "relu"),
    (3, 2, (5, 5), (9, 40), "relu"),
    (5, 3, (6, 7), (20,), "leaky_relu"),
    (4, 2, (1, 5), (33, 2), "tanh"),
])
def test_fused_decoder_and_bernoulli_nll_give_the_bits_of_the_three_calls(
        dtype, n, d, shape, hidden, activation):
    """losses.pixel_decoder_bernoulli_nll runs forward, NLL and backward image by image;
    it must give exactly what the three calls give one after the other, on each backend
    (and the backends agree as the kernel tests ask)."""
    from tinyvae import losses

    rng = np.random.default_rng(sum(hidden) + 3 * n)
    z, coords, first, dense, out = random_pixel_decoder(rng, dtype, n, d, shape, hidden,
                                                        non_contiguous=True)
    P = shape[0] * shape[1]
    x = (rng.random((n, 2 * P)) < 0.4).astype(dtype)[:, ::2]       # non-contiguous targets
    results = {}
    for backend in BACKENDS:
        with tv.use_backend(backend):
            logits, cache = layers.pixel_decoder_forward(z, coords, first, dense, out,
                                                         activation, 0.1)
            nll, dlogits = losses.bernoulli_nll_logits(logits, x, 0.25)
            apart = [nll, dlogits, *flat_grads(layers.pixel_decoder_backward(dlogits, cache))]
            nll, dlogits, grads = losses.pixel_decoder_bernoulli_nll(
                z, coords, first, dense, out, x, 0.25, activation, 0.1)
            fused = [nll, dlogits, *flat_grads(grads)]
        for a, b in zip(apart, fused, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype == dtype
            np.testing.assert_array_equal(a, b)
        results[backend] = fused
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for ref, got in zip(results["numpy"], results["numba"], strict=True):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_parameter_names_and_shapes():
    m = tv.VAE(12, (8,), 3, decoder="broadcast", decoder_hidden=(6, 5), image_shape=(3, 4))
    shapes = {k: v.shape for k, v in m.params.items() if k.startswith(("dec", "out"))}
    assert shapes == {"dec1.W": (3, 6), "dec1.Wxy": (2, 6), "dec1.b": (6,),
                      "dec2.W": (6, 5), "dec2.b": (5,), "out.W": (5, 1), "out.b": (1,)}
    assert m.decode(np.zeros((2, 3), np.float32)).shape == (2, 12)
    assert tv.VAE(16, (8,), 3, decoder="broadcast").image_shape == (4, 4)   # square by default


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="decoder.*'mlp', 'broadcast'.*'conv'"):
        tv.VAE(16, decoder="conv")
    with pytest.raises(ValueError, match="image_shape.*not a square"):
        tv.VAE(15, decoder="broadcast")
    with pytest.raises(ValueError, match=r"image_shape.*input_dim 15.*\(4, 4\)"):
        tv.VAE(15, decoder="broadcast", image_shape=(4, 4))
    with pytest.raises(ValueError, match="decoder_hidden.*at least one"):
        tv.VAE(16, decoder="broadcast", decoder_hidden=())


def test_checkpoint_round_trip_keeps_the_decoder(tmp_path):
    m = tv.BetaTCVAE(12, (8,), 3, dataset_size=20, decoder="broadcast", decoder_hidden=(4,),
                     image_shape=(3, 4))
    m.save(tmp_path / "m.npz")
    back = tv.load(tmp_path / "m.npz")
    assert (back.decoder, back.decoder_hidden, back.image_shape) == ("broadcast", (4,), (3, 4))
    z = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.decode(z), m.decode(z))
    # an MLP model's config is what it always was, so old checkpoints and configs still load
    assert "decoder" not in tv.VAE(12, (8,), 3).get_config()


def test_cli_refuses_what_does_not_fit():
    with pytest.raises(runs.UsageError, match="per-pixel"):
        runs.resolve_config({"dataset": "digits", "decoder_hidden": [8]})
    with pytest.raises(runs.UsageError, match="3-D points"):
        runs.resolve_config({"dataset": "spiral", "decoder": "broadcast"})
    config = runs.resolve_config({"dataset": "digits", "decoder": "broadcast"})
    assert config["decoder_hidden"] == runs.BROADCAST_HIDDEN
    assert "broadcast decoder" in runs.describe(config)
    assert runs.resolve_config({"model": "beta-vae"})["decoder"] == "mlp"   # its own recipe


def test_a_broadcast_run_trains_and_resumes_bit_for_bit(tmp_path):
    opts = ["--dataset", "digits", "--decoder", "broadcast", "--decoder-hidden", "6",
            "--steps", "6", "--batch-size", "8", "--quiet", "--no-report"]
    from tinyvae import cli
    assert cli.main(["train", *opts, "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["train", *opts[:-6], "--steps", "3", "--batch-size", "8", "--quiet",
                     "--no-report", "--out", str(tmp_path / "b")]) == 0
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "--steps", "6", "--quiet",
                     "--no-report"]) == 0
    a, b = tv.load(tmp_path / "a" / "checkpoint.npz"), tv.load(tmp_path / "b" / "checkpoint.npz")
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    config = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert (config["decoder"], config["decoder_hidden"]) == ("broadcast", [6])


_FRESH_COMPILE_SCRIPT = """
import sys
import numpy as np
import tinyvae as tv


def loss_and_grads(dtype):
    model = tv.BetaTCVAE(1024, (16,), 10, dataset_size=500, estimator="mss", seed=4,
                         decoder="broadcast", decoder_hidden=(32, 32), image_shape=(32, 32),
                         dtype=dtype)
    rng = np.random.default_rng(0)
    x = (rng.random((128, 1024)) < 0.3).astype(dtype)
    eps = rng.standard_normal((128, 10)).astype(dtype)
    loss, grads = model.loss(x, eps=eps)
    return {"loss": np.array(loss), **grads}


if sys.argv[2] == "float64-first":   # compile in another order: float64 kernels first
    loss_and_grads(np.float64)
np.savez(sys.argv[1], **loss_and_grads(np.float32))

# the GEMM's helpers compiled for a literal argument (a second copy of one, paid in cold
# compile time), as "name: signature" lines; the callees' signatures are known only in
# the process that compiled them
from numba import types
from numba.core.registry import CPUDispatcher
from tinyvae._backend import gemm

with open(sys.argv[1] + ".literals", "w") as f:
    for name, fn in vars(gemm).items():
        if isinstance(fn, CPUDispatcher):
            for sig in fn.signatures:
                if any(isinstance(t, types.Literal) for t in sig):
                    f.write(f"{name}: {sig}\\n")
"""


def test_a_fresh_compilation_gives_the_same_bits(tmp_path, monkeypatch):
    """The kernels compiled from scratch (an empty Numba cache, in another process), the
    same kernels loaded from that cache (a third process) and this process's kernels,
    compiled or loaded in whatever order the other tests left them, give the same bits.
    Each broke once: sums of fast-math adds regrouped differently in one compilation
    than in another; and a kernel calling a large compiled helper summed in one order
    as compiled and in another as loaded from the cache (a cold tinyvae train was
    another run than a warm one)."""
    import os
    import runpy
    import subprocess
    import sys

    script = tmp_path / "fresh.py"
    script.write_text(_FRESH_COMPILE_SCRIPT)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "TINYVAE_BACKEND": "numba"}
    for run in ("fresh", "cached"):
        subprocess.run([sys.executable, str(script), str(tmp_path / f"{run}.npz"), "float32"],
                       check=True, env=env, timeout=600)
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "here.npz"), "float64-first"])
    with tv.use_backend("numba"):
        runpy.run_path(str(script))
    fresh = np.load(tmp_path / "fresh.npz")
    assert "dec2.W" in fresh.files
    # every GEMM helper was compiled once per dtype, for runtime values of its arguments
    assert (tmp_path / "fresh.npz.literals").read_text() == ""
    for other in ("cached", "here"):
        got = np.load(tmp_path / f"{other}.npz")
        assert set(got.files) == set(fresh.files)
        for name in fresh.files:
            np.testing.assert_array_equal(got[name], fresh[name], err_msg=f"{other}: {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_layer_blocks_give_each_pixel_the_bits_of_its_own_dot(dtype):
    """The decoder's 32 -> 1 output layer sums L pixels at a time (transposed lanes, exact
    FMAs); every pixel must get the bits of _dot, the sum one pixel at a time, whatever
    the number of pixels (full blocks, a tail, only a tail)."""
    from tinyvae._backend import pixel_net
    from tinyvae._backend.simd import VECTOR_BYTES

    L = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(3)
    K = 4 * L
    for P in (1, L - 1, L, L + 1, 3 * L + 5):
        Pp, n = P + 3, 2                      # padded rows, two images
        last = rng.standard_normal(n * Pp * K).astype(dtype)
        w = rng.standard_normal(K).astype(dtype)
        b_out = dtype(0.3)
        got = np.empty(n * P, dtype)
        scratch = np.empty(2 * L * L, dtype)
        for i in range(n):
            pixel_net._output_layer(last[i * Pp * K:], i, P, K, w, b_out, got, scratch)
        want = np.array([b_out + pixel_net._dot(last, (i * Pp + p) * K, w, K, scratch)
                         for i in range(n) for p in range(P)], dtype)
        np.testing.assert_array_equal(got.view(f"u{np.dtype(dtype).itemsize}"),
                                      want.view(f"u{np.dtype(dtype).itemsize}"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_finishes_give_the_bits_of_their_separate_passes(dtype):
    """tile_products applies the ReLU (THEN_RELU) or multiplies by its slope
    (TIMES_RELU_SLOPE) on its registers; each must give exactly the product stored as it
    is and then run through the separate pass (fused.apply_activation,
    fused.activation_grad_into), including results at 0 and -0."""
    from tinyvae._backend import fused, pixel_net
    from tinyvae._backend.simd import VECTOR_BYTES

    L = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(4)
    M, K, N = 12, 5, 4 * L
    A = rng.standard_normal(M * K).astype(dtype)
    A[:K] = 0                                   # a row of zeros: results equal to the bias
    B = rng.standard_normal(K * N).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    bias[:3] = [0.0, -0.0, 1.0]
    gate = np.maximum(rng.standard_normal(M * N), 0).astype(dtype)    # a ReLU's output

    def product(finish, g):
        C = np.empty(M * N, dtype)
        pixel_net.tile_products(A, 0, K, 1, B, 0, N, K, C, 0, N, M, N, bias, False, finish, g)
        return C

    relu = fused.ACTIVATION_CODES["relu"]
    as_is = product(pixel_net.AS_IS, gate)
    want = as_is.copy()
    fused.apply_activation(want, relu, dtype(0))
    got = product(pixel_net.THEN_RELU, gate)
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{got.itemsize}"))
    want = np.empty_like(as_is)
    fused.activation_grad_into(as_is, gate, relu, dtype(0), want)
    got = product(pixel_net.TIMES_RELU_SLOPE, gate)
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{got.itemsize}"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("a_form", ["rows", "columns"])
def test_tile_products_rows_have_the_bits_of_four_row_tiles(dtype, accumulate, a_form):
    """On AVX-512 tile_products runs 8-row tiles (_tall_tile_products) and a 4-row tail; every
    row must get the bits it gets from 4-row tiles alone (a call per 4 rows), with A read
    by rows (x @ W) or by columns (x.T @ d), stored as is or onto C (accumulate)."""
    from tinyvae._backend import pixel_net
    from tinyvae._backend.simd import VECTOR_BYTES

    L = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(5)
    M, T, N = 20, 37, 2 * L                     # 2 tall tiles + a 4-row tail on AVX-512
    A = rng.standard_normal(M * T).astype(dtype)
    a_rs, a_ts = (T, 1) if a_form == "rows" else (1, M)
    B = rng.standard_normal(T * N).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    start = rng.standard_normal(M * N).astype(dtype)
    acc, finish = np.bool_(accumulate), np.int64(pixel_net.AS_IS)

    whole = start.copy()
    pixel_net.tile_products(A, 0, a_rs, a_ts, B, 0, N, T, whole, 0, N, M, N, bias, acc,
                            finish, whole)
    by_four = start.copy()
    for m in range(0, M, 4):
        pixel_net.tile_products(A, m * a_rs, a_rs, a_ts, B, 0, N, T, by_four, m * N, N, 4, N,
                                bias, acc, finish, by_four)
    np.testing.assert_array_equal(whole.view(f"u{whole.itemsize}"),
                                  by_four.view(f"u{whole.itemsize}"))
