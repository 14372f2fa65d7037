"""Sweep the main job's recipe through the real CLI and tabulate the reports.

Each variant is one `tinyvae train` run (its own run folder under --root); the table
prints MIG, the beta-VAE and FactorVAE metrics, the gap per factor and the wall time.
Run it on an otherwise idle machine, one variant at a time:

    NUMBA_NUM_THREADS=2 python experiments/main_job_sweep.py --root runs/sweep \
        --variant "" --variant "--beta 1" --variant "--seed 1" --variant "--seed 2"

A variant is a string of extra `tinyvae train` arguments ("" is the main job itself).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from tinyvae import cli


def run_variant(root: Path, extra: str, quiet: bool) -> dict:
    args = shlex.split(extra)
    name = "-".join(a.lstrip("-") for a in args) or "main"
    folder = root / name
    if not (folder / "report.json").is_file():
        code = cli.main(["train", *args, "--out", str(folder), "--overwrite",
                         *(["--quiet"] if quiet else [])])
        if code != 0:
            raise SystemExit(f"variant {extra!r} stopped with exit status {code}")
    return {"variant": extra or "(main job)",
            **json.loads((folder / "report.json").read_text(encoding="utf-8"))}


def table(reports: list[dict]) -> str:
    head = ("| variant | MIG | beta-VAE | FactorVAE | gaps shape/scale/orient/x/y "
            "| active | wall s |\n|---|---|---|---|---|---|---|")
    rows = []
    for r in reports:
        gaps = "/".join("-" if g is None else f"{g:.2f}" for g in r["mig_per_factor"].values())
        rows.append(f"| {r['variant']} | {r['mig']:.3f} | {r['beta_vae_score']:.3f} | "
                    f"{r['factor_vae_score']:.3f} | {gaps} | {r['active_units']} | "
                    f"{r['wall_seconds']:.0f} |")
    return "\n".join([head, *rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--variant", action="append", default=None,
                        help='extra train arguments, e.g. "--beta 1" (repeatable)')
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    variants = args.variant if args.variant is not None else ["", "--beta 1"]
    print(table([run_variant(args.root, v, args.quiet) for v in variants]))


if __name__ == "__main__":
    main()
