"""Checkpoints: an .npz of plain arrays plus a JSON header. Never pickled.

Layout of the archive:

    __header__            uint8 bytes of a UTF-8 JSON document (see below)
    param/<name>          every entry of model.params
    optim/<name>/<slot>   optimizer state arrays (Adam's m and v, ...)

The header holds the format version, the model class and config, the training
step, the history, the optimizer's class, hyperparameters and step count, the
training state (seed, position in the epoch, the noise generator's state) and a
SHA-256 of every array, so a corrupted file is caught even where the zip CRC
would not be consulted. Files are written to a temporary name in the target
folder and renamed into place: a failed save never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from tinyvae.optim import make_optimizer

FORMAT = "tinyvae-checkpoint"
FORMAT_VERSION = 1


def _new_file_mode() -> int:
    """The mode a plain open() gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Readers see the old file or the new one, never a half-written one; on any
    error the temporary file is removed. The file gets the permissions a plain
    open() would give (mkstemp's own are private, 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _new_file_mode())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _history_to_json(history):
    return {k: [v.tolist() if isinstance(v, np.ndarray) else v for v in vals]
            for k, vals in history.items()}


def save(model, path) -> Path:
    """Write ``model`` (and its training state, if any) to ``path`` atomically.

    Returns the path written. A ".npz" suffix is added when missing.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {f"param/{k}": v for k, v in model.params.items()}
    optimizer = None
    if model.optimizer_ is not None:
        opt = model.optimizer_
        optimizer = {"config": opt.config(), "t": opt.t}
        arrays.update({f"optim/{k}": v for k, v in opt.state_arrays().items()})
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "config": model.get_config(),
        "step": int(model.step_),
        "history": _history_to_json(model.history_),
        "train_state": model.train_state_,
        "optimizer": optimizer,
        "sha256": {k: _digest(v) for k, v in arrays.items()},
    }
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, __header__=blob, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def _read_archive(path: Path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, NotImplementedError,
            RuntimeError, zlib.error, MemoryError, OverflowError) as err:
        # zipfile raises NotImplementedError for a compression method it does not know
        # and RuntimeError for an "encrypted" member: a flipped byte can make either
        raise ValueError(f"path: {str(path)!r} is not a readable tinyvae checkpoint "
                         f"(truncated or corrupted .npz: {err})") from err
    if "__header__" not in data:
        raise ValueError(f"path: {str(path)!r} is an .npz without a tinyvae header "
                         "(not a tinyvae checkpoint)")
    try:
        header = json.loads(data.pop("__header__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"path: {str(path)!r} has a corrupted header: {err}") from err
    return header, data


def load(path, classes):
    """Load a model saved by :func:`save`, training state included (``tv.load`` calls this).

    classes: {class name: class} to rebuild the model with (``models.MODELS``; passed
    in because models imports io, never the other way round).
    Raises FileNotFoundError for a missing file and ValueError for a truncated,
    corrupted, foreign or newer-format file, naming what is wrong.
    """
    path = Path(path)
    header, data = _read_archive(path)
    _check_header(path, header)
    for key, digest in header["sha256"].items():
        if key not in data:
            raise ValueError(f"path: {str(path)!r} is missing array {key!r}")
        if _digest(data[key]) != digest:
            raise ValueError(f"path: {str(path)!r} is corrupted: array {key!r} fails its checksum")
    unlisted = sorted(set(data) - set(header["sha256"]))
    if unlisted:
        raise ValueError(f"path: {str(path)!r} holds arrays its header does not list: {unlisted}")
    cls = classes.get(header["model_class"])
    if cls is None:
        raise ValueError(f"path: unknown model class {header['model_class']!r} in {str(path)!r}")
    try:
        model = cls(**header["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"path: {str(path)!r} has a config {cls.__name__} does not accept: "
                         f"{err}") from err
    for name, current in model.params.items():
        stored = data.get(f"param/{name}")
        if stored is None or stored.shape != current.shape or stored.dtype != current.dtype:
            got = None if stored is None else (stored.shape, stored.dtype)
            raise ValueError(f"path: parameter {name!r} in {str(path)!r} does not match the "
                             f"config: expected {(current.shape, current.dtype)}, got {got}")
        current[...] = stored
    extra = sorted(k for k in data if k.startswith("param/") and k[6:] not in model.params)
    if extra:
        raise ValueError(f"path: {str(path)!r} has parameters the config does not: {extra}")
    model.step_ = header["step"]
    model.history_ = header["history"]
    model.train_state_ = _checked_train_state(path, header["train_state"], model.latent_dim)
    if header["optimizer"] is not None:
        model.optimizer_ = _load_optimizer(path, header["optimizer"], data, model.params)
    state = model.train_state_
    if state is not None and hasattr(model, "kl_warmup_steps"):
        model.kl_warmup_steps = state["kl_warmup_steps"]
    return model


# ---------------------------------------------------------------------------------------
# header validation: every field checked before use, so a damaged or hand-edited
# header is a ValueError that names the field, never an AttributeError deep inside
# ---------------------------------------------------------------------------------------

_HEADER_TYPES = {"model_class": str, "config": dict, "step": int, "history": dict,
                 "sha256": dict}
HISTORY_KEYS = ("epoch", "step", "loss", "recon", "kl", "kl_per_latent")
_TRAIN_STATE_INTS = ("seed", "epochs", "batch_size", "start_step", "kl_warmup_steps",
                     "epoch", "batch")


def _bad(path, what):
    return ValueError(f"path: {str(path)!r} has a damaged header: {what}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_header(path, header):
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"path: {str(path)!r} is not a tinyvae checkpoint (format {got!r})")
    version = header.get("format_version")
    if not _is_int(version) or version < 1:
        raise _bad(path, f"format version {version!r} (expected an integer >= 1)")
    if version > FORMAT_VERSION:
        raise ValueError(f"path: {str(path)!r} has format version {version!r}; this tinyvae "
                         f"reads versions <= {FORMAT_VERSION} (upgrade tinyvae)")
    for key, kind in _HEADER_TYPES.items():
        value = header.get(key)
        if not (isinstance(value, kind) and (kind is not int or _is_int(value))):
            raise _bad(path, f"{key!r} is {value!r}, expected {kind.__name__}")
    if header["step"] < 0:
        raise _bad(path, f"step {header['step']} < 0")
    if not all(isinstance(v, str) for v in header["sha256"].values()):
        raise _bad(path, "'sha256' must map array names to hex digests")
    history = header["history"]
    if set(history) != set(HISTORY_KEYS) or not all(isinstance(v, list) for v in history.values()) or len(
            {len(v) for v in history.values()}) > 1:
        raise _bad(path, f"'history' must map {HISTORY_KEYS} to lists of one length")
    for key in ("train_state", "optimizer"):
        if key not in header:
            raise _bad(path, f"{key!r} is missing")
        if header[key] is not None and not isinstance(header[key], dict):
            raise _bad(path, f"{key!r} is {header[key]!r}, expected an object or null")


def _checked_train_state(path, state, latent_dim):
    """The header's training state if every field has its type and range, else ValueError."""
    if state is None:
        return None
    for key in _TRAIN_STATE_INTS:
        value = state.get(key)
        if not _is_int(value) or value < 0:
            raise _bad(path, f"train_state {key!r} is {value!r}, expected an integer >= 0")
    if state["batch_size"] < 1 or state["epochs"] < 1:
        raise _bad(path, "train_state batch_size and epochs must be >= 1")
    try:
        np.random.default_rng().bit_generator.state = state.get("rng")
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        raise _bad(path, f"train_state 'rng' is not a generator state ({err})") from err
    acc = state.get("accumulator")
    if acc is not None:
        ok = (isinstance(acc, dict) and _is_int(acc.get("count"))
              and all(isinstance(acc.get(k), (int, float)) for k in ("loss", "recon", "kl"))
              and isinstance(acc.get("kl_per_latent"), list)
              and len(acc["kl_per_latent"]) == latent_dim
              and all(isinstance(v, (int, float)) for v in acc["kl_per_latent"]))
        if not ok:
            raise _bad(path, "train_state 'accumulator' is not a running sum of the loss parts")
    return state


def _load_optimizer(path, header, data, params):
    config, t = header.get("config"), header.get("t")
    if not isinstance(config, dict) or not _is_int(t) or t < 0:
        raise _bad(path, "'optimizer' needs a config object and a step count t >= 0")
    try:
        opt = make_optimizer(config)
    except (TypeError, ValueError) as err:
        raise _bad(path, f"optimizer config {config!r}: {err}") from err
    arrays = {k[len("optim/"):]: v for k, v in data.items() if k.startswith("optim/")}
    for key, arr in arrays.items():
        name, _, slot = key.rpartition("/")
        p = params.get(name)
        if p is None or slot not in opt.slots or arr.shape != p.shape or arr.dtype != p.dtype:
            raise _bad(path, f"optimizer state {key!r} matches no parameter and slot")
    opt.load_state(t, arrays)
    return opt
