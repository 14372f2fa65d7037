"""Model behaviour: the contract, numerics, training, checkpoints, bad input."""

import json
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_digits

import tinyvae as tv
from tinyvae import kernels, losses


def bars(n, side=6, seed=0):
    """Small structured images: each a random set of horizontal and vertical bars."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, side, side))
    rows = rng.random((n, side)) < 0.25
    cols = rng.random((n, side)) < 0.25
    imgs[rows] = 1
    imgs = np.maximum(imgs, cols[:, None, :])
    return imgs.reshape(n, -1)


# ------------------------------------------------------------------ contract


def test_param_names_and_shapes_follow_the_contract():
    m = tv.VAE(input_dim=784, hidden=(400, 200), latent_dim=20)
    expected = {
        "enc1.W": (784, 400), "enc1.b": (400,), "enc2.W": (400, 200), "enc2.b": (200,),
        "mu.W": (200, 20), "mu.b": (20,), "logvar.W": (200, 20), "logvar.b": (20,),
        "dec1.W": (20, 200), "dec1.b": (200,), "dec2.W": (200, 400), "dec2.b": (400,),
        "out.W": (400, 784), "out.b": (784,),
    }
    assert {k: v.shape for k, v in m.params.items()} == expected
    assert all(v.dtype == np.float32 for v in m.params.values())
    ae = tv.Autoencoder(10, (8,), 3)
    assert set(ae.params) == {"enc1.W", "enc1.b", "code.W", "code.b", "dec1.W", "dec1.b",
                              "out.W", "out.b"}
    assert tv.BetaVAE(10, (8,), 3).beta == 4.0
    assert tv.VAE(10, (8,), 3).beta == 1.0


def test_loss_matches_the_written_objective():
    """loss = mean_i [bernoulli nll + beta * sum_j kl], rebuilt from the readable losses."""
    rng = np.random.default_rng(0)
    m = tv.VAE(9, (7,), 3, beta=2.5, dtype=np.float64, seed=1)
    x, eps = rng.random((4, 9)), rng.standard_normal((4, 3))
    loss, _ = m.loss(x, eps)
    p = m.params
    h = np.maximum(x @ p["enc1.W"] + p["enc1.b"], 0)
    mu, logvar = h @ p["mu.W"] + p["mu.b"], h @ p["logvar.W"] + p["logvar.b"]
    z, _ = losses.reparameterize_forward(mu, logvar, eps)
    logits = np.maximum(z @ p["dec1.W"] + p["dec1.b"], 0) @ p["out.W"] + p["out.b"]
    recon, _ = losses.bernoulli_nll(logits, x)
    kl = losses.gaussian_kl(mu, logvar).sum(axis=1).mean()
    assert loss == pytest.approx(recon + 2.5 * kl, rel=1e-12)
    assert m.last_loss_parts_["kl"] == pytest.approx(kl, rel=1e-12)


def test_float32_and_float64_agree():
    rng = np.random.default_rng(1)
    x, eps = rng.random((8, 12)), rng.standard_normal((8, 4))
    l64, g64 = tv.VAE(12, (10,), 4, dtype=np.float64).loss(x, eps)
    l32, g32 = tv.VAE(12, (10,), 4, dtype=np.float32).loss(x.astype(np.float32), eps)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)


def test_backends_agree_on_loss_and_grads():
    rng = np.random.default_rng(2)
    x, eps = rng.random((7, 13)), rng.standard_normal((7, 3))
    m = tv.BetaVAE(13, (11, 5), 3, dtype=np.float64, activation="leaky_relu")
    with tv.use_backend("numpy"):
        ln, gn = m.loss(x, eps)
    with tv.use_backend("numba"):
        lb, gb = m.loss(x, eps)
    assert lb == pytest.approx(ln, rel=1e-12)
    for k in gn:
        np.testing.assert_allclose(gb[k], gn[k], rtol=1e-10, atol=1e-12)


def test_merged_heads_keep_separate_parameters_and_gradients():
    # mu and logvar run as one GEMM; params and grads must stay separate
    # C-contiguous arrays, and an in-place update of one head must take effect
    m = tv.VAE(12, (7,), 3, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).random((5, 12))
    eps = np.random.default_rng(1).standard_normal((5, 3))
    _, grads = m.loss(x, eps=eps)
    for name in ("mu.W", "mu.b", "logvar.W", "logvar.b"):
        assert grads[name].flags.c_contiguous and grads[name].shape == m.params[name].shape
        assert not np.shares_memory(grads[name], m.params[name])
    mu, logvar = m.encode(x)
    assert mu.flags.c_contiguous and logvar.flags.c_contiguous
    m.params["logvar.b"] += 1.0
    np.testing.assert_allclose(m.encode(x)[1], logvar + 1.0)
    np.testing.assert_allclose(m.encode(x)[0], mu)


def test_encode_decode_reconstruct_sample_shapes():
    m = tv.VAE(20, (16,), 3)
    x = np.random.default_rng(0).random((5, 20))
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    p = m.decode(mu)
    assert p.shape == (5, 20) and p.min() >= 0 and p.max() <= 1
    assert m.reconstruct(x).shape == (5, 20)
    s1, s2 = m.sample(4, rng=3), m.sample(4, rng=3)
    np.testing.assert_array_equal(s1, s2)
    assert m.reconstruction_nll(x, mu).shape == (5,)
    ae = tv.Autoencoder(20, (16,), 3)
    assert ae.encode(x).shape == (5, 3) and ae.reconstruct(x).shape == (5, 20)


def test_analytic_kl_matches_monte_carlo():
    """KL(q || p) = E_q[log q(z) - log p(z)], estimated with 400k samples."""
    rng = np.random.default_rng(3)
    mu, logvar = np.array([0.7, -1.2, 0.0]), np.array([-0.5, 0.8, 0.3])
    sigma = np.exp(0.5 * logvar)
    z = mu + sigma * rng.standard_normal((400_000, 3))
    log_q = -0.5 * (np.log(2 * np.pi) + logvar + ((z - mu) / sigma) ** 2)
    log_p = -0.5 * (np.log(2 * np.pi) + z**2)
    mc = (log_q - log_p).mean(axis=0)
    analytic = losses.gaussian_kl(mu, logvar)
    np.testing.assert_allclose(mc, analytic, atol=0.01)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_bernoulli_nll_is_exact_at_extreme_logits(backend):
    logits = np.array([[1000.0, -1000.0, 1000.0, -1000.0, 0.0]])
    x = np.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
    with tv.use_backend(backend):
        nll, dlogits = losses.bernoulli_nll_logits(logits, x)
    # -log sigmoid(1000) = 0 (exactly, in float64); -log(1 - sigmoid(1000)) = 1000
    assert np.isfinite(nll).all()
    assert nll[0] == 0.0 + 0.0 + 1000.0 + 1000.0 + np.log(2)
    np.testing.assert_array_equal(dlogits, [[0.0, 0.0, 1.0, -1.0, -0.5]])
    loss, _ = losses.bernoulli_nll(logits, x)
    assert loss == 2000.0 + np.log(2)


# ------------------------------------------------------------------ training


def test_training_lowers_the_loss_and_is_reproducible():
    """A few hundred steps on real 8x8 digits (bundled with scikit-learn, offline)."""
    X = load_digits().data[:600] / 16.0
    m1 = tv.VAE(64, (32,), 4, seed=0)
    initial = m1.loss(X, eps=np.zeros((600, 4)))[0]
    m1.fit(X, epochs=30, batch_size=64, progress=False)
    h = m1.history_
    assert len(h["loss"]) == 30 and h["step"][-1] == 30 * 10
    assert m1.loss(X, eps=np.zeros((600, 4)))[0] < 0.65 * initial
    assert h["loss"][-1] < 0.7 * h["loss"][0]
    assert len(h["kl_per_latent"][0]) == 4
    m2 = tv.VAE(64, (32,), 4, seed=0).fit(X, epochs=30, batch_size=64, progress=False)
    assert m2.history_["loss"] == h["loss"]
    for k in m1.params:
        np.testing.assert_array_equal(m1.params[k], m2.params[k])
    m3 = tv.VAE(64, (32,), 4, seed=0).fit(X, epochs=2, batch_size=64, seed=1, progress=False)
    assert m3.history_["loss"][1] != h["loss"][1]


@pytest.mark.parametrize("optimizer", [tv.SGD(lr=0.05, momentum=0.9), tv.Adagrad(lr=0.05),
                                       tv.Adam(lr=3e-3)])
def test_each_optimizer_trains(optimizer):
    X = load_digits().data[:300] / 16.0
    m = tv.VAE(64, (24,), 3)
    initial = m.loss(X, eps=np.zeros((300, 3)))[0]
    m.fit(X, epochs=15, batch_size=32, optimizer=optimizer, progress=False)
    assert m.loss(X, eps=np.zeros((300, 3)))[0] < 0.75 * initial


def test_autoencoder_denoising_and_warmup_and_log_every():
    X = bars(200, seed=2)
    rng_noise = []

    def corrupt(x, rng):
        rng_noise.append(1)
        return x + 0.3 * rng.standard_normal(x.shape)

    ae = tv.Autoencoder(36, (24,), 4).fit(X, epochs=3, batch_size=50, corrupt=corrupt,
                                          progress=False, log_every=2)
    assert len(rng_noise) == 12 and ae.history_["step"] == [2, 4, 6, 8, 10, 12]
    vae = tv.VAE(36, (24,), 4).fit(X, epochs=2, batch_size=50, kl_warmup_steps=100,
                                   progress=False)
    assert vae.kl_weight(0) == 0 and vae.kl_weight(50) == 0.5 and vae.kl_weight(100) == 1.0


def test_capacity_target_rises_linearly():
    m = tv.BetaVAE(10, (8,), 2, capacity_max=20.0, capacity_steps=100, gamma=10.0)
    assert m.capacity(0) == 0 and m.capacity(50) == 10.0 and m.capacity(500) == 20.0
    assert tv.BetaVAE(10, (8,), 2).capacity() is None


def test_divergence_stops_with_a_helpful_error_and_keeps_finite_params():
    X = bars(100, seed=3)
    m = tv.VAE(36, (16,), 2, seed=0)
    with pytest.raises(FloatingPointError, match=r"step \d+.*lower learning rate"):
        m.fit(X, epochs=50, batch_size=10, optimizer=tv.SGD(lr=1e6, momentum=0.9),
              progress=False)
    assert all(np.isfinite(p).all() for p in m.params.values())


# ------------------------------------------------------------------ checkpoints


def test_save_load_round_trip(tmp_path):
    m = tv.BetaVAE(12, (9, 5), 3, beta=6.0, capacity_max=4.0, dtype=np.float64, seed=5)
    m.fit(bars(40, side=4)[:, :12], epochs=2, batch_size=16, progress=False)
    path = m.save(tmp_path / "model") or tmp_path / "model.npz"
    loaded = tv.load(tmp_path / "model.npz")
    assert type(loaded) is tv.BetaVAE and loaded.get_config() == m.get_config()
    for k in m.params:
        np.testing.assert_array_equal(loaded.params[k], m.params[k])
        assert loaded.params[k].dtype == np.float64
    assert loaded.history_ == json.loads(json.dumps(m.history_, default=list))
    assert loaded.step_ == m.step_
    x = np.random.default_rng(0).random((3, 12))
    np.testing.assert_array_equal(loaded.encode(x)[0], m.encode(x)[0])
    assert path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("optimizer", [tv.Adam(lr=2e-3), tv.SGD(lr=0.02), tv.Adagrad(lr=0.03)])
def test_resume_equals_straight_through(tmp_path, optimizer):
    X = bars(130, seed=4)
    kw = dict(batch_size=32, seed=7, progress=False, kl_warmup_steps=9)
    straight = tv.VAE(36, (16,), 3, seed=2).fit(
        X, epochs=4, optimizer=type(optimizer)(**_hyper(optimizer)), **kw)
    first = tv.VAE(36, (16,), 3, seed=2).fit(
        X, epochs=2, optimizer=type(optimizer)(**_hyper(optimizer)), **kw)
    first.save(tmp_path / "half.npz")
    resumed = tv.load(tmp_path / "half.npz").fit(X, epochs=4, resume=True, progress=False)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    assert resumed.history_["loss"] == straight.history_["loss"]


def _hyper(opt):
    cfg = opt.config()
    cfg.pop("class")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return cfg


def test_resume_after_an_interrupt_mid_epoch(tmp_path):
    """Stop in the middle of an epoch (as Ctrl-C does), save, resume: same bits."""
    X = bars(100, seed=5)
    straight = tv.VAE(36, (16,), 3).fit(X, epochs=3, batch_size=16, progress=False)

    class Stop(Exception):
        pass

    def stop_at_step_10(model, entry):
        if model.step_ == 10:
            raise Stop

    m = tv.VAE(36, (16,), 3)
    with pytest.raises(Stop):
        m.fit(X, epochs=3, batch_size=16, progress=False, log_every=5, callback=stop_at_step_10)
    m.history_ = {k: [] for k in m.history_}  # the straight run logs per epoch only
    m.save(tmp_path / "mid.npz")
    resumed = tv.load(tmp_path / "mid.npz").fit(X, epochs=3, resume=True, progress=False)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])


def test_fit_steps_is_a_step_budget_equal_to_the_epochs_it_spans(tmp_path):
    """fit(steps=N) stops after N steps, mid-epoch if need be, with a log entry there;
    N = whole epochs gives the epoch run's bits; a budget run saved part-way and
    resumed to the same budget equals the straight one."""
    X = bars(100, seed=6)          # 7 batches of 16 an epoch
    kw = dict(batch_size=16, progress=False, seed=3)
    by_epochs = tv.VAE(36, (16,), 3).fit(X, epochs=2, **kw)
    by_steps = tv.VAE(36, (16,), 3).fit(X, steps=14, **kw)
    for k in by_epochs.params:
        np.testing.assert_array_equal(by_steps.params[k], by_epochs.params[k])
    assert by_steps.history_["loss"] == by_epochs.history_["loss"]

    straight = tv.VAE(36, (16,), 3).fit(X, steps=17, log_every=4, **kw)
    assert straight.step_ == 17 and straight.history_["step"] == [4, 8, 12, 16, 17]
    first = tv.VAE(36, (16,), 3).fit(X, steps=10, log_every=4, **kw)
    assert first.step_ == 10 and first.history_["step"][-1] == 10
    first.save(tmp_path / "ten.npz")
    resumed = tv.load(tmp_path / "ten.npz").fit(X, steps=17, log_every=4, resume=True,
                                                  progress=False)
    assert resumed.step_ == 17
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    with pytest.raises(ValueError, match="steps: expected a positive integer, got 0"):
        tv.VAE(36, (16,), 3).fit(X, steps=0, progress=False)


def test_corrupt_truncated_and_foreign_files_raise(tmp_path):
    m = tv.VAE(8, (4,), 2)
    path = m.save(tmp_path / "ok.npz") or tmp_path / "ok.npz"
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        tv.load(tmp_path / "trunc.npz")
    # flip bytes inside the stored parameter data
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("param/enc1.W.npy")
    corrupted = bytearray(data)
    start = info.header_offset + 30 + len(info.filename) + 140
    corrupted[start:start + 8] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    (tmp_path / "bad.npz").write_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match="corrupted|checksum"):
        tv.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a tinyvae checkpoint|without a tinyvae header"):
        tv.load(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        tv.load(tmp_path / "missing.npz")


def test_loading_never_unpickles(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as zf:
        zf.write(tmp_path / "obj.npy", "__header__.npy")
    with pytest.raises(ValueError):
        tv.load(tmp_path / "evil.npz")


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    m = tv.VAE(8, (4,), 2)
    target = tmp_path / "model.npz"
    m.save(target)
    before = target.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        tv.VAE(8, (4,), 2, seed=9).save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("x", "error", "pattern"), [
    (np.ones((3, 4, 2)), ValueError, r"x: expected a 2-D array.*\(3, 4, 2\)"),
    (np.ones((3, 7)), ValueError, r"x: expected 8 columns.*\(3, 7\)"),
    (np.ones((3, 8), dtype=np.uint8), TypeError, r"x: expected a float array.*uint8.*255"),
    (np.full((2, 8), np.nan), ValueError, r"x: expected finite values.*NaN"),
    (np.full((2, 8), np.inf), ValueError, r"x: expected finite values"),
    (np.full((2, 8), 1.5), ValueError, r"x: expected values in \[0, 1\].*1\.5"),
    (np.ones((0, 8)), ValueError, r"x: expected at least one row"),
    ("pixels", TypeError, r"x: expected a numpy.ndarray, got str"),
])
def test_bad_input_is_named(x, error, pattern):
    m = tv.VAE(8, (4,), 2)
    with pytest.raises(error, match=pattern):
        m.loss(x)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_finiteness_check_agrees_with_isfinite(dtype):
    """_checks.all_finite decides by one sum; a sum that overflows on finite values must
    not be taken for a non-finite value, and one NaN or inf anywhere must be found."""
    from tinyvae._checks import all_finite

    huge = np.full((5, 7), np.finfo(dtype).max, dtype)      # finite, its sum overflows
    assert all_finite(huge)
    for bad in (np.nan, np.inf, -np.inf):
        for where in ((0, 0), (4, 6), (2, 3)):
            x = np.zeros((5, 7), dtype)
            x[where] = bad
            assert not all_finite(x)
            assert not all_finite(x[:, ::2] if where[1] % 2 == 0 else x.T)
    both = np.zeros((5, 7), dtype)
    both[1, 1], both[3, 3] = np.inf, -np.inf                # their sum is NaN, still caught
    assert not all_finite(both)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 3), (300, 1024), (4099, 65)])
def test_value_range_is_min_and_max_read_in_blocks(shape):
    """_checks.value_range reads a data set in blocks of rows; it must give x.min() and
    x.max() on any shape (one row, one block, many with a short last one), and NaN
    wherever a NaN is."""
    from tinyvae._checks import value_range

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert value_range(x, block_bytes=4096) == (float(x.min()), float(x.max()))
    assert value_range(x) == (float(x.min()), float(x.max()))
    x[-1, -1] = np.nan
    assert all(np.isnan(value_range(x, block_bytes=4096)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -0.5, 1.25])
@pytest.mark.parametrize("row", [0, 1234, 4098])
@pytest.mark.parametrize("strided", [False, True])
def test_a_bad_value_anywhere_in_a_float32_data_set_is_named(bad, row, strided):
    """Data already in the model's dtype is read once, by the [0, 1] range check, which
    must still tell a NaN or inf (and its row) from a value out of range; also when the
    data is a strided view, checked on its contiguous copy."""
    m = tv.VAE(8, (4,), 2)                                  # Bernoulli, float32
    x = np.full((4099, 16), 0.5, np.float32)[:, ::2] if strided else np.full((4099, 8), 0.5, np.float32)
    x[row, 5] = bad
    pattern = (rf"X: expected finite values, got NaN or inf \(first in row {row}\)"
               if not np.isfinite(bad) else rf"X: expected values in \[0, 1\].*{bad:g}")
    with pytest.raises(ValueError, match=pattern):
        m.fit(x, steps=1, progress=False)


def test_rows_too_large_for_the_model_dtype_are_named():
    m = tv.VAE(8, (4,), 2, likelihood="gaussian")           # float32
    with pytest.raises(ValueError, match=r"x: values up to 1e\+300 overflow float32"):
        m.loss(np.full((2, 8), 1e300))


def test_bad_arguments_are_named():
    X = np.random.default_rng(0).random((10, 8))
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got 0"):
        tv.VAE(8, (4,), 2).fit(X, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="activation: expected one of .* got 'swish'"):
        tv.VAE(8, (4,), 2, activation="swish")
    with pytest.raises(ValueError, match="likelihood: expected one of .* got 'poisson'"):
        tv.VAE(8, (4,), 2, likelihood="poisson")
    with pytest.raises(ValueError, match="latent_dim: expected a positive integer"):
        tv.VAE(8, (4,), 0)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
        tv.VAE(8, (4,), 2, dtype=np.int32)
    # a Bernoulli likelihood has no noise to learn (this used to fail in loss() with a
    # KeyError on "obs.logvar")
    for cls in (tv.Autoencoder, tv.VAE, tv.BetaVAE, tv.BetaTCVAE):
        with pytest.raises(ValueError, match="obs_std: 'learned' needs likelihood='gaussian', "
                                             "got likelihood='bernoulli'"):
            cls(8, (4,), 2, likelihood="bernoulli", obs_std="learned")
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0"):
        tv.VAE(8, (4,), 2, beta=-1)
    with pytest.raises(ValueError, match=r"eps: expected 2 columns"):
        tv.VAE(8, (4,), 2).loss(X, eps=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="resume: the model holds no training state"):
        tv.VAE(8, (4,), 2).fit(X, resume=True, progress=False)
    with pytest.raises(ValueError, match="lr: expected a positive finite number"):
        tv.Adam(lr=-1)
    for opt in (tv.SGD, tv.Adam, tv.Adagrad):
        with pytest.raises(ValueError, match="weight_decay: expected >= 0"):
            opt(weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"X: expected values in \[0, 1\]"):
        tv.VAE(8, (4,), 2).fit(X * 3, progress=False)
    # a Gaussian decoder takes any finite floats
    tv.VAE(8, (4,), 2, likelihood="gaussian").fit(X * 3, epochs=1, progress=False)


def test_optimizer_by_hand_matches_reference_formulae():
    p = {"w": np.array([1.0, -2.0, 3.0])}
    g = {"w": np.array([0.5, 0.1, -0.2])}
    opt = tv.Adam(lr=0.1)
    opt.step(p, g)
    # after one step Adam moves each coordinate by lr * sign(g) (bias-corrected, eps tiny)
    np.testing.assert_allclose(p["w"], [0.9, -2.1, 3.1], rtol=1e-6)
    q = {"w": np.array([1.0])}
    sgd = tv.SGD(lr=0.1, momentum=0.5)
    sgd.step(q, {"w": np.array([1.0])})
    sgd.step(q, {"w": np.array([1.0])})
    np.testing.assert_allclose(q["w"], [1.0 - 0.1 - 0.15])
    r = {"w": np.array([1.0])}
    ada = tv.Adagrad(lr=0.1, eps=0.0 + 1e-12)
    ada.step(r, {"w": np.array([2.0])})
    np.testing.assert_allclose(r["w"], [0.9])
    with pytest.raises(ValueError, match="grads: expected the keys"):
        opt.step(p, {"v": g["w"]})


@pytest.mark.parametrize("make", [lambda: tv.Adam(lr=0.1), lambda: tv.SGD(lr=0.1),
                                  lambda: tv.Adagrad(lr=0.1)])
def test_a_refused_optimizer_step_changes_nothing(make):
    """Every gradient is checked before any parameter moves: a bad last entry leaves the
    parameters, the step count and the state as they were."""
    opt = make()
    params = {"a": np.ones(3), "b": np.ones((2, 2))}
    opt.step(params, {"a": np.ones(3), "b": np.ones((2, 2))})
    before = ({k: v.copy() for k, v in params.items()}, opt.t,
              {k: v.copy() for k, v in opt.state_arrays().items()})
    with pytest.raises(ValueError, match=r"grads\['b'\]: expected shape \(2, 2\)"):
        opt.step(params, {"a": np.ones(3), "b": np.ones(4)})
    for k in params:
        np.testing.assert_array_equal(params[k], before[0][k])
    assert opt.t == before[1]
    for k, v in opt.state_arrays().items():
        np.testing.assert_array_equal(v, before[2][k])


def test_optimizer_state_loaded_in_fortran_order_still_updates_in_place():
    """load_state keeps its arrays in C order: the update kernels work on flat views."""
    params = {"w": np.arange(6.0).reshape(2, 3)}
    grads = {"w": np.ones((2, 3))}
    ref, opt = tv.Adam(lr=0.1), tv.Adam(lr=0.1)
    p_ref = {"w": params["w"].copy()}
    ref.step(p_ref, grads)
    opt.step(params, grads)
    opt.load_state(opt.t, {k: np.asfortranarray(v) for k, v in opt.state_arrays().items()})
    ref.step(p_ref, grads)
    opt.step(params, grads)
    np.testing.assert_array_equal(params["w"], p_ref["w"])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_update_kernels_refuse_non_contiguous_parameters(backend):
    """reshape(-1) of a strided view is a copy: an in-place update would be lost."""
    p = np.zeros((4, 6))[:, ::2]
    with tv.use_backend(backend), pytest.raises(ValueError, match="p: expected a C-contiguous"):
        kernels.adam_update(p, np.ones_like(p), np.zeros_like(p), np.zeros_like(p),
                            1e-3, 0.9, 0.999, 1e-8, 1)
