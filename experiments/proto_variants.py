"""Prototype variants of the beta-TCVAE penalty, screened before any goes in the library.

PROTO_BANK=R      joint log q(z_i) over the batch plus the R most recent posteriors
                  (a FIFO memory, no gradient through it)
PROTO_P=p         a factorised generalised-normal prior of shape p (unit variance) in the
                  dimension-wise KL instead of N(0, I)
usage: PROTO_BANK=4096 python experiments/proto_variants.py train --seed 1 --out runs/x
"""

import math
import os
import sys

import numpy as np

from tinyvae import cli, kernels, losses, models

BANK = int(os.environ.get("PROTO_BANK", "0"))
P = float(os.environ.get("PROTO_P", "2"))
LOG_2PI = math.log(2 * math.pi)
S = math.sqrt(math.gamma(1 / P) / math.gamma(3 / P))     # unit variance
LOG_NORM = math.log(P / (2 * S * math.gamma(1 / P)))


def gn_log_density_and_grad(z):
    a = np.abs(z) / S
    return (LOG_NORM - a ** P).sum(axis=1), -P * a ** (P - 1) * np.sign(z) / S


def _loss(self, x, target, eps, compute_grads):
    n = x.shape[0]
    f = self._forward(x, target, eps)
    mu, eps, sigma, z, logvar = f.mu, f.eps, f.sigma, f.z, f.logvar
    recon, dout, extra = float(f.nll.mean()), f.dout, f.extra
    w = self.penalty_weight()
    alpha, beta, gamma = w * self.alpha, w * self.beta, w * self.gamma
    lw = self.log_weights(n)
    nb = kernels.compiled()
    (log_qz_x, log_qz_b, log_qz_m), cache = nb.tc_terms_forward(z, mu, logvar, lw)
    N = self.dataset_size
    bank = getattr(self, "_bank", None)
    pi = np.ones(n, dtype=z.dtype)
    if BANK and bank is not None and len(bank[0]):
        bmu, blv = bank
        M = n + len(bmu)
        a = np.exp(-blv)                       # (R, d)
        Sb = -0.5 * ((z * z) @ a.T - 2 * z @ (bmu * a).T
                     + ((bmu * bmu * a) + blv).sum(1)[None, :] + z.shape[1] * LOG_2PI)
        m = Sb.max(axis=1, keepdims=True)
        lse_bank = (m[:, 0] + np.log(np.exp(Sb - m).sum(1))) - math.log(N * M)
        batch_part = log_qz_b + math.log(N * n) - math.log(N * M)
        log_qz = np.logaddexp(batch_part, lse_bank)
        pi = np.exp(batch_part - log_qz).astype(z.dtype)
        wb = np.exp(Sb - (log_qz + math.log(N * M))[:, None]).astype(z.dtype)  # (B, R)
        # d lse_bank / dz_i = sum_r wb_ir * (-(z_i - mu_r) a_r)
        dz_bank = -(z * (wb @ a) - wb @ (bmu * a))
    else:
        log_qz = log_qz_b
        dz_bank = np.zeros_like(z)
    if P != 2:
        log_pz, dlogp = gn_log_density_and_grad(z)
    else:
        log_pz, dlogp = losses.standard_normal_log_density(z), -z
    parts = {"mi": float(np.mean(log_qz_x - log_qz)), "tc": float(np.mean(log_qz - log_qz_m)),
             "dwkl": float(np.mean(log_qz_m - log_pz))}
    penalty = alpha * parts["mi"] + beta * parts["tc"] + gamma * parts["dwkl"]
    loss = recon + penalty
    kl_per_latent = f.kl.mean(axis=0)
    self.last_loss_parts_ = {"loss": loss, "recon": recon, "kl": float(kl_per_latent.sum()),
                             "kl_per_latent": kl_per_latent, **parts}
    if compute_grads and BANK:
        push = (mu.astype(np.float32), logvar.astype(np.float32))
        if bank is None:
            bank = (push[0][:0], push[1][:0])
        self._bank = (np.concatenate([push[0], bank[0]])[:BANK],
                      np.concatenate([push[1], bank[1]])[:BANK])
    if not compute_grads:
        return loss, None
    grads = dict(extra)
    dz = self._decoder_backward(dout, f.dec_caches, grads)
    c = 1.0 / n
    g_own = np.full(n, alpha * c, dtype=z.dtype)
    g_joint = ((beta - alpha) * c * pi).astype(z.dtype)
    g_marg = np.full(n, (gamma - beta) * c, dtype=z.dtype)
    g_prior = np.zeros(n, dtype=z.dtype)
    dz_p, dmu_p, dlv_p = nb.tc_terms_backward(g_own, g_joint, g_marg, g_prior, cache)
    dz_p = dz_p + (beta - alpha) * c * dz_bank - gamma * c * dlogp
    dmu, dlogvar = losses.reparam_kl_backward(dz + dz_p, mu, eps, sigma, 0.0)
    self._encode_backward(dmu + dmu_p, dlogvar + dlv_p, f.enc_caches, f.head_cache, grads)
    return loss, {k: grads[k] for k in self.params}


models.BetaTCVAE._loss = _loss

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
