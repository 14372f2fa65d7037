"""Rebuild each model in PyTorch (float64) and compare the loss and every gradient.

Optional: skipped when torch is not installed (``pip install torch==2.13.0``).
Autograd is an independent witness: it shares none of our backward code.
"""

import numpy as np
import pytest

import tinyvae as tv

torch = pytest.importorskip("torch")

ACT = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
    "leaky_relu": lambda a: torch.nn.functional.leaky_relu(a, 0.01),
    "identity": lambda a: a,
}


def torch_loss(model, x, eps):
    """The tinyvae objective written with torch ops; returns (loss, {name: tensor})."""
    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    act = ACT[model.activation]
    x = torch.tensor(x)
    h = x
    for i in range(1, len(model.hidden) + 1):
        h = act(h @ p[f"enc{i}.W"] + p[f"enc{i}.b"])
    kl = torch.zeros(())
    if isinstance(model, tv.VAE):
        mu, logvar = h @ p["mu.W"] + p["mu.b"], h @ p["logvar.W"] + p["logvar.b"]
        z = mu + torch.exp(0.5 * logvar) * torch.tensor(eps)
        kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(dim=1).mean()
    else:
        z = h @ p["code.W"] + p["code.b"]
    out = torch_broadcast_decoder(model, p, z) if model.decoder == "broadcast" else (
        torch_mlp_decoder(model, p, z))
    if model.likelihood == "bernoulli":
        recon = torch.nn.functional.binary_cross_entropy_with_logits(
            out, x, reduction="sum") / x.shape[0]
    else:
        var = model.obs_std**2
        recon = (((out - x) ** 2) / (2 * var)).sum() / x.shape[0] + x.shape[1] * (
            0.5 * np.log(2 * np.pi) + np.log(model.obs_std))
    if isinstance(model, tv.BetaTCVAE):
        loss = recon + torch_tc_penalty(model, z, mu, logvar)
    elif isinstance(model, tv.BetaVAE) and model.capacity_max is not None:
        loss = recon + model.gamma * (kl - model.capacity()).abs()
    else:
        loss = recon + getattr(model, "beta", 0.0) * kl
    loss.backward()
    return float(loss.detach()), {k: t.grad.numpy() for k, t in p.items()}


def torch_mlp_decoder(model, p, z):
    act, h = ACT[model.activation], z
    for i in range(1, len(model.hidden) + 1):
        h = act(h @ p[f"dec{i}.W"] + p[f"dec{i}.b"])
    return h @ p["out.W"] + p["out.b"]


def torch_broadcast_decoder(model, p, z):
    """Tile z over the pixels, join each pixel's (x, y), and run the per-pixel network on
    the joined (n, P, d + 2) tensor, which tinyvae never builds."""
    act = ACT[model.activation]
    H, W = model.image_shape
    y, x = torch.meshgrid(torch.linspace(-1, 1, H, dtype=torch.float64),
                          torch.linspace(-1, 1, W, dtype=torch.float64), indexing="ij")
    coords = torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)            # (P, 2)
    n, P = z.shape[0], H * W
    joined = torch.cat([z[:, None, :].expand(n, P, z.shape[1]),
                        coords[None].expand(n, P, 2)], dim=2)
    h = act(joined @ torch.cat([p["dec1.W"], p["dec1.Wxy"]]) + p["dec1.b"])
    for i in range(2, len(model.decoder_hidden) + 1):
        h = act(h @ p[f"dec{i}.W"] + p[f"dec{i}.b"])
    return (h @ p["out.W"] + p["out.b"])[..., 0]


def stratified_weights(B, N, estimator):
    """Importance weights written from Chen et al. 2018, appendix C.2, one entry at a time."""
    if estimator == "mws" or B == 1:
        return torch.full((B, B), 1.0 / (N * B), dtype=torch.float64)
    M = B - 1
    w = torch.full((B, B), 1.0 / M, dtype=torch.float64)
    for i in range(B):
        w[i, i] = 1.0 / N
        w[i, (i + 1) % B] = (N - M) / (N * M)
    return w


def torch_tc_penalty(model, z, mu, logvar):
    """alpha MI + beta TC + gamma dimension-wise KL, from the (B, B, d) log densities."""
    B = z.shape[0]
    log_q = -0.5 * (np.log(2 * np.pi) + logvar[None] + (z[:, None] - mu[None]) ** 2
                    * torch.exp(-logvar[None]))                     # [i, j, k] = log q(z_ik|x_j)
    log_w = torch.log(stratified_weights(B, model.dataset_size, model.estimator))
    log_qz_x = torch.diagonal(log_q.sum(dim=2))
    log_qz = torch.logsumexp(log_w + log_q.sum(dim=2), dim=1)
    log_qz_marginals = torch.logsumexp(log_w[:, :, None] + log_q, dim=1).sum(dim=1)
    log_pz = (-0.5 * (np.log(2 * np.pi) + z**2)).sum(dim=1)
    w = model.penalty_weight()
    return w * (model.alpha * (log_qz_x - log_qz) + model.beta * (log_qz - log_qz_marginals)
                + model.gamma * (log_qz_marginals - log_pz)).mean()


@pytest.mark.parametrize(("cls", "kwargs"), [
    (tv.BetaTCVAE, {"alpha": 0.7, "beta": 6.0, "gamma": 1.3, "dataset_size": 50}),
    (tv.BetaTCVAE, {"estimator": "mws", "dataset_size": 50, "activation": "leaky_relu"}),
    (tv.Autoencoder, {}),
    (tv.VAE, {}),
    (tv.VAE, {"likelihood": "gaussian", "obs_std": 0.5, "activation": "softplus"}),
    (tv.BetaVAE, {"beta": 4.0, "activation": "leaky_relu"}),
    (tv.BetaVAE, {"capacity_max": 3.0, "gamma": 50.0, "activation": "tanh"}),
    (tv.BetaTCVAE, {"estimator": "mws", "dataset_size": 50, "decoder": "broadcast",
                    "decoder_hidden": (5, 4), "image_shape": (1, 11)}),
    (tv.VAE, {"decoder": "broadcast", "decoder_hidden": (6,), "image_shape": (11, 1),
              "activation": "softplus", "likelihood": "gaussian", "obs_std": 0.5}),
    (tv.Autoencoder, {"decoder": "broadcast", "decoder_hidden": (4, 5, 3),
                      "image_shape": (1, 11), "activation": "tanh"}),
])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_matches_pytorch_autograd(cls, kwargs, backend):
    rng = np.random.default_rng(0)
    model = cls(11, (9, 7), 3, dtype=np.float64, seed=4, **kwargs)
    model.step_ = 500
    x, eps = rng.random((6, 11)), rng.standard_normal((6, 3))
    with tv.use_backend(backend):
        loss, grads = model.loss(x, eps)
    ref_loss, ref_grads = torch_loss(model, x, eps)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in model.params:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-9, atol=1e-12, err_msg=k)
