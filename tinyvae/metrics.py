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
    mig, mig_details Chen et al. 2018, mutual information gap (binned codes)
    mig_chen         Chen et al.'s own MIG: sampled codes, q(z) densities, log K
    mutual_information  I(z_j; v_f) for every latent and factor, codes binned
    dci              Eastwood & Williams 2018, importances of a tree ensemble
    sap              Kumar et al. 2018, separated attribute predictability
    sample_codes     render + encode a random sample, for mig, dci and sap
    sampled_encoder  model -> callable images -> z = mu + sigma * eps
    CodeTable        every image of a finite dataset encoded once, then looked up
    disentanglement_scores  all of the above at once, under a named protocol
    udr              Duan et al. 2020, unsupervised model selection over a sweep

Protocols. ``protocol="fast"`` (the default) sizes every score for a minutes-long
run. ``protocol="disentanglement_lib"`` reproduces the definitions and sizes of
Locatello et al. 2019's library (see PROTOCOLS), so a number can be put beside a
paper's. Every score takes ``codes="mean"`` (E[z|x], disentanglement_lib's
default) or ``codes="sampled"`` (one z ~ q(z|x) per image).

All quantities are in nats. Every random draw goes through
``np.random.default_rng(seed)``, so a seed (int or Generator) fixes the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tinyvae import _checks
from tinyvae._backend.numba_flags import njit

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
    "mig_chen",
    "dci",
    "sap",
    "sample_codes",
    "sampled_encoder",
    "CodeTable",
    "PROTOCOLS",
    "disentanglement_scores",
    "udr",
]

# Images rendered and encoded at once by the intervention-based scores: bounds
# memory at ~32 MB for 64x64 float32 images whatever n_train is.
_RENDER_CHUNK = 2048
#: the two codes a score can read: E[z|x], or one z ~ q(z|x) per image
CODES = ("mean", "sampled")


# ----------------------------------------------------------------------------
# validation shared by the public functions
# ----------------------------------------------------------------------------


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


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


def _posterior(model, X, batch_size):
    """(mu, logvar) float64 for every row of X, encoded batch by batch."""
    parts = [_encode_gaussian(model, X[sl], "sampled_encoder") for sl in _batches(len(X),
                                                                                   batch_size)]
    return tuple(np.concatenate(a) for a in zip(*parts, strict=True))


def sampled_encoder(model, seed=0, batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a VAE as an ``encode`` callable that returns one sample per image.

        z = mu + exp(0.5 logvar) * eps,   eps ~ N(0, I) fresh for every image

    disentanglement_lib's "sampled" representation. The noise comes from its own
    ``np.random.default_rng(seed)``: the same calls in the same order give the same codes.
    Returns f(images (n, input_dim)) -> (n, latent_dim) float64.
    """
    _check_model(model, "sampled_encoder")
    batch_size = _checks.int_at_least("batch_size", batch_size)
    rng = np.random.default_rng(seed)

    def encode(X):
        mu, logvar = _posterior(model, X, batch_size)
        return mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)

    return encode


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
    if isinstance(encode, CodeTable):
        return encode
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
    if isinstance(encode, CodeTable):
        return encode.lookup(classes)
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


class CodeTable:
    """Every image of a finite dataset encoded once; scores then look codes up.

    disentanglement_lib's protocol renders and encodes ~3 million dSprites images, four
    times the 737,280 the dataset has. A mean code depends only on the image, so
    encoding each image once and indexing the table by factor values gives the same
    codes for a quarter of the work. With ``codes="sampled"`` the table keeps mu and
    logvar and each lookup draws fresh noise, as encoding again would.

    Pass a CodeTable as ``encode`` to any score that takes (encode, dataset).

    Inputs:  encode -- a model, or a callable images -> codes (or -> (mu, logvar));
             dataset with factor_sizes and render(classes); codes "mean" | "sampled";
             seed of the sampling noise.
    Memory:  len(dataset) * latent_dim * 8 bytes per table (59 MB for dSprites, d = 10).
    """

    def __init__(self, encode, dataset, codes: str = "mean", seed=0):
        sizes, _ = _check_dataset(dataset, "CodeTable")
        self.codes = _check_choice(codes, "codes", CODES)
        self.factor_sizes = sizes
        self.dataset = dataset
        if hasattr(encode, "encode") and hasattr(encode, "input_dim"):
            model = encode
            encode = lambda X: _posterior(model, X, 1024)  # noqa: E731
        every = np.stack(np.unravel_index(np.arange(math.prod(sizes)), sizes), axis=1)
        parts = [encode(np.asarray(dataset.render(every[sl])).reshape(sl.stop - sl.start, -1)
                        .astype(np.float32)) for sl in _batches(len(every), _RENDER_CHUNK)]
        if isinstance(parts[0], tuple):
            self.mu, self.logvar = (np.concatenate([np.asarray(p[i], np.float64) for p in parts])
                                    for i in (0, 1))
        else:
            self.mu, self.logvar = np.concatenate(parts).astype(np.float64), None
        if self.codes == "sampled" and self.logvar is None:
            raise TypeError("CodeTable: encode: codes='sampled' needs a model or an encode "
                            "that returns (mu, logvar), got one that returns codes only")
        self._rng = np.random.default_rng(seed)

    def _rows(self, classes):
        return np.ravel_multi_index(np.asarray(classes).T, self.factor_sizes)

    def posterior(self, classes):
        """(mu, logvar) of the images with these factor indices (n, k); needs a model."""
        rows = self._rows(classes)
        if self.logvar is None:
            raise TypeError("CodeTable: built from an encode that returns codes only: "
                            "no posterior to look up")
        return self.mu[rows], self.logvar[rows]

    def lookup(self, classes):
        """(n, d) codes of the images with factor indices classes (n, k)."""
        rows = self._rows(classes)
        if self.codes == "mean":
            return self.mu[rows]
        mu, logvar = self.mu[rows], self.logvar[rows]
        return mu + np.exp(0.5 * logvar) * self._rng.standard_normal(mu.shape)


# ----------------------------------------------------------------------------
# protocols: the sizes and rules behind each number
# ----------------------------------------------------------------------------

#: Each protocol's settings, score by score. "disentanglement_lib" is the library of
#: Locatello et al. 2019 (its unsupervised_study_v1 gin configs); "fast" fits a run of
#: a few minutes. (n_train, n_test) count codes for mig / dci / sap and points of
#: batch_size image pairs (beta-VAE) or batches (FactorVAE) for the other two.
PROTOCOLS = {
    "fast": {
        "mig": {"n": 10_000, "n_bins": 20},
        # fast: dci and sap reuse mig's codes, split 3:1
        "dci": {"classifier": "extra_trees", "split_of_mig": 0.25},
        "sap": {"split_of_mig": 0.25},
        "beta_vae": {"n_train": 500, "n_test": 250, "batch_size": 64,
                     "classifier": "standardised"},      # StandardScaler + LogisticRegression
        "factor_vae": {"n_train": 500, "n_test": 250, "batch_size": 64, "n_variance": 5_000,
                       "collapsed_threshold": 0.01},     # Var[z_j] > 0.01, as active_units
        # not part of disentanglement_lib: Chen et al.'s estimator on mig's codes, z
        # samples per entropy kept small (each costs n_samples x n x d densities)
        "mig_chen": {"n_samples": 1_000},
    },
    "disentanglement_lib": {
        "mig": {"n": 10_000, "n_bins": 20},
        "dci": {"classifier": "gradient_boosting", "n_train": 10_000, "n_test": 5_000},
        "sap": {"n_train": 10_000, "n_test": 5_000},
        "beta_vae": {"n_train": 10_000, "n_test": 5_000, "batch_size": 64,
                     "classifier": "plain"},             # LogisticRegression() on raw features
        "factor_vae": {"n_train": 10_000, "n_test": 5_000, "batch_size": 64,
                       "n_variance": 10_000,
                       "collapsed_threshold": 0.05**2},  # prune_dims: std >= 0.05
        "mig_chen": {"n_samples": 1_000},
    },
}


def _protocol(protocol, score):
    return PROTOCOLS[_check_choice(protocol, "protocol", tuple(PROTOCOLS))][score]


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


def beta_vae_score(encode, dataset, n_train: int | None = None, n_test: int | None = None,
                   batch_size: int = 64, seed=0, protocol: str = "fast") -> float:
    """beta-VAE disentanglement metric (Higgins et al. 2017, sec. 3).

    One point: pick a factor y, draw L = batch_size pairs of images that share
    the value of y and nothing else, encode, and average |z1 - z2| over the
    pairs. A disentangled code leaves the latent of y near 0, so a linear
    classifier (standardised features + LogisticRegression) reads y off the
    point. Score = its accuracy on n_test held-out points: 1 is perfect, chance
    is 1 / (number of varying factors).

    protocol "fast": 500 / 250 points, features standardised, LogisticRegression run
    to convergence. "disentanglement_lib": 10,000 / 5,000 points and scikit-learn's
    ``LogisticRegression()`` with its defaults on the raw features (its iteration
    limit may stop it early, as it does there). n_train / n_test override the sizes.

    Inputs:  encode callable images (n, D) float32 in [0, 1] -> codes (n, d)
             (or a model: its E[z|x]); dataset with factor_sizes and
             render(classes (n, k) int) -> (n, R, R) images. Factors of size 1
             are skipped; at least two must vary.
    Cost:    2 * (n_train + n_test) * batch_size images rendered and encoded.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    settings = _protocol(protocol, "beta_vae")
    encode = _check_encode(encode, "beta_vae_score")
    sizes, varying = _check_dataset(dataset, "beta_vae_score", min_varying=2)
    n_train = _checks.int_at_least("n_train", settings["n_train"] if n_train is None
                                   else n_train, minimum=2)
    n_test = _checks.int_at_least("n_test", settings["n_test"] if n_test is None else n_test)
    batch_size = _checks.int_at_least("batch_size", batch_size)
    rng = np.random.default_rng(seed)
    x_train, y_train = _beta_vae_points(encode, dataset, sizes, varying, n_train, batch_size, rng)
    x_test, y_test = _beta_vae_points(encode, dataset, sizes, varying, n_test, batch_size, rng)
    if np.unique(y_train).size < 2:    # only when n_train is tiny
        raise ValueError(f"n_train: {n_train} points drew a single factor; use more points")
    if settings["classifier"] == "standardised":
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        classifier.fit(x_train, y_train)
    else:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        classifier = LogisticRegression(random_state=int(rng.integers(2**31)))
        with warnings.catch_warnings():     # the reference stops at 100 iterations too
            warnings.simplefilter("ignore", ConvergenceWarning)
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


def factor_vae_score(encode, dataset, n_train: int | None = None, n_test: int | None = None,
                     batch_size: int = 64, n_variance: int | None = None,
                     collapsed_threshold: float | None = None, seed=0,
                     protocol: str = "fast") -> float:
    """FactorVAE disentanglement metric (Kim & Mnih 2018, sec. 4).

    Each latent is divided by its std over n_variance random images (ddof = 1), so
    no latent wins by scale; latents whose variance is not above collapsed_threshold
    are pruned. One vote: fix one factor to a
    random value, encode batch_size images, and vote (argmin_j Var[z_j], factor).
    The classifier maps each latent to the factor it got most training votes
    for; score = fraction of n_test held-out votes it gets right. 1 is perfect,
    chance is about 1 / (number of varying factors). 0.0 if every latent collapsed.

    protocol "fast": 500 / 250 votes, 5,000 images for the scale, prune Var <= 0.01
    (as active_units). "disentanglement_lib": 10,000 / 5,000 votes, 10,000 images,
    prune std < 0.05 (its prune_dims). There a vote is stored under the latent's
    position among the kept latents, not its index; the majority vote is the same
    under that relabelling, so the score is too. Arguments given override the sizes.

    Inputs:  as beta_vae_score. batch_size >= 2 (a variance needs two codes).
    Cost:    n_variance + (n_train + n_test) * batch_size images.
    """
    settings = _protocol(protocol, "factor_vae")
    n_train = settings["n_train"] if n_train is None else n_train
    n_test = settings["n_test"] if n_test is None else n_test
    n_variance = settings["n_variance"] if n_variance is None else n_variance
    if collapsed_threshold is None:
        collapsed_threshold = settings["collapsed_threshold"]
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
    scale = codes.std(axis=0, ddof=1)
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


def _split(codes, factors, test, test_fraction, rng, fn):
    """(train codes, train factors, test codes, test factors): the test set given, or a
    random test_fraction of the rows held out."""
    if test is not None:
        test_codes, test_factors = _check_codes_factors(*test, f"{fn} (test)")
        if test_codes.shape[1] != codes.shape[1] or test_factors.shape[1] != factors.shape[1]:
            raise ValueError(f"{fn}: test: expected codes (m, {codes.shape[1]}) and factors "
                             f"(m, {factors.shape[1]}), got {test_codes.shape} and "
                             f"{test_factors.shape}")
        return codes, factors, test_codes, test_factors
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    n = len(codes)
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    order = rng.permutation(n)
    test_rows, train_rows = order[:n_test], order[n_test:]
    return codes[train_rows], factors[train_rows], codes[test_rows], factors[test_rows]


#: the classifiers DCI can read importances from
DCI_CLASSIFIERS = ("extra_trees", "gradient_boosting")


def _dci_classifier(name, n_estimators, random_state):
    if name == "extra_trees":
        from sklearn.ensemble import ExtraTreesClassifier

        return ExtraTreesClassifier(n_estimators=n_estimators, max_features=None,
                                    random_state=random_state)
    # scikit-learn's GradientBoostingClassifier() with its defaults, compiled
    from tinyvae._backend.boosting import GradientBoosting

    return GradientBoosting(random_state=random_state)


def dci(codes, factors, test_fraction: float = 0.25, n_estimators: int = 10, seed=0,
        classifier: str = "extra_trees", test=None) -> dict:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018).

    For each factor f a tree ensemble predicts v_f from the codes; its impurity
    importances fill column f of R (d, k).
        D_j = 1 - H_k(R_j. / sum_f R_jf)       weights rho_j = sum_f R_jf / sum R
        C_f = 1 - H_d(R_.f / sum_j R_jf)       weights sum_j R_jf / sum R
    D and C are weighted means; informativeness is the mean accuracy (higher is
    better, unlike the paper's error), on held-out codes and on the training codes.
    Factors with one value in the training split are skipped.

    classifier "extra_trees" (fast): scikit-learn's ExtraTreesClassifier, n_estimators
    extremely randomised trees (thresholds drawn, not searched, ~5x faster, importances
    within a few hundredths; every latent is offered at every split).
    "gradient_boosting" (disentanglement_lib): ``GradientBoostingClassifier()`` with
    scikit-learn's defaults (100 stages of depth-3 trees), in tinyvae._backend.boosting;
    n_estimators is then unused. disentanglement_lib adds 1e-11 to R before the
    entropies; that moves D and C by less than 1e-9 and is left out.

    Inputs:  codes (n, d) float; factors (n, k) int; test = (codes, factors) of a
             separate test set, or None to hold out test_fraction of the rows.
    Returns: dict with disentanglement, completeness, informativeness (test),
             informativeness_train (floats in [0, 1]), importance (d, k),
             informativeness_per_factor (k,) (NaN skipped).
    """
    codes, factors = _check_codes_factors(codes, factors, "dci")
    _check_choice(classifier, "classifier", DCI_CLASSIFIERS)
    n_estimators = _checks.int_at_least("n_estimators", n_estimators)
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = _split(codes, factors, test, test_fraction, rng, "dci")

    d, k = codes.shape[1], factors.shape[1]
    importance = np.zeros((d, k))
    accuracy = np.full(k, np.nan)
    train_accuracy = np.full(k, np.nan)
    for f in range(k):
        if np.unique(y_train[:, f]).size < 2:
            continue
        model = _dci_classifier(classifier, n_estimators, int(rng.integers(2**31)))
        model.fit(x_train, y_train[:, f])
        importance[:, f] = np.abs(model.feature_importances_)
        accuracy[f] = model.score(x_test, y_test[:, f])
        train_accuracy[f] = model.score(x_train, y_train[:, f])
    used = ~np.isnan(accuracy)
    if not used.any():
        raise ValueError("dci: factors: expected at least one factor that varies, got none")
    out = {"informativeness": float(np.nanmean(accuracy)),
           "informativeness_train": float(np.nanmean(train_accuracy)),
           "importance": importance, "informativeness_per_factor": accuracy}
    R = importance[:, used]
    total = R.sum()
    if total == 0:    # every ensemble is a single leaf: nothing is explained
        return {"disentanglement": 0.0, "completeness": 0.0, **out}
    per_latent = R.sum(axis=1)
    rows = per_latent > 0          # a latent no tree used carries no weight
    D = _one_minus_entropy(R[rows] / per_latent[rows, None], axis=1, base=R.shape[1])
    per_factor = R.sum(axis=0)
    cols = per_factor > 0
    C = _one_minus_entropy(R[:, cols] / per_factor[cols], axis=0, base=d)
    return {"disentanglement": float(np.sum(D * per_latent[rows] / total)),
            "completeness": float(np.sum(C * per_factor[cols] / total)), **out}


# ----------------------------------------------------------------------------
# SAP (Kumar et al. 2018)
# ----------------------------------------------------------------------------


def sap(codes, factors, test=None, test_fraction: float = 0.25, seed=0) -> dict:
    """Separated attribute predictability (Kumar et al. 2018), as disentanglement_lib.

    S[j, f] = test accuracy of a linear SVM (LinearSVC(C=0.01, class_weight="balanced"))
    that predicts factor f from latent j alone. A factor read well by one latent and
    badly by all others is separated:
        SAP = mean_f ( S_(1)f - S_(2)f )      best minus second-best latent for f
    1 is the ideal; 0 when each factor is equally readable from two latents. A factor
    with one value in the training set is skipped (its row of S is NaN).

    Inputs:  codes (n, d) float; factors (n, k) int; test = (codes, factors) of a
             separate test set, or None to hold out test_fraction of the rows.
    Returns: dict with sap (float), accuracy S (d, k), gap_per_factor (k,).
    """
    from sklearn.svm import LinearSVC

    codes, factors = _check_codes_factors(codes, factors, "sap")
    x_train, y_train, x_test, y_test = _split(codes, factors, test, test_fraction,
                                              np.random.default_rng(seed), "sap")
    d, k = codes.shape[1], factors.shape[1]
    accuracy = np.full((d, k), np.nan)
    for f in range(k):
        if np.unique(y_train[:, f]).size < 2:
            continue
        for j in range(d):
            svm = LinearSVC(C=0.01, class_weight="balanced")
            svm.fit(x_train[:, j:j + 1], y_train[:, f])
            accuracy[j, f] = svm.score(x_test[:, j:j + 1], y_test[:, f])
    used = ~np.isnan(accuracy[0])
    if not used.any():
        raise ValueError("sap: factors: expected at least one factor that varies, got none")
    ranked = np.sort(accuracy[:, used], axis=0)[::-1]
    gap = np.full(k, np.nan)
    gap[used] = ranked[0] - (ranked[1] if d > 1 else 0.0)
    return {"sap": float(np.mean(gap[used])), "accuracy": accuracy, "gap_per_factor": gap}


# ----------------------------------------------------------------------------
# Chen et al.'s MIG: sampled codes and the densities of q(z)
# ----------------------------------------------------------------------------


@njit
def _entropy_of_mixture_kernel(z, mu, logvar):
    """Compiled _entropy_of_mixture: one streaming log-sum-exp per sample and latent,
    no (S, N, d) temporaries (a dSprites estimate is ~10^8 densities)."""
    n, d = mu.shape
    out = np.zeros(d)
    log_q = np.empty(n)
    for j in range(d):
        # per latent, contiguous: log N(z; mu_i, sigma_i^2) = log_norm_i - half_prec_i (z - mu_i)^2
        centre = np.ascontiguousarray(mu[:, j])
        half_prec = 0.5 * np.exp(-logvar[:, j])
        log_norm = -0.5 * (math.log(2 * math.pi) + logvar[:, j])
        for s in range(z.shape[0]):
            m = -np.inf
            for i in range(n):
                diff = z[s, j] - centre[i]
                log_q[i] = log_norm[i] - half_prec[i] * diff * diff
                m = max(m, log_q[i])
            acc = 0.0
            for i in range(n):
                acc += math.exp(log_q[i] - m)
            out[j] -= m + math.log(acc) - math.log(n)
    return out / z.shape[0]


def _entropy_of_mixture(z, mu, logvar, chunk=64):
    """-mean_s log( mean_n N(z_s; mu_n, sigma_n^2) ) per latent: H(z_j) of the aggregate
    posterior q(z_j) = 1/N sum_n q(z_j|x_n), Monte Carlo over the samples z (S, d).
    The NumPy reference of _entropy_of_mixture_kernel, which mig_chen runs."""
    inv_var = np.exp(-logvar)
    log_norm = -0.5 * (math.log(2 * math.pi) + logvar)             # (N, d)
    total = np.zeros(mu.shape[1])
    for sl in _batches(len(z), chunk):
        diff = z[sl, None, :] - mu[None]                            # (s, N, d)
        log_q = log_norm[None] - 0.5 * diff * diff * inv_var[None]
        total -= np.sum(_logsumexp(log_q, axis=1) - math.log(len(mu)), axis=0)
    return total / len(z)


def mig_chen(mu, logvar, factors, factor_sizes=None, ignore=(), n_samples: int = 10_000,
             seed=0) -> dict:
    """MIG as Chen et al. 2018 compute it (their beta-tcvae code), not as binned codes.

        I(z_j; v_f) = H(z_j) - sum_i p(v_f = i) H(z_j | v_f = i)
        MIG = mean_f ( I_(1)f - I_(2)f ) / log K_f     over factors not in ignore

    H(z_j) is estimated with one z ~ q(z|x) per row and the densities of the aggregate
    posterior q(z_j) = mean_n q(z_j|x_n) (all rows, or those with v_f = i for the
    conditional): no bins. Normalised by log K_f, the entropy of a uniform factor with
    K_f values, and clamped at 0. Chen et al. leave dSprites' shape out (ignore=(0,))
    and use all 737,280 images; the disentanglement_lib MIG (``mig``) bins E[z|x] and
    keeps every factor, one reason papers' MIGs disagree.

    Inputs:  mu, logvar (N, d) of q(z|x) for N inputs; factors (N, k) int;
             factor_sizes K_f (default: number of distinct values seen); ignore: factor
             indices to leave out; n_samples: at most this many z per entropy.
    Returns: dict with mig, mutual_info (d, k) in nats, gap_per_factor (k,) (NaN when
             ignored), marginal_entropy (d,).
    """
    mu, factors = _check_codes_factors(mu, factors, "mig_chen")
    logvar, _ = _check_codes_factors(logvar, factors, "mig_chen")
    if logvar.shape != mu.shape:
        raise ValueError(f"mig_chen: logvar: expected shape {mu.shape}, got {logvar.shape}")
    n_samples = _checks.int_at_least("n_samples", n_samples)
    k = factors.shape[1]
    if factor_sizes is None:
        factor_sizes = [np.unique(f).size for f in factors.T]
    if len(factor_sizes) != k:
        raise ValueError(f"mig_chen: factor_sizes: expected {k} sizes, got {len(factor_sizes)}")
    rng = np.random.default_rng(seed)
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)

    def entropy(rows):
        s = rows if len(rows) <= n_samples else rng.choice(rows, n_samples, replace=False)
        return _entropy_of_mixture_kernel(z[s], mu[rows], logvar[rows])

    marginal = entropy(np.arange(len(mu)))
    mi = np.zeros((mu.shape[1], k))
    gap = np.full(k, np.nan)
    for f in range(k):
        values, counts = np.unique(factors[:, f], return_counts=True)
        if f in ignore or factor_sizes[f] < 2:
            continue
        conditional = sum(c / len(mu) * entropy(np.flatnonzero(factors[:, f] == v))
                          for v, c in zip(values, counts, strict=True))
        mi[:, f] = marginal - conditional
        ranked = np.sort(np.clip(mi[:, f], 0, None))[::-1] / math.log(factor_sizes[f])
        gap[f] = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
    if np.isnan(gap).all():
        raise ValueError("mig_chen: factors: expected a factor that varies and is not ignored")
    return {"mig": float(np.nanmean(gap)), "mutual_info": mi, "gap_per_factor": gap,
            "marginal_entropy": marginal}


# ----------------------------------------------------------------------------
# everything at once
# ----------------------------------------------------------------------------


def _posterior_of(encode, table, classes, dataset):
    """(mu, logvar) of the images with these factors, or None if encode gives codes only."""
    if table is not None:
        return table.posterior(classes) if table.logvar is not None else None
    if hasattr(encode, "encode") and hasattr(encode, "input_dim"):
        images = np.asarray(dataset.render(classes)).reshape(len(classes), -1)
        return _posterior(encode, images.astype(np.float32), 1024)
    return None


def _code_source(encode, dataset, codes, seed, use_table):
    """What the scores read codes from: a CodeTable, or an encode callable."""
    if use_table:
        return CodeTable(encode, dataset, codes, seed=seed)
    if codes == "sampled":
        if not (hasattr(encode, "encode") and hasattr(encode, "input_dim")):
            raise TypeError("disentanglement_scores: encode: codes='sampled' needs a model "
                            f"(mu and logvar), got {type(encode).__name__}")
        return sampled_encoder(encode, seed=seed, batch_size=1024)
    return _check_encode(encode, "disentanglement_scores")


def disentanglement_scores(encode, dataset, protocol: str = "fast", codes: str = "mean",
                           seed=0, n: int | None = None, n_train: int | None = None,
                           n_test: int | None = None, batch_size: int | None = None,
                           table: bool | None = None, details: bool = False) -> dict:
    """Every disentanglement score of one encoder, under a named protocol.

        >>> tv.metrics.disentanglement_scores(model, tv.datasets.DSprites(32),
        ...                                   protocol="disentanglement_lib")

    protocol: "fast" or "disentanglement_lib" (see PROTOCOLS: which classifier and how
        many codes each score uses). codes: "mean" (E[z|x]) or "sampled" (z ~ q(z|x)).
    encode: a model, or a callable images -> codes (codes="mean" only; no mig_chen).
    n / n_train / n_test / batch_size override the protocol's sizes (tests, smoke runs).
    table: encode every image of the dataset once (CodeTable) and look codes up; the
        default does so when that is fewer images than the protocol renders.
    Each score draws from its own stream of ``seed``, so adding one doesn't shift another.

    Returns: dict with protocol, codes (str) and the floats mig, mig_chen (None when
    encode gives no posterior), sap, beta_vae, factor_vae, dci_disentanglement,
    dci_completeness, dci_informativeness, dci_informativeness_train, and seconds
    {score: wall time}. details=True adds the arrays behind mig, dci and sap.
    """
    import time

    settings = PROTOCOLS[_check_choice(protocol, "protocol", tuple(PROTOCOLS))]
    _check_choice(codes, "codes", CODES)
    sizes, _ = _check_dataset(dataset, "disentanglement_scores")
    n_codes = settings["mig"]["n"] if n is None else n
    beta, factor = dict(settings["beta_vae"]), dict(settings["factor_vae"])
    for part in (beta, factor):
        part.update({key: value for key, value in
                     (("n_train", n_train), ("n_test", n_test), ("batch_size", batch_size))
                     if value is not None})
    seeds = np.random.default_rng(seed).integers(2**31, size=9)
    rendered = (2 * beta["batch_size"] * (beta["n_train"] + beta["n_test"])
                + factor["batch_size"] * (factor["n_train"] + factor["n_test"]))
    if table is None:
        table = math.prod(sizes) < rendered
    clock = {}
    start = time.perf_counter()
    source = _code_source(encode, dataset, codes, int(seeds[7]), table)
    clock["encode_table" if table else "setup"] = time.perf_counter() - start

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        clock[name] = time.perf_counter() - start
        return out

    mig_codes, mig_factors = sample_codes(source, dataset, n_codes, seed=seeds[0])
    mig_parts = timed("mig", lambda: mig_details(mig_codes, mig_factors,
                                                 settings["mig"]["n_bins"]))
    if "split_of_mig" in settings["dci"]:        # fast: dci and sap split mig's codes
        fraction = settings["dci"]["split_of_mig"]
        dci_args = sap_args = {"codes": mig_codes, "factors": mig_factors,
                               "test_fraction": fraction}
    else:
        n_fit = settings["dci"]["n_train"] if n_train is None else n_train
        n_held = settings["dci"]["n_test"] if n_test is None else n_test
        train = sample_codes(source, dataset, n_fit, seed=seeds[4])
        dci_args = {"codes": train[0], "factors": train[1],
                    "test": sample_codes(source, dataset, n_held, seed=seeds[5])}
        train = sample_codes(source, dataset, n_fit, seed=seeds[6])
        sap_args = {"codes": train[0], "factors": train[1],
                    "test": sample_codes(source, dataset, n_held, seed=seeds[8])}
    dci_parts = timed("dci", lambda: dci(**dci_args, seed=seeds[1],
                                         classifier=settings["dci"]["classifier"]))
    sap_parts = timed("sap", lambda: sap(**sap_args, seed=seeds[1]))
    posterior = _posterior_of(encode, source if table else None, mig_factors, dataset)
    chen = None
    if posterior is not None:
        names = list(getattr(dataset, "factor_names", ()))
        ignore = tuple(i for i, name in enumerate(names) if name == "shape")
        chen = timed("mig_chen", lambda: mig_chen(*posterior, mig_factors, sizes, ignore,
                                                  settings["mig_chen"]["n_samples"],
                                                  seed=seeds[3]))
    out = {
        "protocol": protocol, "codes": codes,
        "mig": mig_parts["mig"],
        "mig_chen": None if chen is None else chen["mig"],
        "sap": sap_parts["sap"],
        "beta_vae": timed("beta_vae", lambda: beta_vae_score(
            source, dataset, beta["n_train"], beta["n_test"], beta["batch_size"],
            seed=seeds[2], protocol=protocol)),
        "factor_vae": timed("factor_vae", lambda: factor_vae_score(
            source, dataset, factor["n_train"], factor["n_test"], factor["batch_size"],
            seed=seeds[3], protocol=protocol)),
        "dci_disentanglement": dci_parts["disentanglement"],
        "dci_completeness": dci_parts["completeness"],
        "dci_informativeness": dci_parts["informativeness"],
        "dci_informativeness_train": dci_parts["informativeness_train"],
        "seconds": {name: round(t, 2) for name, t in clock.items()},
    }
    if details:
        out["details"] = {"mig": mig_parts, "dci": dci_parts, "sap": sap_parts, "mig_chen": chen}
    return out


# ----------------------------------------------------------------------------
# UDR: model selection without labels (Duan et al. 2020)
# ----------------------------------------------------------------------------


def _spearman(a, b):
    """|Spearman correlation| between every column of a (n, p) and of b (n, q): (p, q).
    A constant column correlates with nothing: 0."""
    from scipy.stats import rankdata

    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    norm = np.outer(np.sqrt((ra * ra).sum(axis=0)), np.sqrt((rb * rb).sum(axis=0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs(ra.T @ rb) / norm
    return np.where(norm > 0, corr, 0.0)


def _udr_pair(R, aggregation):
    """UDR of one pair from |correlations| R (p, q) between their active latents.

        paper:  1 / (p + q) [ sum_b max_a R_ab^2 / sum_a R_ab + sum_a max_b R_ab^2 / sum_b R_ab ]
        disentanglement_lib: the mean of the column terms and of the row terms, averaged
    Each term is 1 when one latent of the other model carries all of a latent's
    correlation; a row or column of zeros scores 0. No active latent at all: 0.
    """
    if R.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = np.nan_to_num(R.max(axis=0) ** 2 / R.sum(axis=0))
        rows = np.nan_to_num(R.max(axis=1) ** 2 / R.sum(axis=1))
    if aggregation == "paper":
        return float((cols.sum() + rows.sum()) / (len(rows) + len(cols)))
    return float((cols.mean() + rows.mean()) / 2)


def udr(codes_list, kl_list, kl_threshold: float = 0.01, aggregation: str = "paper") -> dict:
    """Unsupervised disentanglement ranking (Duan et al. 2020): score each model of a
    sweep by how well the other models agree with its latents, no labels needed.

    For every pair of models (i, j): R = |Spearman correlation| between the latents of
    i and of j on the same inputs, kept to the active latents (mean KL > kl_threshold
    nats), and the pair's score UDR_ij from R (see _udr_pair; 1 = the two models found
    the same axes, up to permutation and sign). A model's UDR is the median of UDR_ij
    over the others: disentangled models resemble each other, entangled ones each
    differ in their own way.

        codes = [tv.metrics.latent_means(m, X) for m in models]   # same X for all
        kl = [tv.metrics.kl_per_latent(m, X) for m in models]
        tv.metrics.udr(codes, kl)["udr"]                          # (n_models,)

    Inputs:  codes_list: M >= 2 arrays (n, d_i), row r the code of the same input r in
             every model (mean codes; disentanglement_lib uses 1,000 inputs);
             kl_list: M arrays (d_i,) of mean KL per latent; aggregation "paper" |
             "disentanglement_lib" (they differ only when models have different
             numbers of active latents).
    Returns: dict with udr (M,) float, pairwise (M, M) UDR_ij (NaN on the diagonal),
             active list of M bool masks, correlation (M, M, ...) nested list of R over
             all latents.
    """
    _check_choice(aggregation, "aggregation", ("paper", "disentanglement_lib"))
    if len(codes_list) < 2 or len(codes_list) != len(kl_list):
        raise ValueError(f"udr: codes_list and kl_list: expected the same number (>= 2) of "
                         f"models, got {len(codes_list)} and {len(kl_list)}")
    codes_list = [np.asarray(c, dtype=np.float64) for c in codes_list]
    for i, c in enumerate(codes_list):
        if c.ndim != 2 or c.shape[0] != codes_list[0].shape[0] or not np.all(np.isfinite(c)):
            raise ValueError(f"udr: codes_list[{i}]: expected finite codes (n, d) with "
                             f"n = {codes_list[0].shape[0]} rows like codes_list[0], got "
                             f"shape {c.shape}")
    active = []
    for i, (c, kl) in enumerate(zip(codes_list, kl_list, strict=True)):
        kl = np.asarray(kl, dtype=np.float64)
        if kl.shape != (c.shape[1],):
            raise ValueError(f"udr: kl_list[{i}]: expected shape ({c.shape[1]},), got {kl.shape}")
        active.append(kl > kl_threshold)
    m = len(codes_list)
    pairwise = np.full((m, m), np.nan)
    correlation = [[None] * m for _ in range(m)]
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            R = _spearman(codes_list[i], codes_list[j])
            correlation[i][j] = R
            pairwise[i, j] = _udr_pair(R[active[i]][:, active[j]], aggregation)
    scores = np.array([np.median(np.delete(pairwise[:, i], i)) for i in range(m)])
    return {"udr": scores, "pairwise": pairwise, "active": active, "correlation": correlation}


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
