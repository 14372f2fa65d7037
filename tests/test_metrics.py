"""Metrics against cases whose answer is known in closed form or by construction.

The likelihood side runs on a linear-Gaussian model, p(z) = N(0, I),
p(x|z) = N(z W + b, s^2 I), whose log p(x) and exact posterior are analytic.
The disentanglement side runs on a fake dataset whose images spell out their
factors, read by encoders that are perfect, random, or duplicate a factor.
"""

import math

import numpy as np
import pytest

from tinyvae import metrics

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------
# fakes implementing the model interface
# ----------------------------------------------------------------------------


class LinearGaussianVAE:
    """x = z W + b + s * noise. W has orthogonal rows, so the exact posterior
    N(A (x - b), Sigma) is diagonal and the encoder can represent it exactly.
    mu_shift / logvar_shift perturb the encoder away from the exact posterior."""

    def __init__(self, input_dim=6, latent_dim=3, s=0.5, mu_shift=0.0, logvar_shift=0.0,
                 dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((input_dim, latent_dim)))
        self.W = (q * np.linspace(1.5, 0.5, latent_dim)).T            # (d, D), W W^T diagonal
        self.b = rng.uniform(0.3, 0.7, input_dim)
        self.s, self.mu_shift, self.logvar_shift = s, mu_shift, logvar_shift
        self.input_dim, self.latent_dim, self.dtype = input_dim, latent_dim, np.dtype(dtype)
        self.post_var = 1.0 / (1.0 + np.sum(self.W**2, axis=1) / s**2)   # (d,)

    def encode(self, x):
        x = np.asarray(x, dtype=np.float64)
        mu = (x - self.b) @ self.W.T * self.post_var / self.s**2 + self.mu_shift
        logvar = np.broadcast_to(np.log(self.post_var) + self.logvar_shift, mu.shape)
        return mu.astype(self.dtype), logvar.astype(self.dtype)

    def decode(self, z):
        return (np.asarray(z, dtype=np.float64) @ self.W + self.b).astype(self.dtype)

    def reconstruction_nll(self, x, z):
        r = (np.asarray(x, np.float64) - np.asarray(z, np.float64) @ self.W - self.b) / self.s
        return 0.5 * np.sum(r * r + LOG_2PI + 2 * math.log(self.s), axis=1)

    def analytic_elbo(self, X):
        """E_q[log p(x|z)] - KL per row, the expectation in closed form."""
        mu, logvar = (a.astype(np.float64) for a in self.encode(X))
        var = np.exp(logvar)
        r = X - self.b - mu @ self.W
        expected_sq = (r * r).sum(axis=1) + (var * (self.W**2).sum(axis=1)).sum(axis=1)
        nll = 0.5 * expected_sq / self.s**2 + 0.5 * self.input_dim * (LOG_2PI + 2 * math.log(self.s))
        return -nll - 0.5 * np.sum(mu * mu + var - 1 - logvar, axis=1)

    def log_px(self, X):
        """Exact log N(x; b, W^T W + s^2 I), per row."""
        cov = self.W.T @ self.W + self.s**2 * np.eye(self.input_dim)
        r = X - self.b
        _, logdet = np.linalg.slogdet(cov)
        maha = np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r)
        return -0.5 * (maha + logdet + self.input_dim * LOG_2PI)


class FakeAutoencoder:
    input_dim, latent_dim, dtype = 4, 2, np.dtype(np.float64)

    def encode(self, x):
        return np.asarray(x)[:, :2] * 2.0


@pytest.fixture
def data():
    return np.random.default_rng(1).uniform(0, 1, (300, 6))


# ----------------------------------------------------------------------------
# ELBO, IWAE, KL, active units
# ----------------------------------------------------------------------------


def test_iwae_equals_log_px_for_the_exact_posterior(data):
    # With q = p(z|x) every importance weight equals p(x): the bound is exact for any k.
    model = LinearGaussianVAE()
    exact = model.log_px(data).mean()
    for k in (1, 7):
        assert metrics.iwae_bound(model, data, k=k, seed=3) == pytest.approx(exact, abs=1e-9)


def test_elbo_matches_log_px_in_expectation_for_the_exact_posterior(data):
    model = LinearGaussianVAE()
    X = np.tile(data, (20, 1))
    out = metrics.evaluate_elbo(model, X, seed=0)
    assert out["elbo"] == pytest.approx(model.log_px(X).mean(), abs=0.05)
    assert out["elbo"] == pytest.approx(-(out["recon"] + out["kl"]))
    assert out["kl"] == pytest.approx(out["kl_per_latent"].sum())


def test_elbo_formula_when_the_posterior_is_a_point():
    # logvar -> -inf: z = mu exactly, so ELBO = -nll(x, mu) - 0.5 sum(mu^2 + e^logvar - 1 - logvar)
    model = LinearGaussianVAE(logvar_shift=-60.0)
    X = np.random.default_rng(2).uniform(0, 1, (50, 6))
    mu, logvar = model.encode(X)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar)
    expected = -(model.reconstruction_nll(X, mu) + kl.sum(axis=1)).mean()
    out = metrics.evaluate_elbo(model, X, batch_size=7)
    assert out["elbo"] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(out["kl_per_latent"], kl.mean(axis=0), rtol=1e-12)


def test_iwae_tightens_with_k_towards_log_px(data):
    model = LinearGaussianVAE(mu_shift=0.4, logvar_shift=0.8)
    exact = model.log_px(data).mean()
    elbo = model.analytic_elbo(data).mean()
    many = np.tile(data, (20, 1))
    assert metrics.evaluate_elbo(model, many)["elbo"] == pytest.approx(elbo, abs=0.05)
    # L_1 is the ELBO too, but estimated through log p(z) - log q(z|x): noisier
    assert metrics.iwae_bound(model, many, k=1) == pytest.approx(elbo, abs=0.1)
    bounds = [metrics.iwae_bound(model, data, k=k) for k in (1, 10, 200)]
    assert bounds[0] < bounds[1] < bounds[2] < exact
    assert exact - bounds[2] < 0.2 * (exact - bounds[0])


def test_seeds_are_honoured_and_batching_does_not_change_the_iwae_mean(data):
    model = LinearGaussianVAE(mu_shift=0.3)
    a = metrics.iwae_bound(model, data, k=5, seed=4)
    assert metrics.iwae_bound(model, data, k=5, seed=4) == a
    assert metrics.iwae_bound(model, data, k=5, seed=5) != a
    assert metrics.evaluate_elbo(model, data, seed=1)["elbo"] == \
        metrics.evaluate_elbo(model, data, seed=1)["elbo"]


def test_float32_model_and_kl_per_latent(data):
    model = LinearGaussianVAE(dtype=np.float32, mu_shift=0.2)
    kl = metrics.kl_per_latent(model, data, batch_size=64)
    assert kl.shape == (3,) and kl.dtype == np.float64 and np.all(kl > 0)
    np.testing.assert_allclose(metrics.evaluate_elbo(model, data)["kl_per_latent"], kl)
    assert np.isfinite(metrics.iwae_bound(model, data, k=3))


def test_active_units_counts_latents_whose_mean_varies(data):
    model = LinearGaussianVAE(input_dim=6, latent_dim=3)
    model.W[2] *= 1e-3      # the third latent barely affects x, so its mean barely moves
    model.post_var = 1.0 / (1.0 + np.sum(model.W**2, axis=1) / model.s**2)
    count, variances = metrics.active_units(model, data)
    assert count == 2 and variances.shape == (3,) and variances[2] < 1e-4
    assert metrics.active_units(model, data, threshold=0.0)[0] == 3


def test_autoencoder_gets_codes_but_no_elbo():
    X = np.random.default_rng(0).uniform(0, 1, (10, 4))
    ae = FakeAutoencoder()
    np.testing.assert_allclose(metrics.latent_means(ae, X), X[:, :2] * 2)
    np.testing.assert_allclose(metrics.mean_encoder(ae)(X), X[:, :2] * 2)
    assert metrics.active_units(ae, X)[0] == 2
    with pytest.raises(TypeError, match="Autoencoder"):
        metrics.evaluate_elbo(ae, X)
    with pytest.raises(TypeError, match="mu, logvar"):
        metrics.iwae_bound(ae, X)


@pytest.mark.parametrize("call, match", [
    (lambda m, X: metrics.evaluate_elbo(m, X[:, :4]), r"X: expected shape \(n, 6\)"),
    (lambda m, X: metrics.evaluate_elbo(m, X[:0]), "at least one row"),
    (lambda m, X: metrics.iwae_bound(m, X, k=0), "k: expected an int >= 1, got 0"),
    (lambda m, X: metrics.kl_per_latent(m, X, batch_size=-1), "batch_size"),
    (lambda m, X: metrics.active_units(m, X, threshold=-1), "threshold"),
])
def test_bad_input_names_the_argument(data, call, match):
    with pytest.raises(ValueError, match=match):
        call(LinearGaussianVAE(), data)


def test_non_model_is_a_type_error(data):
    with pytest.raises(TypeError, match="model: expected an object with .encode"):
        metrics.evaluate_elbo(object(), data)


# ----------------------------------------------------------------------------
# disentanglement: a dataset whose images spell out their factors
# ----------------------------------------------------------------------------


class SpelledFactors:
    """Image row f has a single lit pixel, at column = value of factor f."""

    def __init__(self, factor_sizes=(3, 6, 10, 8, 8)):
        self.factor_sizes = tuple(factor_sizes)
        self.resolution = max(max(factor_sizes), len(factor_sizes))

    def render(self, classes):
        classes = np.asarray(classes)
        n, k = classes.shape
        images = np.zeros((n, self.resolution, self.resolution), dtype=np.uint8)
        images[np.arange(n)[:, None], np.arange(k)[None, :], classes] = 1
        return images


def perfect_encoder(dataset):
    """Reads the factors back: the code equals the factors (as floats)."""
    k, r = len(dataset.factor_sizes), dataset.resolution
    return lambda X: X.reshape(len(X), r, r)[:, :k].argmax(axis=2).astype(np.float64)


def random_encoder(d=6, seed=0):
    """Ignores the image: every code is fresh noise."""
    rng = np.random.default_rng(seed)
    return lambda X: rng.standard_normal((len(X), d))


FAST = {"n_train": 300, "n_test": 200, "batch_size": 32}


def test_beta_vae_score_top_and_bottom():
    ds = SpelledFactors()
    assert metrics.beta_vae_score(perfect_encoder(ds), ds, **FAST) == 1.0
    chance = 1 / len(ds.factor_sizes)
    assert metrics.beta_vae_score(random_encoder(), ds, **FAST) < chance + 0.1


def test_factor_vae_score_top_and_bottom():
    ds = SpelledFactors()
    assert metrics.factor_vae_score(perfect_encoder(ds), ds, n_variance=1000, **FAST) == 1.0
    chance = 1 / len(ds.factor_sizes)
    assert metrics.factor_vae_score(random_encoder(), ds, n_variance=1000, **FAST) < chance + 0.15


def test_intervention_scores_skip_fixed_factors_and_prune_collapsed_latents():
    # factor 0 takes one value, so its latent is constant: it must be pruned, not divided by 0
    ds = SpelledFactors((1, 4, 5, 3))
    encode = perfect_encoder(ds)
    assert metrics.factor_vae_score(encode, ds, n_variance=500, **FAST) == 1.0
    assert metrics.beta_vae_score(encode, ds, **FAST) == 1.0
    # a model's encode returns (mu, logvar): the mean is used
    assert metrics.beta_vae_score(lambda X: (encode(X), None), ds, **FAST) == 1.0


def test_intervention_scores_accept_a_model_and_read_its_mean():
    ds = SpelledFactors((3, 4, 5))
    read = perfect_encoder(ds)

    class Model:
        input_dim, latent_dim, dtype = ds.resolution**2, 3, np.dtype(np.float32)

        def encode(self, x):     # the mean is perfect, the variance must be ignored
            return read(x), np.full((len(x), 3), 5.0)

    assert metrics.beta_vae_score(Model(), ds, **FAST) == 1.0
    assert metrics.factor_vae_score(Model(), ds, n_variance=500, **FAST) == 1.0


def test_factor_vae_score_is_zero_when_every_latent_collapsed():
    ds = SpelledFactors((3, 4))
    assert metrics.factor_vae_score(lambda X: np.zeros((len(X), 3)), ds, **FAST) == 0.0


def test_intervention_scores_are_seeded():
    ds = SpelledFactors((3, 4, 5))
    projection = np.random.default_rng(0).standard_normal((ds.resolution**2, 4))
    entangled = lambda X: X @ projection  # noqa: E731  -- deterministic, mixes the factors
    small = {"n_train": 60, "n_test": 40, "batch_size": 8}
    for score in (metrics.beta_vae_score, metrics.factor_vae_score):
        results = {seed: score(entangled, ds, seed=seed, **small) for seed in range(4)}
        assert score(entangled, ds, seed=3, **small) == results[3]
        assert 0 <= min(results.values()) and max(results.values()) <= 1
        assert len(set(results.values())) > 1       # the seed does drive the sampling


def test_mig_top_bottom_and_duplicated_factor():
    ds = SpelledFactors()
    factors = np.random.default_rng(0).integers(0, ds.factor_sizes, size=(10_000, 5))
    codes = factors.astype(np.float64)
    top = metrics.mig(codes, factors)
    assert top > 0.95
    noise = np.random.default_rng(1).standard_normal((10_000, 6))
    assert metrics.mig(noise, factors) < 0.02
    # factor 0 copied into two latents: its gap is 0, so MIG loses 1/5 of its value
    duplicated = np.column_stack([codes, codes[:, 0]])
    details = metrics.mig_details(duplicated, factors)
    assert details["gap_per_factor"][0] == pytest.approx(0.0, abs=1e-12)
    assert details["mig"] == pytest.approx(top - top / 5, abs=0.03)
    assert list(details["top_latent"][1:]) == [1, 2, 3, 4]


def test_mig_details_parts():
    rng = np.random.default_rng(0)
    factors = np.column_stack([rng.integers(0, 4, 4000), np.zeros(4000, int)])  # 2nd fixed
    codes = np.column_stack([factors[:, 0] + 0.01 * rng.standard_normal(4000),
                             rng.standard_normal(4000)])
    out = metrics.mig_details(codes, factors, n_bins=8)
    assert out["mutual_info"].shape == (2, 2)
    assert out["entropy"][0] == pytest.approx(math.log(4), abs=0.01) and out["entropy"][1] == 0
    assert np.isnan(out["gap_per_factor"][1]) and out["top_latent"].tolist() == [0, -1]
    assert out["mig"] == pytest.approx(out["gap_per_factor"][0])
    # with one latent the runner-up is 0
    assert metrics.mig(codes[:, :1], factors, n_bins=8) == pytest.approx(out["mig"], abs=0.01)


def test_dci_top_and_bottom():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, (3, 6, 10, 8), size=(2000, 4))
    top = metrics.dci(factors.astype(float), factors)
    assert top["disentanglement"] == pytest.approx(1.0)
    assert top["completeness"] == pytest.approx(1.0)
    assert top["informativeness"] == 1.0
    np.testing.assert_allclose(top["importance"], np.eye(4), atol=1e-12)
    bottom = metrics.dci(rng.standard_normal((2000, 6)), factors)
    assert bottom["disentanglement"] < 0.1 and bottom["completeness"] < 0.1
    assert bottom["informativeness"] < 0.45     # chance: mean of 1/3, 1/6, 1/10, 1/8 = 0.18


def test_dci_penalises_a_factor_spread_over_two_latents():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 8, size=(3000, 2))
    # factor 0 split into its high and low bits, factor 1 kept whole
    codes = np.column_stack([factors[:, 0] // 4, factors[:, 0] % 4, factors[:, 1]]).astype(float)
    out = metrics.dci(codes, factors, seed=1)
    assert out["disentanglement"] == pytest.approx(1.0)     # each latent serves one factor
    # but factor 0 needs two latents (ideal: 1/3 and 2/3 of its importance, C = 0.71)
    assert out["completeness"] < 0.85
    assert out["importance"][:2, 0].min() > 0.1
    assert out["informativeness"] == 1.0


def test_disentanglement_scores_and_sample_codes():
    ds = SpelledFactors((3, 4, 5))
    codes, factors = metrics.sample_codes(perfect_encoder(ds), ds, n=500, seed=2)
    np.testing.assert_array_equal(codes, factors)
    scores = metrics.disentanglement_scores(perfect_encoder(ds), ds, n=2000, n_train=100,
                                            n_test=50, batch_size=16)
    assert set(scores) == {"protocol", "codes", "beta_vae", "factor_vae", "mig", "mig_chen",
                           "sap", "dci_disentanglement", "dci_completeness",
                           "dci_informativeness", "dci_informativeness_train", "seconds"}
    assert scores["protocol"] == "fast" and scores["codes"] == "mean"
    assert min(scores[key] for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement",
                                       "dci_completeness", "dci_informativeness")) > 0.95


@pytest.mark.parametrize("codes, factors, error, match", [
    (np.zeros((10, 2)), np.zeros((9, 2), int), ValueError, "same number of rows, got 10 and 9"),
    (np.zeros(10), np.zeros((10, 2), int), ValueError, r"codes: expected shape \(n, d\)"),
    (np.zeros((10, 2)), np.zeros((10, 2)), TypeError, "factors: expected integer"),
    (np.full((10, 2), np.nan), np.zeros((10, 2), int), ValueError, "finite"),
])
def test_codes_factors_validation(codes, factors, error, match):
    for fn in (metrics.mig, metrics.dci, metrics.sap):
        with pytest.raises(error, match=match):
            fn(codes, factors)


def test_dataset_and_encode_validation():
    ds = SpelledFactors((3, 4))
    with pytest.raises(TypeError, match="dataset: expected an object with .factor_sizes"):
        metrics.beta_vae_score(perfect_encoder(ds), object())
    with pytest.raises(ValueError, match="at least 2 factors with more than one value"):
        metrics.factor_vae_score(perfect_encoder(ds), SpelledFactors((1, 4)))
    with pytest.raises(TypeError, match="encode: expected a callable"):
        metrics.beta_vae_score("not a function", ds)
    with pytest.raises(ValueError, match=r"encode: expected codes of shape \(8, d\)"):
        metrics.sample_codes(lambda X: np.zeros(len(X)), ds, n=8)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 2"):
        metrics.factor_vae_score(perfect_encoder(ds), ds, batch_size=1)
