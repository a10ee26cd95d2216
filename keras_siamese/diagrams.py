"""Architecture diagrams: every model drawn by ``keras.utils.plot_model``, plus one overview.

``draw_models(folder)`` writes ``embedding.png`` (the shared embedding net, layer by
layer), ``classifier.png``, ``siamese_contrastive.png``, ``siamese_bce.png`` and
``triplet.png``, and ``architecture.png``, the five side by side. The four models show the
embedding net as ONE box that every input branch runs through, which is what "shared
weights" means; they are drawn without ``expand_nested``, which would stretch each of them
with the net's thirteen layers that ``embedding.png`` already shows. Drawing needs the
``dot`` program (graphviz) and the ``pydot`` package.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import keras

from keras_siamese import models
from keras_siamese.errors import MissingDependencyError, OutputError
from keras_siamese.outputs import atomic_path
from keras_siamese.plots import plt, save_figure

DPI = 96


def require_graphviz() -> None:
    """Raise MissingDependencyError unless pydot and graphviz's ``dot`` are installed."""
    try:
        importlib.import_module("pydot")
    except ImportError:
        raise MissingDependencyError("diagrams need the pydot package: pip install pydot") \
            from None
    if shutil.which("dot") is None:
        raise MissingDependencyError("diagrams need graphviz's dot program on PATH: "
                                     "apt-get install graphviz") from None


def architectures(input_shape=(28, 28, 1), embedding_dim: int = 2, num_classes: int = 10):
    """The embedding net and the four models built around one instance of it, by file name."""
    embedding = models.embedding_net(input_shape, embedding_dim)
    return {
        "embedding": embedding,
        "classifier": models.classifier_model(embedding, num_classes),
        "siamese_contrastive": models.contrastive_model(embedding),
        "siamese_bce": models.bce_model(embedding),
        "triplet": models.triplet_model(embedding),
    }


def draw_models(folder="output/diagrams") -> list[Path]:
    """Write one diagram per model and ``architecture.png``; returns the paths written."""
    require_graphviz()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {folder}: {error.strerror or error}") from None
    paths = []
    for name, model in architectures().items():
        path = folder / f"{name}.png"
        with atomic_path(path) as tmp:
            keras.utils.plot_model(model, to_file=str(tmp), show_shapes=True,
                                   show_layer_names=True, dpi=DPI)
        paths.append(path)
    overview = folder / "architecture.png"
    combine(paths, overview)
    return paths + [overview]


def combine(paths: list[Path], out: Path) -> None:
    """One figure: the embedding net (first path) on the left, the models beside it."""
    fig = plt.figure(figsize=(20, 11), dpi=100)
    grid = fig.add_gridspec(2, 3, width_ratios=[1.0, 1.4, 1.4])
    cells = [grid[:, 0], grid[0, 1], grid[0, 2], grid[1, 1], grid[1, 2]]
    for cell, path in zip(cells, paths):
        ax = fig.add_subplot(cell)
        ax.imshow(plt.imread(path))
        ax.set_title(path.stem, fontsize=14)
        ax.axis("off")
    fig.suptitle("One embedding net, shared by the classifier, both Siamese twins and the "
                 "triplet network", fontsize=16)
    fig.tight_layout()
    save_figure(fig, out)
