"""Architecture diagrams: every model drawn by ``keras.utils.plot_model``, plus one overview.

``draw_models(folder)`` writes ``embedding.png`` (the shared embedding net, layer by
layer), one diagram per model of the variant table (:mod:`keras_siamese.variants`):
``classifier.png``, ``siamese_contrastive.png``, ``siamese_bce.png``, ``triplet.png``,
``vae.png``, ``online_embedding.png`` (the model every online-mining variant and the
pair losses train) and ``class_proxies.png`` (Proxy-Anchor's, ArcFace's and CosFace's),
and ``architecture.png``, all of them side by side. The models show the embedding net
(the VAE: its encoder) as ONE box that every input branch runs through, which is what
"shared weights" means; they are drawn without ``expand_nested``, which would stretch
each of them with the net's layers that ``embedding.png`` already shows. Drawing needs the
``dot`` program (graphviz) and the ``pydot`` package.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import keras

from keras_siamese.config import TrainConfig
from keras_siamese.errors import MissingDependencyError, OutputError
from keras_siamese.outputs import atomic_path
from keras_siamese.plots import new_figure, read_png, save_figure
from keras_siamese.variants import VARIANTS, NetSpec

DPI = 96


def require_graphviz() -> None:
    """Raise MissingDependencyError unless pydot and graphviz's ``dot`` are installed."""
    try:
        importlib.import_module("pydot")
    except ImportError as error:
        raise MissingDependencyError("diagrams need the pydot package: pip install pydot") \
            from error
    if shutil.which("dot") is None:
        raise MissingDependencyError("diagrams need graphviz's dot program on PATH: "
                                     "apt-get install graphviz")


def architectures(input_shape=(28, 28, 1), embedding_dim: int = 2, num_classes: int = 10):
    """The embedding net and the model of every variant (:mod:`variants`), by file name
    (the model's name); variants that share a model, as the online ones do, give it once."""
    net = NetSpec(input_shape, 0.0, 1.0, num_classes)
    drawn = {"embedding": net.embedding_net(TrainConfig(embedding_dim=embedding_dim))}
    for variant in VARIANTS.values():
        config = TrainConfig(loss=variant.loss, mining=variant.mining,
                             embedding_dim=embedding_dim)
        model = variant.build(config, net)[0]
        drawn.setdefault(model.name, model)
    return drawn


def draw_models(folder="output/diagrams") -> list[Path]:
    """Write one diagram per model and ``architecture.png``; returns the paths written."""
    require_graphviz()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {folder}: {error.strerror or error}") from error
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
    """One figure: the embedding net (first path) on the left, the models beside it, three
    to a row."""
    rows = -(-(len(paths) - 1) // 3)
    fig = new_figure((26, 5.5 * rows), 100)
    grid = fig.add_gridspec(rows, 4, width_ratios=[1.0, 1.4, 1.4, 1.4])
    cells = [grid[:, 0]] + [grid[i // 3, 1 + i % 3] for i in range(len(paths) - 1)]
    for cell, path in zip(cells, paths):
        ax = fig.add_subplot(cell)
        ax.imshow(read_png(path))
        ax.set_title(path.stem, fontsize=14)
        ax.axis("off")
    fig.suptitle("One embedding net, shared by every model: the classifier, both Siamese "
                 "twins, the triplet, online-mining and class-proxy networks, and the VAE's "
                 "encoder", fontsize=16)
    fig.tight_layout()
    save_figure(fig, out)
