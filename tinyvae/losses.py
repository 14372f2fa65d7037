"""Every formula of the objectives, once: forward/backward pairs with shapes and the maths.

    bernoulli_terms        -log p(x | logits) per element and its derivative (Bernoulli decoder)
    bernoulli_nll_logits   the same summed per row, gradient scaled: what the models run
    gaussian_nll_rows      -log N(x | mean, s^2) per row, s fixed          (Gaussian decoder)
    gaussian_nll_learned_rows   the same with a learned log-variance
    gaussian_kl            KL(N(mu, sigma^2) || N(0, 1)) per example and dimension, + backward
    reparameterize         z = mu + sigma * eps, forward + backward
    reparam_kl_forward/backward   the two above fused: what the VAE runs
    log_importance_weights, tc_terms   the minibatch estimators of log q(z) (beta-TCVAE)
    tc_penalty_forward/backward   MI, total correlation and dimension-wise KL, weighted,
                           fused: what the beta-TCVAE runs

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

from tinyvae import _checks, kernels, layers

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


def pixel_decoder_bernoulli_nll(z, coords, first, hidden, out, x, grad_scale=1.0,
                                activation="relu", alpha=0.01):
    """The broadcast decoder's forward, its Bernoulli NLL and its backward in one call:
    what a training step with that decoder runs.

        logits, cache = layers.pixel_decoder_forward(z, coords, first, hidden, out)
        nll, dlogits = bernoulli_nll_logits(logits, x, grad_scale)
        grads = layers.pixel_decoder_backward(dlogits, cache)
    The NumPy body below is the definition. Speed trick, same maths, same bits: the
    compiled kernel runs the three on one image before it starts the next, so the
    backward reads the image's hidden layers while the forward has left them in cache.
    Inputs:  as layers.pixel_decoder_forward; x (n, P) targets in [0, 1]; grad_scale
    Returns: nll (n,), dlogits (n, P), grads = (dz, (dWz, dWxy, db),
             [(dW_l, db_l) for l = 2 .. K], (dW_out, db_out))
    """
    compiled = kernels.compiled()
    if compiled is not None:
        return compiled.pixel_decoder_bernoulli_nll(
            z, coords, first, list(hidden), out, x, float(grad_scale),
            kernels.activation_code(activation), alpha)
    logits, cache = layers.pixel_decoder_forward(z, coords, first, hidden, out, activation,
                                                 alpha)
    nll, dlogits = bernoulli_nll_logits(logits, x, grad_scale)
    return nll, dlogits, layers.pixel_decoder_backward(dlogits, cache)


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
    _checks.one_of("estimator", estimator, TC_ESTIMATORS)
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


def standard_normal_log_density(z):
    """log p(z_i) = sum_k -0.5 (log(2 pi) + z_ik^2) under the prior N(0, I).  z (B, d) -> (B,)

    Its gradient, d/dz = -z, is written where it is used (tc_terms_backward).
    """
    return (-0.5 * (LOG_2PI + z * z)).sum(axis=1)


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
    log_pz = standard_normal_log_density(z)
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


def tc_penalty_forward(z, mu, logvar, log_weights, alpha, beta, gamma, compute_grads=False):
    """The beta-TCVAE penalty on a minibatch: the three parts of the KL, each weighted.

    penalty = mean_i [ alpha (log q(z_i|x_i) - log q(z_i))                 index-code MI
                     + beta  (log q(z_i) - sum_k log q(z_ik))              total correlation
                     + gamma (sum_k log q(z_ik) - log p(z_i)) ]            dimension-wise KL
    alpha = beta = gamma = 1 leaves mean_i [log q(z_i|x_i) - log p(z_i)], the
    single-sample estimate of the ELBO's KL term. This is the composition of
    tc_terms_forward with the weights; on the Numba backend the (B, B, d) part runs
    as one fused kernel (tinyvae._backend.tc) that keeps only the softmax weights.
    compute_grads: a training step's hint that tc_penalty_backward follows. Speed
    trick, same maths: the Numba backend then makes the gradients for dpenalty = 1
    in the forward's own walk over the pairs, while each row's softmax weights are
    at hand, and the backward scales them.
    Inputs:  z, mu, logvar (B, d); log_weights (B, B); alpha, beta, gamma floats
    Returns: penalty (float), parts {"mi", "tc", "dwkl"} (batch means, floats), cache
    """
    compiled = kernels.compiled()
    terms_cache = unit_grads = None
    if compiled is None:
        log_qz_x, log_qz, log_qz_marginals, log_pz, terms_cache = tc_terms_forward(
            z, mu, logvar, log_weights)
    else:
        if compute_grads:
            terms, unit_grads = compiled.tc_terms_forward_backward(
                z, mu, logvar, log_weights, *_tc_upstream(1.0, z, alpha, beta, gamma))
        else:
            terms, terms_cache = compiled.tc_terms_forward(z, mu, logvar, log_weights)
        log_qz_x, log_qz, log_qz_marginals = terms
        log_pz = standard_normal_log_density(z)
    parts = {"mi": float(np.mean(log_qz_x - log_qz)),
             "tc": float(np.mean(log_qz - log_qz_marginals)),
             "dwkl": float(np.mean(log_qz_marginals - log_pz))}
    penalty = alpha * parts["mi"] + beta * parts["tc"] + gamma * parts["dwkl"]
    # the backward runs on the path the forward took, whatever the backend is by then
    return penalty, parts, (z, compiled, terms_cache, unit_grads, float(alpha), float(beta),
                            float(gamma))


def _tc_upstream(dpenalty, z, alpha, beta, gamma):
    """The upstream gradient of each of tc_terms_forward's four terms (B,) for dpenalty.

    Collecting the terms, penalty = mean_i [alpha log q(z_i|x_i) + (beta - alpha) log q(z_i)
    + (gamma - beta) sum_k log q(z_ik) - gamma log p(z_i)], so each term's upstream
    gradient is its coefficient times dpenalty / B.
    """
    B = z.shape[0]
    scale = dpenalty / B
    return [np.full(B, c * scale, dtype=z.dtype)
            for c in (alpha, beta - alpha, gamma - beta, -gamma)]


def tc_penalty_backward(dpenalty, cache):
    """Backward of tc_penalty_forward: dz, dmu, dlogvar (B, d) for a scalar dpenalty."""
    z, compiled, terms_cache, unit_grads, alpha, beta, gamma = cache
    if unit_grads is not None:     # made by the forward for dpenalty = 1: linear in it
        return unit_grads if dpenalty == 1 else tuple(dpenalty * g for g in unit_grads)
    upstream = _tc_upstream(dpenalty, z, alpha, beta, gamma)
    if compiled is not None:
        return compiled.tc_terms_backward(*upstream, terms_cache)
    return tc_terms_backward(*upstream, terms_cache)
