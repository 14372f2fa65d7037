"""disentanglement_lib's protocol, SAP, Chen et al.'s MIG, UDR and the code table.

Each score is checked twice: on codes whose answer can be worked out by hand, and
against an independent, straightforward implementation of the paper's formula
written here (loops, scipy, scikit-learn's own classifiers). Sizes stay small; the
full-size protocol is timed by `tinyvae evaluate RUN --protocol disentanglement_lib`.
"""

import math

import numpy as np
import pytest
import test_metrics  # the fakes shared with the fast protocol's tests
from scipy import stats

from tinyvae import metrics
from tinyvae._backend.boosting import GradientBoosting


class SpelledFactors(test_metrics.SpelledFactors):
    """test_metrics' images that spell out their factors, with dSprites-like names."""

    factor_names = ("shape", "scale", "orientation")


read_factors = test_metrics.perfect_encoder


class PerfectVAE:
    """mu = the factors (scaled), a small fixed posterior variance."""

    def __init__(self, ds, scale=(1.0, 1.0, 1.0), logvar=-6.0):
        self.read, self.scale, self.lv = read_factors(ds), np.asarray(scale), logvar
        self.input_dim, self.latent_dim = ds.resolution**2, len(ds.factor_sizes)

    def encode(self, x):
        mu = self.read(x) * self.scale
        return mu, np.full_like(mu, self.lv)


# ----------------------------------------------------------------------------
# the compiled gradient boosting behind DCI's reference protocol
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes, stages", [(3, 20), (2, 15), (5, 8)])
def test_gradient_boosting_grows_scikit_learns_trees(n_classes, stages):
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 300)
    X = rng.normal(size=(300, 4))
    X[:, 0] += y
    X_test = rng.normal(size=(200, 4)) + np.array([1.0, 0, 0, 0])
    ref = GradientBoostingClassifier(n_estimators=stages, random_state=0).fit(X, y)
    ours = GradientBoosting(n_estimators=stages, random_state=0).fit(X, y)
    # the same trees: same raw scores on the training rows, to rounding
    np.testing.assert_allclose(ours.decision_function(X).squeeze(), ref.decision_function(X),
                               atol=1e-9)
    assert np.mean(ours.predict(X_test) == ref.predict(X_test)) > 0.97
    # splits of equal merit (the same rows cut by two latents) may credit another latent
    np.testing.assert_allclose(ours.feature_importances_, ref.feature_importances_, atol=0.01)
    assert ours.score(X, y) == pytest.approx(ref.score(X, y), abs=0.01)


def test_gradient_boosting_is_deterministic_and_checks_labels():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 3)), rng.integers(0, 3, 100)
    a = GradientBoosting(n_estimators=5, random_state=3).fit(X, y)
    b = GradientBoosting(n_estimators=5, random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
    with pytest.raises(ValueError, match="y: expected at least 2 classes, got 1"):
        GradientBoosting().fit(X, np.zeros(100, int))


# ----------------------------------------------------------------------------
# DCI with gradient boosting
# ----------------------------------------------------------------------------


def dci_by_the_formula(x_train, y_train, x_test, y_test):
    """disentanglement_lib's DCI, written out: sklearn's GBT, scipy's entropies."""
    from sklearn.ensemble import GradientBoostingClassifier

    d, k = x_train.shape[1], y_train.shape[1]
    R = np.zeros((d, k))
    acc = []
    for f in range(k):
        model = GradientBoostingClassifier(random_state=0).fit(x_train, y_train[:, f])
        R[:, f] = np.abs(model.feature_importances_)
        acc.append(np.mean(model.predict(x_test) == y_test[:, f]))
    D = 1 - stats.entropy(R.T + 1e-11, base=k)
    C = 1 - stats.entropy(R + 1e-11, base=d)
    return (np.sum(D * R.sum(axis=1) / R.sum()), np.sum(C * R.sum(axis=0) / R.sum()),
            np.mean(acc))


def test_dci_gradient_boosting_matches_the_formula():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, (3, 4), size=(600, 2))
    codes = np.column_stack([factors[:, 0] + 0.3 * rng.normal(size=600),
                             factors[:, 1] + factors[:, 0] * 0.5 + 0.3 * rng.normal(size=600),
                             rng.normal(size=600)])
    train, test = slice(0, 400), slice(400, 600)
    ours = metrics.dci(codes[train], factors[train], test=(codes[test], factors[test]),
                       classifier="gradient_boosting")
    D, C, acc = dci_by_the_formula(codes[train], factors[train], codes[test], factors[test])
    assert ours["disentanglement"] == pytest.approx(D, abs=0.01)
    assert ours["completeness"] == pytest.approx(C, abs=0.01)
    assert ours["informativeness"] == pytest.approx(acc, abs=0.02)
    assert ours["informativeness_train"] > ours["informativeness"]


def test_dci_gradient_boosting_on_exact_codes():
    factors = np.random.default_rng(1).integers(0, (3, 5), size=(400, 2))
    out = metrics.dci(factors.astype(float), factors, classifier="gradient_boosting")
    np.testing.assert_allclose(out["importance"], np.eye(2), atol=1e-12)
    assert out["disentanglement"] == pytest.approx(1.0)
    assert out["completeness"] == pytest.approx(1.0)
    assert out["informativeness"] == 1.0 and out["informativeness_train"] == 1.0
    with pytest.raises(ValueError, match="classifier: expected one of"):
        metrics.dci(factors.astype(float), factors, classifier="forest")


# ----------------------------------------------------------------------------
# SAP
# ----------------------------------------------------------------------------


def balanced_binary_factors(repeat):
    """Every combination of two binary factors, equally often: a latent equal to one
    factor says nothing about the other, so any classifier scores exactly 1/2 on it."""
    return np.tile(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), (repeat, 1))


def test_sap_exact_cases():
    factors = balanced_binary_factors(50)
    codes = 4.0 * factors - 2.0
    test = (codes, factors)
    out = metrics.sap(codes, factors, test=test)
    np.testing.assert_allclose(out["accuracy"], [[1, 0.5], [0.5, 1]])
    assert out["sap"] == pytest.approx(0.5)
    # factor 0 read equally well by two latents: its gap is 0
    twice = np.column_stack([codes[:, 0], codes[:, 0], codes[:, 1]])
    assert metrics.sap(twice, factors, test=(twice, factors))["sap"] == pytest.approx(0.25)


def test_sap_matches_the_formula():
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(2)
    factors = rng.integers(0, (3, 5), size=(500, 2))
    codes = np.column_stack([factors[:, 0] + 0.5 * rng.normal(size=500),
                             factors[:, 1] + 0.5 * rng.normal(size=500), rng.normal(size=500)])
    tr, te = slice(0, 350), slice(350, 500)
    S = np.zeros((3, 2))
    for j in range(3):
        for f in range(2):
            svm = LinearSVC(C=0.01, class_weight="balanced").fit(codes[tr, j:j + 1],
                                                                 factors[tr, f])
            S[j, f] = np.mean(svm.predict(codes[te, j:j + 1]) == factors[te, f])
    top2 = np.sort(S, axis=0)[-2:]
    ours = metrics.sap(codes[tr], factors[tr], test=(codes[te], factors[te]))
    np.testing.assert_allclose(ours["accuracy"], S)
    assert ours["sap"] == pytest.approx(np.mean(top2[1] - top2[0]))


# ----------------------------------------------------------------------------
# Chen et al.'s MIG
# ----------------------------------------------------------------------------


def chen_mig_by_the_formula(mu, logvar, z, factors, sizes):
    """I(z_j; v_f) = H(z_j) - sum_i p(i) H(z_j | v_f = i), every density a plain sum."""
    sd = np.exp(0.5 * logvar)

    def H(rows, j):
        q = [np.mean(stats.norm.pdf(z[s, j], mu[rows, j], sd[rows, j])) for s in rows]
        return -np.mean(np.log(q))

    gaps = []
    for f, K in enumerate(sizes):
        mi = []
        for j in range(mu.shape[1]):
            cond = sum(np.mean(factors[:, f] == v) * H(np.flatnonzero(factors[:, f] == v), j)
                       for v in np.unique(factors[:, f]))
            mi.append(max(H(np.arange(len(mu)), j) - cond, 0) / math.log(K))
        mi = sorted(mi)[::-1]
        gaps.append(mi[0] - mi[1])
    return np.mean(gaps)


def test_mig_chen_matches_the_formula():
    rng = np.random.default_rng(3)
    factors = rng.integers(0, (3, 4), size=(60, 2))
    mu = np.column_stack([factors[:, 0] + 0.2 * rng.normal(size=60),
                          factors[:, 1] * 0.7 + factors[:, 0] * 0.3, rng.normal(size=60)])
    logvar = rng.uniform(-3, -1, size=mu.shape)
    out = metrics.mig_chen(mu, logvar, factors, (3, 4), n_samples=100, seed=5)
    # every row is a sample (n_samples >= 60), so z is the seed's one draw
    z = mu + np.exp(0.5 * logvar) * np.random.default_rng(5).standard_normal(mu.shape)
    assert out["mig"] == pytest.approx(chen_mig_by_the_formula(mu, logvar, z, factors, (3, 4)),
                                       rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_mixture_entropy_matches_numpy(dtype):
    rng = np.random.default_rng(6)
    mu = rng.normal(size=(37, 3)).astype(dtype)
    logvar = rng.uniform(-4, 1, size=(37, 3)).astype(dtype)
    z = rng.normal(size=(11, 3)).astype(dtype)[:, ::-1]           # non-contiguous samples
    np.testing.assert_allclose(metrics._entropy_of_mixture_kernel(z, mu, logvar),
                               metrics._entropy_of_mixture(z.astype(float), mu.astype(float),
                                                           logvar.astype(float), chunk=4),
                               rtol=1e-5 if dtype == np.float32 else 1e-12)
    one = metrics._entropy_of_mixture_kernel(z[:1], mu[:1], logvar[:1])
    np.testing.assert_allclose(one, metrics._entropy_of_mixture(z[:1].astype(float),
                                                                mu[:1].astype(float),
                                                                logvar[:1].astype(float)),
                               rtol=1e-5)


def test_mig_chen_exact_cases():
    factors = np.tile(np.array([[a, b] for a in range(3) for b in range(4)]), (20, 1))
    mu = factors.astype(float) * 10
    logvar = np.full(mu.shape, -8.0)        # q(z|x) far narrower than the gaps between values
    out = metrics.mig_chen(mu, logvar, factors, (3, 4), n_samples=500)
    # each latent names its factor exactly: I = H(v) = log K, normalised to 1
    assert out["mig"] == pytest.approx(1.0, abs=1e-3)
    twice = np.column_stack([mu[:, 0], mu[:, 0], mu[:, 1]])
    out = metrics.mig_chen(twice, np.full(twice.shape, -8.0), factors, (3, 4), n_samples=500)
    assert out["gap_per_factor"][0] == pytest.approx(0.0, abs=1e-3)
    assert out["mig"] == pytest.approx(0.5, abs=1e-3)
    # ignore leaves a factor out, as Chen et al. leave out dSprites' shape
    out = metrics.mig_chen(twice, np.full(twice.shape, -8.0), factors, (3, 4), ignore=(0,),
                           n_samples=500)
    assert np.isnan(out["gap_per_factor"][0]) and out["mig"] == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------
# UDR
# ----------------------------------------------------------------------------


def test_udr_exact_cases():
    x = np.array([1.0, 2, 3, 4])
    y = np.array([1.0, 4, 4, 1])            # Spearman(x, y) = 0 exactly
    a = np.column_stack([x, y])
    flipped = np.column_stack([-y, 10 * x])  # a's latents permuted, flipped and scaled
    dup = np.column_stack([x, x])
    kl = [np.ones(2)] * 3
    out = metrics.udr([a, flipped, dup], kl)
    assert out["pairwise"][0, 1] == pytest.approx(1.0)
    # R(a, dup) = [[1, 1], [0, 0]]: columns score 1, 1; rows 1/2, 0 -> 2.5 / 4
    assert out["pairwise"][0, 2] == pytest.approx(0.625)
    assert out["pairwise"][2, 0] == pytest.approx(0.625)
    assert out["udr"][0] == pytest.approx(np.median([1.0, 0.625]))
    # y inactive in a: R = [[1, 1]]; the paper divides by 1 + 2 latents, dlib averages sides
    kl = [np.array([1.0, 0.001]), np.ones(2)]
    assert metrics.udr([a, dup], kl)["pairwise"][0, 1] == pytest.approx(2.5 / 3)
    assert metrics.udr([a, dup], kl, aggregation="disentanglement_lib")["pairwise"][0, 1] == \
        pytest.approx(0.75)
    # no active latent: nothing to agree on
    assert metrics.udr([a, dup], [np.zeros(2), np.ones(2)])["pairwise"][0, 1] == 0.0


def test_udr_matches_disentanglement_libs_procedure():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(300, 3))
    codes = [base @ rng.normal(size=(3, 4)) + 0.3 * rng.normal(size=(300, 4)) for _ in range(4)]
    kls = [rng.uniform(0, 1, 4) * (rng.uniform(size=4) > 0.3) for _ in range(4)]
    ours = metrics.udr(codes, kls, aggregation="disentanglement_lib")
    pair = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            R = np.abs([[stats.spearmanr(codes[i][:, a], codes[j][:, b])[0] for b in range(4)]
                        for a in range(4)])
            R = R[kls[i] > 0.01][:, kls[j] > 0.01]
            cols = np.nan_to_num(R.max(axis=0) ** 2 / R.sum(axis=0))
            rows = np.nan_to_num(R.max(axis=1) ** 2 / R.sum(axis=1))
            pair[i, j] = (cols.mean() + rows.mean()) / 2
    expected = [np.median(np.delete(pair[:, i], i)) for i in range(4)]
    np.testing.assert_allclose(ours["udr"], expected, rtol=1e-12)


def test_udr_validation():
    with pytest.raises(ValueError, match="expected the same number"):
        metrics.udr([np.zeros((5, 2))], [np.ones(2)])
    with pytest.raises(ValueError, match=r"kl_list\[1\]: expected shape \(2,\)"):
        metrics.udr([np.zeros((5, 2))] * 2, [np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match=r"codes_list\[1\]"):
        metrics.udr([np.zeros((5, 2)), np.zeros((4, 2))], [np.ones(2)] * 2)


# ----------------------------------------------------------------------------
# the intervention scores under the reference protocol
# ----------------------------------------------------------------------------

SMALL = {"n_train": 200, "n_test": 100, "batch_size": 16}


def test_factor_vae_prunes_by_each_protocols_rule():
    ds = SpelledFactors((3, 6, 5))
    # the scale latent has std 0.04 * 1.7 = 0.068: above disentanglement_lib's 0.05,
    # below the fast rule's variance 0.01 -- only the reference keeps it
    vae = PerfectVAE(ds, scale=(1.0, 0.04, 1.0))
    reference = metrics.factor_vae_score(vae, ds, n_variance=2000, protocol="disentanglement_lib",
                                         **SMALL)
    fast = metrics.factor_vae_score(vae, ds, n_variance=2000, **SMALL)
    assert reference == 1.0
    assert fast < 0.8          # scale batches vote for a latent that names another factor


def test_beta_vae_reference_protocol_top_and_bottom():
    ds = SpelledFactors((3, 4, 5))
    assert metrics.beta_vae_score(read_factors(ds), ds, protocol="disentanglement_lib",
                                  **SMALL) == 1.0
    rng = np.random.default_rng(0)
    noise = lambda X: rng.standard_normal((len(X), 4))  # noqa: E731
    assert metrics.beta_vae_score(noise, ds, protocol="disentanglement_lib", **SMALL) < 0.5
    with pytest.raises(ValueError, match="protocol: expected one of 'fast', "
                                         "'disentanglement_lib', got 'paper'"):
        metrics.beta_vae_score(noise, ds, protocol="paper")


# ----------------------------------------------------------------------------
# the code table and the protocol runner
# ----------------------------------------------------------------------------


def test_code_table_gives_the_codes_encoding_gives():
    ds = SpelledFactors((3, 4, 5))
    vae = PerfectVAE(ds, scale=(1.0, 2.0, -1.0))
    table = metrics.CodeTable(vae, ds)
    classes = np.random.default_rng(0).integers(0, ds.factor_sizes, size=(50, 3))
    np.testing.assert_array_equal(table.lookup(classes), classes * np.array([1.0, 2.0, -1.0]))
    mu, logvar = table.posterior(classes)
    assert np.all(logvar == -6.0)
    kwargs = dict(protocol="disentanglement_lib", n=400, n_train=80, n_test=40, batch_size=8)
    looked_up = metrics.disentanglement_scores(vae, ds, table=True, **kwargs)
    encoded = metrics.disentanglement_scores(vae, ds, table=False, **kwargs)
    for key in ("mig", "sap", "beta_vae", "factor_vae", "dci_disentanglement",
                "dci_informativeness"):
        assert looked_up[key] == encoded[key], key


def test_sampled_codes_add_the_posterior_noise():
    ds = SpelledFactors((3, 4, 5))
    vae = PerfectVAE(ds, logvar=math.log(0.25))
    table = metrics.CodeTable(vae, ds, codes="sampled", seed=1)
    classes = np.zeros((4000, 3), int)
    z = table.lookup(classes)
    assert z.std(axis=0) == pytest.approx([0.5] * 3, rel=0.05)
    enc = metrics.sampled_encoder(vae, seed=1)
    x = ds.render(classes[:10]).reshape(10, -1).astype(np.float32)
    assert not np.array_equal(enc(x), enc(x))     # fresh noise on every call
    with pytest.raises(TypeError, match="codes='sampled' needs a model"):
        metrics.CodeTable(read_factors(ds), ds, codes="sampled")
    with pytest.raises(TypeError, match="codes='sampled' needs a model"):
        metrics.disentanglement_scores(read_factors(ds), ds, codes="sampled", n=100)


def test_disentanglement_scores_under_both_protocols():
    ds = SpelledFactors((3, 4, 5))
    vae = PerfectVAE(ds)
    sizes = dict(n=600, n_train=100, n_test=50, batch_size=8)
    for protocol in ("fast", "disentanglement_lib"):
        for codes in ("mean", "sampled"):
            out = metrics.disentanglement_scores(vae, ds, protocol=protocol, codes=codes,
                                                 **sizes)
            assert out["protocol"] == protocol and out["codes"] == codes
            for key in ("mig", "mig_chen", "beta_vae", "factor_vae",
                        "dci_disentanglement", "dci_completeness", "dci_informativeness"):
                assert out[key] > 0.7, (protocol, codes, key)
            # a 1-D linear SVM reads only the end values of a many-valued factor well
            assert 0.3 < out["sap"] < 0.6
            assert set(out["seconds"]) >= {"mig", "dci", "sap", "beta_vae", "factor_vae"}
    # a plain callable has no posterior: no Chen et al. MIG
    assert metrics.disentanglement_scores(read_factors(ds), ds, **sizes)["mig_chen"] is None
    with pytest.raises(ValueError, match="codes: expected one of 'mean', 'sampled'"):
        metrics.disentanglement_scores(vae, ds, codes="median")
