"""Seed sweeps: the same recipe on several seeds, and the spread of what it reaches.

One seed proves little: disentanglement scores vary from seed to seed as much as
from method to method (Locatello et al. 2019). ``tinyvae sweep --seeds 0-4
[train options]`` trains one run folder per seed under a root folder and writes

    sweep.csv   one row per seed: the headline numbers of its report
    sweep.md    the same table with the median, min and max of each column; the udr
                column scores each run by how much the others agree with it, without
                labels (Duan et al. 2020), to set beside its MIG
    sweep.png   every seed's MIG and per-factor gaps, so the spread is seen

Runs are dispatched through joblib: two at a time on one thread each by
default here (``--jobs``), and with ``joblib.parallel_config(backend="dask")`` (or
ray) the same function runs on a cluster. The result of a run never depends on
its thread count, so a sweep reproduces the runs ``tinyvae train --seed S`` makes.
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

from tinyvae import run as runs
from tinyvae.datasets.dsprites import FACTOR_NAMES

#: the columns of sweep.csv / sweep.md, in order (each dSprites factor's gap follows MIG)
COLUMNS = ("seed", "mig", *(f"gap_{f}" for f in FACTOR_NAMES),
           "beta_vae_score", "factor_vae_score", "shape_kept", "udr", "recon", "kl",
           "active_units", "wall_seconds")
#: held-out inputs every model of the sweep encodes for UDR (disentanglement_lib uses 1,000)
UDR_INPUTS = 1000


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4];  '0,3,7' -> [0, 3, 7];  '2' -> [2]. Raises ValueError."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            values = range(int(lo), int(hi) + 1) if sep else [int(part)]
        except ValueError:
            raise ValueError(f"seeds: expected a list like 0-4 or 0,3,7, got {text!r}") from None
        if not values or min(values) < 0:
            raise ValueError(f"seeds: expected integers >= 0 in increasing ranges, got {text!r}")
        seeds.extend(values)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected each seed once, got {text!r}")
    return seeds


def train_and_report(config: dict, folder: str, threads: int) -> dict:
    """One run of the sweep, start to finished report; returns the report dict.

    A plain function of picklable arguments, so any joblib backend can run it.
    """
    from tinyvae import report as reports
    from tinyvae._backend.numba_flags import set_num_threads

    start = time.perf_counter()
    set_num_threads(threads)
    folder = Path(folder)
    result = runs.train_run(folder, config, resume=False, progress=False, clock_start=start)
    return reports.full_report(result.model, result.data, config, folder, result.train_seconds,
                               time.perf_counter(), progress=False,
                               quick=config.get("quick_eval", False),
                               images_per_second=result.images_per_second,
                               floor_rate=result.floor_rate)


def run_sweep(config: dict, seeds, root, jobs: int = 2, threads: int = 1) -> list[dict]:
    """Train ``config`` once per seed into root/seed<S>/; returns one table row per seed."""
    from joblib import Parallel, delayed

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tasks = [delayed(train_and_report)({**config, "seed": s}, str(root / f"seed{s}"), threads)
             for s in seeds]
    reports = Parallel(n_jobs=jobs)(tasks)
    rows = [table_row(s, rep) for s, rep in zip(seeds, reports, strict=True)]
    for row, score in zip(rows, udr_scores([root / f"seed{s}" for s in seeds]), strict=True):
        row["udr"] = score
    write_tables(root, rows, f"seeds {', '.join(map(str, seeds))} of "
                             + runs.describe({**config, "seed": "S"}))
    return rows


def udr_scores(folders) -> list:
    """UDR (Duan et al. 2020) of each run among the others: model selection without labels.

    Every model encodes the same UDR_INPUTS held-out inputs of its data; a sweep of one
    run has no UDR (None). Returns one float (or None) per folder.
    """
    from tinyvae import metrics

    if len(folders) < 2:
        return [None] * len(folders)
    models = [runs.load_model(f) for f in folders]
    data = runs.load_data(runs.read_config(folders[0]), with_train=False)
    X = data.X_eval[:UDR_INPUTS]
    codes = [metrics.latent_means(m, X) for m in models]
    kl = [metrics.kl_per_latent(m, X) for m in models]
    return [float(v) for v in metrics.udr(codes, kl)["udr"]]


def table_row(seed: int, report: dict) -> dict:
    """The headline numbers of one report, keyed like COLUMNS (None where absent)."""
    gaps = report.get("mig_per_factor") or {}
    row = {"seed": seed, **{f"gap_{f}": gaps.get(f) for f in FACTOR_NAMES}}
    for key in COLUMNS:
        if key not in row:
            row[key] = report.get(key)
    return row


def summarise(rows: list[dict]) -> dict:
    """{column: (median, min, max)} over the seeds, for every numeric column but the seed."""
    out = {}
    for key in COLUMNS[1:]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = (statistics.median(values), min(values), max(values))
    return out


def _cell(value):
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], title: str = "") -> str:
    """The sweep table: one row per seed, then median / min / max."""
    lines = ([f"{title}", ""] if title else []) + [
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in COLUMNS) + " |")
    stats = summarise(rows)
    for i, name in enumerate(("median", "min", "max")):
        cells = [f"**{name}**"] + [_cell(stats[k][i]) if k in stats else "" for k in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(root, rows: list[dict], title: str) -> list[Path]:
    """sweep.csv, sweep.md and sweep.png under root (each written atomically)."""
    from tinyvae.io import atomic_path

    root = Path(root)
    csv_path, md_path = root / "sweep.csv", root / "sweep.md"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in COLUMNS} for r in rows)
    runs._atomic_text(md_path, markdown_table(rows, f"Sweep: {title}"))
    return [csv_path, md_path, spread_figure(rows, root / "sweep.png", title)]


def spread_figure(rows: list[dict], path, title: str = "") -> Path:
    """MIG and each factor's gap, one dot per seed, on a 0..1 axis."""
    from tinyvae import plots

    columns = ("mig", "gap_pos_x", "gap_pos_y", "gap_scale", "gap_shape", "gap_orientation")
    labels = ("MIG", "pos_x", "pos_y", "scale", "shape", "orientation")
    values = [[r.get(c) for r in rows] for c in columns]
    return plots.seed_spread(values, labels, [r["seed"] for r in rows], path, title=title)
