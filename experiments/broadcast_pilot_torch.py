"""The PyTorch pilot that found the broadcast decoder (experiments/main_job.md).

beta-TCVAE (MWS, alpha = gamma = 1) on tinyvae's dSprites at 32x32 with an MLP encoder
1024-256-256-10 and either the MLP decoder (10-256-256-1024) or a spatial broadcast
decoder (Watters et al. 2019: one network per pixel on [z, x, y], H-H-1). Prints MIG
and its per-factor gaps (the fast protocol's MIG, 10,000 codes). torch is this
project's test-only dependency; the pilot is not part of the library.

usage: python experiments/broadcast_pilot_torch.py SEED {sbd,mlp} STEPS BATCH H [BETA]
  e.g. python experiments/broadcast_pilot_torch.py 1 sbd 8000 64 32
"""

import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn

from tinyvae import datasets, metrics

R, N, D = 32, 100_000, 10
LOG_2PI = math.log(2 * math.pi)


class BroadcastDecoder(nn.Module):
    def __init__(self, h):
        super().__init__()
        y, x = torch.meshgrid(torch.linspace(-1, 1, R), torch.linspace(-1, 1, R), indexing="ij")
        self.coords = torch.stack([x.ravel(), y.ravel()], 1)       # (P, 2)
        self.z, self.xy = nn.Linear(D, h), nn.Linear(2, h, bias=False)
        self.hidden, self.out = nn.Linear(h, h), nn.Linear(h, 1)

    def forward(self, z):
        a = torch.relu(self.z(z)[:, None, :] + self.xy(self.coords)[None])
        return self.out(torch.relu(self.hidden(a)))[..., 0]


def mlp(sizes):
    mods = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        mods += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def log_density(z, mu, logvar):
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def tc_penalty(z, mu, logvar, beta):
    """MI + beta TC + dimension-wise KL, minibatch weighted sampling."""
    B = z.shape[0]
    L = log_density(z[:, None], mu[None], logvar[None])             # (B, B, D)
    log_qz_x = log_density(z, mu, logvar).sum(1)
    log_qz = torch.logsumexp(L.sum(2), 1) - math.log(N * B)
    log_qz_k = (torch.logsumexp(L, 1) - math.log(N * B)).sum(1)
    log_pz = (-0.5 * (LOG_2PI + z ** 2)).sum(1)
    return ((log_qz_x - log_qz) + beta * (log_qz - log_qz_k) + (log_qz_k - log_pz)).mean()


def main(seed, decoder, steps, batch, h, beta=6.0):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    ds = datasets.DSprites(resolution=R)
    classes = ds.sample_classes(N, np.random.default_rng([seed, 0]))
    X = torch.from_numpy(ds.render(classes).reshape(N, -1).astype(np.float32))
    enc = mlp((R * R, 256, 256, 2 * D))
    dec = BroadcastDecoder(h) if decoder == "sbd" else mlp((D, 256, 256, R * R))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        x = X[torch.randint(0, N, (batch,), generator=gen)]
        mu, logvar = enc(x).chunk(2, 1)
        z = mu + torch.exp(logvar / 2) * torch.randn(mu.shape, generator=gen)
        nll = nn.functional.binary_cross_entropy_with_logits(dec(z), x, reduction="sum") / batch
        loss = nll + tc_penalty(z, mu, logvar, beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 2000 == 0:
            print(step, round(nll.item(), 2), round(time.time() - start), flush=True)
    train_seconds = time.time() - start

    def encode(images):
        with torch.no_grad():
            rows = torch.from_numpy(np.asarray(images, np.float32).reshape(len(images), -1))
            return enc(rows)[:, :D].double().numpy()

    codes, factors = metrics.sample_codes(encode, ds, n=10_000, seed=0)
    details = metrics.mig_details(codes, factors)
    gaps = dict(zip(datasets.dsprites.FACTOR_NAMES, details["gap_per_factor"], strict=True))
    print(json.dumps({"seed": seed, "decoder": decoder, "steps": steps, "batch": batch, "h": h,
                      "beta": beta, "train_seconds": round(train_seconds),
                      "mig": round(float(details["mig"]), 3),
                      "gaps": {k: round(float(v), 3) for k, v in gaps.items()}}))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]), args[1], int(args[2]), int(args[3]), int(args[4]),
         *(float(v) for v in args[5:6]))
