"""Evaluation: how well a model explains its data, and how disentangled its code is.

Two families, two kinds of input.

Likelihood side -- take a model with the tinyvae interface
(``encode(x) -> (mu, logvar)``, ``reconstruction_nll(x, z) -> (n,)``,
``latent_dim``, ``input_dim``, ``dtype``) and data ``X`` (n, input_dim) in [0, 1]:

    evaluate_elbo    ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)), one z per x
    iwae_bound       log-likelihood estimate, k importance samples (Burda et al. 2016)
    kl_per_latent    mean KL of each latent to the prior, in nats
    active_units     latents whose E[z|x] varies over the data (Burda et al. 2016)
    latent_means     E[z|x] per row (the code itself for an Autoencoder)
    mean_encoder     model -> callable images -> codes, for the scores below

Disentanglement side -- take codes and ground-truth factors, or an ``encode``
callable and a ``dataset`` that renders images from factor indices:

    beta_vae_score   Higgins et al. 2017, linear classifier on |z1 - z2|
    factor_vae_score Kim & Mnih 2018, majority vote on the least-varying latent
    mig, mig_details Chen et al. 2018, mutual information gap
    mutual_information  I(z_j; v_f) for every latent and factor, codes binned
    dci              Eastwood & Williams 2018, importances of a random forest
    sample_codes     render + encode a random sample, for mig and dci
    disentanglement_scores  all of the above at once

All quantities are in nats. Every random draw goes through
``np.random.default_rng(seed)``, so a seed (int or Generator) fixes the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tinyvae import _checks

__all__ = [
    "evaluate_elbo",
    "iwae_bound",
    "kl_per_latent",
    "active_units",
    "latent_means",
    "mean_encoder",
    "beta_vae_score",
    "factor_vae_score",
    "mutual_information",
    "mig",
    "mig_details",
    "dci",
    "sample_codes",
    "disentanglement_scores",
]

# Images rendered and encoded at once by the intervention-based scores: bounds
# memory at ~32 MB for 64x64 float32 images whatever n_train is.
_RENDER_CHUNK = 2048


# ----------------------------------------------------------------------------
# validation shared by the public functions
# ----------------------------------------------------------------------------


def _check_model(model, fn):
    for attr in ("encode", "latent_dim", "input_dim"):
        if not hasattr(model, attr):
            raise TypeError(
                f"{fn}: model: expected an object with .{attr} (a tinyvae model), "
                f"got {type(model).__name__}"
            )


def _check_data(model, X, fn):
    """X as a 2-D array of the model's dtype, with the model's number of columns."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != model.input_dim:
        raise ValueError(f"{fn}: X: expected shape (n, {model.input_dim}), got {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{fn}: X: expected at least one row, got 0")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise TypeError(f"{fn}: X: expected a real-valued array, got dtype {X.dtype}")
    return X.astype(getattr(model, "dtype", np.float64), copy=False)


def _batches(n, batch_size):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _encode_gaussian(model, x, fn):
    """(mu, logvar) as float64, or a TypeError that says why an Autoencoder can't be used."""
    out = model.encode(x)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"{fn}: model.encode: expected it to return (mu, logvar), but "
            f"{type(model).__name__}.encode returned a single array; a deterministic "
            "Autoencoder has no posterior q(z|x), so it has no ELBO or KL"
        )
    mu, logvar = (np.asarray(a, dtype=np.float64) for a in out)
    return mu, logvar


def _gaussian_kl(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, 1)) per example and latent = 0.5 (mu^2 + sigma^2 - 1 - logvar)."""
    return 0.5 * (mu * mu + np.exp(logvar) - 1.0 - logvar)


def _logsumexp(a, axis):
    # Shift by the max so the largest term is exp(0) = 1: no overflow, and the
    # underflow of the small terms costs nothing that matters.
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


# ----------------------------------------------------------------------------
# likelihood side
# ----------------------------------------------------------------------------


def latent_means(model, X, batch_size: int = 256) -> np.ndarray:
    """E[z|x] for every row of X, the code used by every disentanglement score.

    Inputs:  model with .encode; X (n, input_dim).
    Returns: (n, latent_dim) float64 -- mu for a VAE, the code z for an Autoencoder.
    """
    _check_model(model, "latent_means")
    X = _check_data(model, X, "latent_means")
    batch_size = _checks.int_at_least("batch_size", batch_size)
    codes = []
    for sl in _batches(len(X), batch_size):
        out = model.encode(X[sl])
        codes.append(np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64))
    return np.concatenate(codes)


def mean_encoder(model, batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a model as the ``encode`` callable the intervention-based scores take.

    Returns f(images (n, input_dim) float) -> E[z|x] (n, latent_dim).
    """
    _check_model(model, "mean_encoder")
    batch_size = _checks.int_at_least("batch_size", batch_size)
    return lambda X: latent_means(model, X, batch_size)


def evaluate_elbo(model, X, batch_size: int = 256, seed=0) -> dict:
    """The evidence lower bound and its two parts, averaged over X.

        ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || N(0, I))  <=  log p(x)

    The reconstruction term is estimated with one z = mu + sigma * eps per x
    (eps drawn from ``seed``); the KL is analytic. beta plays no part: this is
    the bound on log p(x), not the beta-weighted training loss.

    Inputs:  model (a VAE); X (n, input_dim); batch_size rows per encode call.
    Returns: dict with
        elbo           float, mean over X, nats (higher is better)
        recon          float, mean -log p(x|z) summed over features
        kl             float, mean KL summed over latents
        kl_per_latent  (latent_dim,) float64, mean KL of each latent
    """
    _check_model(model, "evaluate_elbo")
    X = _check_data(model, X, "evaluate_elbo")
    batch_size = _checks.int_at_least("batch_size", batch_size)
    rng = np.random.default_rng(seed)
    recon_sum = 0.0
    kl_sum = np.zeros(model.latent_dim)
    for sl in _batches(len(X), batch_size):
        x = X[sl]
        mu, logvar = _encode_gaussian(model, x, "evaluate_elbo")
        eps = rng.standard_normal(mu.shape)
        z = (mu + np.exp(0.5 * logvar) * eps).astype(x.dtype)
        recon_sum += float(np.sum(model.reconstruction_nll(x, z), dtype=np.float64))
        kl_sum += _gaussian_kl(mu, logvar).sum(axis=0)
    recon = recon_sum / len(X)
    kl = kl_sum / len(X)
    return {"elbo": -(recon + float(kl.sum())), "recon": recon, "kl": float(kl.sum()),
            "kl_per_latent": kl}


def iwae_bound(model, X, k: int = 50, batch_size: int = 32, seed=0) -> float:
    """Importance-weighted bound, the log-likelihood estimate (Burda et al. 2016).

        L_k(x) = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

    L_1 is the ELBO, L_k grows with k and tends to log p(x). Computed with a
    log-sum-exp in float64 because the weights span hundreds of nats.

    Inputs:  model (a VAE); X (n, input_dim); k samples per x;
             batch_size examples per call (the decoder sees batch_size * k rows).
    Returns: mean of L_k(x) over X, nats.
    """
    _check_model(model, "iwae_bound")
    X = _check_data(model, X, "iwae_bound")
    k = _checks.int_at_least("k", k)
    batch_size = _checks.int_at_least("batch_size", batch_size)
    rng = np.random.default_rng(seed)
    total = 0.0
    for sl in _batches(len(X), batch_size):
        x = X[sl]
        b = len(x)
        mu, logvar = _encode_gaussian(model, x, "iwae_bound")
        eps = rng.standard_normal((b, k, mu.shape[1]))
        z = mu[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps     # (b, k, d)
        x_rep = np.repeat(x, k, axis=0)                                  # row i*k+j is x_i
        nll = model.reconstruction_nll(x_rep, z.reshape(b * k, -1).astype(x.dtype))
        nll = np.asarray(nll, dtype=np.float64).reshape(b, k)
        # log p(z) - log q(z|x) with (z - mu) / sigma = eps; the log(2 pi) terms cancel
        log_prior_over_q = -0.5 * np.sum(z * z - eps * eps - logvar[:, None, :], axis=2)
        log_w = -nll + log_prior_over_q
        total += float(np.sum(_logsumexp(log_w, axis=1) - math.log(k)))
    return total / len(X)


def kl_per_latent(model, X, batch_size: int = 256) -> np.ndarray:
    """Mean over X of KL(q(z_j|x) || N(0, 1)) for each latent j, in nats.

    A latent with KL near 0 has collapsed to the prior: it carries no information
    about x. Returns (latent_dim,) float64.
    """
    _check_model(model, "kl_per_latent")
    X = _check_data(model, X, "kl_per_latent")
    batch_size = _checks.int_at_least("batch_size", batch_size)
    kl_sum = np.zeros(model.latent_dim)
    for sl in _batches(len(X), batch_size):
        mu, logvar = _encode_gaussian(model, X[sl], "kl_per_latent")
        kl_sum += _gaussian_kl(mu, logvar).sum(axis=0)
    return kl_sum / len(X)


def active_units(model, X, threshold: float = 0.01, batch_size: int = 256):
    """Count the latents the model uses (Burda et al. 2016).

        A_u = Var_x( E_{q(z|x)}[z_u] ) > threshold

    Returns: (count int, variances (latent_dim,) float64).
    """
    if not threshold >= 0:
        raise ValueError(f"threshold: expected a number >= 0, got {threshold}")
    codes = latent_means(model, X, batch_size)
    variances = codes.var(axis=0)
    return int(np.sum(variances > threshold)), variances


# ----------------------------------------------------------------------------
# disentanglement: shared pieces
# ----------------------------------------------------------------------------


def _check_dataset(dataset, fn, min_varying=1):
    """factor_sizes as a tuple and the indices of the factors that vary (size > 1)."""
    if not hasattr(dataset, "factor_sizes") or not callable(getattr(dataset, "render", None)):
        raise TypeError(
            f"{fn}: dataset: expected an object with .factor_sizes and .render(classes), "
            f"got {type(dataset).__name__}"
        )
    sizes = tuple(int(s) for s in dataset.factor_sizes)
    if len(sizes) == 0 or min(sizes) < 1:
        raise ValueError(
            f"{fn}: dataset.factor_sizes: expected positive ints, got {dataset.factor_sizes}"
        )
    # A factor fixed in a subset (size 1) can't be intervened on; leave it out.
    varying = [j for j, s in enumerate(sizes) if s > 1]
    if len(varying) < min_varying:
        raise ValueError(
            f"{fn}: dataset.factor_sizes: expected at least {min_varying} factors with more "
            f"than one value, got {sizes}"
        )
    return sizes, varying


def _check_encode(encode, fn):
    # A model is accepted too, and read through its posterior mean.
    if hasattr(encode, "encode") and hasattr(encode, "input_dim"):
        return mean_encoder(encode)
    if not callable(encode):
        raise TypeError(
            f"{fn}: encode: expected a callable images (n, D) -> codes (n, d) or a model, "
            f"got {type(encode).__name__}"
        )
    return encode


def _sample_factors(rng, sizes, n):
    """(n, k) int64 factor indices, each factor uniform over its values."""
    return rng.integers(0, np.asarray(sizes), size=(n, len(sizes)))


def _encode_classes(encode, dataset, classes, fn):
    """Render factor indices (n, k) and encode them: (n, d) float64 codes."""
    codes = []
    for sl in _batches(len(classes), _RENDER_CHUNK):
        images = np.asarray(dataset.render(classes[sl]))
        x = images.reshape(len(images), -1).astype(np.float32)
        out = encode(x)
        # model.encode itself returns (mu, logvar); the code is the mean.
        out = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != len(x):
            raise ValueError(
                f"{fn}: encode: expected codes of shape ({len(x)}, d), got {out.shape}"
            )
        codes.append(out)
    return np.concatenate(codes)


def _check_codes_factors(codes, factors, fn):
    codes = np.asarray(codes)
    factors = np.asarray(factors)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f"{fn}: codes: expected shape (n, d) with d >= 1, got {codes.shape}")
    if not np.issubdtype(codes.dtype, np.number) or np.issubdtype(codes.dtype, np.complexfloating):
        raise TypeError(f"{fn}: codes: expected a real-valued array, got dtype {codes.dtype}")
    if not np.all(np.isfinite(codes)):
        raise ValueError(f"{fn}: codes: expected finite values, got NaN or inf")
    if factors.ndim != 2 or factors.shape[1] == 0:
        raise ValueError(f"{fn}: factors: expected shape (n, k) with k >= 1, got {factors.shape}")
    if not (np.issubdtype(factors.dtype, np.integer) or factors.dtype == bool):
        raise TypeError(
            f"{fn}: factors: expected integer factor indices (e.g. dSprites latents_classes), "
            f"got dtype {factors.dtype}"
        )
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(
            f"{fn}: codes and factors: expected the same number of rows, got "
            f"{codes.shape[0]} and {factors.shape[0]}"
        )
    if codes.shape[0] < 2:
        raise ValueError(f"{fn}: codes: expected at least 2 rows, got {codes.shape[0]}")
    return codes.astype(np.float64, copy=False), factors.astype(np.int64, copy=False)


def sample_codes(encode, dataset, n: int = 10_000, seed=0):
    """Render n images with uniformly random factors and encode them.

    Inputs:  encode callable (n, D) float -> (n, d) (or a model: its E[z|x]);
             dataset with factor_sizes and render(classes).
    Returns: codes (n, d) float64, factors (n, k) int64 -- the inputs of mig and dci.
    """
    encode = _check_encode(encode, "sample_codes")
    sizes, _ = _check_dataset(dataset, "sample_codes")
    n = _checks.int_at_least("n", n, minimum=2)
    factors = _sample_factors(np.random.default_rng(seed), sizes, n)
    return _encode_classes(encode, dataset, factors, "sample_codes"), factors


# ----------------------------------------------------------------------------
# beta-VAE metric (Higgins et al. 2017)
# ----------------------------------------------------------------------------


def _beta_vae_points(encode, dataset, sizes, varying, n_points, batch_size, rng):
    """Features (n_points, d) = mean over L pairs of |z1 - z2|, labels = the fixed factor."""
    y = rng.choice(varying, size=n_points)
    n_pairs = n_points * batch_size
    f1 = _sample_factors(rng, sizes, n_pairs)
    f2 = _sample_factors(rng, sizes, n_pairs)
    rows = np.arange(n_pairs)
    fixed = np.repeat(y, batch_size)
    f2[rows, fixed] = f1[rows, fixed]      # every pair shares y; others agree only by chance
    z1 = _encode_classes(encode, dataset, f1, "beta_vae_score")
    z2 = _encode_classes(encode, dataset, f2, "beta_vae_score")
    features = np.abs(z1 - z2).reshape(n_points, batch_size, -1).mean(axis=1)
    return features, y


def beta_vae_score(encode, dataset, n_train: int = 300, n_test: int = 150,
                   batch_size: int = 64, seed=0) -> float:
    """beta-VAE disentanglement metric (Higgins et al. 2017, sec. 3).

    One point: pick a factor y, draw L = batch_size pairs of images that share
    the value of y and nothing else, encode, and average |z1 - z2| over the
    pairs. A disentangled code leaves the latent of y near 0, so a linear
    classifier (standardised features + LogisticRegression) reads y off the
    point. Score = its accuracy on n_test held-out points: 1 is perfect, chance
    is 1 / (number of varying factors).

    Inputs:  encode callable images (n, D) float32 in [0, 1] -> codes (n, d)
             (or a model: its E[z|x]); dataset with factor_sizes and
             render(classes (n, k) int) -> (n, R, R) images. Factors of size 1
             are skipped; at least two must vary.
    Cost:    2 * (n_train + n_test) * batch_size images rendered and encoded.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    encode = _check_encode(encode, "beta_vae_score")
    sizes, varying = _check_dataset(dataset, "beta_vae_score", min_varying=2)
    n_train = _checks.int_at_least("n_train", n_train, minimum=2)
    n_test = _checks.int_at_least("n_test", n_test)
    batch_size = _checks.int_at_least("batch_size", batch_size)
    rng = np.random.default_rng(seed)
    x_train, y_train = _beta_vae_points(encode, dataset, sizes, varying, n_train, batch_size, rng)
    x_test, y_test = _beta_vae_points(encode, dataset, sizes, varying, n_test, batch_size, rng)
    if np.unique(y_train).size < 2:    # only when n_train is tiny
        raise ValueError(f"n_train: {n_train} points drew a single factor; use more points")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(x_train, y_train)
    return float(classifier.score(x_test, y_test))


# ----------------------------------------------------------------------------
# FactorVAE metric (Kim & Mnih 2018)
# ----------------------------------------------------------------------------


def _factor_vae_votes(encode, dataset, sizes, varying, scale, active, n_votes, batch_size, rng):
    """Votes (d, k): votes[j, f] counts batches with factor f fixed whose least-varying
    normalised latent was j."""
    fixed_factor = rng.choice(varying, size=n_votes)
    fixed_value = rng.integers(0, np.asarray(sizes)[fixed_factor])
    classes = _sample_factors(rng, sizes, n_votes * batch_size)
    rows = np.arange(n_votes * batch_size)
    classes[rows, np.repeat(fixed_factor, batch_size)] = np.repeat(fixed_value, batch_size)
    codes = _encode_classes(encode, dataset, classes, "factor_vae_score")
    codes = codes[:, active] / scale[active]
    variance = codes.reshape(n_votes, batch_size, -1).var(axis=1, ddof=1)
    latent = np.flatnonzero(active)[np.argmin(variance, axis=1)]
    votes = np.zeros((len(scale), len(sizes)), dtype=np.int64)
    np.add.at(votes, (latent, fixed_factor), 1)
    return votes


def factor_vae_score(encode, dataset, n_train: int = 300, n_test: int = 150,
                     batch_size: int = 64, n_variance: int = 5000,
                     collapsed_threshold: float = 0.01, seed=0) -> float:
    """FactorVAE disentanglement metric (Kim & Mnih 2018, sec. 4).

    Each latent is divided by its std over n_variance random images, so no
    latent wins by scale; latents whose variance is below collapsed_threshold
    (the same rule as active_units) are pruned. One vote: fix one factor to a
    random value, encode batch_size images, and vote (argmin_j Var[z_j], factor).
    The classifier maps each latent to the factor it got most training votes
    for; score = fraction of n_test held-out votes it gets right. 1 is perfect,
    chance is about 1 / (number of varying factors). 0.0 if every latent collapsed.

    Inputs:  as beta_vae_score. batch_size >= 2 (a variance needs two codes).
    Cost:    n_variance + (n_train + n_test) * batch_size images.
    """
    encode = _check_encode(encode, "factor_vae_score")
    sizes, varying = _check_dataset(dataset, "factor_vae_score", min_varying=2)
    n_train = _checks.int_at_least("n_train", n_train)
    n_test = _checks.int_at_least("n_test", n_test)
    batch_size = _checks.int_at_least("batch_size", batch_size, minimum=2)
    n_variance = _checks.int_at_least("n_variance", n_variance, minimum=2)
    if not collapsed_threshold >= 0:
        raise ValueError(f"collapsed_threshold: expected a number >= 0, got {collapsed_threshold}")
    rng = np.random.default_rng(seed)
    codes = _encode_classes(encode, dataset, _sample_factors(rng, sizes, n_variance),
                            "factor_vae_score")
    scale = codes.std(axis=0)
    active = scale**2 > collapsed_threshold
    if not active.any():
        return 0.0
    args = (encode, dataset, sizes, varying, scale, active)
    train = _factor_vae_votes(*args, n_train, batch_size, rng)
    test = _factor_vae_votes(*args, n_test, batch_size, rng)
    majority = np.argmax(train, axis=1)                      # (d,) the factor each latent names
    return float(test[np.arange(len(majority)), majority].sum() / n_test)


# ----------------------------------------------------------------------------
# MIG (Chen et al. 2018)
# ----------------------------------------------------------------------------


def _discretize(codes, n_bins):
    """Each latent into n_bins equal-width bins over its own range: (n, d) int."""
    binned = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=n_bins)
        binned[:, j] = np.digitize(codes[:, j], edges[1:-1])
    return binned


def mutual_information(codes, factors, n_bins: int = 20) -> np.ndarray:
    """I(z_j; v_f) in nats for every latent j and factor f, codes discretised per latent.

    Inputs:  codes (n, d) float; factors (n, k) int; n_bins histogram bins per latent.
    Returns: (d, k) float64. The plug-in estimate is biased up by about
             (bins_j - 1)(values_f - 1) / (2n) nats, so use n >> bins * values.
    """
    from sklearn.metrics import mutual_info_score

    codes, factors = _check_codes_factors(codes, factors, "mutual_information")
    n_bins = _checks.int_at_least("n_bins", n_bins)
    binned = _discretize(codes, n_bins)
    return np.array([[mutual_info_score(factors[:, f], binned[:, j])
                      for f in range(factors.shape[1])] for j in range(codes.shape[1])])


def mig_details(codes, factors, n_bins: int = 20) -> dict:
    """Mutual information gap with everything it is made of (Chen et al. 2018, eq. 6).

        MIG = mean_f  ( I(z_{j*}; v_f) - max_{j != j*} I(z_j; v_f) ) / H(v_f)

    where j* is the latent most informative about factor f. A factor captured by
    one latent scores 1; a factor shared equally by two latents scores 0.
    Factors that take one value in the sample (H = 0) are skipped.

    Inputs:  codes (n, d) float; factors (n, k) int; n_bins per latent.
    Returns: dict with
        mig             float in [0, 1]
        gap_per_factor  (k,) normalised gaps, NaN for skipped factors
        entropy         (k,) H(v_f) in nats
        mutual_info     (d, k) I(z_j; v_f) in nats
        top_latent      (k,) int, j* for each factor (-1 when skipped)
    With one latent the runner-up information is taken as 0.
    """
    from sklearn.metrics import mutual_info_score

    codes, factors = _check_codes_factors(codes, factors, "mig")
    mi = mutual_information(codes, factors, n_bins)
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])
    varies = entropy > 0
    if not varies.any():
        raise ValueError("mig: factors: expected at least one factor that varies, got none")
    ranked = np.sort(mi, axis=0)[::-1]                                   # (d, k), best first
    runner_up = ranked[1] if len(ranked) > 1 else np.zeros(mi.shape[1])
    gap = np.full(mi.shape[1], np.nan)
    gap[varies] = (ranked[0, varies] - runner_up[varies]) / entropy[varies]
    top = np.where(varies, np.argmax(mi, axis=0), -1)
    return {"mig": float(np.mean(gap[varies])), "gap_per_factor": gap, "entropy": entropy,
            "mutual_info": mi, "top_latent": top}


def mig(codes, factors, n_bins: int = 20) -> float:
    """Mutual information gap (Chen et al. 2018): 1 = each factor lives in one latent.

    codes (n, d) float, factors (n, k) int. See mig_details for the formula.
    """
    return mig_details(codes, factors, n_bins)["mig"]


# ----------------------------------------------------------------------------
# DCI (Eastwood & Williams 2018)
# ----------------------------------------------------------------------------


def _one_minus_entropy(p, axis, base):
    """1 - H_base(p) along axis, for p summing to 1 along it (0 log 0 = 0)."""
    if base == 1:    # a single outcome: no uncertainty possible
        return np.ones(np.delete(p.shape, axis))
    logp = np.log(np.where(p > 0, p, 1.0))
    return 1.0 + np.sum(p * logp, axis=axis) / math.log(base)


def dci(codes, factors, test_fraction: float = 0.25, n_estimators: int = 10, seed=0) -> dict:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018).

    For each factor f a forest of extremely randomised trees (scikit-learn's
    ExtraTreesClassifier: a random forest whose split thresholds are drawn, not
    searched, ~5x faster here with importances within a few hundredths; every
    latent is offered at every split, so an irrelevant one is used only when it
    helps) predicts v_f from the codes; its impurity importances fill column f
    of R (d, k).
        D_j = 1 - H_k(R_j. / sum_f R_jf)       weights rho_j = sum_f R_jf / sum R
        C_f = 1 - H_d(R_.f / sum_j R_jf)       weights sum_j R_jf / sum R
    D and C are weighted means; informativeness is the mean held-out accuracy
    (higher is better, unlike the paper's error). Factors with one value in the
    training split are skipped.

    Inputs:  codes (n, d) float; factors (n, k) int; test_fraction held out.
    Returns: dict with disentanglement, completeness, informativeness (floats in
             [0, 1]), importance (d, k), informativeness_per_factor (k,) (NaN skipped).
    """
    from sklearn.ensemble import ExtraTreesClassifier

    codes, factors = _check_codes_factors(codes, factors, "dci")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    n_estimators = _checks.int_at_least("n_estimators", n_estimators)
    rng = np.random.default_rng(seed)
    n = len(codes)
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    order = rng.permutation(n)
    test, train = order[:n_test], order[n_test:]

    d, k = codes.shape[1], factors.shape[1]
    importance = np.zeros((d, k))
    accuracy = np.full(k, np.nan)
    for f in range(k):
        if np.unique(factors[train, f]).size < 2:
            continue
        forest = ExtraTreesClassifier(n_estimators=n_estimators, max_features=None,
                                      random_state=int(rng.integers(2**31)))
        forest.fit(codes[train], factors[train, f])
        importance[:, f] = forest.feature_importances_
        accuracy[f] = forest.score(codes[test], factors[test, f])
    used = ~np.isnan(accuracy)
    if not used.any():
        raise ValueError("dci: factors: expected at least one factor that varies, got none")

    R = importance[:, used]
    total = R.sum()
    if total == 0:    # every forest is a single leaf: nothing is explained
        return {"disentanglement": 0.0, "completeness": 0.0,
                "informativeness": float(np.nanmean(accuracy)), "importance": importance,
                "informativeness_per_factor": accuracy}
    per_latent = R.sum(axis=1)
    rows = per_latent > 0          # a latent no forest used carries no weight
    D = _one_minus_entropy(R[rows] / per_latent[rows, None], axis=1, base=R.shape[1])
    per_factor = R.sum(axis=0)
    cols = per_factor > 0
    C = _one_minus_entropy(R[:, cols] / per_factor[cols], axis=0, base=d)
    return {"disentanglement": float(np.sum(D * per_latent[rows] / total)),
            "completeness": float(np.sum(C * per_factor[cols] / total)),
            "informativeness": float(np.nanmean(accuracy)),
            "importance": importance,
            "informativeness_per_factor": accuracy}


# ----------------------------------------------------------------------------
# everything at once
# ----------------------------------------------------------------------------


def disentanglement_scores(encode, dataset, n: int = 10_000, n_train: int = 300,
                           n_test: int = 150, batch_size: int = 64, seed=0) -> dict:
    """All four scores on one encoder and dataset, for reports and beta sweeps.

    mig and dci use n random codes (sample_codes); the two intervention-based
    scores use n_train / n_test points of batch_size images each. Each part
    draws from its own stream of ``seed``, so adding one doesn't shift another.

    Returns: dict of floats beta_vae, factor_vae, mig, dci_disentanglement,
             dci_completeness, dci_informativeness.
    """
    encode = _check_encode(encode, "disentanglement_scores")
    seeds = np.random.default_rng(seed).integers(2**31, size=4)
    codes, factors = sample_codes(encode, dataset, n, seed=seeds[0])
    parts = dci(codes, factors, seed=seeds[1])
    return {
        "beta_vae": beta_vae_score(encode, dataset, n_train, n_test, batch_size, seed=seeds[2]),
        "factor_vae": factor_vae_score(encode, dataset, n_train, n_test, batch_size,
                                       seed=seeds[3]),
        "mig": mig(codes, factors),
        "dci_disentanglement": parts["disentanglement"],
        "dci_completeness": parts["completeness"],
        "dci_informativeness": parts["informativeness"],
    }


# ----------------------------------------------------------------------------
# does the reconstruction keep the shape?
# ----------------------------------------------------------------------------


def _iou(a, b):
    """Intersection over union of boolean images, per row: a, b (n, P) -> (n,)."""
    union = np.logical_or(a, b).sum(axis=1)
    return np.logical_and(a, b).sum(axis=1) / np.maximum(union, 1)


def shape_fidelity(model, dataset, n: int = 1000, seed=0, threshold: float = 0.5) -> dict:
    """How often a reconstruction is closest to its own shape: a blob scores chance.

    For n held-out sprites (uniformly random factors), the reconstruction E[x | mu(x)]
    thresholded at `threshold` is compared (IoU) with the same sprite rendered as
    each of the shapes at the same scale, orientation and position. Returns
    {"shape_kept": fraction whose own shape has the largest IoU (ties count as
    misses; chance 1 / n_shapes), "iou": mean IoU with the own shape,
    "per_shape": {name: shape_kept among sprites of that shape}}.
    """
    _check_model(model, "shape_fidelity")
    sizes, _ = _check_dataset(dataset, "shape_fidelity")
    n = _checks.int_at_least("n", n)
    classes = _sample_factors(np.random.default_rng(seed), sizes, n)
    shape_axis = list(dataset.factor_names).index("shape")
    images = dataset.render(classes).reshape(n, -1).astype(model.dtype)
    recon = np.concatenate([model.reconstruct(images[rows]) for rows in _batches(n, 512)])
    recon = recon > threshold
    ious = []
    for s in range(sizes[shape_axis]):
        other = classes.copy()
        other[:, shape_axis] = s
        ious.append(_iou(recon, dataset.render(other).reshape(n, -1) > 0))
    ious = np.stack(ious, axis=1)                               # (n, n_shapes)
    own = classes[:, shape_axis]
    own_iou = ious[np.arange(n), own]
    rivals = np.where(np.eye(sizes[shape_axis], dtype=bool)[own], -np.inf, ious).max(axis=1)
    kept = own_iou > rivals
    names = getattr(dataset, "shape_names", None) or [f"shape{s}" for s in range(sizes[shape_axis])]
    return {"shape_kept": float(kept.mean()), "iou": float(own_iou.mean()),
            "per_shape": {str(names[s]): float(kept[own == s].mean()) if np.any(own == s) else None
                          for s in range(sizes[shape_axis])}}
