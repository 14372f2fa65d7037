"""Figures: each returns a Figure, saves a real PNG/GIF atomically, and draws
the right images in the right order (read back from the figure's pixel data)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tinyvae import metrics, plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
H = W = 6


class RegionVAE:
    """Latent j lights its own block of rows in a 6x6 image (decode = sigmoid(2 z W)),
    so a traversal of z_j must change that block and nothing else. The encoder is
    linear with a fixed posterior variance per latent, so KL differs between latents."""

    def __init__(self, latent_dim=3, dtype=np.float32):
        self.latent_dim, self.input_dim, self.dtype = latent_dim, H * W, np.dtype(dtype)
        rows_per = H // latent_dim
        self.W = np.zeros((latent_dim, H * W))
        for j in range(latent_dim):
            self.W[j, j * rows_per * W:(j + 1) * rows_per * W] = 1.0
        self.scale = np.linspace(0.5, 2.0, latent_dim)         # how strongly x moves mu_j
        self.history_ = {"epoch": [1, 2, 3], "step": [10, 20, 30], "loss": [9.0, 7.0, 6.5],
                         "recon": [8.0, 5.5, 4.8], "kl": [1.0, 1.5, 1.7],
                         "kl_per_latent": [[0.5, 0.3, 0.2], [0.9, 0.4, 0.2], [1.0, 0.5, 0.2]]}

    def encode(self, x):
        x = np.asarray(x, dtype=np.float64)
        mu = (x @ self.W.T / self.W.sum(axis=1) - 0.5) * self.scale
        logvar = np.broadcast_to(-self.scale, mu.shape)
        return mu.astype(self.dtype), logvar.astype(self.dtype)

    def decode(self, z):
        return (1 / (1 + np.exp(-2.0 * np.asarray(z, np.float64) @ self.W))).astype(self.dtype)


class TinyAutoencoder(RegionVAE):
    def encode(self, x):
        return super().encode(x)[0]


@pytest.fixture
def X():
    return np.random.default_rng(0).uniform(0, 1, (40, H * W)).astype(np.float32)


def mosaic_of(fig):
    """The single image drawn in the figure, as the (rows, cols, H, W) tiles it holds."""
    (image,) = fig.axes[0].get_images()
    mosaic = np.ma.filled(image.get_array().astype(float), np.nan)
    n_rows, n_cols = (mosaic.shape[0] + 1) // (H + 1), (mosaic.shape[1] + 1) // (W + 1)
    return np.array([[mosaic[r * (H + 1):r * (H + 1) + H, c * (W + 1):c * (W + 1) + W]
                      for c in range(n_cols)] for r in range(n_rows)])


def tick_texts(labels):
    return [t.get_text() for t in labels]


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------


def test_reconstructions_interleave_inputs_and_outputs(X, tmp_path):
    model = RegionVAE()
    fig = plots.reconstructions(model, X, (H, W), n=5, n_cols=3, path=tmp_path / "r.png")
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "r.png")
    tiles = mosaic_of(fig)                                   # 2 blocks of (input, recon) rows
    assert tiles.shape == (4, 3, H, W)
    np.testing.assert_allclose(tiles[0, 0], X[0].reshape(H, W), atol=1e-6)
    np.testing.assert_allclose(tiles[2, 1], X[4].reshape(H, W), atol=1e-6)
    recon = model.decode(metrics.latent_means(model, X[:1]).astype(np.float32))
    np.testing.assert_allclose(tiles[1, 0], recon.reshape(H, W), atol=1e-6)
    assert np.isnan(tiles[2, 2]).all()                       # only 5 of 6 slots used
    assert tick_texts(fig.axes[0].get_yticklabels()) == ["input", "recon"] * 2


def test_prior_samples_are_seeded(tmp_path):
    model = RegionVAE()
    a = mosaic_of(plots.prior_samples(model, (H, W), n=6, n_cols=3, seed=1))
    b = mosaic_of(plots.prior_samples(model, (H, W), n=6, n_cols=3, seed=1))
    c = mosaic_of(plots.prior_samples(model, (H, W), n=6, n_cols=3, seed=2))
    assert a.shape == (2, 3, H, W) and np.array_equal(a, b) and not np.array_equal(a, c)
    plots.prior_samples(model, (H, W), n=4, path=tmp_path / "s.png")
    assert_png(tmp_path / "s.png")


def test_show_images_flat_and_square():
    images = np.random.default_rng(0).uniform(0, 1, (5, H, W))
    tiles = mosaic_of(plots.show_images(images, n_cols=5))
    np.testing.assert_allclose(tiles[0], images)
    np.testing.assert_allclose(mosaic_of(plots.show_images(images.reshape(5, -1), (H, W)))[0],
                               images)
    with pytest.raises(ValueError, match="image_shape"):
        plots.show_images(images.reshape(5, -1))


# ----------------------------------------------------------------------------
# traversals
# ----------------------------------------------------------------------------


def test_traversal_rows_follow_kl_and_move_only_their_latent(tmp_path):
    model = RegionVAE()
    kl = np.array([0.1, 2.0, 0.7])
    fig = plots.latent_traversal(model, (H, W), kl=kl, n_steps=5, path=tmp_path / "t.png")
    assert_png(tmp_path / "t.png")
    ax = fig.axes[0]
    assert tick_texts(ax.get_yticklabels()) == ["z1  KL 2.00", "z2  KL 0.70", "z0  KL 0.10"]
    assert tick_texts(ax.get_xticklabels()) == ["-3.0", "-1.5", "+0.0", "+1.5", "+3.0"]
    tiles = mosaic_of(fig)                                   # (latents, steps, H, W)
    for row, j in enumerate([1, 2, 0]):
        block = slice(2 * j, 2 * j + 2)                       # latent j owns image rows 2j, 2j+1
        changes = np.ptp(tiles[row], axis=0)                  # over the traversal steps
        assert changes[block].min() > 0.9                     # sigmoid(-6) .. sigmoid(6)
        others = np.delete(changes, np.arange(2 * j, 2 * j + 2), axis=0)
        np.testing.assert_allclose(others, 0.0, atol=1e-7)
        assert tiles[row, 0][block].max() < 0.01              # z_j = -3 is dark, +3 bright
        assert tiles[row, -1][block].min() > 0.99


def test_traversal_computes_kl_from_data_and_starts_at_x(X):
    model = RegionVAE()
    kl = metrics.kl_per_latent(model, X)
    fig = plots.latent_traversal(model, (H, W), x=X[3], X=X, n_steps=3, max_latents=2)
    order = np.argsort(-kl)[:2]
    assert tick_texts(fig.axes[0].get_yticklabels()) == [f"z{j}  KL {kl[j]:.2f}" for j in order]
    # the untouched latents stay at E[z|x]: the block of the third latent matches decode(mu)
    mu = metrics.latent_means(model, X[3:4])
    other = 3 - order.sum()
    expected = model.decode(mu.astype(np.float32)).reshape(H, W)[2 * other:2 * other + 2]
    np.testing.assert_allclose(mosaic_of(fig)[0, 1][2 * other:2 * other + 2], expected, atol=1e-6)


def test_traversal_of_an_autoencoder_goes_in_index_order(X):
    fig = plots.latent_traversal(TinyAutoencoder(), (H, W), X=X, n_steps=3)
    assert tick_texts(fig.axes[0].get_yticklabels()) == ["z0", "z1", "z2"]


def test_traversal_gif_writes_an_animation(tmp_path):
    from PIL import Image

    path = tmp_path / "t.gif"
    fig = plots.traversal_gif(RegionVAE(), (H, W), path, kl=[0.1, 2.0, 0.7], n_frames=6, fps=5)
    assert isinstance(fig, Figure)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 6
    assert [p.name for p in tmp_path.iterdir()] == ["t.gif"]
    with pytest.raises(ValueError, match=r"path: expected a \.gif file"):
        plots.traversal_gif(RegionVAE(), (H, W), tmp_path / "t.png")


# ----------------------------------------------------------------------------
# latent space, curves, sweeps
# ----------------------------------------------------------------------------


def test_kl_bars(tmp_path):
    kl = np.array([0.2, 1.5, 0.0, 0.9])
    fig = plots.kl_bars(kl, sort=True, path=tmp_path / "kl.png")
    assert_png(tmp_path / "kl.png")
    ax = fig.axes[0]
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [1.5, 0.9, 0.2, 0.0])
    assert tick_texts(ax.get_xticklabels()) == ["z1", "z3", "z0", "z2"]
    with pytest.raises(ValueError, match="kl: expected a 1-D array"):
        plots.kl_bars(np.ones((2, 2)))


def test_latent_manifold_grid(tmp_path):
    model = RegionVAE(latent_dim=2)
    fig = plots.latent_manifold(model, (H, W), n=5, path=tmp_path / "m.png")
    assert_png(tmp_path / "m.png")
    tiles = mosaic_of(fig)
    assert tiles.shape == (5, 5, H, W)
    # z0 (top half of each image) grows to the right, z1 (bottom half) grows upwards
    assert tiles[2, 0, :3].mean() < tiles[2, -1, :3].mean()
    assert tiles[0, 2, 3:].mean() > tiles[-1, 2, 3:].mean()
    assert tick_texts(fig.axes[0].get_xticklabels())[0] == "-1.6"        # Phi^-1(0.05)
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("z0", "z1")  # as in latent_scatter
    with pytest.raises(ValueError, match="latent_dim: expected 2"):
        plots.latent_manifold(RegionVAE(latent_dim=3), (H, W))


def test_latent_scatter_legend_colourbar_and_default_dims(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((300, 4)) * [0.1, 3.0, 0.1, 2.0]
    fig = plots.latent_scatter(codes, rng.integers(0, 3, 300), label_name="shape",
                               path=tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z1", "z3")
    assert tick_texts(ax.get_legend().get_texts()) == ["0", "1", "2"]
    fig = plots.latent_scatter(codes, rng.uniform(size=300), dims=(0, 2), max_points=100)
    assert len(fig.axes) == 2                                  # the colour bar
    assert len(fig.axes[0].collections[0].get_offsets()) == 100
    with pytest.raises(ValueError, match=r"labels: expected shape \(300,\)"):
        plots.latent_scatter(codes, np.zeros(5))
    with pytest.raises(ValueError, match="codes: expected shape"):
        plots.latent_scatter(codes[:, :1])


def test_latent_factor_matrix():
    fig = plots.latent_factor_matrix(np.eye(3)[:, :2], factor_names=["shape", "scale"])
    assert tick_texts(fig.axes[0].get_xticklabels()) == ["shape", "scale"]
    assert len(fig.axes[0].texts) == 6
    with pytest.raises(ValueError, match="factor_names: expected 2 names"):
        plots.latent_factor_matrix(np.eye(3)[:, :2], factor_names=["a"])


def test_training_curves(tmp_path):
    model = RegionVAE()
    fig = plots.training_curves(model, path=tmp_path / "c.png")
    assert_png(tmp_path / "c.png")
    assert len(fig.axes) == 3
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [10, 20, 30])
    history = {k: v for k, v in model.history_.items() if k != "kl_per_latent"}
    history["val_loss"] = [9.5, 7.5, 7.0]
    fig = plots.training_curves(history, x="epoch")
    assert len(fig.axes) == 2
    assert [line.get_label() for line in fig.axes[0].lines] == ["loss", "val loss", "recon"]
    with pytest.raises(ValueError, match="equal length"):
        plots.training_curves({**history, "kl": [1.0]})
    with pytest.raises(ValueError, match="was fit called"):
        plots.training_curves({"loss": [], "recon": [], "kl": []})


def test_beta_sweep(tmp_path):
    results = [{"beta": b, "recon": 50 / b**0.3, "kl": 30 / b, "score": min(1, 0.2 * b)}
               for b in (16, 1, 4)]
    fig = plots.beta_sweep(results, score_label="MIG", path=tmp_path / "b.png")
    assert_png(tmp_path / "b.png")
    assert len(fig.axes) == 2
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [30, 7.5, 1.875])  # beta order
    assert fig.axes[1].get_xscale() == "log" and fig.axes[1].get_ylabel() == "MIG"
    assert len(plots.beta_sweep([{k: r[k] for k in ("beta", "recon", "kl")}
                                 for r in results]).axes) == 1
    with pytest.raises(ValueError, match=r"results\[0\]: expected keys beta, recon, kl"):
        plots.beta_sweep([{"beta": 1}])


# ----------------------------------------------------------------------------
# saving and input checks
# ----------------------------------------------------------------------------


def test_save_is_atomic_when_drawing_fails(tmp_path):
    path = tmp_path / "keep.png"
    path.write_bytes(b"previous figure")
    fig = plots.kl_bars([1.0, 2.0])

    def broken_savefig(fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("disk full")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save_figure(fig, path)
    assert path.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_save_figure_formats_and_errors(tmp_path):
    fig = plots.kl_bars([1.0])
    assert plots.save_figure(fig, tmp_path / "noext").read_bytes()[:8] == PNG_MAGIC
    assert plots.save_figure(fig, tmp_path / "k.svg").read_bytes().lstrip().startswith(b"<?xml")
    with pytest.raises(ValueError, match="path: expected a suffix"):
        plots.save_figure(fig, tmp_path / "k.docx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.save_figure(fig, tmp_path / "missing" / "k.png")


def test_image_shape_is_checked():
    with pytest.raises(ValueError, match=r"image_shape: expected height \* width == 36"):
        plots.prior_samples(RegionVAE(), (5, 5))
    with pytest.raises(ValueError, match=r"kl: expected shape \(3,\)"):
        plots.latent_traversal(RegionVAE(), (H, W), kl=[1.0, 2.0])


def test_no_figure_is_left_in_pyplot():
    import matplotlib.pyplot as plt

    plots.kl_bars([1.0, 2.0])
    plots.prior_samples(RegionVAE(), (H, W), n=2)
    assert plt.get_fignums() == []
