"""The spatial broadcast decoder: its layer against the explicit tiling, its gradients,
and the models, checkpoints and command line that carry it."""

import json

import numpy as np
import pytest

import tinyvae as tv
from tinyvae import gradcheck, layers
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
