"""The official dSprites file (.npz), read without unpickling, behind the DSprites interface."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from tinyvae.datasets.downloads import DatasetError, _fetch, _verify
from tinyvae.datasets.dsprites import DSPRITES_FILE, DSPRITES_MD5, DSPRITES_URL, DSprites

# ---------------------------------------------------------------------------------------
# The official dSprites file
# ---------------------------------------------------------------------------------------


class _OfficialDSprites(DSprites):
    """dSprites backed by the official images, bit-packed in memory (368 MB)."""

    def __init__(self, packed):
        super().__init__(resolution=64)
        self._packed = packed  # (737280, 64, 8) uint8, np.packbits of each image row

    def _render_full(self, full_classes):
        index = full_classes @ np.array([245760, 40960, 1024, 32, 1])
        return np.unpackbits(self._packed[index], axis=-1)


def _npz_member(zf, key, path):
    try:
        return zf.open(f"{key}.npy")
    except KeyError:
        raise DatasetError(f"{path} has no array {key!r}; found {zf.namelist()}") from None


def _read_npy_header(f, path, key):
    try:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
    except ValueError as err:
        raise DatasetError(f"{path}: array {key!r} has a bad header: {err}") from err
    if dtype.hasobject or fortran:
        raise DatasetError(f"{path}: array {key!r} must be a plain C-order array, "
                           f"got dtype {dtype}, fortran_order={fortran}")
    return shape, dtype


def _read_npz_images(path, chunk=8192):
    """Stream the official ``imgs`` (737280, 64, 64) uint8 {0, 1} into bit-packed rows,
    never holding the 2.9 GB array, and check the factor order of ``latents_classes``."""
    n, expected_shape = 737280, (737280, 64, 64)
    try:
        with zipfile.ZipFile(path) as zf:
            with _npz_member(zf, "latents_classes", path) as f:
                shape, dtype = _read_npy_header(f, path, "latents_classes")
                if shape != (n, 6) or dtype.kind not in "iu":
                    raise DatasetError(f"{path}: latents_classes has shape {shape} and dtype "
                                       f"{dtype}, expected ({n}, 6) integers")
                classes = np.frombuffer(f.read(), dtype=dtype).reshape(shape)
            official = DSprites().index_to_classes(np.arange(n))
            if not np.array_equal(classes[:, 1:], official):
                raise DatasetError(f"{path}: latents_classes are not in the official order")
            with _npz_member(zf, "imgs", path) as f:
                shape, dtype = _read_npy_header(f, path, "imgs")
                if shape != expected_shape or dtype != np.uint8:
                    raise DatasetError(f"{path}: imgs has shape {shape} and dtype {dtype}, "
                                       f"expected {expected_shape} uint8")
                packed = np.empty((n, 64, 8), dtype=np.uint8)
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    block = f.read((stop - start) * 4096)
                    if len(block) != (stop - start) * 4096:
                        raise DatasetError(f"{path}: imgs is truncated at image {start}")
                    block = np.frombuffer(block, np.uint8).reshape(-1, 64, 64)
                    if block.max() > 1:
                        raise DatasetError(f"{path}: imgs must be binary, found {block.max()}")
                    packed[start:stop] = np.packbits(block, axis=-1)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        # A bad CRC or a cut-off deflate stream: the file is damaged.
        raise DatasetError(f"{path} is a truncated or corrupted npz file: {err}") from err
    return packed


def load_dsprites(path=None, download=True, data_dir=None, verify=True):
    """The official dSprites file, behind the same interface as :class:`DSprites`.

    Args:
        path: the ``.npz`` if you have it; else it is looked for in (or downloaded to)
            <data_dir>/dsprites/ from the official repository, verified by MD5 (the only
            digest published for it).
        verify: check the MD5 of ``path`` too.
    Returns:
        a :class:`DSprites` at resolution 64 whose images come from the file (about
        370 MB in memory, bit-packed). Loading never unpickles.
    """
    if path is None:
        path = _fetch(DSPRITES_FILE, "dsprites", [DSPRITES_URL], "md5", DSPRITES_MD5,
                      root=data_dir, download=download)
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path {path} does not exist")
        if verify:
            _verify(path, "md5", DSPRITES_MD5)
    return _OfficialDSprites(_read_npz_images(path))
