"""Downloads: the cache directory, verified atomic transfers, and the data-file errors.

Every file is fetched through one opener (the tests swap in a local one), checked
against its published digest, and only then moved into place: a failed or interrupted
download leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import urllib.request
from pathlib import Path

from tinyvae.io import atomic_path


class DatasetError(ValueError):
    """A data file is malformed, truncated or corrupted."""


class ChecksumError(DatasetError):
    """A file's digest differs from the published one."""


class DownloadError(OSError):
    """No mirror delivered a verified file (for instance: offline)."""


# ---------------------------------------------------------------------------------------
# Files: cache directory, verified atomic downloads
# ---------------------------------------------------------------------------------------

# Every download goes through this opener; the tests swap it for a local one.
_opener = urllib.request.build_opener()
_TIMEOUT = 60.0
_CHUNK = 1 << 20


def data_dir(path=None):
    """The directory downloads are cached in (created if missing).

    ``path`` if given, else ``$TINYVAE_DATA``, else the user's cache directory
    (``$XDG_CACHE_HOME/tinyvae`` or ``~/.cache/tinyvae``; ``%LOCALAPPDATA%\\tinyvae`` on
    Windows; ``~/Library/Caches/tinyvae`` on macOS).
    """
    if path is None:
        path = os.environ.get("TINYVAE_DATA")
    if not path:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Caches"
        else:
            base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "tinyvae"
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path




def _file_digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path, algorithm, expected):
    actual = _file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(
            f"{path} has {algorithm} {actual}, expected {expected}: the file is corrupted or "
            "not the published one; delete it and try again"
        )


def _transfer(url, path, algorithm, expected):
    """Write the bytes at ``url`` to ``path``; raise unless complete and of the expected digest."""
    h = hashlib.new(algorithm)
    with open(path, "wb") as out, _opener.open(url, timeout=_TIMEOUT) as response:
        # A dropped connection can look like a clean end of data: compare lengths.
        expected_length = getattr(response, "headers", {}).get("Content-Length")
        received = 0
        for chunk in iter(lambda r=response: r.read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
            received += len(chunk)
    if expected_length is not None and received != int(expected_length):
        raise DownloadError(f"transfer interrupted: {received} of {expected_length} bytes")
    if h.hexdigest() != expected:
        raise ChecksumError(f"{algorithm} {h.hexdigest()}, expected {expected}")


def _download(urls, dest, algorithm, expected):
    """Fetch the first of ``urls`` whose bytes have the expected digest into ``dest``.

    Bytes go to a temporary file next to ``dest`` and are renamed onto it only once
    complete and verified, so an interrupted or corrupted transfer leaves nothing behind.
    """
    dest = Path(dest)
    failures = []
    for url in urls:
        try:
            # the pid in the name lets a later call tell a dead download's file
            with atomic_path(dest, f".{os.getpid()}.part") as tmp:
                _transfer(url, tmp, algorithm, expected)
            return dest
        except (OSError, ValueError, EOFError, http.client.HTTPException) as err:
            # URLError is an OSError; a cut-off transfer raises http.client.IncompleteRead.
            failures.append(f"  {url}: {type(err).__name__}: {err}")
    raise DownloadError(
        f"could not download {dest.name}:\n" + "\n".join(failures)
        + f"\nIf you are offline, place a copy of {dest.name} in {dest.parent}"
    )


def _fetch(name, subdir, urls, algorithm, expected, root=None, download=True):
    """Path of a verified cached file, downloading it first if needed."""
    folder = data_dir(root) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.is_dir():
        raise DatasetError(f"{path} is a directory, expected the data file {name}: remove "
                           "the directory and try again")
    if path.exists():
        _verify(path, algorithm, expected)
        return path
    if not download:
        raise FileNotFoundError(
            f"{name} is not in {folder} and download=False; place it there (from {urls[0]})"
        )
    _remove_partial_downloads(folder, name)
    return _download(urls, path, algorithm, expected)


def _remove_partial_downloads(folder, name):
    """Delete the ``.name.*.<pid>.part`` files of downloads whose process is gone (killed).

    A download in progress in another live process keeps its file.
    """
    for part in Path(folder).glob(f".{name}.*.part"):
        pid = part.name.rsplit(".", 2)[-2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            part.unlink()


def _alive(pid):
    if sys.platform == "win32":   # os.kill(pid, 0) there sends Ctrl-C: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True   # it exists (another user's), or we cannot tell: keep its file
    return True
