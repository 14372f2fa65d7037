"""Every formula of the objectives, once: forward/backward pairs with shapes and the maths.

    bernoulli_terms        -log p(x | logits) per element and its derivative (Bernoulli decoder)
    bernoulli_nll_logits   the same summed per row, gradient scaled: what the models run
    gaussian_nll_rows      -log N(x | mean, s^2) per row, s fixed          (Gaussian decoder)
    gaussian_nll_learned_rows   the same with a learned log-variance
    gaussian_kl            KL(N(mu, sigma^2) || N(0, 1)) per example and dimension, + backward
    reparameterize         z = mu + sigma * eps, forward + backward
    reparam_kl_forward/backward   the two above fused: what the VAE runs

Conventions: a batch is n rows. The row functions return one value per example
(the sum over its features) and take ``grad_scale``, the factor the caller's
objective puts in front of that sum (1 / n for a batch mean): the gradient comes
out already scaled, in one pass. The ``bernoulli_nll``, ``gaussian_nll`` and
``gaussian_nll_learned`` wrappers give the *mean over the batch* with its gradient,
the form the lessons check against central differences.

Where a compiled kernel exists (Numba backend, 2-D input) the function calls it;
otherwise its NumPy body below is the definition. The tests compare the two.
"""

from __future__ import annotations

import numpy as np

from tinyvae import kernels

LOG_2PI = float(np.log(2 * np.pi))


# ------------------------------------------------------------- Bernoulli decoder


def bernoulli_terms(logits, x):
    """The Bernoulli NLL per element and its derivative: the formula, in NumPy.

    -log p(x | l) = softplus(l) - x l          (p = sigmoid(l));   d/dl = sigmoid(l) - x
    softplus(l) = max(l, 0) + log1p(exp(-|l|)) stays exact for l = +-1000, where the
    textbook -x log p - (1 - x) log(1 - p) gives log(0).

    Inputs:  logits (n, D), x (n, D) targets in [0, 1]
    Returns: nll (n, D), dnll_dlogits (n, D)
    """
    return (kernels.reference_activate(logits, "softplus") - x * logits,
            kernels.reference_sigmoid(logits) - x)


def bernoulli_nll_logits(logits, x, grad_scale=1.0):
    """Per-row Bernoulli NLL and its scaled gradient in one pass (what the models run).

    nll_i = sum_j [softplus(l_ij) - x_ij l_ij],   dlogits = grad_scale * (sigmoid(l) - x)
    Inputs:  logits (n, D), x (n, D) targets in [0, 1], grad_scale (scalar)
    Returns: nll (n,), dlogits (n, D)
    """
    compiled = kernels.compiled()
    if compiled is not None and logits.ndim == 2:
        return compiled.bernoulli_nll_logits(logits, x, float(grad_scale))
    nll, dlogits = bernoulli_terms(logits, x)
    return nll.sum(axis=1), dlogits * logits.dtype.type(grad_scale)


def bernoulli_nll(logits, x):
    """Batch mean of the Bernoulli NLL.   logits, x (n, D) -> loss (float), dlogits (n, D)."""
    n = logits.shape[0]
    nll, dlogits = bernoulli_terms(logits, x)
    return float(nll.sum() / n), dlogits / n


# -------------------------------------------------------------- Gaussian decoder


def gaussian_nll_rows(mean, x, std=1.0, grad_scale=1.0):
    """Gaussian negative log-likelihood with a fixed standard deviation s, per row.

    nll_i = sum_j (x_ij - m_ij)^2 / (2 s^2) + D (0.5 log(2 pi) + log s)
    dmean = grad_scale * (m - x) / s^2

    Inputs:  mean (n, D), x (n, D), std > 0 (scalar), grad_scale (scalar)
    Returns: nll (n,), dmean (n, D)
    """
    if not std > 0:
        raise ValueError(f"std: expected a positive number, got {std}")
    diff = mean - x
    var = std**2
    const = mean.shape[1] * (0.5 * LOG_2PI + np.log(std))
    nll = (diff * diff).sum(axis=1) / (2 * var) + const
    return nll, diff * mean.dtype.type(grad_scale / var)


def gaussian_nll(mean, x, std=1.0):
    """Batch mean of :func:`gaussian_nll_rows`.   mean, x (n, D) -> loss, dmean (n, D)."""
    nll, dmean = gaussian_nll_rows(mean, x, std, 1.0 / mean.shape[0])
    return float(nll.mean()), dmean


def gaussian_nll_learned_rows(mean, logvar, x, grad_scale=1.0):
    """Gaussian negative log-likelihood with a learned log-variance v, per row.

    nll_i = sum_j 0.5 [log(2 pi) + v_j + (x_ij - m_ij)^2 e^(-v_j)]
    dmean = grad_scale (m - x) e^(-v),   dlogvar = grad_scale 0.5 [1 - (x - m)^2 e^(-v)]

    Inputs:  mean (n, D), logvar (D,) shared by all rows or (n, D), x (n, D)
    Returns: nll (n,), dmean (n, D), dlogvar (shape of logvar: a shared v sums over rows)
    """
    diff = mean - x
    inv_var = np.exp(-logvar)
    sq = diff * diff * inv_var
    nll = 0.5 * (LOG_2PI + logvar + sq).sum(axis=1)
    one_minus_sq = 1 - sq
    if np.ndim(logvar) == 1:
        one_minus_sq = one_minus_sq.sum(axis=0)
    return nll, diff * (inv_var * grad_scale), (0.5 * grad_scale) * one_minus_sq


def gaussian_nll_learned(mean, logvar, x):
    """Batch mean of :func:`gaussian_nll_learned_rows` -> loss, dmean, dlogvar."""
    nll, dmean, dlogvar = gaussian_nll_learned_rows(mean, logvar, x, 1.0 / mean.shape[0])
    return float(nll.mean()), dmean, dlogvar


def mse(pred, target):
    """Mean squared error over all elements: mean((p - t)^2);  d/dp = 2 (p - t) / size."""
    diff = pred - target
    return float((diff * diff).mean()), 2 * diff / diff.size


# ------------------------------------------------------------------ analytic KL


def gaussian_kl(mu, logvar, sigma=None):
    """KL(N(mu, sigma^2) || N(0, 1)) per example and dimension.

    kl = 0.5 (mu^2 + sigma^2 - 1 - logvar),   sigma^2 = exp(logvar)
    Inputs:  mu, logvar (n, d); sigma (n, d) if the caller already has it (the
             reparameterization computes it), else sigma^2 is exp(logvar)
    Returns: kl (n, d)
    """
    var = np.exp(logvar) if sigma is None else sigma * sigma
    return 0.5 * (mu * mu + var - 1 - logvar)


def gaussian_kl_backward(dkl, mu, logvar=None, sigma=None):
    """Backward of gaussian_kl.

    dmu = dkl * mu,   dlogvar = dkl * 0.5 (sigma^2 - 1)     (d sigma^2 / d logvar = sigma^2)
    Inputs:  dkl (n, d) upstream gradient, or a scalar (beta / n for the VAE loss);
             mu (n, d); logvar, or sigma if the caller has it (n, d)
    Returns: dmu, dlogvar (n, d)
    """
    # expm1(logvar) = sigma^2 - 1 without the cancellation near logvar = 0
    var_minus_1 = np.expm1(logvar) if sigma is None else sigma * sigma - 1
    return dkl * mu, dkl * 0.5 * var_minus_1


# ----------------------------------------------------- reparameterization trick


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

    dmu = dz,   dlogvar = 0.5 * dz * eps * sigma        (d sigma / d logvar = sigma / 2)
    Returns: dmu, dlogvar (n, d)
    """
    eps, sigma = cache
    return dz.copy(), 0.5 * dz * eps * sigma


# ------------------------------------------- fused: reparameterization + KL, one pass
# What the VAE runs. The NumPy body is exactly the two pairs above; the Numba kernel
# (tinyvae._backend.fused.reparam_kl_*_into) computes the same in one loop.


def reparam_kl_forward(mu, logvar, eps):
    """reparameterize_forward and gaussian_kl sharing sigma.

    Inputs:  mu, logvar, eps (n, d)
    Returns: z, sigma, kl (n, d)    (z = mu + sigma eps, kl = 0.5 (mu^2 + sigma^2 - 1 - logvar))
    """
    compiled = kernels.compiled()
    if compiled is not None and mu.ndim == 2:
        return compiled.reparam_kl_forward(mu, logvar, eps)
    z, (_, sigma) = reparameterize_forward(mu, logvar, eps)
    return z, sigma, gaussian_kl(mu, logvar, sigma)


def reparam_kl_backward(dz, mu, eps, sigma, kl_scale):
    """Gradients of  L = f(z) + kl_scale * sum(kl)  with respect to mu and logvar.

    dmu     = dz + kl_scale * mu
    dlogvar = 0.5 * dz * eps * sigma + kl_scale * 0.5 * (sigma^2 - 1)
    Inputs:  dz = dL/dz, mu, eps, sigma (n, d); kl_scale = dL/dkl_ij (scalar)
    Returns: dmu, dlogvar (n, d)
    """
    compiled = kernels.compiled()
    if compiled is not None and dz.ndim == 2:
        return compiled.reparam_kl_backward(dz, mu, eps, sigma, float(kl_scale))
    dmu_z, dlogvar_z = reparameterize_backward(dz, (eps, sigma))
    dmu_kl, dlogvar_kl = gaussian_kl_backward(dz.dtype.type(kl_scale), mu, sigma=sigma)
    return dmu_z + dmu_kl, dlogvar_z + dlogvar_kl
