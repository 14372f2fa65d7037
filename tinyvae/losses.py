"""Losses, the analytic Gaussian KL and the reparameterization trick.

Conventions: a batch is n rows. Reconstruction losses are the *mean over the
batch of the sum over features*, the convention of the VAE objective
(one log-likelihood per example). Each function returns the loss together with
its gradient(s), or is a forward/backward pair with a cache.

These are the readable definitions. The models call the fused kernels in
:mod:`tinyvae.kernels` that compute the same quantities in one pass; the tests
check that both agree and that every gradient here matches central differences.
"""

from __future__ import annotations

import numpy as np

from tinyvae import kernels

LOG_2PI = float(np.log(2 * np.pi))


def bernoulli_nll(logits, x):
    """Bernoulli negative log-likelihood from logits, without overflow.

    -log p(x | l) = sum_j [softplus(l_j) - x_j l_j]      (p = sigmoid(l))
    d/dl = sigmoid(l) - x
    softplus(l) = max(l, 0) + log1p(exp(-|l|)) stays exact for l = +-1000, where
    the textbook -x log p - (1 - x) log(1 - p) gives log(0).

    Inputs:  logits (n, D), x (n, D) targets in [0, 1]
    Returns: loss (mean over rows of the per-row sum), dlogits (n, D)
    """
    n = logits.shape[0]
    softplus = np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits)))
    loss = (softplus - x * logits).sum() / n
    dlogits = (kernels._np_sigmoid(logits) - x) / n
    return float(loss), dlogits


def gaussian_nll(mean, x, std=1.0):
    """Gaussian negative log-likelihood with a fixed standard deviation.

    -log N(x | m, s^2) = sum_j [0.5 log(2 pi) + log s + (x_j - m_j)^2 / (2 s^2)]
    d/dm = (m - x) / s^2

    Inputs:  mean (n, D), x (n, D), std > 0 (scalar)
    Returns: loss (mean over rows), dmean (n, D)
    """
    if not std > 0:
        raise ValueError(f"std: expected a positive number, got {std}")
    n, d = mean.shape
    diff = mean - x
    loss = (diff * diff).sum() / (2 * std**2) + d * n * (0.5 * LOG_2PI + np.log(std))
    return float(loss / n), diff / (std**2 * n)


def gaussian_nll_learned(mean, logvar, x):
    """Gaussian negative log-likelihood with a learned log-variance.

    -log N(x | m, e^v) = sum_j 0.5 [log(2 pi) + v_j + (x_j - m_j)^2 e^(-v_j)]
    d/dm = (m - x) e^(-v),   d/dv = 0.5 [1 - (x - m)^2 e^(-v)]

    Inputs:  mean (n, D), logvar (D,) shared by all rows or (n, D), x (n, D)
    Returns: loss (mean over rows), dmean (n, D), dlogvar (shape of logvar)
    """
    n = mean.shape[0]
    diff = mean - x
    inv_var = np.exp(-logvar)
    sq = diff * diff * inv_var
    loss = 0.5 * (LOG_2PI + logvar + sq)
    loss = np.broadcast_to(loss, mean.shape).sum() / n
    dmean = diff * inv_var / n
    dlogvar = 0.5 * (1 - sq) / n
    if np.ndim(logvar) == 1:
        dlogvar = dlogvar.sum(axis=0)
    return float(loss), dmean, dlogvar


def mse(pred, target):
    """Mean squared error over all elements: mean((p - t)^2);  d/dp = 2 (p - t) / size."""
    diff = pred - target
    return float((diff * diff).mean()), 2 * diff / diff.size


# ------------------------------------------------------------- analytic KL


def gaussian_kl(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, 1)) per example and dimension.

    kl = 0.5 (mu^2 + exp(logvar) - 1 - logvar)
    Inputs:  mu, logvar (n, d)
    Returns: kl (n, d)
    """
    return 0.5 * (mu * mu + np.exp(logvar) - 1 - logvar)


def gaussian_kl_backward(dkl, mu, logvar):
    """Backward of gaussian_kl.

    dmu = dkl * mu,   dlogvar = dkl * 0.5 (exp(logvar) - 1)
    Inputs:  dkl (n, d) upstream gradient (ones * beta / n for the VAE loss)
    Returns: dmu, dlogvar (n, d)
    """
    return dkl * mu, dkl * 0.5 * np.expm1(logvar)


# ------------------------------------------------- reparameterization trick


def reparameterize_forward(mu, logvar, eps):
    """z = mu + sigma * eps with sigma = exp(0.5 logvar); the noise eps is an input.

    Because eps is drawn outside the graph, z is a deterministic, differentiable
    function of (mu, logvar): that is the whole trick.
    Inputs:  mu, logvar, eps (n, d)
    Returns: z (n, d), cache (eps, sigma)
    """
    sigma = np.exp(0.5 * logvar)
    return mu + sigma * eps, (eps, sigma)


def reparameterize_backward(dz, cache):
    """Backward of z = mu + exp(0.5 logvar) * eps.

    dmu = dz,   dlogvar = dz * eps * 0.5 sigma
    Returns: dmu, dlogvar (n, d)
    """
    eps, sigma = cache
    return dz.copy(), dz * eps * 0.5 * sigma
