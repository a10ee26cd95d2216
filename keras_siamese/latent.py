"""Watching the latent space form: embeddings of fixed test images, frame by frame.

A run with frames on keeps, in its run folder:

- ``latent_embeddings.npz``: which test images were shown (their positions in the test
  split, labels, class names) and their embeddings at epoch 0 (the untrained net) and
  after every epoch, with each epoch's training loss. It is rewritten after every epoch,
  so an interrupted run keeps every epoch it finished.
- ``frames/epoch_000.png`` ...: one scatter plot per stored epoch.
- ``latent.gif``: the frames as a looping animation.

Every frame of a run is drawn with ONE axis range (all stored epochs, padded) and, for
embeddings wider than 2-D, ONE PCA projection (fitted on the last stored epoch), so what
moves between frames is the embedding, never the scale of the plot. Frames written during
training use the range and projection known so far; the end of training, or
:func:`make_gif` on a finished or interrupted run, redraws them all.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from keras_siamese.data import ImageData, balanced_subset
from keras_siamese.errors import ConfigError, DataError
from keras_siamese.models import embed_images
from keras_siamese.outputs import atomic_path
from keras_siamese.plots import pca_basis, project_2d, scatter_embeddings

log = logging.getLogger(__name__)

FRAME_SEED = 27182818  # fixed: every run shows the same test images, whatever its --seed
EMBEDDINGS_FILE = "latent_embeddings.npz"
FRAMES_DIR = "frames"
GIF_FILE = "latent.gif"
PADDING = 0.05  # of the range, on each side, so no point sits on a frame's edge
HOLD_LAST = 4  # the last frame stays this many frame durations, then the GIF loops


@dataclasses.dataclass(frozen=True)
class FrameImages:
    """The fixed, class-stratified test images whose embeddings frames and projector show."""

    indices: np.ndarray  # positions in the test split
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray
    class_names: tuple[str, ...]
    light_on_dark: bool = False  # see data.ImageData

    def embed(self, embedding: keras.Model) -> np.ndarray:
        """Embeddings of these images, in order (the models take raw float32 pixels)."""
        return embed_images(embedding, self.images)


def frame_images(data: ImageData, count: int) -> FrameImages:
    """``count`` test images, the same number per class, chosen with FRAME_SEED; fewer
    where the smallest class of a small test split has fewer to give."""
    labels = data.y_test
    _, per_class = np.unique(labels, return_counts=True)
    if count < len(per_class):
        raise ConfigError(f"--frame-images {count} is fewer than the {len(per_class)} "
                          "classes: choose at least one per class")
    most = len(per_class) * int(per_class.min())
    if count > most:
        log.info("showing %d frame images, not %d: the smallest class has %d test images",
                 most, count, per_class.min())
        count = most
    indices, _ = balanced_subset(np.arange(len(labels)), labels, count, FRAME_SEED)
    # np.asarray: a few thousand images, read once even where the dataset streams.
    return FrameImages(indices, np.asarray(data.x_test[indices]), labels[indices],
                       tuple(data.class_names), data.light_on_dark)


@dataclasses.dataclass
class LatentHistory:
    """The embeddings of the frame images at each stored epoch: the content of the npz."""

    indices: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    title: str
    epochs: list[int] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)  # NaN for epoch 0
    embeddings: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, epoch: int, loss: float, embeddings: np.ndarray) -> None:
        self.epochs.append(int(epoch))
        self.losses.append(float(loss))
        self.embeddings.append(np.asarray(embeddings, np.float32))

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            np.savez(tmp, indices=self.indices, labels=self.labels,
                     class_names=np.array(self.class_names), title=np.array(self.title),
                     epochs=np.array(self.epochs), losses=np.array(self.losses),
                     embeddings=np.stack(self.embeddings))

    @classmethod
    def load(cls, path) -> LatentHistory:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path} not found: give the run folder of a run trained with "
                              "frames on (the default)")
        try:
            with np.load(path) as npz:
                return cls(npz["indices"], npz["labels"], tuple(npz["class_names"].tolist()),
                           str(npz["title"]), npz["epochs"].tolist(), npz["losses"].tolist(),
                           list(npz["embeddings"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise DataError(f"cannot read {path}: {error}") from error


def frame_path(run_dir, epoch: int) -> Path:
    return Path(run_dir) / FRAMES_DIR / f"epoch_{epoch:03d}.png"


def shared_limits(points: list[np.ndarray]):
    """One padded ((xmin, xmax), (ymin, ymax)) range that holds every point of every frame."""
    stacked = np.concatenate(points)
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    # A zero span (e.g. 1-D embeddings on y = 0) still needs a visible range.
    pad = np.where(high > low, high - low, 1.0) * PADDING
    return tuple((float(lo), float(hi)) for lo, hi in zip(low - pad, high + pad))


def render_frames(history: LatentHistory, run_dir, epochs=None) -> list:
    """Draw the frames of ``epochs`` (default: every stored epoch) with the shared range
    and projection of all stored epochs; returns the axis limits each frame was drawn with."""
    last = history.embeddings[-1]
    basis = pca_basis(last) if last.shape[1] > 2 else None
    projected = [project_2d(e, basis) for e in history.embeddings]
    points = [p for p, _ in projected]
    note = projected[0][1]
    if basis is not None:
        note += f", one PCA (fitted on epoch {history.epochs[-1]}) for every frame"
    limits = shared_limits(points)
    wanted = set(history.epochs if epochs is None else epochs)
    drawn = []
    for i, epoch in enumerate(history.epochs):
        if epoch not in wanted:
            continue
        loss = history.losses[i]
        title = f"{history.title}\nepoch {epoch}, " + (
            "untrained" if epoch == 0 else f"training loss {loss:.4f}")
        if note:
            title += f"\n{note}"
        with atomic_path(frame_path(run_dir, epoch)) as tmp:
            drawn.append(scatter_embeddings(points[i], history.labels, history.class_names,
                                            title, tmp, limits=limits))
    return drawn


def write_gif(frames: list, path, frame_ms: int) -> None:
    """An endlessly looping GIF of PNG frames, the last one held HOLD_LAST times longer."""
    images = []
    for frame in frames:
        with Image.open(frame) as image:
            images.append(image.convert("RGB").quantize(colors=256))
    durations = [frame_ms] * (len(images) - 1) + [frame_ms * HOLD_LAST]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=durations, loop=0)


def finish(history: LatentHistory, run_dir, frame_ms: int) -> Path:
    """Redraw every frame with the range and projection of all stored epochs, then the GIF."""
    run_dir = Path(run_dir)
    (run_dir / FRAMES_DIR).mkdir(exist_ok=True)
    render_frames(history, run_dir)
    gif = run_dir / GIF_FILE
    write_gif([frame_path(run_dir, e) for e in history.epochs], gif, frame_ms)
    return gif


def make_gif(run_dir, frame_ms: int = 500) -> Path:
    """Redraw the frames and ``latent.gif`` of a finished or interrupted run from its stored
    ``latent_embeddings.npz``; returns the GIF's path."""
    if frame_ms <= 0:
        raise ConfigError(f"frame duration must be > 0 ms, got {frame_ms}")
    return finish(LatentHistory.load(Path(run_dir) / EMBEDDINGS_FILE), run_dir, frame_ms)


class LatentFrames(keras.callbacks.Callback):
    """Embed the frame images before training and after every epoch; store and draw them.

    ``embedding`` is the shared embedding sub-model of the model being trained.
    """

    def __init__(self, embedding: keras.Model, shown: FrameImages, run_dir, title: str,
                 frame_ms: int = 500, resume_after: int = 0):
        """``resume_after``: continue the stored embeddings of epochs up to this one."""
        super().__init__()
        self.embedding = embedding
        self.shown = shown
        self.run_dir = Path(run_dir)
        self.frame_ms = frame_ms
        self.history = LatentHistory(shown.indices, shown.labels, shown.class_names, title)
        stored = self.run_dir / EMBEDDINGS_FILE
        if resume_after and stored.is_file():
            earlier = LatentHistory.load(stored)
            for epoch, loss, points in zip(earlier.epochs, earlier.losses, earlier.embeddings):
                if epoch <= resume_after:
                    self.history.add(epoch, loss, points)

    def _record(self, epoch: int, loss: float) -> None:
        self.history.add(epoch, loss, self.shown.embed(self.embedding))
        self.history.save(self.run_dir / EMBEDDINGS_FILE)
        render_frames(self.history, self.run_dir, epochs=[epoch])

    def on_train_begin(self, logs=None):
        (self.run_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
        if not self.history.epochs:  # a resumed run already has its epoch 0
            self._record(0, float("nan"))

    def on_epoch_end(self, epoch, logs=None):
        self._record(epoch + 1, (logs or {}).get("loss", float("nan")))

    def on_train_end(self, logs=None):
        gif = finish(self.history, self.run_dir, self.frame_ms)
        log.info("latent space: %s (frames in %s)", gif, self.run_dir / FRAMES_DIR)
