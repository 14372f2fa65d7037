"""The MNIST family: scikit-learn's 8 x 8 digits (offline), MNIST and Fashion-MNIST
(downloaded once, verified), the IDX reader, and turning images into model rows."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from tinyvae.datasets.downloads import DatasetError, DownloadError, _fetch
from tinyvae.datasets.downloads import data_dir as _cache_root

# ---------------------------------------------------------------------------------------
# Digits (scikit-learn's bundled copy; never downloaded)
# ---------------------------------------------------------------------------------------


def load_digits(dtype=np.float32):
    """scikit-learn's 1,797 real 8 x 8 handwritten digits, offline.

    Returns:
        X: (1797, 64) ``dtype`` in [0, 1] (the 0..16 grey levels divided by 16).
        y: (1797,) int64 labels 0..9.
    Reshape a row with ``IMAGE_SHAPES["digits"]`` == (8, 8) to plot it.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    X = (bunch.data / 16.0).astype(dtype)
    return X, bunch.target.astype(np.int64)


# ---------------------------------------------------------------------------------------
# Turning images into model input
# ---------------------------------------------------------------------------------------


def as_model_input(images, dtype=np.float32):
    """Flatten images with values in [0, 1] into model rows.

    Args:
        images: (n, H, W) array, e.g. dSprites' uint8 {0, 1} images.
    Returns:
        (n, H * W) ``dtype`` array in [0, 1].
    """
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"images must have shape (n, H, W), got shape {images.shape}")
    X = images.reshape(images.shape[0], -1).astype(dtype, copy=False)
    if X.size and (X.min() < 0 or X.max() > 1):
        # uint8 grey levels (0..255) are the usual mistake: refuse rather than guess.
        raise ValueError(
            f"images must hold values in [0, 1], got range [{X.min()}, {X.max()}]; "
            "divide 8-bit grey levels by 255 first"
        )
    return X


def binarize(X, method="threshold", threshold=0.5, seed=0):
    """Binarize intensities in [0, 1] for a Bernoulli likelihood.

    Args:
        X: array of intensities in [0, 1].
        method: "threshold" (x > threshold, the same every time) or "stochastic" (each
            pixel drawn once from Bernoulli(x), reproducibly from ``seed``).
    Returns:
        an array of X's shape and float dtype holding 0.0 and 1.0.
    """
    X = np.asarray(X)
    if method == "threshold":
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        out = X > threshold
    elif method == "stochastic":
        out = np.random.default_rng(seed).random(X.shape) < X
    else:
        raise ValueError(f"binarize must be None, 'threshold' or 'stochastic', got {method!r}")
    return out.astype(X.dtype if X.dtype.kind == "f" else np.float32)


_binarize = binarize  # load_mnist's argument of the same name hides it


# ---------------------------------------------------------------------------------------
# IDX files (MNIST's format) and MNIST / Fashion-MNIST
# ---------------------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path):
    """The bytes of a file, gunzipped if it is gzip (by its magic bytes, not its name)."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DatasetError(f"{path} is a truncated or corrupted gzip file: {err}") from err


def read_idx(path, dtype=None, ndim=None):
    """Read an IDX file (optionally gzipped) into an array, validating it fully.

    Format: two zero bytes, a type code, the number of dimensions d, then d big-endian
    uint32 sizes, then the data, big-endian, in C order.

    Args:
        dtype, ndim: when given, what the file must hold (e.g. np.uint8, 3).
    Returns:
        ndarray of the file's shape, native byte order.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} has magic number 0x{raw[:4].hex()}, expected 0x0000TTDD with type TT one "
            f"of {', '.join(f'{c:02x}' for c in _IDX_DTYPES)}: not an IDX file"
        )
    file_dtype, file_ndim = _IDX_DTYPES[raw[2]], raw[3]
    if dtype is not None and file_dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise DatasetError(f"{path} holds {file_dtype.name}, expected {np.dtype(dtype).name}")
    if ndim is not None and file_ndim != ndim:
        raise DatasetError(f"{path} has rank {file_ndim}, expected {ndim}")
    header = 4 + 4 * file_ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its header")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", file_ndim, offset=4))
    # Python integers: a product of uint32 sizes overflows any fixed-width integer
    expected = header + math.prod(shape) * file_dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {what}: shape {shape} of {file_dtype.name} needs {expected} bytes, "
            f"found {len(raw)}"
        )
    data = np.frombuffer(raw, file_dtype, offset=header).reshape(shape)
    return data.astype(file_dtype.newbyteorder("="))


_MNIST_MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}
# SHA-256 of the gzipped files, as published in torchvision's dataset definitions.
_MNIST_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz":
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz":
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz":
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz":
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz":
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz":
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz":
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz":
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}


def _mnist_files(kind, split):
    if kind not in _MNIST_SHA256:
        raise ValueError(f"kind must be one of {tuple(_MNIST_SHA256)}, got {kind!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def load_mnist(split="train", kind="mnist", binarize=None, threshold=0.5, seed=0,
               data_dir=None, download=True, dtype=np.float32):
    """MNIST or Fashion-MNIST, downloaded once and verified by SHA-256.

    Args:
        split: "train" (60,000) or "test" (10,000).
        kind: "mnist" or "fashion-mnist".
        binarize: None (grey levels / 255), "threshold" (x > ``threshold``) or
            "stochastic" (Bernoulli(x), fixed by ``seed``), for Bernoulli models.
        data_dir: cache root (default :func:`data_dir`); files go to <root>/<kind>/.
        download: False to use only files already in the cache.
    Returns:
        X (n, 784) ``dtype`` in [0, 1]; y (n,) int64 labels 0..9. Images are 28 x 28.
    """
    if binarize not in (None, "threshold", "stochastic"):
        raise ValueError(f"binarize must be None, 'threshold' or 'stochastic', got {binarize!r}")
    names = _mnist_files(kind, split)
    mirrors = _MNIST_MIRRORS[kind]
    folder = _cache_root(data_dir) / kind
    missing = []
    paths = []
    for name in names:
        try:
            paths.append(_fetch(name, kind, [m + name for m in mirrors], "sha256",
                                _MNIST_SHA256[kind][name], root=data_dir, download=download))
        except (DownloadError, FileNotFoundError) as err:
            missing.append((name, err))
    if missing:
        listed = "\n".join(f"  {name}  (from {mirrors[0]}{name})" for name, _ in missing)
        raise DownloadError(
            f"{kind} {split} split unavailable. Place these files in {folder}:\n{listed}\n"
            f"First error: {missing[0][1]}"
        )
    images = read_idx(paths[0], dtype=np.uint8, ndim=3)
    labels = read_idx(paths[1], dtype=np.uint8, ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DatasetError(
            f"{kind} {split}: images {images.shape} and labels {labels.shape} do not match"
        )
    X = images.reshape(len(images), -1).astype(dtype) / dtype(255)
    if binarize is not None:
        X = _binarize(X, binarize, threshold=threshold, seed=seed)
    return X.astype(dtype, copy=False), labels.astype(np.int64)


def load_fashion_mnist(split="train", **kwargs):
    """Fashion-MNIST: :func:`load_mnist` with ``kind="fashion-mnist"``."""
    return load_mnist(split, kind="fashion-mnist", **kwargs)
