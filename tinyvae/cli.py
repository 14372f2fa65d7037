"""Command line: ``tinyvae train | evaluate | traverse | bench | lessons``."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _train(args) -> int:
    from sklearn.datasets import load_digits

    import tinyvae as tv

    X = load_digits().data / 16.0
    model = tv.VAE(input_dim=X.shape[1], hidden=tuple(args.hidden), latent_dim=args.latent,
                   beta=args.beta, seed=args.seed)
    start = time.perf_counter()
    model.fit(X, epochs=args.epochs, batch_size=args.batch_size,
              optimizer=tv.Adam(lr=args.lr), seed=args.seed, progress=not args.quiet)
    seconds = time.perf_counter() - start
    h = model.history_
    print(f"trained {type(model).__name__} on digits {X.shape} for {args.epochs} epochs "
          f"in {seconds:.1f} s: loss {h['loss'][0]:.2f} -> {h['loss'][-1]:.2f} "
          f"(recon {h['recon'][-1]:.2f}, KL {h['kl'][-1]:.2f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model and report its loss")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--latent", type=int, default=8)
    train.add_argument("--hidden", type=int, nargs="+", default=[128])
    train.add_argument("--beta", type=float, default=1.0)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    np.seterr(all="warn")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
