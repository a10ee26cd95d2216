"""Scatter plots of embeddings, one fixed colour per class.

Figures are plain ``matplotlib.figure.Figure`` objects (:func:`new_figure`), outside
matplotlib's global state machine: they need no display and no backend, and importing
this module leaves the user's matplotlib backend (a notebook's, say) as it was.
``Figure.savefig`` draws a PNG with Agg whatever that backend is.
"""

from __future__ import annotations

import matplotlib
import matplotlib.image
import numpy as np
from matplotlib.figure import Figure

from keras_siamese.outputs import atomic_path

# One colour per class, the same in every plot of every run.
CLASS_COLOURS = matplotlib.colormaps["tab10"].colors


def new_figure(figsize, dpi: int) -> Figure:
    """A blank figure that no figure manager tracks (nothing to close, no backend chosen)."""
    return Figure(figsize=figsize, dpi=dpi)


def read_png(path) -> np.ndarray:
    """An image file's pixels as ``imshow`` takes them (PNG: floats 0..1, with alpha)."""
    return matplotlib.image.imread(path)


def pca_basis(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and first two principal directions (2 x D) of embeddings, for project_2d."""
    mean = embeddings.mean(axis=0)
    _, _, components = np.linalg.svd(embeddings - mean, full_matrices=False)
    return mean, components[:2]


def project_2d(embeddings: np.ndarray, basis=None) -> tuple[np.ndarray, str]:
    """The 2-D view of embeddings and a note saying how it was made.

    2-D embeddings are shown as they are, 1-D ones on a line (y = 0), wider ones as their
    first two PCA components. ``basis`` (from :func:`pca_basis`) fixes the projection, e.g.
    one for every frame of a run; by default it is fitted on ``embeddings`` themselves.
    """
    dim = embeddings.shape[1]
    if dim == 2:
        return embeddings, ""
    if dim == 1:
        return np.column_stack([embeddings[:, 0], np.zeros(len(embeddings))]), "1-D embeddings"
    mean, components = basis if basis is not None else pca_basis(embeddings)
    return (embeddings - mean) @ components.T, f"PCA projection of {dim}-D embeddings"


def scatter_embeddings(embeddings, labels, class_names, title: str, path, limits=None):
    """Save a scatter plot of 2-D (or PCA-projected) embeddings coloured by class.

    ``limits`` ((xmin, xmax), (ymin, ymax)) fixes the axes, e.g. to share them across frames.
    Returns the axis limits the plot was drawn with, in the same form.
    """
    points, projection = project_2d(np.asarray(embeddings))
    labels = np.asarray(labels)
    fig = new_figure((7, 6), 100)
    ax = fig.subplots()
    for cls, name in enumerate(class_names):
        members = labels == cls
        ax.scatter(points[members, 0], points[members, 1], s=3, alpha=0.5,
                   color=CLASS_COLOURS[cls % len(CLASS_COLOURS)], label=name, rasterized=True)
    if limits is not None:
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
    # Callers put the run's name on a line of its own: a long name on one line with the
    # rest ran past the figure's left edge.
    ax.set_title(title if not projection else f"{title}\n{projection}")
    legend = ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=4,
                       frameon=False)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    fig.tight_layout()
    drawn = (ax.get_xlim(), ax.get_ylim())
    save_figure(fig, path)
    return drawn


def save_figure(fig, path) -> None:
    """Write ``fig`` to ``path`` atomically (format from the suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _sigmoid(logits) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def manifold_image(decoder, limits, path, n: int = 20) -> None:
    """The decoder's images (mean pixel values) on an n x n grid of a 2-D latent plane
    spanning ``limits`` ((z0 min, z0 max), (z1 min, z1 max)); z1 grows upwards."""
    z0 = np.linspace(*limits[0], n)
    z1 = np.linspace(*limits[1], n)[::-1]
    grid = np.array([[a, b] for b in z1 for a in z0], np.float32)
    images = _sigmoid(decoder(grid, training=False).numpy())
    h, w = images.shape[1:3]
    tiles = images[..., 0] if images.shape[-1] == 1 else images
    canvas = tiles.reshape(n, n, h, w, *tiles.shape[3:]).swapaxes(1, 2).reshape(
        n * h, n * w, *tiles.shape[3:])
    fig = new_figure((8, 8), 100)
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1,
              extent=(*limits[0], *limits[1]), aspect="auto")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("VAE: images decoded over the latent plane")
    fig.tight_layout()
    save_figure(fig, path)


def reconstruction_strip(images, logits, path) -> None:
    """Originals (top row, raw pixels) above the decoder's reconstructions (bottom row)."""
    originals = np.asarray(images, np.float64) / 255.0
    decoded = _sigmoid(logits)
    count = len(originals)
    fig = new_figure((1.2 * count, 2.8), 100)
    axes = fig.subplots(2, count, squeeze=False)
    for i in range(count):
        for row, pictures in enumerate((originals, decoded)):
            ax = axes[row][i]
            picture = pictures[i]
            ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray",
                      vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("test")
    axes[1][0].set_ylabel("decoded")
    fig.suptitle("VAE reconstructions from the latent mean")
    fig.tight_layout()
    save_figure(fig, path)
