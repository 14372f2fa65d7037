"""Every backward pass against central differences, in float64, on both backends.

Thresholds (see tinyvae.gradcheck): layers and losses < 1e-8, whole models < 1e-6.
Sizes are odd and inputs non-trivial: zeros and symmetric sizes hide bugs.
"""

import numpy as np
import pytest

import tinyvae as tv
from tinyvae import layers, losses
from tinyvae.gradcheck import numerical_grad, numerical_vjp, rel_error

LAYER_TOL = 1e-8
MODEL_TOL = 1e-6


@pytest.fixture(params=["numpy", "numba"], autouse=True)
def backend(request):
    with tv.use_backend(request.param):
        yield request.param


def away_from_zero(rng, shape, margin=0.05):
    """Normal samples pushed off 0, so a finite difference never straddles a ReLU kink."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin, x)


# ------------------------------------------------------------------ layers


def test_linear_backward():
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3)), rng.standard_normal(3)
    dout = rng.standard_normal((5, 3))
    _, cache = layers.linear_forward(x, W, b)
    dx, dW, db = layers.linear_backward(dout, cache)
    assert rel_error(dx, numerical_vjp(lambda v: layers.linear_forward(v, W, b)[0], x, dout)) < LAYER_TOL
    assert rel_error(dW, numerical_vjp(lambda v: layers.linear_forward(x, v, b)[0], W, dout)) < LAYER_TOL
    assert rel_error(db, numerical_vjp(lambda v: layers.linear_forward(x, W, v)[0], b, dout)) < LAYER_TOL


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "sigmoid", "softplus"])
def test_activation_backward(name):
    rng = np.random.default_rng(2)
    forward, backward = layers.ACTIVATION_LAYERS[name]
    x = away_from_zero(rng, (4, 9)) * 2
    dout = rng.standard_normal((4, 9))
    _, cache = forward(x)
    dx = backward(dout, cache)
    assert rel_error(dx, numerical_vjp(lambda v: forward(v)[0], x, dout)) < LAYER_TOL


@pytest.mark.parametrize("activation", ["identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus"])
def test_dense_backward(activation):
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal((6, 5)), rng.standard_normal((5, 7)) * 0.7
    b = rng.standard_normal(7)
    pre = x @ W + b
    # move each pre-activation off the kink by shifting b: keeps the check meaningful
    assert np.abs(pre).min() > 1e-4
    dout = rng.standard_normal((6, 7))
    _, cache = layers.dense_forward(x, W, b, activation)
    dx, dW, db = layers.dense_backward(dout, cache)

    def f(xv=x, Wv=W, bv=b):
        return layers.dense_forward(xv, Wv, bv, activation)[0]

    assert rel_error(dx, numerical_vjp(lambda v: f(xv=v), x, dout)) < LAYER_TOL
    assert rel_error(dW, numerical_vjp(lambda v: f(Wv=v), W, dout)) < LAYER_TOL
    assert rel_error(db, numerical_vjp(lambda v: f(bv=v), b, dout)) < LAYER_TOL
    assert layers.dense_backward(dout, cache, need_dx=False)[0] is None


# ------------------------------------------------------------------ losses


def test_bernoulli_nll_gradient():
    rng = np.random.default_rng(4)
    logits, x = rng.standard_normal((5, 11)) * 3, rng.random((5, 11))
    _, dlogits = losses.bernoulli_nll(logits, x)
    num = numerical_grad(lambda v: losses.bernoulli_nll(v, x)[0], logits)
    assert rel_error(dlogits, num) < LAYER_TOL


def test_gaussian_nll_gradients():
    rng = np.random.default_rng(5)
    mean, x = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    _, dmean = losses.gaussian_nll(mean, x, std=0.7)
    num = numerical_grad(lambda v: losses.gaussian_nll(v, x, std=0.7)[0], mean)
    assert rel_error(dmean, num) < LAYER_TOL
    for logvar in (rng.standard_normal(7) * 0.5, rng.standard_normal((3, 7)) * 0.5):
        _, dmean, dlogvar = losses.gaussian_nll_learned(mean, logvar, x)
        num_m = numerical_grad(lambda v, lv=logvar: losses.gaussian_nll_learned(v, lv, x)[0], mean)
        num_v = numerical_grad(lambda v: losses.gaussian_nll_learned(mean, v, x)[0], logvar)
        assert rel_error(dmean, num_m) < LAYER_TOL
        assert rel_error(dlogvar, num_v) < LAYER_TOL


def test_mse_gradient():
    rng = np.random.default_rng(6)
    p, t = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    _, dp = losses.mse(p, t)
    assert rel_error(dp, numerical_grad(lambda v: losses.mse(v, t)[0], p)) < LAYER_TOL


def test_gaussian_kl_gradient():
    rng = np.random.default_rng(7)
    mu, logvar = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    dkl = rng.standard_normal((4, 3))
    dmu, dlogvar = losses.gaussian_kl_backward(dkl, mu, logvar)
    assert rel_error(dmu, numerical_vjp(lambda v: losses.gaussian_kl(v, logvar), mu, dkl)) < LAYER_TOL
    assert rel_error(dlogvar, numerical_vjp(lambda v: losses.gaussian_kl(mu, v), logvar, dkl)) < LAYER_TOL
    # the closed forms the lessons derive: d/dmu = mu, d/dlogvar = (exp(logvar) - 1) / 2
    ones = np.ones_like(mu)
    dmu1, dlv1 = losses.gaussian_kl_backward(ones, mu, logvar)
    np.testing.assert_allclose(dmu1, mu)
    np.testing.assert_allclose(dlv1, (np.exp(logvar) - 1) / 2)


def test_reparameterize_gradient():
    rng = np.random.default_rng(8)
    mu, logvar, eps = (rng.standard_normal((5, 3)) for _ in range(3))
    dz = rng.standard_normal((5, 3))
    _, cache = losses.reparameterize_forward(mu, logvar, eps)
    dmu, dlogvar = losses.reparameterize_backward(dz, cache)
    num_mu = numerical_vjp(lambda v: losses.reparameterize_forward(v, logvar, eps)[0], mu, dz)
    num_lv = numerical_vjp(lambda v: losses.reparameterize_forward(mu, v, eps)[0], logvar, dz)
    assert rel_error(dmu, num_mu) < LAYER_TOL
    assert rel_error(dlogvar, num_lv) < LAYER_TOL


def test_fused_reparam_kl_gradient():
    """The fused kernel's backward equals d/d(mu, logvar) of f(z) + k * sum(kl)."""
    rng = np.random.default_rng(9)
    mu, logvar, eps = (rng.standard_normal((5, 3)) for _ in range(3))
    dz, k = rng.standard_normal((5, 3)), 0.37

    def objective(m, lv):
        z, _, kl = tv.losses.reparam_kl_forward(m, lv, eps)
        return float((z * dz).sum() + k * kl.sum())

    _, sigma, _ = tv.losses.reparam_kl_forward(mu, logvar, eps)
    dmu, dlogvar = tv.losses.reparam_kl_backward(dz, mu, eps, sigma, k)
    assert rel_error(dmu, numerical_grad(lambda v: objective(v, logvar), mu)) < LAYER_TOL
    assert rel_error(dlogvar, numerical_grad(lambda v: objective(mu, v), logvar)) < LAYER_TOL


def test_fused_bernoulli_gradient():
    rng = np.random.default_rng(10)
    logits, x = rng.standard_normal((3, 13)) * 4, rng.random((3, 13))
    _, dlogits = tv.losses.bernoulli_nll_logits(logits, x, 0.25)
    num = numerical_grad(lambda v: 0.25 * tv.losses.bernoulli_nll_logits(v, x)[0].sum(), logits)
    assert rel_error(dlogits, num) < LAYER_TOL


# ------------------------------------------------------------------ models

MODEL_CASES = [
    pytest.param(tv.Autoencoder, {}, id="ae"),
    pytest.param(tv.Autoencoder, {"likelihood": "gaussian"}, id="ae-gaussian"),
    pytest.param(tv.VAE, {}, id="vae-bernoulli"),
    pytest.param(tv.VAE, {"likelihood": "gaussian", "obs_std": 0.3}, id="vae-gaussian"),
    pytest.param(tv.VAE, {"likelihood": "gaussian", "obs_std": "learned"}, id="vae-gaussian-learned"),
    pytest.param(tv.BetaVAE, {"beta": 3.7}, id="beta-vae"),
    pytest.param(tv.BetaVAE, {"capacity_max": 2.5, "gamma": 30.0}, id="capacity"),
]


@pytest.mark.parametrize("hidden", [(), (9,), (11, 6)], ids=["linear", "1-hidden", "2-hidden"])
@pytest.mark.parametrize(("cls", "kwargs"), MODEL_CASES)
def test_model_gradients(cls, kwargs, hidden):
    rng = np.random.default_rng(11)
    model = cls(7, hidden, 3, activation="tanh", dtype=np.float64, seed=3, **kwargs)
    # odd parameter values: zero biases hide backward bugs
    for p in model.params.values():
        p += 0.1 * rng.standard_normal(p.shape)
    if isinstance(model, tv.BetaVAE) and model.capacity_max is not None:
        model.step_ = 1234  # C(step) strictly between 0 and capacity_max
    x = rng.random((5, 7))
    eps = rng.standard_normal((5, 3))
    errors = tv.gradcheck.check_grads(model, x, eps)
    assert set(errors) == set(model.params)
    worst = max(errors, key=errors.get)
    assert errors[worst] < MODEL_TOL, (worst, errors[worst])


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "softplus"])
def test_vae_gradients_each_activation(activation):
    rng = np.random.default_rng(12)
    model = tv.VAE(6, (5,), 2, activation=activation, dtype=np.float64, seed=1)
    for p in model.params.values():
        p += 0.1 * rng.standard_normal(p.shape)
    x = rng.random((4, 6))
    errors = tv.gradcheck.check_grads(model, x, rng.standard_normal((4, 2)))
    assert max(errors.values()) < MODEL_TOL, errors


def test_denoising_target_gradient():
    rng = np.random.default_rng(13)
    model = tv.Autoencoder(6, (5,), 2, dtype=np.float64)
    x_noisy, x_clean = rng.standard_normal((4, 6)), rng.random((4, 6))
    _, grads = model.loss(x_noisy, target=x_clean)
    for name in ("enc1.W", "out.b"):
        num = numerical_grad(lambda _p: model.loss(x_noisy, target=x_clean)[0], model.params[name])
        assert rel_error(grads[name], num) < MODEL_TOL


# ------------------------------------------------------------------ the checker itself


def test_numerical_grad_refuses_float32_and_restores_input():
    x = np.arange(5.0)
    before = x.copy()
    g = numerical_grad(lambda v: float((v**3).sum()), x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(g, 3 * before**2, rtol=1e-8, atol=1e-8)
    with pytest.raises(TypeError, match="float64"):
        numerical_grad(lambda v: float(v.sum()), x.astype(np.float32))
    with pytest.raises(TypeError, match="float64"):
        tv.gradcheck.check_grads(tv.VAE(4, (3,), 2), np.full((2, 4), 0.5))


def test_numerical_grad_restores_on_exception():
    x = np.ones(3)

    def f(v):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        numerical_grad(f, x)
    np.testing.assert_array_equal(x, np.ones(3))


def test_gradcheck_catches_a_wrong_gradient():
    """A deliberately broken backward must fail the threshold: the check can fail."""
    rng = np.random.default_rng(14)
    model = tv.VAE(5, (4,), 2, dtype=np.float64)
    x, eps = rng.random((3, 5)), rng.standard_normal((3, 2))
    _, grads = model.loss(x, eps)
    num = numerical_grad(lambda _p: model.loss(x, eps)[0], model.params["logvar.W"])
    assert rel_error(grads["logvar.W"], num) < MODEL_TOL
    # the numpy-ml bug: sampling with exp(logvar) where the standard deviation belongs
    wrong = grads["logvar.W"] * 2
    assert rel_error(wrong, num) > 1e-2


def test_rel_error_definition():
    assert rel_error(np.ones(3), np.ones(3)) == 0
    assert rel_error(np.zeros(3), np.zeros(3)) == 0
    assert abs(rel_error(np.array([1.0]), np.array([3.0])) - 0.5) < 1e-15
    with pytest.raises(ValueError, match="shape"):
        rel_error(np.ones(3), np.ones(4))


def test_expect_close_passes_prints_and_names_a_constant_factor(capsys):
    from tinyvae.gradcheck import expect_close

    want = np.array([[1.0, -2.0], [0.5, 3.0]])
    assert expect_close("dW", want + 1e-12, want) is None
    assert "dW: rel_error" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"^db: .*4 times the reference everywhere: divide by n$"):
        expect_close("db", 4 * want, want, factors={4: "divide by n", 2: "a lost 1/2"})
    with pytest.raises(AssertionError, match=r"0\.5 times the reference everywhere$"):
        expect_close("kl", 0.5 * want, want, factors={4: "divide by n"})      # factor, but no hint for it
    with pytest.raises(AssertionError, match=r"^dx: rel_error .* expected < 1e-08$"):
        expect_close("dx", want * [[1.0, 2.0], [1.0, 1.0]], want)            # not a constant factor
    with pytest.raises(AssertionError, match="expected finite numbers, got 1 inf or nan"):
        expect_close("loss", [np.inf, 1.0], [1.0, 1.0])
    with pytest.raises(AssertionError, match=r"expected shape \(2, 2\), got \(4,\)"):
        expect_close("dx", want.ravel(), want)
