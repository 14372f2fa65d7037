"""The seed table of lessons 3 and 4: their recipe, trained for several seeds.

Lesson 3 trains beta-VAEs (beta = 0, 1, 4) with the MLP decoder and a beta-TCVAE
(beta = 12, MWS) with the spatial broadcast decoder, the main job's model, for one
seed; this script trains exactly the same models (same data draw, same initialisation,
same evaluation: both follow the seed) for seeds 0-4 and writes one CSV row per run:

    model, beta, seed, steps, recon, kl, active, mig, gap_<factor> for every factor

"beta-tcvae-broadcast" is the lesson's beta-TCVAE; "beta-tcvae" rows (MLP decoder,
beta = 6, batch 128) are the lesson's earlier recipe, kept for comparison.

Usage (from the repository root; a few minutes per run on one core):

    NUMBA_NUM_THREADS=1 python experiments/lesson_sweep.py --out experiments/lesson_seeds.csv
    python experiments/lesson_sweep.py --seeds 0,1 --runs beta-tcvae:6   # a part of it

Runs already in --out are kept and skipped, so the table can be built in pieces.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np

import tinyvae as tv
from tinyvae import datasets, metrics

# the recipe of lessons 3 and 4 (their parameters cells, full mode)
RESOLUTION, N_TRAIN, N_TEST, HIDDEN, LATENT = 32, 20_000, 2_000, (256, 256), 10
BATCH, STEPS, LR, N_CODES = 128, 2_000, 1e-3, 10_000
# the beta-TCVAE with the broadcast decoder: twice the beta-VAEs' steps (each image is
# P = 1,024 runs of the per-pixel network; batches of 128 as in the main job)
TC_DECODER, TC_BATCH, TC_STEPS = dict(decoder="broadcast", decoder_hidden=(32, 32)), 128, 4_000
RUNS = ("beta-vae:4", "beta-tcvae-broadcast:12", "beta-vae:0", "beta-vae:1")


def train_and_score(model_name, beta, seed):
    """One run of the lessons' recipe: the row of the table."""
    ds = datasets.DSprites(resolution=RESOLUTION)
    X = datasets.as_model_input(ds.sample(N_TRAIN, np.random.default_rng(seed))[0])
    X_test = datasets.as_model_input(ds.sample(N_TEST, np.random.default_rng(seed + 1))[0])
    common = dict(hidden=HIDDEN, latent_dim=LATENT, seed=seed)
    steps, batch = STEPS, BATCH
    if model_name == "beta-tcvae-broadcast":
        steps, batch = TC_STEPS, TC_BATCH
        model = tv.BetaTCVAE(X.shape[1], beta=beta, estimator="mws", dataset_size=len(X),
                             **TC_DECODER, **common)
    elif model_name == "beta-tcvae":
        model = tv.BetaTCVAE(X.shape[1], beta=beta, estimator="mws", dataset_size=len(X), **common)
    else:
        model = tv.BetaVAE(X.shape[1], beta=beta, **common)
    model.fit(X, steps=steps, batch_size=batch, optimizer=tv.Adam(lr=LR), seed=seed, progress=False)
    elbo = metrics.evaluate_elbo(model, X_test, seed=seed)
    codes, factors = metrics.sample_codes(metrics.mean_encoder(model, 1024), ds, n=N_CODES, seed=seed)
    details = metrics.mig_details(codes, factors)
    row = {"model": model_name, "beta": beta, "seed": seed, "steps": steps,
           "recon": round(float(elbo["recon"]), 3), "kl": round(float(elbo["kl"]), 3),
           "active": int((np.asarray(elbo["kl_per_latent"]) > 0.1).sum()),
           "mig": round(float(details["mig"]), 4)}
    for name, gap in zip(ds.factor_names, details["gap_per_factor"], strict=True):
        row[f"gap_{name}"] = round(float(gap), 4)
    return row


def _seeds(text):
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="experiments/lesson_seeds.csv")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3")
    parser.add_argument("--runs", default=",".join(RUNS), help="model:beta pairs, comma-separated")
    args = parser.parse_args(argv)
    done, rows = set(), []
    if os.path.exists(args.out):
        with open(args.out, newline="") as f:
            rows = list(csv.DictReader(f))
        done = {(r["model"], float(r["beta"]), int(r["seed"])) for r in rows}
    for seed in _seeds(args.seeds):
        for run in args.runs.split(","):
            model_name, beta = run.split(":")
            if (model_name, float(beta), seed) in done:
                continue
            start = time.perf_counter()
            row = train_and_score(model_name, float(beta), seed)
            print(f"{model_name} beta {beta} seed {seed}: MIG {row['mig']:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            # re-read before writing: several processes may fill the same table
            if os.path.exists(args.out):
                with open(args.out, newline="") as f:
                    rows = list(csv.DictReader(f))
            rows.append(row)
            tmp = args.out + ".tmp"
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
