"""Scatter plots of embeddings, one fixed colour per class."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# One colour per class, the same in every plot of every run.
CLASS_COLOURS = plt.get_cmap("tab10").colors


def project_2d(embeddings: np.ndarray) -> tuple[np.ndarray, str]:
    """The 2-D view of embeddings: as they are for 2-D, else the first two PCA components."""
    if embeddings.shape[1] == 2:
        return embeddings, ""
    centred = embeddings - embeddings.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T, f"PCA projection of {embeddings.shape[1]}-D embeddings"


def scatter_embeddings(embeddings, labels, class_names, title: str, path, limits=None):
    """Save a scatter plot of 2-D (or PCA-projected) embeddings coloured by class.

    ``limits`` ((xmin, xmax), (ymin, ymax)) fixes the axes, e.g. to share them across frames.
    """
    points, projection = project_2d(np.asarray(embeddings))
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    for cls, name in enumerate(class_names):
        members = labels == cls
        ax.scatter(points[members, 0], points[members, 1], s=3, alpha=0.5,
                   color=CLASS_COLOURS[cls % len(CLASS_COLOURS)], label=name, rasterized=True)
    if limits is not None:
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
    ax.set_title(title if not projection else f"{title}\n{projection}")
    legend = ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=4,
                       frameon=False)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
