"""Tests for tinyvae.datasets: dSprites renderer, toys, digits, IDX/MNIST and npz files.

Fully offline: downloads are served from files the tests write, through file:// URLs or a
fake opener; nothing outside tmp_path and the repository is read or written.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import urllib.error

import numba
import numpy as np
import pytest

from tinyvae import datasets as D
from tinyvae.datasets import downloads, dsprites_npz
from tinyvae.datasets import mnist as mnist_module

# ---------------------------------------------------------------------------------------
# dSprites
# ---------------------------------------------------------------------------------------

# Real dSprites frames (from the official README animation), cropped to their bounding
# box: ((shape, scale, orientation, pos_x, pos_y), (top row, left column), rows).
REAL_FRAMES = [
    # frame 5: classes (2, 5, 0, 0, 0)
    ((2, 5, 0, 0, 0), (7, 6), (
        "...#####....#####...",
        "..#######..#######..",
        ".########..########.",
        ".##################.",
        "####################",
        "####################",
        ".##################.",
        ".##################.",
        "..################..",
        "..################..",
        "...##############...",
        "....############....",
        ".....##########.....",
        "......########......",
        ".......######.......",
        "........####........",
        ".........##.........",
    )),
    # frame 25: classes (2, 5, 7, 0, 0)
    ((2, 5, 7, 0, 0), (5, 5), (
        ".......####........",
        ".....########......",
        ".....#########.....",
        "....##########.....",
        "....###########....",
        "....###########....",
        ".....###########...",
        ".....###########...",
        "......##########...",
        "..###############..",
        ".################..",
        "#################..",
        "##################.",
        "##################.",
        "###################",
        ".###############...",
        ".############......",
        "..#########........",
    )),
    # frame 220: classes (1, 5, 10, 0, 0)
    ((1, 5, 10, 0, 0), (3, 9), (
        ".....###......",
        "....######....",
        "...########...",
        "..##########..",
        ".###########..",
        ".############.",
        ".############.",
        "#############.",
        "##############",
        "##############",
        "##############",
        "##############",
        "##############",
        "##############",
        "##############",
        "##############",
        "##############",
        "##############",
        ".#############",
        ".############.",
        ".############.",
        "..###########.",
        "..##########..",
        "...########...",
        "....######....",
        "......###.....",
    )),
    # frame 279: classes (0, 5, 5, 0, 0)
    ((0, 5, 5, 0, 0), (3, 3), (
        "............##............",
        "...........####...........",
        "..........######..........",
        ".........########.........",
        "........##########........",
        ".......############.......",
        "......##############......",
        ".....################.....",
        "....##################....",
        "...####################...",
        "..######################..",
        ".########################.",
        "##########################",
        "##########################",
        ".########################.",
        "..######################..",
        "...####################...",
        "....##################....",
        ".....################.....",
        "......##############......",
        ".......############.......",
        "........##########........",
        ".........########.........",
        "..........######..........",
        "...........####...........",
        "............##............",
    )),
]


@pytest.fixture(scope="module")
def ds():
    return D.DSprites(resolution=64)


def test_factor_names_sizes_and_length(ds):
    assert ds.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert ds.factor_sizes == (3, 6, 40, 32, 32)
    assert len(ds) == 737_280
    assert ds.image_shape == (64, 64) and ds.input_dim == 4096
    assert D.DSprites(32).image_shape == (32, 32)


def test_official_index_order_round_trip(ds):
    strides = np.array([245760, 40960, 1024, 32, 1])
    assert ds.index_to_classes([1]).tolist() == [[0, 0, 0, 0, 1]]  # pos_y fastest
    assert ds.index_to_classes([len(ds) - 1]).tolist() == [[2, 5, 39, 31, 31]]
    index = np.random.default_rng(0).integers(0, len(ds), 5000)
    classes = ds.index_to_classes(index)
    np.testing.assert_array_equal(classes @ strides, index)
    np.testing.assert_array_equal(ds.classes_to_index(classes), index)
    values = ds.factor_values(classes)
    np.testing.assert_array_equal(ds.values_to_classes(values), classes)


def test_factor_values_match_the_official_grids(ds):
    values = ds.factor_values([[0, 0, 0, 0, 0], [2, 5, 39, 31, 31]])
    np.testing.assert_allclose(values, [[1, 0.5, 0, 0, 0], [3, 1.0, 2 * np.pi, 1, 1]])


def test_render_matches_real_frames_pixel_for_pixel(ds):
    for classes, (top, left), rows in REAL_FRAMES:
        real = np.zeros((64, 64), np.uint8)
        crop = np.array([[c == "#" for c in row] for row in rows], np.uint8)
        real[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        np.testing.assert_array_equal(ds.render([classes])[0], real, err_msg=str(classes))


@pytest.mark.parametrize("resolution", [64, 37, 8])
def test_kernel_matches_numpy_reference(resolution):
    classes = D.DSprites().sample_classes(1000, np.random.default_rng(resolution))
    np.testing.assert_array_equal(D.render_sprites(classes, resolution),
                                  D.render_sprites_numpy(classes, resolution))


@pytest.mark.parametrize("resolution", [64, 32])
def test_every_shape_visible_and_unclipped_at_every_scale_and_position(resolution):
    grid = np.meshgrid(range(3), range(6), [0, 13], range(32), range(32), indexing="ij")
    corners = np.meshgrid(range(3), range(6), range(40), [0, 31], [0, 31], indexing="ij")
    classes = np.concatenate([np.stack([g.ravel() for g in m], 1) for m in (grid, corners)])
    # Under NUMBA_DISABLE_JIT (coverage runs) the kernel crawls: use its NumPy twin.
    render, batch = ((D.render_sprites_numpy, 1024) if numba.config.DISABLE_JIT
                     else (D.render_sprites, 8192))
    for start in range(0, len(classes), batch):
        images = render(classes[start:start + batch], resolution)
        assert (images.sum(axis=(1, 2)) > 0).all()
        border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]],
                                axis=1)
        assert not border.any(), "a sprite touches the border"


def test_orientation_two_pi_is_orientation_zero_and_mirror_symmetry(ds):
    rng = np.random.default_rng(1)
    classes = ds.sample_classes(500, rng)
    at_zero, at_two_pi = classes.copy(), classes.copy()
    at_zero[:, 2], at_two_pi[:, 2] = 0, 39
    np.testing.assert_array_equal(ds.render(at_zero), ds.render(at_two_pi))
    # All three shapes are symmetric about their vertical axis: mirroring the image
    # left-right mirrors pos_x and turns the sprite the other way.
    mirrored = classes.copy()
    mirrored[:, 2] = (39 - classes[:, 2]) % 39
    mirrored[:, 3] = 31 - classes[:, 3]
    np.testing.assert_array_equal(ds.render(classes)[:, :, ::-1], ds.render(mirrored))


def test_on_pixel_counts_grow_with_scale(ds):
    for shape in range(3):
        for orientation in (0, 7, 23):
            classes = np.array([[shape, s, orientation, 10, 20] for s in range(6)])
            counts = ds.render(classes).sum(axis=(1, 2))
            assert (np.diff(counts) > 0).all(), (shape, orientation, counts)
    # The areas of the real frames at pos (0, 0), orientation 0.
    squares = ds.render([[0, s, 0, 0, 0] for s in range(6)]).sum(axis=(1, 2))
    assert squares.tolist() == [100, 144, 196, 256, 324, 400]
    ellipses = ds.render([[1, s, 0, 0, 0] for s in range(6)]).sum(axis=(1, 2))
    assert ellipses.tolist() == [76, 104, 144, 184, 228, 288]


def test_rendered_positions_follow_pos_x_right_and_pos_y_down(ds):
    image = ds.render([[0, 0, 0, 31, 0]])[0]  # a 10 x 10 square at the top right
    rows, cols = np.nonzero(image)
    assert rows.mean() + 0.5 == pytest.approx(16.0) and cols.mean() + 0.5 == pytest.approx(48.0)


def test_sample_is_deterministic_and_uniform(ds):
    a_images, a_classes = ds.sample(64, np.random.default_rng(7))
    b_images, b_classes = ds.sample(64, np.random.default_rng(7))
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_classes, b_classes)
    assert a_images.dtype == np.uint8 and a_images.shape == (64, 64, 64)
    assert set(np.unique(a_images)) <= {0, 1}
    np.testing.assert_array_equal(a_images, ds.render(a_classes))
    c_images, _ = ds.sample(64, np.random.default_rng(8))
    assert not np.array_equal(a_images, c_images)
    np.testing.assert_array_equal(ds.sample(3, 5)[1], ds.sample(3, np.random.default_rng(5))[1])
    classes = ds.sample_classes(20000, np.random.default_rng(0))
    for f, size in enumerate(ds.factor_sizes):
        counts = np.bincount(classes[:, f], minlength=size)
        assert counts.min() > 0.7 * 20000 / size


def test_indexing_in_official_order(ds):
    np.testing.assert_array_equal(ds[5], ds.render(ds.index_to_classes([5]))[0])
    np.testing.assert_array_equal(ds[-1], ds.render([[2, 5, 39, 31, 31]])[0])
    np.testing.assert_array_equal(ds[100:104], ds.render(ds.index_to_classes(range(100, 104))))
    np.testing.assert_array_equal(ds[[3, 1]], np.stack([ds[3], ds[1]]))


def test_other_resolutions_scale_the_geometry():
    small = D.DSprites(32).render([[0, 5, 0, 0, 0]])[0]
    assert small.sum() == 100  # side 19.2 / 2 = 9.6 px around centre 8: 10 x 10 pixels
    assert D.DSprites(8).render([[2, 0, 13, 31, 31]]).shape == (1, 8, 8)


def test_subset_fixed_step_keep(ds):
    sub = ds.subset(fixed={"shape": 2}, step={"pos_x": 4}, keep={"orientation": [0, 10, 20]})
    assert sub.factor_sizes == (1, 6, 3, 8, 32)
    assert len(sub) == 6 * 3 * 8 * 32
    full = sub.to_full_classes(sub.index_to_classes(np.arange(len(sub))))
    assert (full[:, 0] == 2).all() and set(full[:, 3]) == set(range(0, 32, 4))
    assert set(full[:, 2]) == {0, 10, 20}
    np.testing.assert_array_equal(np.diff(ds.classes_to_index(full)) > 0, True)  # same order
    np.testing.assert_array_equal(sub[7], ds.render(full[7:8])[0])
    images, classes = sub.sample(200, np.random.default_rng(0))
    np.testing.assert_array_equal(images, ds.render(sub.to_full_classes(classes)))
    assert classes.max(axis=0).tolist() == [0, 5, 2, 7, 31]
    np.testing.assert_array_equal(sub.from_full_classes(sub.to_full_classes(classes)), classes)
    np.testing.assert_allclose(sub.factor_grids[3], np.linspace(0, 1, 32)[::4])
    # Subsets compose, and iterate in batches in the official order.
    tiny = sub.subset(fixed={"scale": 0, "orientation": 1, "pos_y": 3})
    batches = list(tiny.batches(batch_size=3))
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), tiny.all_images())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fixed": {"colour": 0}}, ValueError, "unknown factor 'colour'"),
        ({"fixed": {"shape": 3}}, IndexError, "shape"),
        ({"fixed": {"shape": [0, 1]}}, ValueError, "single class"),
        ({"step": {"pos_x": 0}}, ValueError, r"step\['pos_x'\]"),
        ({"keep": {"scale": []}}, ValueError, "scale"),
    ],
)
def test_subset_bad_input(ds, kwargs, error, match):
    with pytest.raises(error, match=match):
        ds.subset(**kwargs)


def test_dsprites_bad_input(ds):
    with pytest.raises(ValueError, match="resolution must be >= 8"):
        D.DSprites(resolution=7)
    with pytest.raises(TypeError, match="resolution"):
        D.DSprites(resolution=32.0)
    with pytest.raises(IndexError, match=r"classes\[:, 2\] \(orientation\) must be in \[0, 40\)"):
        ds.render([[0, 0, 40, 0, 0]])
    with pytest.raises(IndexError, match="pos_y"):
        ds.render([[0, 0, 0, 0, -1]])
    with pytest.raises(ValueError, match=r"shape \(n, 5\)"):
        ds.render(np.zeros((2, 4), int))
    with pytest.raises(TypeError, match="integer"):
        ds.render([[0.0, 0, 0, 0, 0]])
    with pytest.raises(IndexError, match="index must be in"):
        ds.index_to_classes([len(ds)])
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ds.sample(0, np.random.default_rng(0))
    with pytest.raises(IndexError, match="not in this subset"):
        ds.subset(step={"pos_x": 2}).from_full_classes([[0, 0, 0, 1, 0]])


def test_as_model_input(ds):
    images, _ = ds.sample(4, np.random.default_rng(0))
    X = D.as_model_input(images)
    assert X.shape == (4, 4096) and X.dtype == np.float32
    assert X.min() >= 0 and X.max() == 1
    with pytest.raises(ValueError, match="divide 8-bit grey levels by 255"):
        D.as_model_input(np.full((2, 3, 3), 255, np.uint8))


# ---------------------------------------------------------------------------------------
# The official dSprites file (validated without the 26 MB download)
# ---------------------------------------------------------------------------------------


def _write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def test_official_object_has_the_same_interface():
    image = D.DSprites().render([[2, 5, 7, 3, 4]])[0]
    packed = np.broadcast_to(np.packbits(image, axis=-1), (737_280, 64, 8))  # no memory
    official = dsprites_npz._OfficialDSprites(packed)
    assert official.factor_sizes == (3, 6, 40, 32, 32) and len(official) == 737_280
    images, classes = official.sample(5, np.random.default_rng(0))
    assert images.shape == (5, 64, 64) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], image)
    sub = official.subset(fixed={"shape": 0})
    np.testing.assert_array_equal(sub[3], image)


def test_npz_reader_rejects_bad_files(tmp_path):
    good = _write_npz(tmp_path / "small.npz", imgs=np.zeros((4, 64, 64), np.uint8),
                      latents_classes=np.zeros((4, 6), np.int64))
    with pytest.raises(D.DatasetError, match=r"latents_classes has shape \(4, 6\)"):
        dsprites_npz._read_npz_images(good)
    missing = _write_npz(tmp_path / "missing.npz", imgs=np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(D.DatasetError, match="no array 'latents_classes'"):
        dsprites_npz._read_npz_images(missing)
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(D.DatasetError, match="truncated or corrupted npz"):
        dsprites_npz._read_npz_images(truncated)
    # Flip bytes inside the first member's compressed data: a CRC or inflate error.
    corrupted = tmp_path / "corrupted.npz"
    damaged = bytearray(raw)
    for k in range(60, 80):
        damaged[k] ^= 0xFF
    corrupted.write_bytes(bytes(damaged))
    with pytest.raises(D.DatasetError):
        dsprites_npz._read_npz_images(corrupted)
    with pytest.raises(D.ChecksumError, match="md5"):
        D.load_dsprites(good)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_dsprites(tmp_path / "nope.npz")


# ---------------------------------------------------------------------------------------
# IDX files and verified downloads
# ---------------------------------------------------------------------------------------


def idx_bytes(array, code=0x08):
    """Encode an array as IDX: 0, 0, type code, rank, big-endian sizes, big-endian data."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, dtypes[code]).tobytes()


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_round_trip(tmp_path, code):
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(np.float64)
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(array, code))
    out = D.read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    gz = tmp_path / "a.idx.gz"
    gz.write_bytes(gzip.compress(idx_bytes(array, code)))
    np.testing.assert_array_equal(D.read_idx(gz), array)


def test_read_idx_validates(tmp_path):
    good = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    cases = {
        "magic number 0x01": b"\x01" + good[1:],
        "magic number 0x0000ff": good[:2] + b"\xff" + good[3:],
        "truncated: shape": good[:-1],
        "longer than its header says": good + b"\x00",
        "truncated inside its header": good[:9],
        "too short": good[:3],
    }
    for message, content in cases.items():
        path = tmp_path / "bad.idx"
        path.write_bytes(content)
        with pytest.raises(D.DatasetError, match=message):
            D.read_idx(path)
    path = tmp_path / "ok.idx"
    path.write_bytes(good)
    with pytest.raises(D.DatasetError, match="rank 3, expected 1"):
        D.read_idx(path, ndim=1)
    with pytest.raises(D.DatasetError, match="holds uint8, expected int32"):
        D.read_idx(path, dtype=np.int32)
    compressed = gzip.compress(good)
    for name, content in [("cut.gz", compressed[:-6]), ("flip.gz", compressed[:12] + b"\xff" * 8
                                                          + compressed[20:])]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(D.DatasetError, match="truncated or corrupted gzip"):
            D.read_idx(tmp_path / name)


@pytest.fixture
def mnist_server(tmp_path, monkeypatch):
    """Small fake MNIST files in a local 'mirror', with their digests registered."""
    server = tmp_path / "server"
    server.mkdir()
    rng = np.random.default_rng(0)
    digests = {}
    for prefix, n in (("train", 6), ("t10k", 3)):
        files = {
            f"{prefix}-images-idx3-ubyte.gz": rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
            f"{prefix}-labels-idx1-ubyte.gz": rng.integers(0, 10, n).astype(np.uint8),
        }
        for name, array in files.items():
            content = gzip.compress(idx_bytes(array))
            (server / name).write_bytes(content)
            digests[name] = hashlib.sha256(content).hexdigest()
    monkeypatch.setitem(mnist_module._MNIST_SHA256, "mnist", digests)
    monkeypatch.setitem(mnist_module._MNIST_MIRRORS, "mnist",
                        [(tmp_path / "absent").as_uri() + "/", server.as_uri() + "/"])
    cache = tmp_path / "cache"
    return server, cache


def leftovers(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def test_load_mnist_downloads_verifies_and_caches(mnist_server, monkeypatch):
    server, cache = mnist_server
    X, y = D.load_mnist("train", data_dir=cache)  # first mirror is missing: falls back
    assert X.shape == (6, 784) and X.dtype == np.float32 and y.dtype == np.int64
    assert 0 <= X.min() and X.max() <= 1 and X.max() > 0.9
    raw = D.read_idx(server / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(X, raw.reshape(6, -1) / 255.0, rtol=1e-6)
    assert leftovers(cache) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]

    class Offline:
        def open(self, url, timeout=None):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(downloads, "_opener", Offline())
    X2, y2 = D.load_mnist("train", data_dir=cache)  # served from the verified cache
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(D.DownloadError) as info:
        D.load_mnist("test", data_dir=cache)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(cache / "mnist") in message and "no network" in message
    assert leftovers(cache) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_load_mnist_binarize(mnist_server):
    _, cache = mnist_server
    X, _ = D.load_mnist("test", data_dir=cache)
    Xt, _ = D.load_mnist("test", data_dir=cache, binarize="threshold", threshold=0.5)
    np.testing.assert_array_equal(Xt, (X > 0.5).astype(np.float32))
    Xs, _ = D.load_mnist("test", data_dir=cache, binarize="stochastic", seed=3)
    Xs2, _ = D.load_mnist("test", data_dir=cache, binarize="stochastic", seed=3)
    np.testing.assert_array_equal(Xs, Xs2)
    assert set(np.unique(Xs)) <= {0.0, 1.0} and abs(Xs.mean() - X.mean()) < 0.05
    with pytest.raises(ValueError, match="binarize must be"):
        D.load_mnist("test", data_dir=cache, binarize="otsu")


def test_checksum_mismatch_leaves_nothing(mnist_server, monkeypatch):
    _, cache = mnist_server
    monkeypatch.setitem(mnist_module._MNIST_SHA256["mnist"], "train-images-idx3-ubyte.gz", "0" * 64)
    with pytest.raises(D.DownloadError, match="ChecksumError: sha256 [0-9a-f]{64}, expected 0000"):
        D.load_mnist("train", data_dir=cache)
    assert "train-images-idx3-ubyte.gz" not in leftovers(cache)
    assert not any(name.endswith(".part") for name in leftovers(cache))


class _Response(io.BytesIO):
    """An HTTP-like response that stops after ``cut`` bytes, one way or another."""

    def __init__(self, content, cut, how):
        super().__init__(content[:cut])
        self.headers = {"Content-Length": str(len(content))}
        self.how = how

    def read(self, size=-1):
        chunk = super().read(size)
        if not chunk and self.how == "raise":
            raise http.client.IncompleteRead(b"", 10)
        return chunk


@pytest.mark.parametrize("how", ["raise", "short"])
def test_interrupted_transfer_leaves_nothing(mnist_server, monkeypatch, how):
    server, cache = mnist_server

    class Flaky:
        def open(self, url, timeout=None):
            content = (server / url.rsplit("/", 1)[1]).read_bytes()
            return _Response(content, len(content) // 2, how)

    monkeypatch.setattr(downloads, "_opener", Flaky())
    with pytest.raises(D.DownloadError, match="IncompleteRead|interrupted"):
        D.load_mnist("train", data_dir=cache)
    assert leftovers(cache) == []


def test_corrupted_cached_file_is_not_trusted(mnist_server):
    _, cache = mnist_server
    D.load_mnist("test", data_dir=cache)
    (cache / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not mnist")
    with pytest.raises(D.ChecksumError, match="t10k-images-idx3-ubyte.gz has sha256"):
        D.load_mnist("test", data_dir=cache)


def test_load_mnist_bad_arguments_and_offline_hint(tmp_path):
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        D.load_mnist("val", data_dir=tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        D.load_mnist(kind="kmnist", data_dir=tmp_path)
    with pytest.raises(D.DownloadError, match="Place these files in"):
        D.load_fashion_mnist("test", data_dir=tmp_path, download=False)


def test_data_dir_honours_tinyvae_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYVAE_DATA", str(tmp_path / "here"))
    assert D.data_dir() == tmp_path / "here" and (tmp_path / "here").is_dir()
    assert D.data_dir(tmp_path / "there") == tmp_path / "there"


def test_published_digests_are_well_formed():
    for kind, table in mnist_module._MNIST_SHA256.items():
        assert set(table) == {f"{p}-{k}-idx{r}-ubyte.gz" for p in ("train", "t10k")
                              for k, r in (("images", 3), ("labels", 1))}, kind
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in table.values())
    assert len(D.DSPRITES_MD5) == 32


# ---------------------------------------------------------------------------------------
# Digits, manifold toys, load by name
# ---------------------------------------------------------------------------------------


def test_load_digits():
    X, y = D.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert X.min() == 0 and X.max() == 1
    assert y.dtype == np.int64 and set(y) == set(range(10))
    assert D.IMAGE_SHAPES["digits"] == (8, 8)


@pytest.mark.parametrize(("toy", "coords_shape"), [(D.spiral, (500,)), (D.swiss_roll, (500, 2))])
def test_manifold_toys(toy, coords_shape):
    X, coords = toy(500, seed=1)
    assert X.shape == (500, 3) and X.dtype == np.float32 and coords.shape == coords_shape
    assert X.min() >= 0.1 - 1e-6 and X.max() <= 0.9 + 1e-6  # clean points keep a margin
    assert coords.min() >= 0 and coords.max() <= 1
    X2, coords2 = toy(500, seed=1)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(coords, coords2)
    assert not np.array_equal(X, toy(500, seed=2)[0])
    Xn, coords_n = toy(500, noise=0.05, seed=1)
    np.testing.assert_array_equal(coords_n, coords)  # noise moves points, not coordinates
    assert 0 <= Xn.min() and Xn.max() <= 1 and 0.02 < np.abs(Xn - X).mean() < 0.06
    with pytest.raises(ValueError, match="noise must be"):
        toy(10, noise=-1.0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        toy(0)


def test_spiral_is_a_curve_in_its_coordinate():
    X, t = D.spiral(2000, seed=0)
    order = np.argsort(t)
    steps = np.linalg.norm(np.diff(X[order], axis=0), axis=1)
    assert steps.max() < 0.05  # neighbours in t are neighbours in space


def test_load_by_name():
    X, y = D.load("digits")
    assert X.shape == (1797, 64)
    X, t = D.load("Swiss_Roll", n=10)
    assert X.shape == (10, 3)
    assert D.load("dsprites", resolution=32).image_shape == (32, 32)
    with pytest.raises(ValueError, match="unknown data set 'cifar10'; choose one of"):
        D.load("cifar10")


def test_render_into_draws_the_images_render_returns():
    ds = D.DSprites(resolution=16)
    classes = ds.sample_classes(37, np.random.default_rng(3))
    expected = ds.render(classes)
    for dtype in (np.float32, np.uint8):
        out = np.zeros((37, 16, 16), dtype)
        assert ds.render_into(out, classes) is out
        np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match=r"out: expected shape \(37, 16, 16\)"):
        ds.render_into(np.zeros((36, 16, 16), np.float32), classes)
