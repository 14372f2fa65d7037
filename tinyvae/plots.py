"""Figures for the lessons, the CLI and reports (matplotlib).

Every function builds and returns a ``matplotlib.figure.Figure`` and, given
``path=``, also writes it (PNG unless the suffix names another format) through
a temporary file, so a crash never leaves half an image behind.

    show_images          any batch of images as a grid
    reconstructions      inputs beside their reconstructions decode(E[z|x])
    prior_samples        decode(z), z ~ N(0, I)
    latent_traversal     one row per latent, z_j from -3 to 3, rows ordered by KL
    traversal_gif        the same traversal as an animated GIF
    kl_bars              KL per latent, in nats
    latent_manifold      the 2-D latent grid of Kingma & Welling (2014, fig. 4)
    latent_scatter       two latents, coloured by a label or factor
    latent_factor_matrix a (latents x factors) heat map: MIG's I(z; v) or DCI's R
    training_curves      loss, reconstruction and KL from model.history_
    beta_sweep           rate-distortion plane and score against beta
    save_figure          the atomic writer the functions above use

Figures are made with ``Figure()`` rather than pyplot, so nothing lingers in
pyplot's global list: a loop that draws a thousand figures holds no memory, and
a notebook shows a returned figure once, as the cell's value.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from statistics import NormalDist

import numpy as np
from matplotlib import colormaps, rcParams
from matplotlib.figure import Figure

from tinyvae import _checks, metrics
from tinyvae.io import atomic_path

__all__ = [
    "show_images",
    "reconstructions",
    "prior_samples",
    "latent_traversal",
    "traversal_gif",
    "kl_bars",
    "latent_manifold",
    "latent_scatter",
    "latent_factor_matrix",
    "training_curves",
    "beta_sweep",
    "save_figure",
]

# Grey pixels, white gaps: the NaN padding between tiles is drawn in the "bad" colour,
# so the separators can't be confused with any pixel value.
_GRAY = colormaps["gray"].with_extremes(bad="white")
_TILE_INCHES = 0.75
_MAX_INCHES = 10.0


# ----------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------


def _atomic_write(path, write, suffix=".tmp"):
    """Call write(tmp_path) on a temporary file beside path, then rename it over path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: directory {str(path.parent)!r} does not exist")
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return path


def save_figure(fig: Figure, path, dpi: int = 100) -> Path:
    """Write fig to path atomically; the format follows the suffix (PNG if none).

    Returns the Path written.
    """
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"path: expected a suffix in {sorted(supported)}, got {path.suffix!r} ({str(path)!r})"
        )
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------


def _check_image_shape(image_shape, input_dim):
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2
            or not all(isinstance(s, (int, np.integer)) and s > 0 for s in image_shape)):
        raise ValueError(f"image_shape: expected (height, width), got {image_shape!r}")
    if image_shape[0] * image_shape[1] != input_dim:
        raise ValueError(
            f"image_shape: expected height * width == {input_dim} (the input_dim), "
            f"got {tuple(image_shape)}"
        )
    return tuple(int(s) for s in image_shape)


def _as_images(flat, image_shape):
    """(n, H*W) decoder means -> (n, H, W) float in [0, 1] (Gaussian means can overshoot)."""
    flat = np.asarray(flat, dtype=np.float64)
    return np.clip(flat.reshape(len(flat), *image_shape), 0.0, 1.0)


def _tile(images, n_cols, pad=1):
    """(n, H, W) -> one (rows*(H+pad)-pad, n_cols*(W+pad)-pad) mosaic, NaN between tiles."""
    n, h, w = images.shape
    n_rows = -(-n // n_cols)
    mosaic = np.full((n_rows * (h + pad) - pad, n_cols * (w + pad) - pad), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, n_cols)
        mosaic[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = image
    return mosaic


def _mosaic_figure(images, n_cols, title=None, extra_width=0.0):
    """A figure holding one imshow of the tiled images; returns (fig, ax, tile centres)."""
    n, h, w = images.shape
    n_rows = -(-n // n_cols)
    # big grids (a 20 x 20 manifold) shrink their tiles to stay within ~10 inches
    tile = min(_TILE_INCHES, _MAX_INCHES / n_cols, _MAX_INCHES / n_rows)
    fig = Figure(figsize=(n_cols * tile + extra_width,
                          n_rows * tile * h / w + (0.5 if title else 0.2)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(_tile(images, n_cols), cmap=_GRAY, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    row_centres = np.arange(n_rows) * (h + 1) + (h - 1) / 2
    col_centres = np.arange(n_cols) * (w + 1) + (w - 1) / 2
    return fig, ax, row_centres, col_centres


def show_images(images, image_shape=None, n_cols: int = 8, title: str | None = None,
                path=None) -> Figure:
    """A grid of images.

    images: (n, H, W), or (n, H*W) with image_shape=(H, W); values in [0, 1].
    """
    images = np.asarray(images)
    if images.ndim == 2:
        if image_shape is None:
            raise ValueError("image_shape: expected (height, width) for flat (n, D) images, "
                             "got None")
        images = _as_images(images, _check_image_shape(image_shape, images.shape[1]))
    elif images.ndim == 3:
        images = np.clip(images.astype(np.float64), 0.0, 1.0)
    else:
        raise ValueError(f"images: expected shape (n, H, W) or (n, H*W), got {images.shape}")
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got 0")
    n_cols = _checks.int_at_least("n_cols", n_cols)
    fig, *_ = _mosaic_figure(images, min(n_cols, len(images)), title)
    return _finish(fig, path)


def reconstructions(model, X, image_shape, n: int = 8, n_cols: int = 8,
                    path=None) -> Figure:
    """The first n rows of X (odd rows of the grid) above decode(E[z|x]) (even rows).

    The reconstruction is the decoder mean at the posterior mean, with no sampling.
    """
    image_shape = _check_image_shape(image_shape, model.input_dim)
    n = _checks.int_at_least("n", n)
    n_cols = min(_checks.int_at_least("n_cols", n_cols), n)
    X = np.asarray(X)[:n]
    recon = model.decode(metrics.latent_means(model, X).astype(model.dtype))
    inputs, outputs = _as_images(X, image_shape), _as_images(recon, image_shape)
    # interleave one row of inputs with the matching row of reconstructions
    tiles = []
    for start in range(0, len(X), n_cols):
        for block in (inputs, outputs):
            row = block[start:start + n_cols]
            pad = np.full((n_cols - len(row), *image_shape), np.nan)
            tiles.append(np.concatenate([row, pad]))
    fig, ax, rows, _ = _mosaic_figure(np.concatenate(tiles), n_cols, extra_width=0.6)
    ax.set_yticks(rows, ["input", "recon"] * (len(rows) // 2))
    ax.tick_params(length=0)
    return _finish(fig, path)


def prior_samples(model, image_shape, n: int = 64, n_cols: int = 8, seed=0,
                  path=None) -> Figure:
    """decode(z) for z ~ N(0, I): what the generative model believes images look like.

    Shows decoder means (pixel probabilities for a Bernoulli decoder), not noisy draws.
    """
    image_shape = _check_image_shape(image_shape, model.input_dim)
    n = _checks.int_at_least("n", n)
    z = np.random.default_rng(seed).standard_normal((n, model.latent_dim))
    images = _as_images(model.decode(z.astype(model.dtype)), image_shape)
    fig, *_ = _mosaic_figure(images, min(_checks.int_at_least("n_cols", n_cols), n),
                             title="samples from the prior")
    return _finish(fig, path)


# ----------------------------------------------------------------------------
# traversals
# ----------------------------------------------------------------------------


def _traversal_plan(model, x, X, kl, max_latents):
    """Base code (d,), latent order (best first) and the KL vector (or None)."""
    d = model.latent_dim
    if x is not None:
        x = np.asarray(x).reshape(1, -1)
        base = metrics.latent_means(model, x)[0]
    else:
        base = np.zeros(d)    # the prior mean
    data = X if X is not None else x
    if kl is None and data is not None:
        data = metrics._check_data(model, data, "latent_traversal")
        if isinstance(model.encode(data[:1]), tuple):    # an Autoencoder has no KL: index order
            kl = metrics.kl_per_latent(model, data)
    if kl is not None:
        kl = np.asarray(kl, dtype=np.float64)
        if kl.shape != (d,):
            raise ValueError(f"kl: expected shape ({d},) (one value per latent), got {kl.shape}")
        order = np.argsort(-kl, kind="stable")
    else:
        order = np.arange(d)
    if max_latents is not None:
        order = order[:_checks.int_at_least("max_latents", max_latents)]
    return base, order, kl


def _traversal_images(model, image_shape, base, order, values):
    """(len(order), len(values), H, W): row r moves latent order[r] through values."""
    z = np.tile(base, (len(order), len(values), 1))
    z[np.arange(len(order)), :, order] = values        # the others stay at the base code
    flat = model.decode(z.reshape(-1, len(base)).astype(model.dtype))
    return _as_images(flat, image_shape).reshape(len(order), len(values), *image_shape)


def _row_label(j, kl, labels=None):
    """'z3', 'z3  KL 1.20', or with a factor label 'z3 pos_x  KL 1.20'."""
    name = f"z{j}" + (f" {labels[j]}" if labels and labels.get(j) else "")
    return name if kl is None else f"{name}  KL {kl[j]:.2f}"


def latent_traversal(model, image_shape, x=None, X=None, kl=None, span: float = 3.0,
                     n_steps: int = 9, max_latents: int | None = None, path=None,
                     labels=None) -> Figure:
    """One row per latent j: decode the base code with z_j set to -span .. span.

    Base code: E[z|x] for the input x (input_dim,), or the prior mean 0 if x is None.
    Rows are ordered by KL per latent, largest first, and labelled with it in nats:
    pass ``kl`` (latent_dim,), or data ``X`` to compute it (x alone is used if
    X is None). With neither, or for an Autoencoder, rows go in index order.
    max_latents keeps only the top rows. labels: {latent index: text} added to
    the row labels, e.g. the factor each latent carries ({3: "pos_x"}).
    """
    image_shape = _check_image_shape(image_shape, model.input_dim)
    n_steps = _checks.int_at_least("n_steps", n_steps, minimum=2)
    if not span > 0:
        raise ValueError(f"span: expected a number > 0, got {span}")
    base, order, kl = _traversal_plan(model, x, X, kl, max_latents)
    values = np.linspace(-span, span, n_steps)
    images = _traversal_images(model, image_shape, base, order, values)
    title = "latent traversal" + (", rows by KL (nats)" if kl is not None else "")
    row_labels = [_row_label(j, kl, labels) for j in order]
    # room on the left for the longest row label (~0.12 inch a character)
    fig, ax, rows, cols = _mosaic_figure(images.reshape(-1, *image_shape), n_steps, title,
                                         extra_width=max(1.3, 0.12 * max(map(len, row_labels))))
    ax.set_yticks(rows, row_labels)
    ax.set_xticks(cols, [f"{v:+.1f}" for v in values])
    ax.tick_params(length=0)
    return _finish(fig, path)


def traversal_gif(model, image_shape, path, x=None, X=None, kl=None, span: float = 3.0,
                  n_frames: int = 24, fps: int = 10, max_latents: int | None = None) -> Figure:
    """The traversal animated: one panel per latent (ordered and labelled as in
    latent_traversal), every panel's own z_j sweeping -span -> span -> -span.

    Written to path (must end in .gif) with matplotlib's PillowWriter. Returns the Figure.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    image_shape = _check_image_shape(image_shape, model.input_dim)
    if Path(path).suffix.lower() != ".gif":
        raise ValueError(f"path: expected a .gif file, got {str(path)!r}")
    n_frames = _checks.int_at_least("n_frames", n_frames, minimum=2)
    fps = _checks.int_at_least("fps", fps)
    if not span > 0:
        raise ValueError(f"span: expected a number > 0, got {span}")
    base, order, kl = _traversal_plan(model, x, X, kl, max_latents)
    # a triangle wave, -span up to +span and back, so the looping GIF never jumps
    t = np.arange(n_frames) / n_frames
    values = span * (1 - 2 * np.abs(2 * t - 1))
    frames = _traversal_images(model, image_shape, base, order, values)   # (rows, frames, H, W)

    fig, ax, _, cols = _mosaic_figure(frames[:, 0], len(order), title=" ")
    ax.set_xticks(cols, [_row_label(j, kl).replace("  ", "\n") for j in order], fontsize=8)
    ax.tick_params(length=0)
    image = ax.get_images()[0]

    def draw(i):
        image.set_data(_tile(frames[:, i], len(order)))
        ax.set_title(f"z = {values[i]:+.2f}")
        return (image,)

    animation = FuncAnimation(fig, draw, frames=len(values), blit=False)
    _atomic_write(path, lambda tmp: animation.save(tmp, writer=PillowWriter(fps=fps)),
                  suffix=".gif")
    return fig


# ----------------------------------------------------------------------------
# the latent space
# ----------------------------------------------------------------------------


def kl_bars(kl, sort: bool = False, path=None) -> Figure:
    """KL(q(z_j|x) || N(0, 1)) per latent as bars (kl (d,) in nats, e.g. from
    metrics.kl_per_latent). Latents near 0 have collapsed to the prior."""
    kl = np.asarray(kl, dtype=np.float64)
    if kl.ndim != 1 or kl.size == 0:
        raise ValueError(f"kl: expected a 1-D array with one value per latent, got {kl.shape}")
    order = np.argsort(-kl, kind="stable") if sort else np.arange(kl.size)
    fig = Figure(figsize=(max(3.0, 0.35 * kl.size + 1.5), 2.8), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(np.arange(kl.size), kl[order], color="tab:blue")
    ax.set_xticks(np.arange(kl.size), [f"z{j}" for j in order],
                  rotation=90 if kl.size > 16 else 0)
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per latent, total {kl.sum():.2f} nats")
    return _finish(fig, path)


def latent_manifold(model, image_shape, n: int = 20, path=None) -> Figure:
    """The learned 2-D manifold (Kingma & Welling 2014, fig. 4).

    A regular n x n grid on the unit square is mapped through the inverse Gaussian
    CDF, so equal areas of the grid hold equal prior mass; each cell is decode(z).
    z0 grows to the right, z1 upwards (latents are numbered from 0, as in
    latent_scatter and the traversals). Needs latent_dim == 2.
    """
    if model.latent_dim != 2:
        raise ValueError(f"model.latent_dim: expected 2 for a 2-D manifold, got {model.latent_dim}")
    image_shape = _check_image_shape(image_shape, model.input_dim)
    n = _checks.int_at_least("n", n, minimum=2)
    inv_cdf = NormalDist().inv_cdf
    grid = np.array([inv_cdf(u) for u in np.linspace(0.05, 0.95, n)])
    z0, z1 = np.meshgrid(grid, grid[::-1])               # first row of the image: largest z1
    z = np.stack([z0.ravel(), z1.ravel()], axis=1)
    images = _as_images(model.decode(z.astype(model.dtype)), image_shape)
    fig, ax, rows, cols = _mosaic_figure(images, n, "2-D latent manifold", extra_width=0.6)
    # ticks placed symmetrically, so the labels read -a .. +a like the grid itself
    quarter = round((n - 1) / 4)
    ticks = sorted({0, quarter, n - 1 - quarter, n - 1} | ({n // 2} if n % 2 else set()))
    ax.set_xticks(cols[ticks], [f"{grid[i]:+.1f}" for i in ticks])
    ax.set_yticks(rows[ticks], [f"{grid[n - 1 - i]:+.1f}" for i in ticks])
    ax.set_xlabel("z0")
    ax.set_ylabel("z1")
    return _finish(fig, path)


def latent_scatter(codes, labels=None, dims=None, label_name: str | None = None,
                   max_points: int = 5000, seed=0, path=None) -> Figure:
    """Two latents against each other, each point coloured by its label or factor.

    codes (n, d), e.g. metrics.latent_means(model, X); labels (n,) or None.
    dims: the two latents to show; default the two with the largest variance
    (the active ones in a beta-VAE). Integer labels with at most 20 values get
    a legend, anything else a colour bar. At most max_points random points are drawn.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] < 2:
        raise ValueError(f"codes: expected shape (n, d) with d >= 2, got {codes.shape}")
    if dims is None:
        dims = tuple(int(j) for j in np.argsort(-codes.var(axis=0), kind="stable")[:2])
    if len(dims) != 2 or not all(0 <= int(j) < codes.shape[1] for j in dims):
        raise ValueError(f"dims: expected two latent indices in [0, {codes.shape[1]}), got {dims}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(codes),):
            raise ValueError(f"labels: expected shape ({len(codes)},), got {labels.shape}")
    keep = np.arange(len(codes))
    if len(codes) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(codes), max_points, replace=False))
    x, y = codes[keep, dims[0]], codes[keep, dims[1]]

    fig = Figure(figsize=(5.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    style = {"s": 6, "alpha": 0.7, "linewidths": 0}
    if labels is None:
        ax.scatter(x, y, color="tab:blue", **style)
    elif np.issubdtype(labels.dtype, np.integer) and np.unique(labels).size <= 20:
        values = np.unique(labels)
        cmap = colormaps["tab10" if values.size <= 10 else "tab20"]
        for i, value in enumerate(values):
            mine = labels[keep] == value
            ax.scatter(x[mine], y[mine], color=cmap(i), label=str(value), **style)
        ax.legend(title=label_name, markerscale=2.5, fontsize=8, loc="best")
    else:
        points = ax.scatter(x, y, c=labels[keep], cmap="viridis", **style)
        fig.colorbar(points, ax=ax, label=label_name)
    ax.set_xlabel(f"z{dims[0]}")
    ax.set_ylabel(f"z{dims[1]}")
    ax.set_title("latent codes" + (f" by {label_name}" if label_name else ""))
    return _finish(fig, path)


def latent_factor_matrix(matrix, factor_names=None, title: str = "I(z_j; v_f) (nats)",
                         path=None) -> Figure:
    """Heat map of a (latents x factors) matrix, with each cell's value printed.

    For mig_details(...)["mutual_info"] or dci(...)["importance"]: a disentangled
    code has one bright cell per column.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"matrix: expected shape (latents, factors), got {matrix.shape}")
    d, k = matrix.shape
    names = list(factor_names) if factor_names is not None else [f"v{f}" for f in range(k)]
    if len(names) != k:
        raise ValueError(f"factor_names: expected {k} names, got {len(names)}")
    fig = Figure(figsize=(1.0 + 0.9 * k, 0.8 + 0.35 * d), layout="constrained")
    ax = fig.add_subplot()
    cells = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0)
    fig.colorbar(cells, ax=ax)
    ax.set_xticks(np.arange(k), names, rotation=30 if k > 4 else 0)
    ax.set_yticks(np.arange(d), [f"z{j}" for j in range(d)])
    top = np.nanmax(matrix) if np.isfinite(matrix).any() else 0.0
    for (j, f), value in np.ndenumerate(matrix):
        ax.text(f, j, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="black" if value > 0.6 * top else "white")
    ax.set_title(title)
    return _finish(fig, path)


# ----------------------------------------------------------------------------
# training and sweeps
# ----------------------------------------------------------------------------


def _history_of(history):
    history = getattr(history, "history_", history)
    if not isinstance(history, dict):
        raise TypeError(f"history: expected a dict or a model with .history_, "
                        f"got {type(history).__name__}")
    missing = [key for key in ("loss", "recon", "kl") if key not in history]
    if missing:
        raise ValueError(f"history: expected keys loss, recon, kl; missing {missing}")
    lengths = {key: len(v) for key, v in history.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"history: expected lists of equal length, got lengths {lengths}")
    if lengths["loss"] == 0:
        raise ValueError("history: expected at least one entry, got none (was fit called?)")
    return history


def training_curves(history, x: str = "step", path=None) -> Figure:
    """Loss and reconstruction, total KL, and KL per latent against training time.

    history: model.history_ (or the model): equal-length lists "loss", "recon",
    "kl", optionally "epoch"/"step" and "kl_per_latent" (one list of d per entry);
    "val_<name>" entries, if present, are drawn dashed. x: "step" or "epoch".
    """
    history = _history_of(history)
    if x not in ("step", "epoch"):
        raise ValueError(f"x: expected 'step' or 'epoch', got {x!r}")
    n = len(history["loss"])
    t = np.asarray(history[x]) if len(history.get(x, ())) == n else np.arange(n)
    per_latent = history.get("kl_per_latent")
    per_latent = np.asarray(per_latent if per_latent is not None else [], dtype=np.float64)
    panels = 3 if per_latent.shape[:1] == (n,) and per_latent.ndim == 2 else 2
    fig = Figure(figsize=(4.0 * panels, 3.2), layout="constrained")
    axes = fig.subplots(1, panels)

    for ax, keys, title in ((axes[0], ("loss", "recon"), "loss (nats / example)"),
                            (axes[1], ("kl",), "KL (nats / example)")):
        for key, colour in zip(keys, ("tab:blue", "tab:orange"), strict=False):
            ax.plot(t, history[key], color=colour, label=key)
            if len(history.get(f"val_{key}", ())) == n:
                ax.plot(t, history[f"val_{key}"], color=colour, ls="--", label=f"val {key}")
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.legend(fontsize=8)
    if panels == 3:
        ax = axes[2]
        final = per_latent[-1]
        for j in np.argsort(-final, kind="stable"):
            ax.plot(t, per_latent[:, j], lw=1, label=f"z{j}" if per_latent.shape[1] <= 10 else None)
        ax.set_title("KL per latent (nats)")
        ax.set_xlabel(x)
        if per_latent.shape[1] <= 10:
            ax.legend(fontsize=7, ncol=2)
    return _finish(fig, path)


def beta_sweep(results, score: str = "score", score_label: str | None = None,
               path=None) -> Figure:
    """A beta sweep: the rate-distortion plane, and a disentanglement score against beta.

    results: list of dicts with "beta", "recon" (distortion, nats), "kl" (rate,
    nats) and optionally results[i][score]. Left: recon against KL, one point
    per beta, joined in beta order -- larger beta buys a lower rate with a
    worse reconstruction. Right (if any result has the score): score against beta.
    """
    if not isinstance(results, (list, tuple)) or not results:
        raise ValueError("results: expected a non-empty list of dicts, got "
                         f"{type(results).__name__} of length {len(results) if results else 0}")
    for i, r in enumerate(results):
        missing = [key for key in ("beta", "recon", "kl") if key not in r]
        if missing:
            raise ValueError(f"results[{i}]: expected keys beta, recon, kl; missing {missing}")
    results = sorted(results, key=lambda r: r["beta"])
    beta = np.array([r["beta"] for r in results], dtype=np.float64)
    recon = np.array([r["recon"] for r in results], dtype=np.float64)
    kl = np.array([r["kl"] for r in results], dtype=np.float64)
    scored = [r for r in results if r.get(score) is not None]

    panels = 2 if scored else 1
    fig = Figure(figsize=(4.5 * panels, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels))
    ax = axes[0]
    ax.plot(kl, recon, "-o", color="tab:blue")
    for b, r, d in zip(beta, kl, recon, strict=True):
        ax.annotate(f"β={b:g}", (r, d), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.margins(0.12)    # room for the labels of the end points
    ax.set_xlabel("KL, rate (nats)")
    ax.set_ylabel("reconstruction, distortion (nats)")
    ax.set_title("rate-distortion")
    if scored:
        ax = axes[1]
        b = np.array([r["beta"] for r in scored], dtype=np.float64)
        ax.plot(b, [r[score] for r in scored], "-o", color="tab:green")
        if b.min() > 0 and b.max() / b.min() >= 10:
            ax.set_xscale("log")
            ax.set_xticks(b, [f"{v:g}" for v in b])    # the betas themselves, not 10^k
            ax.minorticks_off()
        ax.set_xlabel("β")
        ax.set_ylabel(score_label or score)
        ax.set_title(f"{score_label or score} against β")
    return _finish(fig, path)


def seed_spread(values, labels, seeds, path=None, title: str = "") -> Figure:
    """One column per score, one dot per seed, with each column's median as a bar.

    values: list (one per score) of lists (one per seed; None where missing),
    labels: score names, seeds: the seed of each dot. The axis runs from 0 to 1,
    so a spread is seen at its true size and never magnified into a trend.
    """
    if len(values) != len(labels):
        raise ValueError(f"labels: expected {len(values)} names like values, got {len(labels)}")
    fig = Figure(figsize=(1.1 * len(labels) + 1.5, 3.4), layout="constrained")
    ax = fig.subplots()
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    colors = [cycle[i % len(cycle)] for i in range(len(seeds))]
    offsets = np.linspace(-0.18, 0.18, len(seeds)) if len(seeds) > 1 else [0.0]
    for c, column in enumerate(values):
        found = [v for v in column if v is not None]
        if found:
            ax.hlines(np.median(found), c - 0.3, c + 0.3, color="0.3", lw=2)
        for s, v in enumerate(column):
            if v is not None:
                ax.plot(c + offsets[s], v, "o", color=colors[s],
                        label=f"seed {seeds[s]}" if c == 0 else None)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (MIG, or the factor's normalised gap)")
    # a sweep's title is a whole recipe: wrap it to the figure's width
    ax.set_title(textwrap.fill(title, 110) if title else "spread over seeds (bar: median)",
                 fontsize=8)
    ax.legend(fontsize=7, loc="upper right", ncols=2)
    return _finish(fig, path)

