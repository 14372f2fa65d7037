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


# ------------------------------------------- total correlation (beta-TCVAE)
#
# Chen et al. 2018 split the KL term of the ELBO, averaged over the data, into
#
#   E[log q(z|x) - log p(z)] = I(x; z) + TC(z) + sum_k KL(q(z_k) || p(z_k))
#     index-code MI      E[log q(z|x) - log q(z)]
#     total correlation  E[log q(z) - sum_k log q(z_k)]
#     dimension-wise KL  E[sum_k log q(z_k) - log p(z)]
#
# q(z) = (1/N) sum_n q(z | x_n) is the aggregate posterior over the N training
# points. A minibatch estimates it from the B posteriors it holds, through the
# (B, B, d) matrix  L[i, j, k] = log q(z_ik | x_j)  and importance weights w[i, j].

#: estimators of log q(z) from a minibatch (see log_importance_weights)
TC_ESTIMATORS = ("mss", "mws", "mss-columns")


def log_importance_weights(batch_size, dataset_size, estimator="mss"):
    """log w[i, j]: the weight of x_j's posterior in the estimate of q(z_i).

    log q(z_i) ~= logsumexp_j (log w[i, j] + log q(z_i | x_j)),  sum_j w[i, j] = 1.

    "mws", minibatch weighted sampling (Chen et al.'s paper and code): w = 1 / (N B)
      everywhere. Its rows sum to 1/N, not 1, so every log q(z) estimate carries a
      constant -log N (and the total correlation a constant (d - 1) log N): the
      gradients do not see it, the reported values do.
    "mss", minibatch stratified sampling (Chen et al. 2018, appendix C.2), M = B - 1:
      z_i's own x_i weighs 1/N; the other M points stand for the N - 1 others, one of
      them, x_(i+1) mod B, weighing (N - M)/(N M) and the other M - 1 weighing 1/M.
    "mss-columns": the same weights placed in columns 0 and 1 of every row instead of
      on the diagonal and its neighbour, as widely copied code does; kept only so the
      two can be compared.

    Returns: (B, B) array in float64.
    """
    B, N = int(batch_size), int(dataset_size)
    if estimator not in TC_ESTIMATORS:
        raise ValueError(f"estimator: expected one of {TC_ESTIMATORS}, got {estimator!r}")
    if N < B:
        raise ValueError(f"dataset_size: expected at least the batch size {B}, got {N}")
    if estimator == "mws" or B == 1:    # a batch of one holds no other point: both are 1/N
        return np.full((B, B), -np.log(N * B))
    M = B - 1
    w = np.full((B, B), 1.0 / M)
    rows = np.arange(B)
    own, other = (rows, (rows + 1) % B) if estimator == "mss" else (0, 1)
    w[rows, other] = (N - M) / (N * M)
    w[rows, own] = 1.0 / N
    if estimator == "mss-columns":
        w[M - 1, 0] = (N - M) / (N * M)     # the copied code's last line, as it stands
    with np.errstate(divide="ignore"):       # N == M gives one weight of exactly 0
        return np.log(w)


def gaussian_log_density_matrix(z, mu, logvar):
    """L[i, j, k] = log N(z_ik; mu_jk, exp(logvar_jk)) for every sample i and posterior j.

    L = -0.5 [log(2 pi) + logvar_jk + (z_ik - mu_jk)^2 exp(-logvar_jk)]
    Inputs:  z, mu, logvar (B, d)
    Returns: L (B, B, d), cache
    """
    diff = z[:, None, :] - mu[None, :, :]
    inv_var = np.exp(-logvar)[None, :, :]
    L = -0.5 * (LOG_2PI + logvar[None, :, :] + diff * diff * inv_var)
    return L, (diff, inv_var)


def gaussian_log_density_matrix_backward(dL, cache):
    """Backward of gaussian_log_density_matrix.

    With D = (z_ik - mu_jk) exp(-logvar_jk):
    dz_ik = -sum_j dL_ijk D_ijk,   dmu_jk = sum_i dL_ijk D_ijk,
    dlogvar_jk = sum_i dL_ijk 0.5 [(z_ik - mu_jk) D_ijk - 1]
    Returns: dz, dmu, dlogvar (B, d)
    """
    diff, inv_var = cache
    gD = dL * diff * inv_var
    return -gD.sum(axis=1), gD.sum(axis=0), (0.5 * (gD * diff - dL)).sum(axis=0)


def logsumexp_forward(a, axis):
    """out = log sum_j exp(a_j) along `axis`, computed as m + log sum exp(a - m), m = max.

    Returns: out (a's shape without `axis`), cache (the softmax weights exp(a - out))
    """
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)            # a row of -inf sums to exp(-inf) = 0
    out = m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis), (np.exp(a - out), axis)


def logsumexp_backward(dout, cache):
    """d logsumexp / d a_j = softmax(a)_j:   da = dout * softmax(a) (dout broadcast on axis)."""
    weights, axis = cache
    return np.expand_dims(dout, axis) * weights


def tc_terms_forward(z, mu, logvar, log_weights):
    """The four log densities of the KL decomposition, per sample, from one minibatch.

    log q(z_i | x_i)       = sum_k L[i, i, k]
    log q(z_i)            ~= logsumexp_j (log w[i, j] + sum_k L[i, j, k])
    sum_k log q(z_ik)     ~= sum_k logsumexp_j (log w[i, j] + L[i, j, k])
    log p(z_i)             = sum_k -0.5 (log(2 pi) + z_ik^2)
    Inputs:  z = mu + sigma * eps, mu, logvar (B, d); log_weights (B, B) from
             log_importance_weights
    Returns: log_qz_x, log_qz, log_qz_marginals, log_pz, each (B,); cache
    """
    L, density_cache = gaussian_log_density_matrix(z, mu, logvar)
    lw = log_weights.astype(L.dtype)
    log_qz_x = np.einsum("iik->i", L)
    log_qz, joint_cache = logsumexp_forward(lw + L.sum(axis=2), axis=1)
    log_qz_k, marginal_cache = logsumexp_forward(lw[:, :, None] + L, axis=1)
    log_pz = (-0.5 * (LOG_2PI + z * z)).sum(axis=1)
    cache = (z, density_cache, joint_cache, marginal_cache)
    return log_qz_x, log_qz, log_qz_k.sum(axis=1), log_pz, cache


def tc_terms_backward(d_log_qz_x, d_log_qz, d_log_qz_marginals, d_log_pz, cache):
    """Backward of tc_terms_forward: each upstream gradient is (B,), one per sample.

    Every term is a function of L except log p(z), so first
    dL[i, j, k] = d_log_qz_x_i [i = j] + d_log_qz_i softmax_j(lw_i + S_i)_j
                  + d_log_qz_marginals_i softmax_j(lw_i + L_i.k)_j      (S_ij = sum_k L_ijk)
    (the derivative of a logsumexp is its softmax), then L's own backward, and
    log p(z)'s  d/dz = -z.
    Returns: dz, dmu, dlogvar (B, d)
    """
    z, density_cache, joint_cache, marginal_cache = cache
    B, d = z.shape
    dL = logsumexp_backward(d_log_qz, joint_cache)[:, :, None] + logsumexp_backward(
        np.repeat(d_log_qz_marginals[:, None], d, axis=1), marginal_cache)
    dL[np.arange(B), np.arange(B), :] += d_log_qz_x[:, None]
    dz, dmu, dlogvar = gaussian_log_density_matrix_backward(dL, density_cache)
    return dz - d_log_pz[:, None] * z, dmu, dlogvar


def tc_penalty_forward(z, mu, logvar, log_weights, alpha, beta, gamma):
    """The beta-TCVAE penalty on a minibatch: the three parts of the KL, each weighted.

    penalty = mean_i [ alpha (log q(z_i|x_i) - log q(z_i))                 index-code MI
                     + beta  (log q(z_i) - sum_k log q(z_ik))              total correlation
                     + gamma (sum_k log q(z_ik) - log p(z_i)) ]            dimension-wise KL
    alpha = beta = gamma = 1 leaves mean_i [log q(z_i|x_i) - log p(z_i)], the
    single-sample estimate of the ELBO's KL term. This is the composition of
    tc_terms_forward with the weights; on the Numba backend the (B, B, d) part runs
    as one fused kernel (tinyvae._tc) that keeps only the softmax weights.
    Inputs:  z, mu, logvar (B, d); log_weights (B, B); alpha, beta, gamma floats
    Returns: penalty (float), parts {"mi", "tc", "dwkl"} (batch means, floats), cache
    """
    if kernels._numba_active():
        terms, terms_cache = kernels._nb().tc_terms_forward(z, mu, logvar, log_weights)
        log_qz_x, log_qz, log_qz_marginals = terms
        log_pz = (-0.5 * (LOG_2PI + z * z)).sum(axis=1)
    else:
        log_qz_x, log_qz, log_qz_marginals, log_pz, terms_cache = tc_terms_forward(
            z, mu, logvar, log_weights)
    parts = {"mi": float(np.mean(log_qz_x - log_qz)),
             "tc": float(np.mean(log_qz - log_qz_marginals)),
             "dwkl": float(np.mean(log_qz_marginals - log_pz))}
    penalty = alpha * parts["mi"] + beta * parts["tc"] + gamma * parts["dwkl"]
    return penalty, parts, (z, terms_cache, float(alpha), float(beta), float(gamma))


def tc_penalty_backward(dpenalty, cache):
    """Backward of tc_penalty_forward: dz, dmu, dlogvar (B, d) for a scalar dpenalty.

    Collecting the terms, penalty = mean_i [alpha log q(z_i|x_i) + (beta - alpha) log q(z_i)
    + (gamma - beta) sum_k log q(z_ik) - gamma log p(z_i)], so each term's upstream
    gradient is its coefficient times dpenalty / B.
    """
    z, terms_cache, alpha, beta, gamma = cache
    B = z.shape[0]
    scale = dpenalty / B
    upstream = [np.full(B, c * scale, dtype=z.dtype)
                for c in (alpha, beta - alpha, gamma - beta, -gamma)]
    if kernels._numba_active():
        return kernels._nb().tc_terms_backward(*upstream, terms_cache)
    return tc_terms_backward(*upstream, terms_cache)
