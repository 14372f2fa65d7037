"""Rotate a trained run's (x, y) code by an angle and average the loss parts over batches.

Turns latents A and B (the two that carry position) by theta: the mu head's columns turn
by R and the decoder's first-layer rows turn back by R^T, so the decoder sees the same
code. The two posteriors' log-variances are averaged first, so that a turned diagonal
posterior is still one. What changes with the angle is what the penalty sees: the total
correlation and the dimension-wise KL of the aggregate posterior.

usage: python experiments/rotation_probe.py RUN_FOLDER A B [BATCH]
"""

import copy
import sys
from pathlib import Path

import numpy as np

from tinyvae import run as runs

ANGLES = (0, 15, 30, 45, 60, 90)


def rotated(model, a, b, theta):
    """A copy of the model whose latents a, b are turned by theta (radians)."""
    m = copy.deepcopy(model)
    c, s = np.cos(theta), np.sin(theta)
    R = np.array([[c, -s], [s, c]], dtype=m.dtype)
    p = m.params
    for head in ("logvar.W", "logvar.b"):       # one isotropic posterior in the (a, b) plane
        p[head][..., [a, b]] = p[head][..., [a, b]].mean(axis=-1, keepdims=True)
    p["mu.W"][:, [a, b]] = p["mu.W"][:, [a, b]] @ R
    p["mu.b"][[a, b]] = p["mu.b"][[a, b]] @ R
    p["dec1.W"][[a, b], :] = R.T @ p["dec1.W"][[a, b], :]   # z R R^T = z: same decoder input
    return m


def loss_parts(model, X, batch, seed=1):
    """Mean over batches of (loss, recon, mi, tc, dwkl), the same noise for every model."""
    rng, parts = np.random.default_rng(seed), []
    for start in range(0, len(X) - batch + 1, batch):
        eps = rng.standard_normal((batch, model.latent_dim)).astype(model.dtype)
        model.loss(X[start:start + batch], eps=eps, compute_grads=False)
        p = model.last_loss_parts_
        parts.append([p[k] for k in ("loss", "recon", "mi", "tc", "dwkl")])
    return np.mean(parts, axis=0)


def main(folder, a, b, batch=64):
    config = runs.read_config(folder)
    model = runs.load_model(folder)
    ds = runs.load_data(config, with_train=False).dsprites
    classes = ds.sample_classes(batch * 40, np.random.default_rng(0))
    X = ds.render(classes).reshape(len(classes), -1).astype(np.float32)
    print("angle  loss      recon    mi       tc        dwkl")
    for degrees in ANGLES:
        parts = loss_parts(rotated(model, a, b, np.deg2rad(degrees)), X, batch)
        print(f"{degrees:5d}  " + "  ".join(f"{v:8.3f}" for v in parts))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
         *(int(v) for v in sys.argv[4:5]))
