"""TensorBoard projector data: the frame images' embeddings, browsable in TensorBoard.

Written into ``<log dir>/<run name>/projector/``, a TensorBoard run of its own beside the
``train/`` and ``validation/`` scalar runs of Keras' TensorBoard callback:

- ``metadata.tsv``: a header ``label<TAB>class``, then one row per image;
- ``sprite.png``: the images' thumbnails in one square grid. MNIST-like images (light
  strokes on dark) have their ink drawn in the image's class colour (plots.CLASS_COLOURS)
  on white, so classes stand out before anyone picks "Color by" in the projector; any
  other images are shown as they are, shrunk where the grid would pass SPRITE_MAX pixels;
- ``epoch_010.tsv`` ...: the embeddings after each logged epoch, one row per image;
  embeddings narrower than 3-D get zero columns up to 3, because the projector's default
  3-D PCA view draws nothing (NaN coordinates) for 2-D tensors;
- ``projector_config.pbtxt``: one projector entry per logged epoch (named ``epoch_010``),
  all sharing the metadata and the sprite;
- a checkpoint holding only the last logged epoch number: TensorBoard re-reads a run's
  projector config only when the run's latest checkpoint changes, so a new checkpoint
  after each update lets a TensorBoard that is already running show the new entries;
- an events file with a text note per logged epoch: TensorBoard lists a folder as a run
  only when it holds an events file.

The tensors are TSV files, not checkpoint variables, so entries keep plain names. The
folder is a subfolder, not the run's TensorBoard folder itself, because TensorBoard also
looks for a checkpoint in a run's parent folder: one there would make ``train/`` and
``validation/`` look like projector runs.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

from keras_siamese.data import resize_images
from keras_siamese.outputs import atomic_path, write_text
from keras_siamese.plots import CLASS_COLOURS

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
CONFIG_FILE = projector.metadata.PROJECTOR_FILENAME  # "projector_config.pbtxt"
PROJECTOR_DIR = "projector"  # inside the run's TensorBoard folder
MIN_COLUMNS = 3
SPRITE_MAX = 8192  # pixels per side of the sprite TensorBoard's projector accepts


def entry_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


def thumbnail_size(count: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) of one sprite cell: the image's own, or smaller so that the square
    grid of ``count`` cells stays within SPRITE_MAX pixels, the projector's limit."""
    side = math.ceil(math.sqrt(count))
    scale = min(1.0, SPRITE_MAX / (side * max(height, width)))
    return max(1, int(height * scale)), max(1, int(width * scale))


def sprite(images: np.ndarray, labels: np.ndarray, light_on_dark: bool = True) -> np.ndarray:
    """A square RGB grid of thumbnails (row-major, as the projector reads it); unused cells
    stay white. ``light_on_dark``: each image's ink in its class colour on white;
    otherwise the images themselves (grayscale as gray)."""
    count = len(images)
    height, width = thumbnail_size(count, *images.shape[1:3])
    images = images.reshape(*images.shape[:3], -1)
    if images.shape[1:3] != (height, width):
        images = resize_images(images, height, width)
    if light_on_dark:
        ink = images.max(axis=-1).astype(np.float32) / 255.0
        colours = np.asarray(CLASS_COLOURS, np.float32)[np.asarray(labels) % len(CLASS_COLOURS)]
        thumbs = 1.0 - ink[..., None] * (1.0 - colours[:, None, None, :])
    else:
        thumbs = np.broadcast_to(images, (count, height, width, 3)).astype(np.float32) / 255.0
    side = math.ceil(math.sqrt(count))
    grid = np.ones((side * side, height, width, 3), np.float32)
    grid[:count] = thumbs
    grid = grid.reshape(side, side, height, width, 3).transpose(0, 2, 1, 3, 4)
    return np.round(grid.reshape(side * height, side * width, 3) * 255).astype(np.uint8)


def write_metadata(log_dir, shown) -> None:
    """The files shared by every entry: ``metadata.tsv`` and ``sprite.png`` of the frame
    images ``shown`` (latent.FrameImages)."""
    log_dir = Path(log_dir)
    rows = "".join(f"{label}\t{shown.class_names[label]}\n" for label in shown.labels)
    write_text(log_dir / METADATA_FILE, "label\tclass\n" + rows)
    with atomic_path(log_dir / SPRITE_FILE) as tmp:
        Image.fromarray(sprite(shown.images, shown.labels, shown.light_on_dark)).save(
            tmp, format="PNG")


def projector_tensor(embeddings: np.ndarray) -> np.ndarray:
    """The embeddings as float32 with at least 3 columns (zeros added), as the projector
    gets them."""
    embeddings = np.asarray(embeddings, np.float32)
    missing = max(0, MIN_COLUMNS - embeddings.shape[1])
    return np.pad(embeddings, ((0, 0), (0, missing)))


def _entry_epoch(path: Path) -> int | None:
    """The epoch of an entry file ``epoch_NNN.tsv`` (see :func:`entry_name`)."""
    digits = path.stem.removeprefix("epoch_")
    return int(digits) if digits.isdigit() else None


def write_entry(log_dir, epoch: int, embeddings: np.ndarray) -> None:
    """``epoch_NNN.tsv``: one tab-separated row per image."""
    buffer = io.StringIO()
    # 9 significant digits give back the exact float32 TensorBoard parses.
    np.savetxt(buffer, projector_tensor(embeddings), fmt="%.9g", delimiter="\t")
    write_text(Path(log_dir) / f"{entry_name(epoch)}.tsv", buffer.getvalue())


def write_config(log_dir, epochs: list[int], cell: tuple[int, int]) -> None:
    """``projector_config.pbtxt`` listing the entries of ``epochs`` (written last, so the
    projector never sees an entry whose files are missing)."""
    config = projector.ProjectorConfig()
    for epoch in epochs:
        entry = config.embeddings.add()
        entry.tensor_name = entry_name(epoch)
        entry.tensor_path = f"{entry_name(epoch)}.tsv"
        entry.metadata_path = METADATA_FILE
        entry.sprite.image_path = SPRITE_FILE
        entry.sprite.single_image_dim.extend(cell[::-1])  # width, height
    write_text(Path(log_dir) / CONFIG_FILE, text_format.MessageToString(config))


class ProjectorLog(keras.callbacks.Callback):
    """Write projector data for the frame images into ``<run_log_dir>/projector`` every
    ``every`` epochs (0: only after the last epoch) and always after the last one.

    ``embedding`` is the shared embedding sub-model; ``shown`` holds the images, labels and
    class names (see latent.FrameImages).
    """

    def __init__(self, embedding: keras.Model, shown, run_log_dir, every: int = 0,
                 resume_after: int = 0):
        """``resume_after``: keep the entries of epochs up to this one already written."""
        super().__init__()
        self.embedding = embedding
        self.shown = shown
        self.log_dir = Path(run_log_dir) / PROJECTOR_DIR
        self.every = every
        self.logged = sorted(e for e in map(_entry_epoch, self.log_dir.glob("epoch_*.tsv"))
                             if e is not None and e <= resume_after) if resume_after else []
        self.last_epoch = resume_after
        self.stamp = tf.Variable(0, dtype=tf.int64, name="epoch")  # the last logged epoch
        self.checkpoints = None
        self.writer = None

    def on_train_begin(self, logs=None):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        write_metadata(self.log_dir, self.shown)
        self.writer = tf.summary.create_file_writer(str(self.log_dir))
        self.checkpoints = tf.train.CheckpointManager(tf.train.Checkpoint(epoch=self.stamp),
                                                      str(self.log_dir), max_to_keep=1)

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch + 1
        if self.every and self.last_epoch % self.every == 0:
            self._log(self.last_epoch)

    def on_train_end(self, logs=None):
        if self.last_epoch not in self.logged:
            self._log(self.last_epoch)
        self.writer.close()
        log.info("projector: %s (%s)", self.log_dir,
                 ", ".join(entry_name(e) for e in self.logged))

    def _log(self, epoch: int) -> None:
        write_entry(self.log_dir, epoch, self.shown.embed(self.embedding))
        self.logged.append(epoch)
        write_config(self.log_dir, self.logged,
                     thumbnail_size(len(self.shown.labels), *self.shown.images.shape[1:3]))
        self.stamp.assign(epoch)
        self.checkpoints.save(checkpoint_number=epoch)  # after the files it announces
        with self.writer.as_default():
            tf.summary.text("projector", f"{entry_name(epoch)}: embeddings of "
                            f"{len(self.shown.labels)} fixed test images", step=epoch)
        self.writer.flush()
