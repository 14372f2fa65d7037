"""beta-TCVAE: the estimators of log q(z), their gradients, the kernel, the model.

The gradient checks follow test_gradients.py (float64, central differences, both
backends); the fused Numba kernel is compared with the NumPy composition on
awkward shapes; the estimators are compared with the exact log q(z) of a data
set small enough to sum over.
"""

import numpy as np
import pytest

import tinyvae as tv
from tinyvae import losses
from tinyvae._backend import nb_kernels as _nb_kernels
from tinyvae._backend.numba_flags import get_num_threads, set_num_threads
from tinyvae.gradcheck import check_grads, numerical_grad, rel_error

LAYER_TOL = 1e-8
MODEL_TOL = 1e-6


def posteriors(rng, B, d, dtype=np.float64):
    mu = rng.standard_normal((B, d)).astype(dtype)
    logvar = (0.6 * rng.standard_normal((B, d)) - 0.5).astype(dtype)
    z = (mu + np.exp(0.5 * logvar) * rng.standard_normal((B, d))).astype(dtype)
    return z, mu, logvar


# ------------------------------------------------------------ importance weights


def test_stratified_weights_follow_the_paper():
    B, N = 5, 40
    M = B - 1
    w = np.exp(losses.log_importance_weights(B, N, "mss"))
    for i in range(B):
        assert w[i, i] == pytest.approx(1 / N)                     # z_i's own x_i
        assert w[i, (i + 1) % B] == pytest.approx((N - M) / (N * M))  # stands for the rest
        others = [j for j in range(B) if j not in (i, (i + 1) % B)]
        np.testing.assert_allclose(w[i, others], 1 / M)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_copied_column_weights_differ_from_the_paper():
    w = np.exp(losses.log_importance_weights(6, 50, "mss-columns"))
    np.testing.assert_allclose(w[:, 0][:4], 1 / 50)      # column 0, not the diagonal
    assert w[3, 3] == pytest.approx(1 / 5)


def test_weighted_sampling_weights():
    w = np.exp(losses.log_importance_weights(4, 10, "mws"))
    np.testing.assert_allclose(w, 1 / 40)


def test_a_batch_of_one_uses_its_own_posterior():
    for estimator in ("mss", "mws"):
        assert losses.log_importance_weights(1, 7, estimator)[0, 0] == pytest.approx(-np.log(7))


def test_weights_refuse_bad_input():
    with pytest.raises(ValueError, match="estimator: expected one of"):
        losses.log_importance_weights(4, 10, "iwae")
    with pytest.raises(ValueError, match="dataset_size: expected at least the batch size 8, got 5"):
        losses.log_importance_weights(8, 5)


# ------------------------------------------------------------ the estimators' bias


def exact_log_densities(z, mu_all, logvar_all):
    """log q(z_i) and sum_k log q(z_ik) with q the mixture over every data point."""
    L, _ = losses.gaussian_log_density_matrix(z, mu_all, logvar_all)      # (b, N, d)
    N = mu_all.shape[0]

    def lse(a, axis):
        m = a.max(axis=axis, keepdims=True)
        return np.squeeze(m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True)), axis)

    return lse(L.sum(axis=2), 1) - np.log(N), (lse(L, 1) - np.log(N)).sum(axis=1)


def estimator_bias(estimator, N=64, B=16, d=3, trials=400):
    """Mean over random minibatches of (estimate - exact) for log q(z) and the TC."""
    rng = np.random.default_rng(0)
    mu_all = 1.5 * rng.standard_normal((N, d))
    logvar_all = 0.3 * rng.standard_normal((N, d)) - 1.0
    lw = losses.log_importance_weights(B, N, estimator)
    errors = []
    for _ in range(trials):
        idx = rng.choice(N, B, replace=False)
        mu, logvar = mu_all[idx], logvar_all[idx]
        z = mu + np.exp(0.5 * logvar) * rng.standard_normal((B, d))
        _, log_qz, log_qz_marginals, _, _ = losses.tc_terms_forward(z, mu, logvar, lw)
        exact_qz, exact_marginals = exact_log_densities(z, mu_all, logvar_all)
        errors.append([np.mean(log_qz - exact_qz),
                       np.mean((log_qz - log_qz_marginals) - (exact_qz - exact_marginals))])
    return np.mean(errors, axis=0)


def test_estimators_against_the_exact_aggregate_posterior():
    """N = 64 posteriors, minibatches of 16: bias of log q(z) and of the TC (nats).

    Measured: mss -0.27 / -0.05; mws -3.70 / +8.60 (its -log N per density is a
    constant); mss-columns +0.44 / +0.27.
    """
    mss, mws, columns = (estimator_bias(e) for e in ("mss", "mws", "mss-columns"))
    print(f"bias (log q(z), TC): mss {mss}, mws {mws}, mss-columns {columns}")
    assert abs(mss[0]) < 0.4 and abs(mss[1]) < 0.15
    # mws: each log q(.) is off by -log N, so log q(z) by -log N, the TC by (d - 1) log N
    assert abs(mws[0] + np.log(64)) < 1.0
    assert abs(mws[1] - 2 * np.log(64)) < 1.0
    assert abs(columns[1]) > 2 * abs(mss[1])


# ------------------------------------------------------------ gradients


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    with tv.use_backend(request.param):
        yield request.param


def test_log_density_matrix_backward(backend):
    rng = np.random.default_rng(1)
    z, mu, logvar = posteriors(rng, 5, 3)
    dL = rng.standard_normal((5, 5, 3))
    _, cache = losses.gaussian_log_density_matrix(z, mu, logvar)
    dz, dmu, dlogvar = losses.gaussian_log_density_matrix_backward(dL, cache)

    def f(zz, mm, ll):
        return float((losses.gaussian_log_density_matrix(zz, mm, ll)[0] * dL).sum())

    assert rel_error(dz, numerical_grad(lambda v: f(v, mu, logvar), z.copy())) < LAYER_TOL
    assert rel_error(dmu, numerical_grad(lambda v: f(z, v, logvar), mu.copy())) < LAYER_TOL
    assert rel_error(dlogvar, numerical_grad(lambda v: f(z, mu, v), logvar.copy())) < LAYER_TOL


def test_logsumexp_backward():
    rng = np.random.default_rng(2)
    a, dout = rng.standard_normal((4, 7)), rng.standard_normal(4)
    out, cache = losses.logsumexp_forward(a, axis=1)
    np.testing.assert_allclose(out, np.log(np.exp(a).sum(axis=1)))
    da = losses.logsumexp_backward(dout, cache)
    num = numerical_grad(lambda v: float((losses.logsumexp_forward(v, 1)[0] * dout).sum()), a.copy())
    assert rel_error(da, num) < LAYER_TOL


@pytest.mark.parametrize("compute_grads", [False, True])
@pytest.mark.parametrize("estimator", ["mss", "mws", "mss-columns"])
@pytest.mark.parametrize("B", [1, 2, 7])
def test_tc_penalty_backward(backend, estimator, B, compute_grads):
    rng = np.random.default_rng(3)
    z, mu, logvar = posteriors(rng, B, 3)
    lw = losses.log_importance_weights(B, 40, estimator)
    weights = (0.7, 5.3, 1.9)          # unequal, so every term's coefficient is non-zero
    # compute_grads: the Numba backend makes the gradients for dpenalty = 1 in the
    # forward, and the backward scales them by 1.3
    _, _, cache = losses.tc_penalty_forward(z, mu, logvar, lw, *weights,
                                            compute_grads=compute_grads)
    dz, dmu, dlogvar = losses.tc_penalty_backward(1.3, cache)

    def f(zz, mm, ll):
        return 1.3 * losses.tc_penalty_forward(zz, mm, ll, lw, *weights)[0]

    assert rel_error(dz, numerical_grad(lambda v: f(v, mu, logvar), z.copy())) < LAYER_TOL
    assert rel_error(dmu, numerical_grad(lambda v: f(z, v, logvar), mu.copy())) < LAYER_TOL
    assert rel_error(dlogvar, numerical_grad(lambda v: f(z, mu, v), logvar.copy())) < LAYER_TOL


def test_penalty_backward_follows_its_forward_across_a_backend_switch():
    rng = np.random.default_rng(4)
    z, mu, logvar = posteriors(rng, 6, 3)
    lw = losses.log_importance_weights(6, 40, "mss")
    with tv.use_backend("numba"):
        _, _, cache = losses.tc_penalty_forward(z, mu, logvar, lw, 1.0, 6.0, 1.0)
        want = losses.tc_penalty_backward(1.0, cache)
    with tv.use_backend("numpy"):
        got = losses.tc_penalty_backward(1.0, cache)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ kernel vs reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("B", "d"), [(1, 1), (2, 1), (3, 5), (17, 10), (64, 3), (130, 7)])
@pytest.mark.parametrize("strided", [False, True])
def test_fused_kernel_matches_reference(dtype, B, d, strided):
    rng = np.random.default_rng(B * 31 + d)
    z, mu, logvar = posteriors(rng, B, d, dtype)
    if strided:     # every second column of wider arrays: non-contiguous views
        z, mu, logvar = (np.repeat(a, 2, axis=1)[:, ::2] for a in (z, mu, logvar))
        assert not mu.flags.c_contiguous or mu.size == 1
    lw = losses.log_importance_weights(B, 1000, "mss")
    g = [rng.standard_normal(B).astype(dtype) for _ in range(4)]
    log_qz_x, log_qz, log_qz_marginals, _, cache = losses.tc_terms_forward(z, mu, logvar, lw)
    ref_grads = losses.tc_terms_backward(*g, cache)
    terms, kcache = _nb_kernels.tc_terms_forward(z, mu, logvar, lw)
    grads = _nb_kernels.tc_terms_backward(*g, kcache)
    rtol = 2e-4 if dtype == np.float32 else 1e-11
    for got, want in zip(terms, (log_qz_x, log_qz, log_qz_marginals), strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 10)
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == dtype and got.shape == (B, d)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max() + 1e-30)
    # forward and backward in one walk: the forward's own terms, the reference's gradients
    one_walk_terms, one_walk_grads = _nb_kernels.tc_terms_forward_backward(z, mu, logvar, lw, *g)
    np.testing.assert_array_equal(one_walk_terms, terms)
    for got, want in zip(one_walk_grads, ref_grads, strict=True):
        assert got.dtype == dtype and got.shape == (B, d)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max() + 1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_kernel_matches_reference_where_weights_underflow(dtype):
    """Narrow, distant posteriors, as a trained model's are: most pairs' softmax weights
    are ~1e-38 or less, and their products fall into the subnormals."""
    rng = np.random.default_rng(9)
    B, d = 96, 6
    mu = (8 * rng.standard_normal((B, d))).astype(dtype)
    logvar = np.full((B, d), -3.0, dtype)
    z = (mu + np.exp(0.5 * logvar) * rng.standard_normal((B, d))).astype(dtype)
    lw = losses.log_importance_weights(B, 1000, "mws")
    g = [rng.standard_normal(B).astype(dtype) for _ in range(4)]
    *ref_terms, _, cache = losses.tc_terms_forward(z, mu, logvar, lw)
    ref_grads = losses.tc_terms_backward(*g, cache)
    terms, grads = _nb_kernels.tc_terms_forward_backward(z, mu, logvar, lw, *g)
    rtol = 2e-4 if dtype == np.float32 else 1e-11
    for got, want in zip(terms, ref_terms, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 10)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max() + 1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_max_is_the_max_on_awkward_lengths(dtype):
    """tc._max_of (explicit vectors, then the lanes, then a scalar tail) against np.max:
    lengths below, at and past a vector, rows of a 2-D array (views)."""
    from tinyvae._backend import tc
    from tinyvae._backend.simd import VECTOR_BYTES

    L = VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(2)
    scratch = np.empty(L, dtype)
    for n in (1, 2, L - 1, L, L + 1, 2 * L, 3 * L + 5, 257):
        rows = rng.standard_normal((3, n)).astype(dtype) - 50
        for row in rows:
            assert tc._max_of(row, scratch) == row.max()
        rows[1, -1] = 7.0                        # the max in the scalar tail, or the last lane
        assert tc._max_of(rows[1], scratch) == dtype(7.0)


def test_fused_kernel_is_the_same_on_any_thread_count():
    rng = np.random.default_rng(5)
    z, mu, logvar = posteriors(rng, 300, 10, np.float32)     # large enough to be split
    lw = losses.log_importance_weights(300, 10_000, "mss")
    g = [np.full(300, c, np.float32) for c in (0.1, 0.2, -0.3, 0.4)]
    before = get_num_threads()
    results = []
    try:
        for threads in (1, before):
            set_num_threads(threads)
            terms, cache = _nb_kernels.tc_terms_forward(z, mu, logvar, lw)
            one_walk_terms, one_walk_grads = _nb_kernels.tc_terms_forward_backward(
                z, mu, logvar, lw, *g)
            results.append((terms, *_nb_kernels.tc_terms_backward(*g, cache),
                            one_walk_terms, *one_walk_grads))
    finally:
        set_num_threads(before)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ the model


@pytest.mark.parametrize("estimator", ["mss", "mws"])
@pytest.mark.parametrize("hidden", [(), (9,), (9, 5)])
def test_model_gradients(backend, estimator, hidden):
    rng = np.random.default_rng(6)
    model = tv.BetaTCVAE(7, hidden, 3, alpha=0.8, beta=4.3, gamma=1.7, dataset_size=40,
                         estimator=estimator, dtype=np.float64, seed=3)
    for p in model.params.values():
        p += 0.1 * rng.standard_normal(p.shape)
    errors = check_grads(model, rng.random((6, 7)))
    assert max(errors.values()) < MODEL_TOL, errors


def test_model_gradients_during_warmup(backend):
    model = tv.BetaTCVAE(7, (9,), 3, dataset_size=40, dtype=np.float64, seed=1,
                         likelihood="gaussian", obs_std=0.5)
    model.kl_warmup_steps, model.step_ = 100, 30
    assert model.penalty_weight() == pytest.approx(0.3)
    errors = check_grads(model, np.random.default_rng(7).random((5, 7)))
    assert max(errors.values()) < MODEL_TOL, errors


def test_unit_weights_give_the_single_sample_elbo(backend):
    rng = np.random.default_rng(8)
    model = tv.BetaTCVAE(7, (9,), 3, alpha=1, beta=1, gamma=1, dataset_size=40,
                         dtype=np.float64)
    x, eps = rng.random((6, 7)), rng.standard_normal((6, 3))
    loss, _ = model.loss(x, eps)
    mu, logvar = model.encode(x)
    z = mu + np.exp(0.5 * logvar) * eps
    log_qz_x = (-0.5 * (np.log(2 * np.pi) + logvar + eps**2)).sum(axis=1)
    log_pz = (-0.5 * (np.log(2 * np.pi) + z**2)).sum(axis=1)
    elbo = -model.reconstruction_nll(x, z) + log_pz - log_qz_x
    assert loss == pytest.approx(-elbo.mean(), rel=1e-12)
    # its KL part averages to the analytic KL of the VAE
    parts = model.last_loss_parts_
    assert parts["mi"] + parts["tc"] + parts["dwkl"] == pytest.approx(
        float((log_qz_x - log_pz).mean()), rel=1e-12)


def test_beta_is_what_separates_it_from_the_vae():
    """beta acts on the total correlation only: raising it changes that term alone."""
    rng = np.random.default_rng(9)
    x, eps = rng.random((8, 7)), rng.standard_normal((8, 3))
    losses_by_beta = {}
    for beta in (1.0, 6.0):
        model = tv.BetaTCVAE(7, (9,), 3, beta=beta, dataset_size=40, dtype=np.float64)
        losses_by_beta[beta] = model.loss(x, eps)[0]
        tc = model.last_loss_parts_["tc"]
    assert losses_by_beta[6.0] - losses_by_beta[1.0] == pytest.approx(5 * tc, rel=1e-10)


def test_model_config_round_trip(tmp_path):
    model = tv.BetaTCVAE(7, (9,), 3, alpha=0.5, beta=7.0, gamma=2.0, dataset_size=40,
                         estimator="mws", leaky_slope=0.2, activation="leaky_relu", seed=2)
    model.save(tmp_path / "m.npz")
    loaded = tv.load(tmp_path / "m.npz")
    assert isinstance(loaded, tv.BetaTCVAE)
    assert loaded.get_config() == model.get_config()
    x = np.random.default_rng(0).random((4, 7))
    eps = np.zeros((4, 3), np.float32)
    assert loaded.loss(x, eps)[0] == model.loss(x, eps)[0]


def test_fit_takes_the_dataset_size_from_the_data():
    X = np.random.default_rng(0).random((50, 7))
    model = tv.BetaTCVAE(7, (9,), 3, seed=0)
    model.fit(X, epochs=1, batch_size=16, progress=False)
    assert model.dataset_size == 50
    assert np.isfinite(model.history_["loss"][-1])


def test_model_refuses_bad_arguments():
    with pytest.raises(ValueError, match="estimator: expected one of"):
        tv.BetaTCVAE(7, (9,), 3, estimator="bogus")
    with pytest.raises(ValueError, match="alpha: expected a finite number >= 0, got -1"):
        tv.BetaTCVAE(7, (9,), 3, alpha=-1)
    with pytest.raises(ValueError, match="leaky_slope: expected 0 < leaky_slope < 1, got 2"):
        tv.BetaTCVAE(7, (9,), 3, leaky_slope=2)
    with pytest.raises(ValueError, match="dataset_size: expected a positive integer"):
        tv.BetaTCVAE(7, (9,), 3, dataset_size=0)
    with pytest.raises(ValueError, match="dataset_size: expected the number of training points"):
        tv.BetaTCVAE(7, (9,), 3).loss(np.random.default_rng(0).random((4, 7)))
    with pytest.raises(ValueError, match="dataset_size: expected at least the batch size 8"):
        tv.BetaTCVAE(7, (9,), 3, dataset_size=5).loss(np.random.default_rng(0).random((8, 7)))
