"""Run folders: what ``tinyvae train`` writes and ``evaluate``, ``traverse`` and ``--resume`` read.

A run folder holds everything needed to continue, evaluate or redraw a run::

    config.json      the resolved configuration (every default filled in)
    status.json      "running" / "interrupted" / "finished" / "failed", the step reached,
                     the step of the checkpoint, seconds spent, and what stopped the run
    checkpoint.npz   parameters, optimizer and training state (tinyvae.io format), saved
                     a few times during training, on Ctrl-C / SIGTERM and at the end
    .lock            held (flock) by the process writing the folder: one writer at a time
    history.csv      loss, reconstruction, KL and KL per latent every log interval
    report.json      numbers (see tinyvae.report) and report.md, their readable form
    figures/         traversal.png + .gif, reconstructions, samples, KL bars, curves, ...

The training data are not stored: they are re-created from the config (dSprites
is rendered from a seeded sample of factors), which is what lets ``--resume``
replay the same batches and continue bit for bit.

Nothing a run wrote is lost: a second writer is refused while the first holds the
folder's lock; --overwrite moves the old run aside (``.previous-run/``) and deletes it
only once the new run has written its first checkpoint, restoring it if the new run
fails before that; a run killed outright resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyvae import kernels, losses, models, optim, training
from tinyvae.io import atomic_path

RUN_FORMAT = "tinyvae-run"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
CHECKPOINT_FILE = "checkpoint.npz"
HISTORY_FILE = "history.csv"
FIGURES_DIR = "figures"
LOCK_FILE = ".lock"
PREVIOUS_DIR = ".previous-run"
#: what a run writes into its folder (the lock aside): what --overwrite replaces
RUN_FILES = (CONFIG_FILE, STATUS_FILE, CHECKPOINT_FILE, HISTORY_FILE, "report.json",
             "report.md", FIGURES_DIR)
#: periodic checkpoints: this many in a run (a checkpoint of the main job's model takes
#: some tens of ms), and at least one every CHECKPOINT_SECONDS of training
CHECKPOINTS_PER_RUN = 4
CHECKPOINT_SECONDS = 600.0

DATASETS = ("dsprites", "digits", "mnist", "fashion-mnist", "spiral")
#: --model NAME -> model class, from the one table in models.py
MODEL_CLASSES = {cls.short_name: cls for cls in models.MODELS.values()}
MODELS = tuple(MODEL_CLASSES)
OPTIMIZERS = tuple(optim.OPTIMIZERS)
#: hidden activations the CLI offers: the kernels' table without identity (a linear
#: network) and sigmoid (saturates as a hidden layer); the library takes every one
ACTIVATIONS = tuple(a for a in kernels.ACTIVATIONS if a not in ("identity", "sigmoid"))
_DEFAULT_LR = {"adam": 1e-3, "adagrad": 1e-2, "sgd": 1e-2}

#: Per data set, the defaults of every training option. The dSprites entry is the
#: main job, tuned to disentangle within the time budget (see experiments/main_job.md).
RECIPES = {
    "dsprites": dict(model="beta-tcvae", alpha=1.0, beta=20.0, gamma=1.0, estimator="mws",
                     latent=10, hidden=[256, 256], decoder="broadcast", decoder_hidden=[32, 32],
                     resolution=32, n_train=100_000, steps=8_000, epochs=None, batch_size=128,
                     optimizer="adam", lr=1e-3, kl_warmup=0, activation="relu"),
    "digits": dict(model="vae", beta=1.0, latent=8, hidden=[128], resolution=None,
                   n_train=None, steps=None, epochs=100, batch_size=64,
                   optimizer="adam", lr=1e-3, kl_warmup=0, activation="relu"),
    "mnist": dict(model="vae", beta=1.0, latent=20, hidden=[400], resolution=None,
                  n_train=None, steps=None, epochs=10, batch_size=128,
                  optimizer="adam", lr=1e-3, kl_warmup=0, activation="relu"),
    "fashion-mnist": dict(model="vae", beta=1.0, latent=20, hidden=[400], resolution=None,
                          n_train=None, steps=None, epochs=10, batch_size=128,
                          optimizer="adam", lr=1e-3, kl_warmup=0, activation="relu"),
    "spiral": dict(model="vae", beta=1.0, latent=2, hidden=[64, 64], resolution=None,
                   n_train=5000, steps=None, epochs=100, batch_size=128,
                   optimizer="adam", lr=1e-3, kl_warmup=0, activation="relu"),
}
#: Recipes of the other models on a data set, where they differ from its main one: the
#: dSprites beta-VAE keeps the recipe it was tuned with (experiments/main_job.md).
MODEL_RECIPES = {
    ("dsprites", "beta-vae"): dict(model="beta-vae", beta=4.0, latent=10, hidden=[256, 256],
                                   resolution=32, n_train=100_000, steps=30_000, epochs=None,
                                   batch_size=64, optimizer="adagrad", lr=1e-2, kl_warmup=0,
                                   activation="relu"),
}
#: options every data set shares; None means "not used" (capacity: the plain beta-VAE loss)
COMMON_DEFAULTS = dict(capacity=None, capacity_steps=None, gamma=None, alpha=None,
                       estimator=None, seed=0, decoder="mlp", decoder_hidden=None)
#: --decoder-hidden when --decoder broadcast is asked for without it: the models' default
BROADCAST_HIDDEN = list(inspect.signature(models.VAE).parameters["decoder_hidden"].default)
DECODERS = models.DECODERS
#: beta-TCVAE: the weights of index-code MI (alpha), total correlation (beta) and
#: dimension-wise KL (gamma), and the estimator of log q(z), when not given: the
#: defaults of tv.BetaTCVAE itself
TCVAE_DEFAULTS = {name: inspect.signature(models.BetaTCVAE).parameters[name].default
                  for name in ("alpha", "beta", "gamma", "estimator")}
ESTIMATORS = losses.TC_ESTIMATORS
#: the spiral is continuous 3-D data: Gaussian decoder with this fixed noise scale
SPIRAL_NOISE = 0.01
SPIRAL_OBS_STD = 0.05


class RunError(Exception):
    """A run folder is missing, foreign, incomplete, or asked for something it cannot do."""


class UsageError(RunError):
    """A training option that does not fit the others; ``option`` names it (e.g. "--beta")."""

    def __init__(self, option, message):
        super().__init__(message)
        self.option = option


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------


def resolve_config(options: dict) -> dict:
    """Fill the options the user left out (None) from the data set's recipe; check the mix.

    options: the train subcommand's namespace as a dict (dataset, model, beta, ...).
    Returns the full config written to config.json. Raises UsageError naming the option.
    """
    dataset = options.get("dataset") or "dsprites"
    model = options.get("model") or RECIPES[dataset]["model"]
    recipe = {**COMMON_DEFAULTS, **MODEL_RECIPES.get((dataset, model), RECIPES[dataset])}
    given = {k: v for k, v in options.items() if k in recipe and v is not None}
    config = {"dataset": dataset, **recipe, **given}

    def refuse(key, why):
        if key in given:
            raise UsageError("--" + key.replace("_", "-"), why)
        config[key] = None

    # steps and epochs are two ways to say how long: the one given wins
    if "steps" in given and "epochs" in given:
        raise UsageError("--steps", "not allowed with --epochs (give one of the two)")
    if "epochs" in given:
        config["steps"] = None
    if "steps" in given:
        config["epochs"] = None
    if config["model"] != "beta-tcvae":
        for key in ("alpha", "estimator"):
            refuse(key, "only the beta-TCVAE has this weight (use --model beta-tcvae)")
    if config["model"] == "ae":
        for key in ("beta", "kl_warmup", "capacity", "capacity_steps", "gamma"):
            refuse(key, "the deterministic autoencoder (--model ae) has no KL term")
    elif config["model"] == "beta-tcvae":
        for key in ("capacity", "capacity_steps"):
            refuse(key, "only the beta-VAE has a capacity objective (use --model beta-vae)")
        same_model = config["model"] == recipe["model"]
        for key, default in TCVAE_DEFAULTS.items():
            config[key] = given.get(key, recipe.get(key, default) if same_model else default)
    else:
        # the recipe's beta belongs to the recipe's model; otherwise the model's own default
        model_beta = 1.0 if config["model"] == "vae" else 4.0
        same_model = config["model"] == recipe["model"]
        config["beta"] = given.get("beta", recipe["beta"] if same_model else model_beta)
        if config["model"] == "vae":
            for key in ("capacity", "capacity_steps", "gamma"):
                refuse(key, "only the beta-VAE has a capacity objective (use --model beta-vae)")
        elif config["capacity"] is None:
            for key in ("capacity_steps", "gamma"):
                refuse(key, "only used with --capacity (the capacity objective)")
        else:
            config["gamma"] = given.get("gamma", 100.0)
            if not config["gamma"] > 0:
                raise UsageError("--gamma", f"the capacity objective needs a weight > 0, got "
                                            f"{config['gamma']:g}")
            if config["capacity_steps"] is None:
                config["capacity_steps"] = config["steps"] or 10_000
    if config["decoder"] == "mlp":
        refuse("decoder_hidden", "only the broadcast decoder has per-pixel layers "
                                 "(use --decoder broadcast)")
    else:
        if dataset == "spiral":
            raise UsageError("--decoder", "the broadcast decoder draws images; the spiral "
                                          "is 3-D points (use --decoder mlp)")
        config["decoder_hidden"] = [int(h) for h in config["decoder_hidden"] or BROADCAST_HIDDEN]
    if dataset != "dsprites":
        refuse("resolution", "only the dSprites renderer has a resolution (--dataset dsprites)")
    if dataset in ("digits", "mnist", "fashion-mnist"):
        refuse("n_train", f"{dataset} has a fixed training set")
    if "optimizer" in given and "lr" not in given:
        config["lr"] = (recipe["lr"] if config["optimizer"] == recipe["optimizer"]
                        else _DEFAULT_LR[config["optimizer"]])
    config["hidden"] = [int(h) for h in config["hidden"]]
    config["likelihood"] = "gaussian" if dataset == "spiral" else "bernoulli"
    check_memory(config)
    return config


#: input width and (training rows, held-out rows) of each data set; None: config["n_train"]
_DATA_SHAPES = {"digits": (64, 1500, 297), "mnist": (784, 60_000, 10_000),
                "fashion-mnist": (784, 60_000, 10_000), "spiral": (3, None, 1000),
                "dsprites": (None, None, 5000)}
#: bytes per parameter while training: float32 value, gradient, up to two optimizer
#: slots, and the float64 draw at initialisation
_BYTES_PER_PARAM = 4 * 4 + 8


def memory_needed(config: dict) -> dict:
    """Rough bytes a run needs, by what drives them: {"data": ..., "model": ...}."""
    width, n_train, n_eval = _DATA_SHAPES[config["dataset"]]
    width = width or config["resolution"] ** 2
    n_train = n_train if n_train is not None else config["n_train"]
    widths = [width, *config["hidden"]]
    layers = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    n_params = 2 * layers + 2 * widths[-1] * config["latent"]
    activations = config["batch_size"] * (2 * sum(config["hidden"]) + 4 * width) * 4 * 4
    if config.get("decoder") == "broadcast":    # every hidden layer runs at every pixel
        activations += config["batch_size"] * width * sum(config["decoder_hidden"]) * 4 * 4
    return {"data": (n_train + n_eval) * width * 4,
            "model": n_params * _BYTES_PER_PARAM + activations}


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(config: dict, available: int | None = None) -> None:
    """UsageError naming the option to lower when the run cannot fit in this machine's memory.

    Checked before anything is allocated, so a too-large --resolution or --hidden is
    one clear message instead of a MemoryError after minutes of work.
    """
    available = _total_memory() if available is None else available
    need = memory_needed(config)
    if available is None or sum(need.values()) <= available:
        return
    gib = 2.0 ** 30
    if need["data"] >= need["model"]:
        option = "--resolution" if config["dataset"] == "dsprites" else "--n-train"
        if config["dataset"] == "dsprites" and config["resolution"] <= 64:
            option = "--n-train"
        what = "its training data"
    else:
        option, what = "--hidden", "its parameters, gradients and optimizer state"
    raise UsageError(option, f"this run needs about {sum(need.values()) / gib:,.1f} GiB "
                             f"({what}: {max(need.values()) / gib:,.1f} GiB), more than this "
                             f"machine's {available / gib:.1f} GiB of memory; choose a smaller "
                             f"{option}")


def describe(config: dict) -> str:
    """One line naming the run, e.g. 'beta-vae (beta=4) on dsprites 32x32, latent 10, ...'."""
    data = config["dataset"] + (f" {config['resolution']}x{config['resolution']}"
                                if config.get("resolution") else "")
    model = config["model"]
    if config["model"] == "beta-tcvae":
        model += (f" (alpha={config['alpha']:g}, beta={config['beta']:g}, "
                  f"gamma={config['gamma']:g}, {config['estimator']})")
    elif config.get("beta") is not None:
        model += f" (beta={config['beta']:g}"
        model += f", capacity {config['capacity']:g} nats)" if config.get("capacity") else ")"
    length = (f"{config['steps']} steps" if config["steps"] is not None
              else f"{config['epochs']} epochs")
    decoder = (f", broadcast decoder {config['decoder_hidden']}"
               if config.get("decoder", "mlp") == "broadcast" else "")
    return (f"{model} on {data}, latent {config['latent']}, hidden {config['hidden']}{decoder}, "
            f"{length} of batch {config['batch_size']}, {config['optimizer']} lr {config['lr']:g}, "
            f"seed {config['seed']}")


def default_out(config: dict) -> Path:
    """runs/<dataset>-<model>[-beta<b>]-seed<s>: a different folder for each main variant."""
    parts = [config["dataset"], config["model"]]
    if config.get("beta") is not None:
        parts.append(f"beta{config['beta']:g}")
    parts.append(f"seed{config['seed']}")
    return Path("runs") / "-".join(parts)


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


@dataclass
class RunData:
    """Training and held-out data of a run, with what the report and figures need."""

    X: np.ndarray                   # (n, input_dim) float32 training rows
    X_eval: np.ndarray              # (m, input_dim) held-out rows for the ELBO and figures
    image_shape: tuple | None       # (H, W) for image data, None for the spiral
    dsprites: object = None         # the DSprites renderer (disentanglement metrics)
    eval_labels: np.ndarray | None = None   # digit labels, or the spiral's position t
    label_name: str | None = None
    description: str = ""


def _render_dsprites(ds, n, rng):
    """n random dSprites as float32 rows, drawn straight into the (zeroed) rows."""
    X = np.zeros((n, ds.input_dim), dtype=np.float32)
    if n == 0:
        return X, np.zeros((0, 5), dtype=np.int64)
    classes = ds.sample_classes(n, rng)
    ds.render_into(X.reshape(n, *ds.image_shape), classes)
    return X, classes


def load_data(config: dict, with_train: bool = True) -> RunData:
    """The data a config names. The same config always gives the same arrays.

    with_train=False skips what only training needs (RunData.X is then empty): the
    report and the figures use the held-out data alone.
    """
    from tinyvae import datasets

    name, seed = config["dataset"], config["seed"]
    if name == "dsprites":
        ds = datasets.DSprites(resolution=config["resolution"])
        n_train = config["n_train"] if with_train else 0
        X, _ = _render_dsprites(ds, n_train, np.random.default_rng([seed, 0]))
        # the held-out sample is the same for every run, so reports compare like with like
        X_eval, classes = _render_dsprites(ds, 5000, np.random.default_rng([2**31, 1]))
        return RunData(X, X_eval, ds.image_shape, dsprites=ds, eval_labels=classes[:, 0],
                       label_name="shape", description=f"{len(X)} dSprites at "
                       f"{ds.resolution}x{ds.resolution} (a seeded sample of the {len(ds)})")
    if name == "digits":
        X, y = datasets.load_digits()
        order = np.random.default_rng(0).permutation(len(X))   # fixed split for every seed
        test, train = order[:297], order[297:]
        return RunData(X[train], X[test], datasets.IMAGE_SHAPES["digits"], eval_labels=y[test],
                       label_name="digit", description=f"{len(train)} of scikit-learn's 8x8 digits")
    if name in ("mnist", "fashion-mnist"):
        X = datasets.load_mnist("train", kind=name)[0] if with_train else None
        X_test, y_test = datasets.load_mnist("test", kind=name)
        if X is None:
            X = X_test[:0]
        return RunData(X, X_test, datasets.IMAGE_SHAPES[name], eval_labels=y_test,
                       label_name="label", description=f"{name} train split ({len(X)} images)")
    if name == "spiral":
        X, _ = datasets.spiral(config["n_train"], noise=SPIRAL_NOISE, seed=seed)
        X_eval, t = datasets.spiral(1000, noise=SPIRAL_NOISE, seed=2**31)
        return RunData(X, X_eval, None, eval_labels=t, label_name="t",
                       description=f"{len(X)} points of a 3-D spiral, noise {SPIRAL_NOISE}")
    raise RunError(f"dataset: expected one of {DATASETS}, got {name!r}")


# ---------------------------------------------------------------------------------------
# model and optimizer
# ---------------------------------------------------------------------------------------


def build_model(config: dict, input_dim: int, image_shape=None):
    """A fresh model for the config (same seed, same initial parameters).

    image_shape (H, W) of the data: the broadcast decoder draws on that grid.
    """
    cls = MODEL_CLASSES[config["model"]]
    common = dict(input_dim=input_dim, hidden=tuple(config["hidden"]), latent_dim=config["latent"],
                  likelihood=config["likelihood"], activation=config["activation"],
                  seed=config["seed"])
    if config.get("decoder", "mlp") != "mlp":
        common.update(decoder=config["decoder"], decoder_hidden=tuple(config["decoder_hidden"]),
                      image_shape=tuple(image_shape))
    if config["likelihood"] == "gaussian":
        common["obs_std"] = SPIRAL_OBS_STD
    if cls is models.Autoencoder:
        return cls(**common)
    if cls is models.VAE:
        return cls(beta=config["beta"], **common)
    if cls is models.BetaVAE:
        extra = {}
        if config["capacity"] is not None:
            extra = dict(capacity_max=config["capacity"], capacity_steps=config["capacity_steps"],
                         gamma=config["gamma"])
        return cls(beta=config["beta"], **common, **extra)
    if cls is models.BetaTCVAE:
        return cls(alpha=config["alpha"], beta=config["beta"], gamma=config["gamma"],
                   dataset_size=config["n_train"], estimator=config["estimator"], **common)
    raise RunError(f"model: {config['model']!r} has no recipe in run.build_model yet")


def build_optimizer(config: dict):
    return optim.OPTIMIZERS[config["optimizer"]](lr=config["lr"])


def total_steps(config: dict, n_train: int) -> int:
    """Training steps the run takes: --steps, or --epochs over n_train rows."""
    if config["steps"] is not None:
        return int(config["steps"])
    return int(config["epochs"]) * math.ceil(n_train / config["batch_size"])


def log_interval(steps: int, entries: int = 100) -> int:
    """Steps between log entries for at least ``entries`` of them (fit also logs the last step)."""
    return max(1, steps // entries)


# ---------------------------------------------------------------------------------------
# the folder itself
# ---------------------------------------------------------------------------------------


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    _atomic_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _atomic_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def is_run_folder(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def check_run_folder(path, need_checkpoint=True) -> Path:
    """The path of an existing run folder, or RunError saying what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"run folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise RunError(f"{str(path)!r} is a file, expected a run folder written by tinyvae train")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise RunError(f"{str(path)!r} is not a tinyvae run folder (it has no {CONFIG_FILE}; "
                       "run folders are written by tinyvae train --out DIR)")
    try:
        header = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{str(config_path)!r} is not readable JSON: {err}") from err
    if not isinstance(header, dict) or header.get("format") != RUN_FORMAT:
        raise RunError(f"{str(path)!r} is not a tinyvae run folder: its {CONFIG_FILE} was not "
                       f"written by tinyvae train (format {_get(header, 'format')!r}, "
                       f"expected {RUN_FORMAT!r})")
    version = header.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RunError(f"{str(config_path)!r} has format_version {version!r}, expected an "
                       "integer: the file is damaged (start the run again with --overwrite)")
    if not isinstance(header.get("config"), dict) or "dataset" not in header["config"]:
        raise RunError(f"{str(config_path)!r} holds no run configuration: the file is damaged "
                       "(start the run again with tinyvae train --out DIR --overwrite)")
    if version > RUN_FORMAT_VERSION:
        raise RunError(f"{str(path)!r} was written by a newer tinyvae (run format "
                       f"{header['format_version']}); upgrade tinyvae to read it")
    if need_checkpoint and not (path / CHECKPOINT_FILE).is_file():
        raise RunError(f"{str(path)!r} has no {CHECKPOINT_FILE}: its training never reached a "
                       "checkpoint (start it again with tinyvae train --out DIR --overwrite)")
    return path


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else None


def read_config(folder: Path) -> dict:
    header = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    return header["config"]


def write_config(folder: Path, config: dict) -> None:
    import tinyvae

    write_json(Path(folder) / CONFIG_FILE, {"format": RUN_FORMAT,
                                            "format_version": RUN_FORMAT_VERSION,
                                            "tinyvae_version": tinyvae.__version__,
                                            "config": config})


def read_status(folder: Path) -> dict:
    """status.json as a dict; RunError naming the file (and the fix) if it is unreadable."""
    path = Path(folder) / STATUS_FILE
    if not path.is_file():
        return {"state": "new", "step": 0, "total_steps": None, "train_seconds": 0.0}
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        status = err
    seconds = status.get("train_seconds", 0.0) if isinstance(status, dict) else None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        why = status if isinstance(status, Exception) else "not a status record"
        raise RunError(f"{str(path)!r} is damaged ({why}); delete it: the next tinyvae train "
                       "--resume writes a new one")
    return status


def write_status(folder: Path, **status) -> None:
    write_json(Path(folder) / STATUS_FILE, status)


def load_model(folder: Path, config: dict | None = None):
    """The checkpointed model of a run folder (training state included).

    RunError if the file is damaged, or if it was not trained with ``config`` (default:
    the folder's config.json): a folder that mixes two runs is never used.
    """
    import tinyvae as tv

    path = Path(folder) / CHECKPOINT_FILE
    try:
        model = tv.load(path)
    except FileNotFoundError as err:
        raise RunError(f"{str(path)!r} is missing: the run never reached a checkpoint (start "
                       "it again with tinyvae train --out DIR --overwrite)") from err
    except ValueError as err:
        raise RunError(f"{str(path)!r} cannot be loaded: {err} (start the run again with "
                       "tinyvae train --out DIR --overwrite)") from err
    check_checkpoint_matches(folder, read_config(folder) if config is None else config, model)
    return model


def check_checkpoint_matches(folder, config: dict, model) -> None:
    """RunError unless the checkpoint's model, optimizer and batches are the config's."""
    opt, state = model.optimizer_, model.train_state_ or {}
    pairs = {
        "model": (config.get("model"), type(model).short_name),
        "hidden": (list(config.get("hidden") or []), list(model.hidden)),
        "latent": (config.get("latent"), model.latent_dim),
        "decoder": (config.get("decoder", "mlp"), model.decoder),
        "seed": (config.get("seed"), model.seed),
        "optimizer": (config.get("optimizer"),
                      None if opt is None else _optimizer_name(opt)),
        "lr": (config.get("lr"), None if opt is None else opt.lr),
        "batch_size": (config.get("batch_size"), state.get("batch_size")),
    }
    if config.get("beta") is not None and hasattr(model, "beta"):
        pairs["beta"] = (config["beta"], model.beta)
    for key, (want, got) in pairs.items():
        if want != got:
            raise RunError(f"{str(Path(folder) / CHECKPOINT_FILE)!r} does not belong to its "
                           f"{CONFIG_FILE} ({key}: {want!r} in the config, {got!r} in the "
                           "checkpoint): the folder mixes two runs; start it again with "
                           "tinyvae train --out DIR --overwrite")


def _optimizer_name(opt):
    return next((name for name, cls in optim.OPTIMIZERS.items() if type(opt) is cls), None)


def write_history(folder: Path, history: dict, latent_dim: int) -> Path:
    """history.csv: one row per log entry, KL per latent in columns kl_z0 .. kl_z<d-1>."""
    path = Path(folder) / HISTORY_FILE
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "loss", "recon", "kl",
                         *[f"kl_z{j}" for j in range(latent_dim)]])
        for i in range(len(history["loss"])):
            per_latent = history["kl_per_latent"][i]
            writer.writerow([f"{history['epoch'][i]:.6g}", history["step"][i],
                             *(f"{history[k][i]:.6g}" for k in ("loss", "recon", "kl")),
                             *(f"{v:.6g}" for v in per_latent)])
    return path


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------


def stop_at(steps: int):
    """The callback train_run gives fit for a run of ``steps`` steps (the tests wrap it).

    fit(steps=...) stops the run itself; this checks, at every log entry, that no step
    went past the budget, which a resumed run with a wrong position would do.
    """
    def callback(model, entry):
        if model.step_ > steps:
            raise RunError(f"training went past its budget: step {model.step_} of {steps}")

    return callback


class StepClock:
    """A fit callback that times the steps between the first and the last log entry:
    training images per second with the start-up (data, Numba compilation) left out.

    probe (a bench.FloorProbe), sampled at every probe_every-th entry, times the GEMM
    floor's rate over the same minutes; its own time is left out of the steps'.
    """

    def __init__(self, batch_size: int, probe=None, probe_every: int = 10):
        self.batch_size, self.probe, self.probe_every = batch_size, probe, probe_every
        self.first = self.last = None     # (step, perf_counter) at a log entry
        self.entries = 0
        # probe time between the first and the last entry, and the latest probe's,
        # which is inside only once another entry follows it
        self.probe_seconds, self.pending_seconds = 0.0, 0.0

    def __call__(self, model, entry):
        now = time.perf_counter()
        self.probe_seconds += self.pending_seconds
        self.pending_seconds = 0.0
        self.last = (int(model.step_), now)
        self.first = self.first or self.last
        if self.probe is not None and self.entries % self.probe_every == 0:
            self.probe.sample()
            self.pending_seconds = time.perf_counter() - now
        self.entries += 1

    def images_per_second(self) -> float | None:
        if self.first is None or self.last[0] == self.first[0]:
            return None
        seconds = self.last[1] - self.first[1] - self.probe_seconds
        return (self.last[0] - self.first[0]) * self.batch_size / seconds

    def floor_rate(self) -> float | None:
        """numpy.matmul's FLOP/s on the first layer's shape during the steps (the probe's)."""
        return self.probe.rate() if self.probe is not None else None


@dataclass
class TrainResult:
    model: object
    data: RunData
    state: str              # "finished" or "interrupted"
    step: int
    total_steps: int
    train_seconds: float    # this session's and earlier sessions' training time
    signal: str | None = None   # what interrupted the run: "SIGINT" or "SIGTERM"
    images_per_second: float | None = None   # this session's steps, start-up left out
    floor_rate: float | None = None          # numpy.matmul's FLOP/s meanwhile (FloorProbe)


# ---------------------------------------------------------------------------------------
# one writer per folder, and a replaced run kept until its successor has a checkpoint
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold the run folder's lock (creating the folder); RunError naming the holder if taken.

    The lock is flock(2) on ``folder/.lock``: the operating system drops it when its
    process ends, even by SIGKILL, so it is never stale. The file holds the pid.
    Without fcntl (Windows) there is no lock.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as err:
        raise RunError(f"cannot create the run folder {str(folder)!r}: {err.strerror or err} "
                       "(choose another --out)") from err
    try:
        _acquire(f, folder)
        yield folder
    finally:
        f.close()   # closing releases the lock


def _acquire(f, folder):
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        raise RunError(f"run folder {str(folder)!r} is being written by another tinyvae "
                       f"process (pid {holder}); wait for it to end (or stop it), or choose "
                       "another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()


def _set_aside(folder: Path) -> Path | None:
    """Move the run in ``folder`` into folder/.previous-run/; its path, or None if no run."""
    present = [name for name in RUN_FILES if (folder / name).exists()]
    if not present:
        return None
    aside = folder / PREVIOUS_DIR
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for name in present:
        os.replace(folder / name, aside / name)
    return aside


def _restore_aside(folder: Path, aside: Path) -> None:
    """Put the set-aside run back in place of what the failed new run wrote."""
    for name in RUN_FILES:
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if (aside / name).exists():
            os.replace(aside / name, target)
    shutil.rmtree(aside, ignore_errors=True)


def _recover_aside(folder: Path) -> None:
    """A replacement killed before its first checkpoint leaves the old run aside: restore it."""
    aside = folder / PREVIOUS_DIR
    if not aside.is_dir():
        return
    if (folder / CHECKPOINT_FILE).exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        _restore_aside(folder, aside)


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------


def checkpoint_interval(steps: int) -> int:
    """Steps between periodic checkpoints: CHECKPOINTS_PER_RUN of them in a run."""
    return max(1, math.ceil(steps / CHECKPOINTS_PER_RUN))


class _RunSaver:
    """Writes checkpoint, history and status together: at checkpoints and at the end.

    The first save of a replacing run deletes the run it replaces (set aside).
    """

    def __init__(self, folder, steps, seconds_before, start, aside):
        self.folder, self.steps, self.aside = folder, steps, aside
        self.seconds_before, self.start = seconds_before, start
        self.saved_step = None

    def seconds(self):
        return self.seconds_before + time.perf_counter() - self.start

    def status(self, model, state, **extra):
        write_status(self.folder, state=state, step=int(model.step_), total_steps=self.steps,
                     checkpoint_step=self.saved_step, train_seconds=round(self.seconds(), 2),
                     pid=os.getpid(), **extra)

    def __call__(self, model, state="running", **extra):
        model.save(self.folder / CHECKPOINT_FILE)
        write_history(self.folder, model.history_, model.latent_dim)
        self.saved_step = int(model.step_)
        self.status(model, state, **extra)
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def train_run(folder: Path, config: dict, resume: bool, progress: bool = True,
              clock_start: float | None = None, *, overwrite: bool = True,
              checkpoint_every: int | None = None) -> TrainResult:
    """Train (or continue) the run in ``folder``; checkpoint periodically, on a signal, at the end.

    On Ctrl-C or SIGTERM the checkpoint is written after the current step and the
    result's state is "interrupted"; the caller tells the user how to resume. A run
    that diverges writes status "failed" and raises FloatingPointError (its last
    checkpoint stands). overwrite=False refuses a folder that already holds a run;
    overwrite=True replaces it, but only once the new run has saved a checkpoint.
    checkpoint_every: steps between periodic checkpoints (default checkpoint_interval).
    """
    start = time.perf_counter() if clock_start is None else clock_start
    folder = Path(folder)
    with run_lock(folder):
        _recover_aside(folder)
        if not resume and not overwrite and is_run_folder(folder):
            raise RunError(f"{str(folder)!r} already holds a run; continue it with --resume "
                           f"{folder}, or pass --overwrite to start it again")
        previous = read_status(folder) if resume else {}
        data = load_data(config)
        steps = total_steps(config, len(data.X))
        if resume:
            model = load_model(folder, config)
            if model.step_ >= steps:
                raise RunError(f"run {str(folder)!r} already finished its {model.step_} steps; "
                               f"pass --steps N with N > {model.step_} to train it longer")
        else:
            model = build_model(config, data.X.shape[1], data.image_shape)
        aside = None if resume else _set_aside(folder)
        saver = _RunSaver(folder, steps, previous.get("train_seconds", 0.0), start, aside)
        saver.saved_step = int(model.step_) if resume else None
        try:
            return _train_in_folder(folder, config, model, data, steps, resume, progress,
                                    saver, checkpoint_every or checkpoint_interval(steps))
        except BaseException:
            if aside is not None and aside.exists() and not (folder / CHECKPOINT_FILE).exists():
                _restore_aside(folder, aside)
            raise


def _train_in_folder(folder, config, model, data, steps, resume, progress, save, every):
    (folder / FIGURES_DIR).mkdir(exist_ok=True)
    write_config(folder, config)
    # a process killed outright (SIGKILL) leaves "running" behind: its last checkpoint stands
    save.status(model, "running")
    import numba

    from tinyvae import bench

    batch = min(config["batch_size"], len(data.X))
    probe = bench.FloorProbe(batch, data.X.shape[1], int(config["hidden"][0]),
                             numba.get_num_threads())
    check, clock = stop_at(steps), StepClock(batch, probe)

    def callback(model, entry):
        check(model, entry)
        clock(model, entry)

    fit_args = dict(steps=steps, progress=progress, log_every=log_interval(steps),
                    callback=callback,
                    checkpoint=training.Checkpointer(save, every=every,
                                                     seconds=CHECKPOINT_SECONDS))
    if not resume:
        fit_args.update(batch_size=config["batch_size"], optimizer=build_optimizer(config),
                        seed=config["seed"], kl_warmup_steps=config.get("kl_warmup") or 0)
    state, stopped_by = "finished", None
    # From here to the end of the save no signal reaches Python's default handler: the
    # training loop's own handler takes them while it runs (a first one stops after the
    # step, a second at once), this one between the loop and the save, where a
    # KeyboardInterrupt would lose the save.
    with training.deferred_interrupt(defer=True):
        try:
            model.fit(data.X, resume=resume, **fit_args)
        except KeyboardInterrupt as err:
            state, stopped_by = "interrupted", getattr(err, "signal", "SIGINT")
        except FloatingPointError as err:
            save.status(model, "failed", error=str(err))
            raise
        save(model, state, **({"signal": stopped_by} if stopped_by else {}))
    return TrainResult(model, data, state, int(model.step_), steps, save.seconds(), stopped_by,
                       clock.images_per_second(), clock.floor_rate())
