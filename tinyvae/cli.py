"""Command line: ``tinyvae train | evaluate | traverse | sweep | bench | lessons``.

``tinyvae train`` with no arguments is the main job: a beta-TCVAE (beta = 6) that
disentangles procedurally rendered dSprites in a few minutes on a laptop, and
writes a run folder with its checkpoint, history, figures and report.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

# matplotlib and scikit-learn are imported inside the commands that draw and score
from tinyvae import _checks, bench, lessons
from tinyvae import run as runs

#: exit status after Ctrl-C, as a shell reports a process killed by SIGINT (128 + 2)
EXIT_INTERRUPTED = 130
#: exit statuses: a user error (bad option, unusable run folder), a failure of the run
EXIT_USAGE = 2
EXIT_FAILED = 1
#: after a stop on a signal: 128 + its number, as a shell reports it
EXIT_SIGNAL = {"SIGINT": EXIT_INTERRUPTED, "SIGTERM": 128 + signal.SIGTERM}
#: options --resume accepts; everything else is fixed by the run's config.json
_RESUME_OPTIONS = ("steps", "epochs", "quiet", "quick_eval", "no_report")
#: training options whose defaults come from the data set's recipe (None = not given)
_TRAIN_OPTIONS = ("model", "beta", "capacity", "capacity_steps", "gamma", "alpha", "estimator",
                  "latent", "hidden", "decoder", "decoder_hidden",
                  "epochs", "steps", "batch_size", "optimizer", "lr", "seed", "resolution",
                  "n_train", "kl_warmup", "activation")


# ---------------------------------------------------------------------------------------
# argument types: each names what it expected, argparse adds the argument's name
# ---------------------------------------------------------------------------------------


def _int_at_least(minimum):
    def parse(text):
        try:
            return _checks.parse_int(text, minimum)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _float_at_least(low, strict):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        ok = np.isfinite(value) and (value > low if strict else value >= low)
        if not ok:
            raise argparse.ArgumentTypeError(
                f"expected a finite number {'>' if strict else '>='} {low:g}, got {text!r}")
        return value

    return parse


def _resolution(text):
    value = _positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"expected a resolution >= 8 pixels, got {text!r}")
    return value


def _run_folder(text):
    """An existing run folder with a checkpoint (for evaluate, traverse and --resume)."""
    try:
        return runs.check_run_folder(text)
    except runs.RunError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ---------------------------------------------------------------------------------------
# tinyvae train
# ---------------------------------------------------------------------------------------


def _add_train(sub):
    train = sub.add_parser(
        "train", help="train a model and write a run folder (default: the dSprites "
                            f"{runs.RECIPES['dsprites']['model']})",
        description="Train a model and write a run folder: config.json, checkpoint.npz, "
                    "history.csv, figures/, report.json and report.md. With no arguments: "
                    f"the main job, a {runs.RECIPES['dsprites']['model']} (beta = "
                    f"{runs.RECIPES['dsprites']['beta']:g}) that disentangles dSprites. Options "
                    "left out take the data set's defaults (printed at the start).")
    _add_training_options(train)
    out = train.add_argument_group("run folder")
    where = out.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="DIR",
                       help="run folder to write (default runs/<dataset>-<model>-beta<b>-seed<s>)")
    where.add_argument("--resume", type=_run_folder, metavar="RUN",
                       help="continue the run in RUN exactly where it stopped (--steps / "
                            "--epochs may extend it)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing run in --out")
    out.add_argument("--quick-eval", action="store_true",
                     help="small samples for the disentanglement scores (smoke tests)")
    out.add_argument("--no-report", action="store_true",
                     help="only train and checkpoint; write the report later with tinyvae evaluate")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                     help="save a checkpoint every N steps (default: 4 in a run, and one at "
                          "least every 10 minutes)")
    train.set_defaults(func=_train, parser=train)


def _add_training_options(train):
    """The data, model and optimisation options that train and sweep share."""
    data = train.add_argument_group("data")
    data.add_argument("--dataset", choices=runs.DATASETS,
                      help="default dsprites: procedural dSprites, scikit-learn digits, MNIST / "
                           "Fashion-MNIST (downloaded once), or a 3-D spiral (Gaussian likelihood)")
    data.add_argument("--resolution", type=_resolution, metavar="PIXELS",
                      help="dSprites image side (default 32)")
    data.add_argument("--n-train", type=_positive_int, metavar="N",
                      help="dSprites / spiral: training examples to draw (dSprites default 100000)")
    model = train.add_argument_group("model")
    model.add_argument("--model", choices=runs.MODELS,
                       help=f"default: {runs.RECIPES['dsprites']['model']} for dsprites, vae otherwise")
    model.add_argument("--beta", type=_float_at_least(0, strict=False),
                       help="KL weight (default 4 for beta-vae, 1 for vae); beta-tcvae: weight "
                            "of the total correlation (default "
                            f"{runs.RECIPES['dsprites']['beta']:g} on dsprites, "
                            f"{runs.TCVAE_DEFAULTS['beta']:g} otherwise)")
    model.add_argument("--capacity", type=_float_at_least(0, strict=False), metavar="NATS",
                       help="beta-vae: train on recon + gamma |KL - C|, C rising to NATS "
                            "(Burgess et al. 2018)")
    model.add_argument("--capacity-steps", type=_positive_int, metavar="N",
                       help="steps over which C rises (default: the whole run)")
    model.add_argument("--gamma", type=_float_at_least(0, strict=False),
                       help="beta-vae with --capacity: weight of |KL - C| (default 100); "
                            "beta-tcvae: weight of the dimension-wise KL (default 1)")
    model.add_argument("--alpha", type=_float_at_least(0, strict=False),
                       help="beta-tcvae: weight of the index-code mutual information (default 1)")
    model.add_argument("--estimator", choices=runs.ESTIMATORS,
                       help="beta-tcvae: minibatch estimator of log q(z) (default "
                            f"{runs.RECIPES['dsprites']['estimator']} on dsprites, "
                            f"{runs.TCVAE_DEFAULTS['estimator']} otherwise)")
    model.add_argument("--latent", type=_positive_int, metavar="D",
                       help="latent dimensions (dsprites 10, digits 8, mnist 20, spiral 2)")
    model.add_argument("--hidden", type=_positive_int, nargs="+", metavar="H",
                       help="hidden layer sizes, encoder order (the decoder mirrors them)")
    model.add_argument("--decoder", choices=runs.DECODERS,
                       help="mlp: dense layers mirroring the encoder; broadcast: the spatial "
                            "broadcast decoder (Watters et al. 2019), one small network per "
                            f"pixel on [z, x, y] (default {runs.RECIPES['dsprites']['decoder']} "
                            "on dsprites, mlp otherwise)")
    model.add_argument("--decoder-hidden", type=_positive_int, nargs="+", metavar="H",
                       help="broadcast decoder: its per-pixel layer sizes (default "
                            f"{' '.join(map(str, runs.BROADCAST_HIDDEN))})")
    model.add_argument("--activation", choices=runs.ACTIVATIONS, help="hidden activation")
    opt = train.add_argument_group("optimisation")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, metavar="N", help="training steps")
    length.add_argument("--epochs", type=_positive_int, metavar="N", help="passes over the data")
    opt.add_argument("--batch-size", type=_positive_int, metavar="N")
    opt.add_argument("--optimizer", choices=runs.OPTIMIZERS)
    opt.add_argument("--lr", type=_float_at_least(0, strict=True), help="learning rate")
    opt.add_argument("--kl-warmup", type=_non_negative_int, metavar="STEPS",
                     help="raise the KL weight linearly from 0 over STEPS")
    opt.add_argument("--seed", type=_non_negative_int, help="seed of data, init and noise (default 0)")


def _given(args) -> dict:
    return {k: getattr(args, k) for k in _TRAIN_OPTIONS if getattr(args, k) is not None}


def _train_setup(args):
    """(config, folder, resume) for the train command, or a parser error."""
    parser = args.parser
    if args.resume is not None:
        extra = [k for k in _given(args) if k not in _RESUME_OPTIONS]
        if args.dataset is not None:
            extra = ["dataset", *extra]
        if args.overwrite:
            extra.append("overwrite")
        if extra:
            name = "--" + extra[0].replace("_", "-")
            parser.error(f"argument {name}: not allowed with --resume (the run's config.json "
                         "fixes it; only --steps, --epochs, --quick-eval, --no-report and --quiet "
                         "may change)")
        config = runs.read_config(args.resume)
        if args.steps is not None:
            config.update(steps=args.steps, epochs=None)
        if args.epochs is not None:
            config.update(epochs=args.epochs, steps=None)
        config["quick_eval"] = config.get("quick_eval", False) or args.quick_eval
        return config, args.resume, True
    try:
        config = runs.resolve_config({"dataset": args.dataset or "dsprites", **_given(args)})
    except runs.UsageError as err:
        parser.error(f"argument {err.option}: {err}")
    config["quick_eval"] = args.quick_eval
    folder = args.out if args.out is not None else runs.default_out(config)
    _check_out(parser, folder, args.overwrite, explicit=args.out is not None)
    return config, folder, False


def _check_out(parser, folder: Path, overwrite: bool, explicit: bool):
    """Refuse to write over a run unless asked, and never over a folder that is not a run.

    Nothing is deleted here: train_run replaces an old run only once the new one has
    written its first checkpoint.
    """
    option = "--out" if explicit else "--out (default)"
    if not folder.exists():
        blocker = next((p for p in folder.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            parser.error(f"argument {option}: {str(blocker)!r} is a file, so {str(folder)!r} "
                         "cannot be created; choose another folder")
        return
    if not folder.is_dir():
        parser.error(f"argument {option}: {str(folder)!r} is a file, expected a folder")
    if runs.is_run_folder(folder):
        if not overwrite:
            parser.error(f"argument {option}: {str(folder)!r} already holds a run; continue it "
                         f"with --resume {folder}, or pass --overwrite to start it again")
    elif any(p.name not in (runs.LOCK_FILE, runs.PREVIOUS_DIR) for p in folder.iterdir()):
        parser.error(f"argument {option}: {str(folder)!r} is not empty and not a tinyvae run "
                     "folder; choose a new or empty folder")


def _stop_on_sigterm(signum, frame):
    from tinyvae.training import Interrupted

    raise Interrupted("SIGTERM")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM outside the training loop (loading data, saving) stops like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _after_failure(folder) -> str:
    """What a failed run left: the old run put back, or the new run's last checkpoint."""
    status = runs.read_status(folder)
    if status.get("state") != "failed":
        return f"(the previous run in {folder} is kept)"
    saved = status.get("checkpoint_step")
    where = (f"its last checkpoint, step {saved}, is kept" if saved is not None
             else "no checkpoint was written")
    return f"(status.json records the failure; {where})"


def _train(args) -> int:
    clock = time.perf_counter()
    config, folder, resume = _train_setup(args)
    progress = not args.quiet
    verb = "resuming" if resume else "training"
    print(f"tinyvae train: {verb} {runs.describe(config)}\n  run folder: {folder}", flush=True)
    replacing = not resume and runs.is_run_folder(folder)
    try:
        with _sigterm_as_interrupt():
            result = runs.train_run(folder, config, resume=resume, progress=progress,
                                    clock_start=clock, overwrite=args.overwrite,
                                    checkpoint_every=args.checkpoint_every)
    except KeyboardInterrupt as err:
        kept = " (the previous run is kept)" if replacing else ""
        print(f"\ninterrupted before the first training step: no checkpoint was written{kept}",
              file=sys.stderr)
        return EXIT_SIGNAL.get(getattr(err, "signal", "SIGINT"), EXIT_INTERRUPTED)
    except FloatingPointError as err:
        return _fail("train", f"{err} {_after_failure(folder)}")
    except _data_errors() as err:
        kept = f" (the previous run in {folder} is kept)" if replacing else ""
        return _fail("train", f"{err}{kept}")
    if result.state == "interrupted":
        print(f"\ninterrupted ({result.signal}) at step {result.step} of {result.total_steps}; "
              f"checkpoint saved in {folder}\ncontinue with:  tinyvae train --resume {folder}",
              file=sys.stderr)
        return EXIT_SIGNAL.get(result.signal, EXIT_INTERRUPTED)
    h = result.model.history_
    print(f"trained {result.step} steps in {result.train_seconds:.0f} s "
          f"(last loss {h['loss'][-1]:.2f}: recon {h['recon'][-1]:.2f}, KL {h['kl'][-1]:.2f})",
          flush=True)
    if args.no_report:
        print(f"no report written (--no-report); write it with:  tinyvae evaluate {folder}")
        return 0
    return _report(result.model, result.data, config, folder, result.train_seconds, progress,
                   images_per_second=result.images_per_second, floor_rate=result.floor_rate)


def _data_errors():
    """What a data set can raise when its files are unavailable or damaged (MNIST offline)."""
    from tinyvae.datasets import DatasetError, DownloadError

    return (DownloadError, DatasetError)


def _fail(command, err) -> int:
    print(f"tinyvae {command}: error: {err}", file=sys.stderr)
    return 1


def _report(model, data, config, folder, train_seconds, progress, protocols=("fast",),
            codes="mean", images_per_second=None, floor_rate=None) -> int:
    from tinyvae import report as reports

    try:
        rep = reports.full_report(model, data, config, folder, train_seconds,
                                  time.perf_counter(), progress=progress,
                                  quick=config.get("quick_eval", False),
                                  protocols=protocols, codes=codes,
                                  images_per_second=images_per_second,
                                  floor_rate=floor_rate)
    except KeyboardInterrupt:
        print(f"\nevaluation interrupted; the checkpoint is saved. Redo it with:  "
              f"tinyvae evaluate {folder}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary(rep))
    print(f"report: {Path(folder) / 'report.md'}")
    return 0


def summary(rep: dict) -> str:
    """A few lines with the report's headline numbers."""
    def num(key, fmt):
        return "n/a" if rep.get(key) is None else format(rep[key], fmt)

    lines = [f"ELBO {num('elbo', '.2f')}  recon {num('recon', '.2f')}  KL {num('kl', '.2f')}  "
             f"active units {num('active_units', 'd')}"]
    if rep.get("mig") is not None:
        lines.append(f"MIG {num('mig', '.3f')}  beta-VAE metric {num('beta_vae_score', '.3f')}  "
                     f"FactorVAE metric {num('factor_vae_score', '.3f')}  "
                     f"({rep['protocol']} protocol)")
        for name, scores in rep.get("disentanglement", {}).items():
            if name != rep["protocol"]:
                lines.append(f"  {name} protocol: MIG {scores['mig']:.3f}  beta-VAE metric "
                             f"{scores['beta_vae']:.3f}  FactorVAE metric "
                             f"{scores['factor_vae']:.3f}  "
                             f"({rep['score_seconds'][name]['total']:.0f} s)")
        pairs = ", ".join(f"{f} -> z{j}" for f, j in rep["factor_latent"].items())
        lines.append(f"top latent per factor: {pairs}")
    lines.append(f"wall time {rep['wall_seconds']:.0f} s (training {rep['train_seconds']:.0f} s, "
                 f"evaluation {rep['eval_seconds']:.0f} s)")
    if rep.get("throughput"):
        t = rep["throughput"]
        lines.append(f"throughput {t['images_per_second']:,.0f} images/s on {t['threads']} "
                     f"thread(s): {t['of_floor']:.2f} of the GEMM floor "
                     f"({t['floor_images_per_second']:,.0f} images/s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# tinyvae evaluate / traverse
# ---------------------------------------------------------------------------------------


def _add_evaluate(sub):
    ev = sub.add_parser("evaluate", help="recompute a run's report and figures from its checkpoint",
                        description="Recompute report.json, report.md and every figure of a run "
                                    "folder from its checkpoint (same seeds, same numbers).")
    ev.add_argument("run", type=_run_folder, metavar="RUN", help="run folder of tinyvae train")
    ev.add_argument("--quick", action="store_true", help="small samples for the scores")
    ev.add_argument("--protocol", choices=("fast", "disentanglement_lib", "both"), default="fast",
                    help="metrics protocol of the disentanglement scores: fast (default, "
                         "seconds), disentanglement_lib (the reference definitions and sizes of "
                         "Locatello et al. 2019, a minute or two), or both side by side")
    ev.add_argument("--codes", choices=("mean", "sampled"), default="mean",
                    help="score E[z|x] (default, as disentanglement_lib) or one sampled z per "
                         "image")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=_evaluate, parser=ev)


def _evaluate(args) -> int:
    config = runs.read_config(args.run)
    status = runs.read_status(args.run)
    model = runs.load_model(args.run, config)
    if status.get("state") == "interrupted":
        print(f"note: run interrupted at step {model.step_} of {status.get('total_steps')}; "
              "evaluating the checkpoint as it is", file=sys.stderr)
    try:
        data = runs.load_data(config, with_train=False)
    except _data_errors() as err:
        return _fail("evaluate", err)
    config = {**config, "quick_eval": config.get("quick_eval", False) or args.quick}
    protocols = ("fast", "disentanglement_lib") if args.protocol == "both" else (args.protocol,)
    if args.codes == "sampled" and not getattr(model, "latent_noise", False):
        args.parser.error("argument --codes: sampled codes need a VAE; this run's model has "
                          "no posterior variance")
    return _report(model, data, config, args.run, status.get("train_seconds", 0.0),
                   not args.quiet, protocols=protocols, codes=args.codes)


def _add_traverse(sub):
    tr = sub.add_parser("traverse", help="redraw a run's latent traversal (PNG and GIF)",
                        description="Redraw figures/traversal.png and traversal.gif of a run: "
                                    "each latent swept from -SPAN to +SPAN around the code of "
                                    "one input, rows ordered by KL.")
    tr.add_argument("run", type=_run_folder, metavar="RUN", help="run folder of tinyvae train")
    tr.add_argument("--span", type=_float_at_least(0, strict=True), default=3.0,
                    help="largest |z_j| shown (default 3)")
    tr.add_argument("--columns", type=_positive_int, default=9, help="values per row (default 9)")
    tr.add_argument("--index", type=_non_negative_int, default=None,
                    help="start from held-out example INDEX (default: a centred heart for "
                         "dSprites, else example 0)")
    tr.set_defaults(func=_traverse, parser=tr)


def _traverse(args) -> int:
    from tinyvae import report as reports

    config = runs.read_config(args.run)
    model = runs.load_model(args.run, config)
    try:
        data = runs.load_data(config, with_train=False)
    except _data_errors() as err:
        return _fail("traverse", err)
    if data.image_shape is None:
        args.parser.error(f"argument RUN: {config['dataset']} has no images to traverse")
    if args.columns < 2:
        args.parser.error("argument --columns: expected at least 2 values per row")
    x = None
    if args.index is not None:
        if args.index >= len(data.X_eval):
            args.parser.error(f"argument --index: expected < {len(data.X_eval)} (held-out "
                              f"examples), got {args.index}")
        x = data.X_eval[args.index]
    names = reports.write_traversals(model, data, args.run, span=args.span,
                                     labels=reports.factor_labels(reports.read_report(args.run)),
                                     n_steps=args.columns, x=x)
    for name in names:
        print(Path(args.run) / runs.FIGURES_DIR / name)
    return 0


# ---------------------------------------------------------------------------------------
# tinyvae sweep
# ---------------------------------------------------------------------------------------


def _seeds(text):
    from tinyvae import sweep

    try:
        return sweep.parse_seeds(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("seeds: ")) from None


def _add_sweep(sub):
    sw = sub.add_parser(
        "sweep", help="train the same recipe on several seeds and tabulate the spread",
        description="Train one run folder per seed (ROOT/seed<S>/, each as tinyvae train "
                    "--seed S would) and write ROOT/sweep.csv, sweep.md (every seed, then "
                    "median / min / max) and sweep.png. Runs are dispatched through joblib.")
    sw.add_argument("--seeds", type=_seeds, default=[0, 1, 2, 3, 4],
                    help="seeds to run, e.g. 0-4 (default) or 0,3,7")
    sw.add_argument("--root", type=Path, metavar="DIR",
                    help="folder of the sweep (default runs/sweep-<dataset>-<model>)")
    sw.add_argument("--jobs", type=_positive_int, default=2,
                    help="runs at once (default 2, each on --threads threads)")
    sw.add_argument("--threads", type=_positive_int, default=1,
                    help="threads per run (default 1; the numbers do not depend on it)")
    sw.add_argument("--overwrite", action="store_true", help="replace runs already in ROOT")
    sw.add_argument("--quick-eval", action="store_true",
                    help="small samples for the disentanglement scores (smoke tests)")
    _add_training_options(sw)
    sw.set_defaults(func=_sweep, parser=sw)


def _sweep(args) -> int:
    from tinyvae import sweep

    parser = args.parser
    if args.seed is not None:
        parser.error("argument --seed: not allowed in a sweep (use --seeds)")
    try:
        config = runs.resolve_config({"dataset": args.dataset or "dsprites", **_given(args)})
    except runs.UsageError as err:
        parser.error(f"argument {err.option}: {err}")
    config["quick_eval"] = args.quick_eval
    root = args.root or Path("runs") / f"sweep-{config['dataset']}-{config['model']}"
    for s in args.seeds:
        _check_out(parser, root / f"seed{s}", args.overwrite, explicit=True)
    print(f"tinyvae sweep: seeds {args.seeds} of {runs.describe({**config, 'seed': 'S'})}\n"
          f"  root: {root}  ({args.jobs} at a time, {args.threads} thread(s) each)", flush=True)
    try:
        rows = sweep.run_sweep(config, args.seeds, root, jobs=args.jobs, threads=args.threads)
    except _data_errors() as err:
        return _fail("sweep", err)
    print(sweep.markdown_table(rows))
    print(f"tables: {root / 'sweep.md'}, {root / 'sweep.csv'}; figure: {root / 'sweep.png'}")
    return 0


# ---------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and its fix, then exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyvae", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_traverse(sub)
    _add_sweep(sub)
    # bench and lessons own their subcommands; each imports its heavy dependencies
    # inside the command, so `tinyvae --help` stays fast.
    bench.add_subparser(sub)
    lessons.add_subparser(sub)
    return parser


def main(argv=None) -> int:
    """Run a command. User errors: one line and exit 2; a failed run: one line and exit 1."""
    from tinyvae import kernels

    try:
        kernels.check_backend_env()
    except ValueError as err:
        print(f"tinyvae: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except runs.RunError as err:
        print(f"tinyvae {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except MemoryError:
        return _fail(args.command, "out of memory (try a smaller --hidden, --resolution, "
                                   "--n-train or --batch-size)")
    except OSError as err:   # disk full, permission denied, ...: the run itself failed
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        return _fail(args.command, f"{err.strerror or err}{where}")


if __name__ == "__main__":
    sys.exit(main())
