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
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as err:
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
    if header.get("format") != FORMAT:
        raise ValueError(f"path: {str(path)!r} is not a tinyvae checkpoint "
                         f"(format {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"path: {str(path)!r} has format version {version!r}; this tinyvae "
                         f"reads versions <= {FORMAT_VERSION} (upgrade tinyvae)")
    for key, digest in header["sha256"].items():
        if key not in data:
            raise ValueError(f"path: {str(path)!r} is missing array {key!r}")
        if _digest(data[key]) != digest:
            raise ValueError(f"path: {str(path)!r} is corrupted: array {key!r} fails its checksum")
    cls = classes.get(header["model_class"])
    if cls is None:
        raise ValueError(f"path: unknown model class {header['model_class']!r} in {str(path)!r}")
    model = cls(**header["config"])
    for name, current in model.params.items():
        stored = data.get(f"param/{name}")
        if stored is None or stored.shape != current.shape or stored.dtype != current.dtype:
            got = None if stored is None else (stored.shape, stored.dtype)
            raise ValueError(f"path: parameter {name!r} in {str(path)!r} does not match the "
                             f"config: expected {(current.shape, current.dtype)}, got {got}")
        current[...] = stored
    model.step_ = header["step"]
    model.history_ = header["history"]
    model.train_state_ = header["train_state"]
    if header["optimizer"] is not None:
        opt = make_optimizer(header["optimizer"]["config"])
        opt.load_state(header["optimizer"]["t"],
                       {k[len("optim/"):]: v for k, v in data.items() if k.startswith("optim/")})
        model.optimizer_ = opt
    state = model.train_state_
    if state is not None and hasattr(model, "kl_warmup_steps"):
        model.kl_warmup_steps = state["kl_warmup_steps"]
    return model
