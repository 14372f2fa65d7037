"""The report of a run: numbers (report.json), their readable form (report.md), figures.

Every number is computed on held-out data with fixed seeds, so ``tinyvae evaluate RUN``
reproduces the report that ``tinyvae train`` wrote (timings aside). On dSprites the
disentanglement scores come from :mod:`tinyvae.metrics` under one or more named protocols
("fast", "disentanglement_lib"): report.json keeps each protocol's scores and settings
under "disentanglement", their wall times under "score_seconds", and names the protocol
of its top-level numbers in "protocol"; report.md tables them side by side. The mutual
information matrix behind MIG also says which latent encodes which factor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinyvae import metrics
from tinyvae.run import FIGURES_DIR, RunData, write_json

#: seed of every random draw in the evaluation: runs are compared on the same draws
EVAL_SEED = 0
#: a latent whose mean KL is below this (nats) carries nothing: "unused"
UNUSED_KL = 0.01
#: --quick sizes of the disentanglement scores: (codes for mig / dci / sap, n_train, n_test)
QUICK_SIZES = (2000, 60, 40)
#: the disentanglement scores of a report, in the order report.md lists them
SCORE_NAMES = (("mig", "MIG (20 bins)"), ("mig_chen", "MIG, Chen et al.'s estimator"),
               ("beta_vae", "beta-VAE metric"), ("factor_vae", "FactorVAE metric"),
               ("sap", "SAP"), ("dci_disentanglement", "DCI disentanglement"),
               ("dci_completeness", "DCI completeness"),
               ("dci_informativeness", "DCI informativeness (test)"),
               ("dci_informativeness_train", "DCI informativeness (train)"))
#: held-out sprites whose reconstructions are checked for their shape (metrics.shape_fidelity)
SHAPE_SAMPLES = 2000

#: the keys report.json always has at its top level (None where a model has no such number);
#: mig, beta_vae_score and factor_vae_score are those of report["protocol"]
REPORT_KEYS = ("elbo", "recon", "kl", "kl_per_latent", "active_units", "mig",
               "beta_vae_score", "factor_vae_score", "protocol", "wall_seconds")
TIMING_KEYS = ("wall_seconds", "train_seconds", "eval_seconds", "score_seconds", "throughput")


def _is_vae(model) -> bool:
    return getattr(model, "latent_noise", False)


def evaluate(model, data: RunData, config: dict, progress: bool = True,
             quick: bool = False, protocols=("fast",), codes: str = "mean") -> dict:
    """Every number of the report except the timings.

    quick: smaller samples for the disentanglement scores (tests and smoke runs);
    recorded in the report, so a quick report is never mistaken for a full one.
    protocols: the metrics protocols to score dSprites under ("fast",
    "disentanglement_lib", see metrics.PROTOCOLS); the first gives the headline numbers.
    codes: "mean" (E[z|x]) or "sampled" (z ~ q(z|x)) codes for the scores.
    """
    for protocol in protocols:
        metrics._check_choice(protocol, "protocol", tuple(metrics.PROTOCOLS))
    if not protocols:
        raise ValueError("protocols: expected at least one protocol, got none")
    stages = ["likelihood"] + (list(protocols) + ["shape"] if data.dsprites else [])
    bar = tqdm(stages, desc="evaluating", disable=not progress, leave=False)
    report = {key: None for key in REPORT_KEYS}
    report["eval"] = {"examples": len(data.X_eval), "seed": EVAL_SEED, "quick": quick,
                      "codes": codes}
    for stage in bar:
        bar.set_postfix_str(stage)
        if stage == "likelihood":
            report.update(_likelihood(model, data.X_eval))
            continue
        if stage == "shape":
            fidelity = metrics.shape_fidelity(model, data.dsprites, 300 if quick else SHAPE_SAMPLES,
                                              seed=EVAL_SEED)
            report["shape_kept"] = fidelity["shape_kept"]
            report["shape_iou"] = fidelity["iou"]
            report["shape_kept_per_shape"] = fidelity["per_shape"]
            continue
        scores = _disentanglement(model, data.dsprites, stage, codes, quick)
        report.setdefault("disentanglement", {})[stage] = scores
        # wall times apart from the numbers, so evaluate reproduces everything else
        report.setdefault("score_seconds", {})[stage] = scores.pop("seconds")
        if stage == protocols[0]:
            report.update(_headline(scores, data.dsprites))
        scores.pop("details")       # arrays: the headline protocol's are in report.json
    return report


def _likelihood(model, X):
    """ELBO parts, KL per latent, active units (Autoencoder: reconstruction and AU only)."""
    count, variances = metrics.active_units(model, X, batch_size=1024)
    out = {"active_units": count, "latent_variance": variances.tolist()}
    if not _is_vae(model):
        out["recon"] = float(model.reconstruction_nll(X, metrics.latent_means(model, X)
                                                      .astype(model.dtype)).mean())
        return out
    parts = metrics.evaluate_elbo(model, X, batch_size=1024, seed=EVAL_SEED)
    kl = parts["kl_per_latent"]
    out.update(elbo=parts["elbo"], recon=parts["recon"], kl=parts["kl"],
               kl_per_latent=kl.tolist(), unused_latents=np.flatnonzero(kl < UNUSED_KL).tolist())
    # IWAE-50 on the first 500 held-out examples: the tighter bound on log p(x)
    out["iwae_50"] = metrics.iwae_bound(model, X[:500], k=50, batch_size=50, seed=EVAL_SEED)
    return out


def _disentanglement(model, dsprites, protocol, codes, quick):
    """The scores of one protocol, with their sizes, times and the MIG details."""
    sizes = dict(zip(("n", "n_train", "n_test"), QUICK_SIZES, strict=True)) if quick else {}
    start = time.perf_counter()
    scores = metrics.disentanglement_scores(model, dsprites, protocol=protocol, codes=codes,
                                            seed=EVAL_SEED, details=True, **sizes)
    scores["seconds"]["total"] = round(time.perf_counter() - start, 2)
    scores["settings"] = metrics.PROTOCOLS[protocol]
    scores["sizes_overridden"] = sizes or None
    return scores


def _headline(scores, dsprites):
    """The top-level numbers of report.json (those of the first protocol)."""
    details = scores["details"]["mig"]
    names = list(dsprites.factor_names)
    gap = details["gap_per_factor"]
    top = details["top_latent"]
    return {
        "protocol": scores["protocol"],
        "beta_vae_score": scores["beta_vae"],
        "factor_vae_score": scores["factor_vae"],
        "mig": details["mig"],
        "mig_per_factor": {f: _finite(gap[i]) for i, f in enumerate(names)},
        # the latent most informative about each factor: "which latent encodes what"
        "factor_latent": {f: int(top[i]) for i, f in enumerate(names)},
        "mutual_info": details["mutual_info"].tolist(),
        "factor_entropy": details["entropy"].tolist(),
        "factor_names": names,
    }


def _finite(x):
    return None if not np.isfinite(x) else float(x)


# ---------------------------------------------------------------------------------------
# report.json and report.md
# ---------------------------------------------------------------------------------------


def write_report(folder, report: dict) -> tuple[Path, Path]:
    folder = Path(folder)
    write_json(folder / "report.json", report)
    from tinyvae.run import _atomic_text

    _atomic_text(folder / "report.md", markdown(report))
    return folder / "report.json", folder / "report.md"


def read_report(folder) -> dict:
    """The report.json of a run folder, or {} when it has none (or it is unreadable)."""
    try:
        report = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _fmt(value, digits=3):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    """report.md: the config, the numbers, the latent-factor table and the figures."""
    from tinyvae.run import describe

    c = report["config"]
    lines = [f"# tinyvae run: {c['dataset']} {c['model']}", "", describe(c), "",
             f"Steps: {report.get('steps')}. Wall time {report['wall_seconds']:.0f} s "
             f"(training {report['train_seconds']:.0f} s, evaluation "
             f"{report['eval_seconds']:.0f} s).", ""]
    if report.get("throughput"):
        t = report["throughput"]
        n, k, m = t["blas_shape"]
        lines += [f"Throughput: {t['images_per_second']:,.0f} training images/s on "
                  f"{t['threads']} thread(s), start-up and compilation left out. GEMM floor: "
                  f"{t['floor_images_per_second']:,.0f} images/s (every matrix product of the "
                  f"step at numpy.matmul's {t['blas_gflops']:.0f} GFLOP/s on ({n}, {k}) @ "
                  f"({k}, {m}), timed {t.get('floor_timed', 'after training')}), so the step "
                  f"runs at {t['of_floor']:.2f} of its floor.", ""]
    ev = report["eval"]
    lines += ["## Numbers", "",
              f"On {ev['examples']} held-out examples (nats per example; ELBO and IWAE higher "
              "is better).", "", "| quantity | value |", "|---|---|"]
    rows = [("ELBO", report["elbo"], 2), ("IWAE bound, k = 50", report.get("iwae_50"), 2),
            # a bare "|" would end the table cell: escape it
            (r"reconstruction -log p(x\|z)", report["recon"], 2),
            (r"KL(q(z\|x) \|\| p(z))", report["kl"], 2),
            (r"active units (Var E[z\|x] > 0.01)", report["active_units"], 0)]
    if report.get("shape_kept") is not None:
        rows += [("reconstruction closest to its own shape (IoU; chance 0.33)",
                  report["shape_kept"], 3)]
    lines += [f"| {name} | {_fmt(value, digits)} |" for name, value, digits in rows]
    if report.get("disentanglement"):
        lines += ["", *scores_table(report)]
    if ev.get("quick"):
        lines += ["", "*Quick evaluation (small samples): the scores are rough.*"]
    if report.get("kl_per_latent") is not None:
        kl = report["kl_per_latent"]
        lines += ["", "KL per latent (nats): " + ", ".join(f"z{j} {v:.2f}" for j, v in
                                                          enumerate(kl))]
        unused = report.get("unused_latents") or []
        lines += ["", f"Unused latents (KL < {UNUSED_KL} nats): "
                  + (", ".join(f"z{j}" for j in unused) if unused else "none")]
    if report["mig"] is not None:
        lines += ["", *latent_factor_table(report)]
    lines += ["", "## Figures", ""]
    for name, caption in FIGURE_CAPTIONS:
        if name in report.get("figures", []):
            lines += [f"**{caption}**", "", f"![{caption}]({FIGURES_DIR}/{name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def scores_table(report: dict) -> list[str]:
    """The disentanglement scores, one column per protocol, each with its wall time."""
    runs = report["disentanglement"]
    names = list(runs)
    codes = report["eval"].get("codes", "mean")
    lines = ["## Disentanglement scores", "",
             f"On {'E[z|x]' if codes == 'mean' else 'sampled z ~ q(z|x)'} codes of dSprites "
             "images. Each column is one protocol (tinyvae.metrics.PROTOCOLS): 'fast' sizes "
             "every score for a run of minutes; 'disentanglement_lib' reproduces the "
             "definitions and sizes of Locatello et al. 2019, so its numbers sit beside a "
             f"paper's. Headline numbers (report.json top level): {report['protocol']}.", "",
             "| score | " + " | ".join(f"{n} protocol" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for key, label in SCORE_NAMES:
        lines.append(f"| {label} | " + " | ".join(_fmt(runs[n].get(key)) for n in names) + " |")
    seconds = report.get("score_seconds") or {}
    lines.append("| wall time (s) | " + " | ".join(_fmt(seconds.get(n, {}).get("total"), 0)
                                                   for n in names) + " |")
    return lines


def latent_factor_table(report: dict) -> list[str]:
    """Which latent encodes which factor: the top latent of each factor by I(z_j; v_f)."""
    mi = np.asarray(report["mutual_info"])
    entropy = np.asarray(report["factor_entropy"])
    kl = report.get("kl_per_latent")
    lines = ["## Which latent encodes which factor", "",
             "From the mutual information I(z_j; v_f) behind MIG (20 bins per latent). "
             "'share' is I / H(v_f), the fraction of the factor's entropy the latent holds; "
             "'gap' is the MIG term (top share minus runner-up share).", "",
             "| factor | latent | share | runner-up | gap |" + (" KL of latent |" if kl else ""),
             "|---|---|---|---|---|" + ("---|" if kl else "")]
    for f, name in enumerate(report["factor_names"]):
        order = np.argsort(-mi[:, f], kind="stable")
        j, k = int(order[0]), int(order[1]) if len(order) > 1 else None
        share = mi[j, f] / entropy[f] if entropy[f] > 0 else float("nan")
        runner = (f"z{k} ({mi[k, f] / entropy[f]:.2f})" if k is not None and entropy[f] > 0
                  else "n/a")
        gap = report["mig_per_factor"][name]
        row = f"| {name} | z{j} | {share:.2f} | {runner} | {_fmt(gap, 2)} |"
        lines.append(row + (f" {kl[j]:.2f} |" if kl else ""))
    return lines


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------

FIGURE_CAPTIONS = (
    ("traversal.png", "Latent traversals (rows by KL, each latent from -3 to +3)"),
    ("traversal.gif", "The same traversal, animated"),
    ("reconstructions.png", "Held-out inputs and their reconstructions"),
    ("samples.png", "Samples from the prior"),
    ("kl_per_latent.png", "KL per latent"),
    ("mutual_information.png", "Mutual information between latents and factors"),
    ("latents.png", "Latent codes of held-out data"),
    ("spiral.png", "Spiral: data and reconstructions"),
    ("training_curves.png", "Training curves"),
)


def traversal_base(data: RunData):
    """The input whose code the traversal starts from: a mid-sized, centred sprite for
    dSprites (every factor visible), the first held-out example otherwise."""
    if data.dsprites is not None:
        classes = np.array([[2, 3, 0, 16, 16]])          # a heart, scale 0.8, centred
        return data.dsprites.render(classes).reshape(1, -1).astype(np.float32)[0]
    return data.X_eval[0]


#: a latent's row in the traversal names a factor when it holds this share of its entropy
FACTOR_LABEL_SHARE = 0.15


def factor_labels(report: dict) -> dict:
    """{latent: "pos_x"} for the top latent of each factor holding >= FACTOR_LABEL_SHARE
    of the factor's entropy (I(z_j; v_f) / H(v_f)); several factors join with '+'."""
    if report.get("mutual_info") is None:
        return {}
    mi, entropy = np.asarray(report["mutual_info"]), np.asarray(report["factor_entropy"])
    labels = {}
    for f, name in enumerate(report["factor_names"]):
        j = int(np.argmax(mi[:, f]))
        if entropy[f] > 0 and mi[j, f] / entropy[f] >= FACTOR_LABEL_SHARE:
            labels[j] = f"{labels[j]}+{name}" if j in labels else name
    return labels


def write_traversals(model, data: RunData, folder, kl=None, span=3.0, n_steps=9, x=None,
                     n_frames=25, labels=None):
    """traversal.png and traversal.gif in folder/figures. Returns the file names.

    labels: {latent: factor name} for the rows of the PNG (see factor_labels)."""
    from tinyvae import plots

    if data.image_shape is None:
        return []
    figures = Path(folder) / FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    x = traversal_base(data) if x is None else x
    # a 3-D spiral has no images; image data get the classic grid and its animation
    plots.latent_traversal(model, data.image_shape, x=x, X=data.X_eval[:2000], kl=kl, span=span,
                           n_steps=n_steps, path=figures / "traversal.png", labels=labels)
    plots.traversal_gif(model, data.image_shape, figures / "traversal.gif", x=x,
                        X=data.X_eval[:2000], kl=kl, span=span, n_frames=n_frames)
    return ["traversal.png", "traversal.gif"]


def write_figures(model, data: RunData, folder, report: dict, progress: bool = True,
                  quick: bool = False) -> list:
    """Every figure of the run into folder/figures; returns the names written.

    quick: a shorter GIF (8 frames instead of 25), for tests and smoke runs.
    """
    from tinyvae import plots

    figures = Path(folder) / FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    kl = report.get("kl_per_latent")
    written = []
    jobs = []
    if data.image_shape is not None:
        jobs += [("traversals", lambda: write_traversals(model, data, folder, kl=kl,
                                                              n_frames=8 if quick else 25,
                                                              labels=factor_labels(report))),
                 ("reconstructions.png", lambda: plots.reconstructions(
                     model, data.X_eval, data.image_shape, n=16, path=figures / "reconstructions.png"))]
        if _is_vae(model):
            jobs.append(("samples.png", lambda: plots.prior_samples(
                model, data.image_shape, n=32, seed=EVAL_SEED, path=figures / "samples.png")))
    else:
        jobs.append(("spiral.png", lambda: spiral_figure(model, data, figures / "spiral.png")))
    if kl is not None:
        jobs.append(("kl_per_latent.png", lambda: plots.kl_bars(kl, path=figures / "kl_per_latent.png")))
    if report.get("mutual_info") is not None:
        jobs.append(("mutual_information.png", lambda: plots.latent_factor_matrix(
            report["mutual_info"], report["factor_names"],
            path=figures / "mutual_information.png")))
    if model.latent_dim >= 2 and data.eval_labels is not None:
        jobs.append(("latents.png", lambda: plots.latent_scatter(
            metrics.latent_means(model, data.X_eval), data.eval_labels,
            label_name=data.label_name, path=figures / "latents.png")))
    if model.history_["loss"]:
        jobs.append(("training_curves.png", lambda: plots.training_curves(
            model.history_, path=figures / "training_curves.png")))
    for name, job in tqdm(jobs, desc="figures", disable=not progress, leave=False):
        out = job()
        written += out if isinstance(out, list) else [name]
    return written


def spiral_figure(model, data: RunData, path):
    """Data and reconstructions of a 3-D point set, projected on its first two axes."""
    from matplotlib.figure import Figure

    from tinyvae.plots import save_figure

    X = data.X_eval
    recon = model.decode(metrics.latent_means(model, X).astype(model.dtype))
    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    for ax, points, title in zip(fig.subplots(1, 2), (X, recon), ("data", "reconstruction"),
                                 strict=True):
        ax.scatter(points[:, 0], points[:, 1], c=data.eval_labels, s=4, cmap="viridis")
        ax.set_title(f"{title} (x, y), colour: t")
        ax.set_aspect("equal")
    save_figure(fig, path)
    return fig


def throughput(config: dict, input_dim: int, images_per_second: float,
               floor_rate: float | None = None) -> dict:
    """The run's training images/s beside its GEMM floor (bench.floor_images_per_second)
    on the thread count it trained with; floor_rate, numpy.matmul's FLOP/s timed during
    the training (bench.FloorProbe), or None to time it now."""
    import numba

    from tinyvae import bench

    threads = numba.get_num_threads()
    batch = config["batch_size"]
    floor, gflops = bench.floor_images_per_second(config, input_dim, batch, threads, floor_rate)
    return {"images_per_second": round(images_per_second, 1), "threads": threads,
            "floor_images_per_second": round(floor, 1), "of_floor": round(images_per_second / floor, 3),
            "blas_gflops": round(gflops, 1),
            "blas_shape": [batch, input_dim, int(config["hidden"][0])],
            "floor_timed": "during training" if floor_rate is not None else "after training"}


def full_report(model, data: RunData, config: dict, folder, train_seconds: float,
                clock_start: float, progress: bool = True, quick: bool = False,
                protocols=("fast",), codes: str = "mean",
                images_per_second: float | None = None, floor_rate: float | None = None) -> dict:
    """Evaluate, draw every figure, write report.json and report.md. Returns the report.

    images_per_second (the training's StepClock) adds the throughput and its GEMM floor,
    at floor_rate (the StepClock's, timed during the training) if given.
    """
    # the IWAE weights of unlikely samples underflow to 0 in exp: harmless, by design
    with np.errstate(under="ignore"):
        report = evaluate(model, data, config, progress=progress, quick=quick,
                          protocols=protocols, codes=codes)
    report["figures"] = write_figures(model, data, folder, report, progress=progress,
                                      quick=quick)
    if images_per_second is not None:
        report["throughput"] = throughput(config, data.X.shape[1], images_per_second,
                                          floor_rate)
    eval_seconds = time.perf_counter() - clock_start
    report.update(config=config, steps=int(model.step_), train_seconds=round(train_seconds, 2),
                  eval_seconds=round(eval_seconds, 2),
                  wall_seconds=round(train_seconds + eval_seconds, 2))
    write_report(folder, report)
    return report
