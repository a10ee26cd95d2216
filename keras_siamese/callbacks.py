"""Keras callbacks that write a run's records as training goes, and watch for collapse."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import keras
import numpy as np

from keras_siamese.checkpoint import CHECKPOINT_DIR
from keras_siamese.errors import CollapseError
from keras_siamese.models import embed_images
from keras_siamese.outputs import write_json, write_text

log = logging.getLogger(__name__)


def read_history(path, up_to: int) -> list[dict]:
    """The rows of a ``history.csv`` for epochs up to ``up_to`` (none if there is no file)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                for row in csv.DictReader(stream) if int(row["epoch"]) <= up_to]


class HistoryCSV(keras.callbacks.Callback):
    """Rewrite ``history.csv`` (one row per epoch, every logged value) after each epoch.

    Unlike ``keras.callbacks.CSVLogger`` the file is replaced atomically, so it is always
    complete up to the last finished epoch.
    """

    def __init__(self, path, resume_after: int = 0):
        """``resume_after``: keep the rows of epochs up to this one from an existing file."""
        super().__init__()
        self.path = Path(path)
        self.rows = read_history(self.path, resume_after) if resume_after else []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buffer.getvalue())


# --- collapse ---------------------------------------------------------------------------

# Collapsed: the spread below this share of its value before training ...
COLLAPSE_FRACTION = 0.05
# ... at the end of this many epochs in a row.
COLLAPSE_EPOCHS = 2
MONITOR_IMAGES = 1000  # the fixed sample of test images the monitor embeds
MONITOR_SEED = 20061984  # = streams.EVAL_SEED: the same sample in every run
STATE_FILE = "collapse_monitor.json"  # in checkpoints/: the spread before training


def embedding_statistics(embeddings, labels) -> dict[str, float]:
    """How spread out and how separated a set of embeddings is (float64):

    - ``positive_distance``: mean Euclidean distance over the same-class pairs ``i < j``;
    - ``negative_distance``: the same over the different-class pairs;
    - ``distance_gap``: ``negative_distance - positive_distance``;
    - ``spread``: the root-mean-square distance to the centroid ``c``,
      ``sqrt(mean_i ||e_i - c||^2)`` (the square root of the summed per-coordinate
      variances); 0 exactly when every embedding is the same point.

    A pair mean is NaN when there is no such pair.

    Example: two classes, each a vertical pair 2 apart, the classes 4 apart:
    >>> e = np.array([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]])
    >>> stats = embedding_statistics(e, [0, 0, 1, 1])
    >>> [(name, round(value, 4)) for name, value in stats.items()]  # doctest: +NORMALIZE_WHITESPACE
    [('positive_distance', 2.0), ('negative_distance', 4.2361), ('distance_gap', 2.2361),
     ('spread', 2.2361)]
    """
    e = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).reshape(-1)
    norms = (e * e).sum(axis=1)
    distances = np.sqrt(np.maximum(norms[:, None] - 2.0 * e @ e.T + norms[None, :], 0.0))
    upper = np.triu(np.ones(distances.shape, bool), k=1)
    same = labels[:, None] == labels[None, :]
    positive = distances[upper & same]
    negative = distances[upper & ~same]
    positive_mean = float(positive.mean()) if positive.size else math.nan
    negative_mean = float(negative.mean()) if negative.size else math.nan
    centred = e - e.mean(axis=0)
    return {"positive_distance": positive_mean, "negative_distance": negative_mean,
            "distance_gap": negative_mean - positive_mean,
            "spread": float(np.sqrt((centred * centred).sum(axis=1).mean()))}


def monitor_sample(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed images the collapse monitor embeds: all of them up to
    :data:`MONITOR_IMAGES`, else that many drawn with :data:`MONITOR_SEED`."""
    if len(labels) <= MONITOR_IMAGES:
        return images, labels
    picked = np.sort(np.random.default_rng(MONITOR_SEED).choice(len(labels), MONITOR_IMAGES,
                                                                replace=False))
    return images[picked], labels[picked]


class CollapseMonitor(keras.callbacks.Callback):
    """After every epoch, measure the embeddings of fixed validation images
    (:func:`embedding_statistics`) and stop training once they have collapsed.

    The statistics go into the epoch's logs as ``val_positive_distance``,
    ``val_negative_distance``, ``val_distance_gap``, ``val_spread`` and
    ``val_spread_ratio`` (the spread over its value before training), so the callbacks
    after this one write them to ``history.csv`` and to TensorBoard's ``validation`` run
    (``epoch_spread``, ...): this callback must come before them.

    Collapsed: ``val_spread_ratio < COLLAPSE_FRACTION`` (5 %) at the end of
    ``COLLAPSE_EPOCHS`` (2) epochs in a row. Measured on MNIST (1,000 test images): a
    collapsing batch-hard run (2-D, 8 x 16 batches, 6,000 images) fell to 6 %, 3.5 % and
    2.8 % after epochs 1-3 and then stalls near 2 % as the learning rate decays, all its
    distances about 1 % of the margin (1e-3, a first guess, is never reached); healthy
    runs stay above 20 % (batch-hard in 64-D dips to 20-25 % after epoch 1, then grows
    past its start), batch-hard in 8-D, which learns (P@1 0.87) although its loss stays
    at the margin, above 7 %; the other variants grow.

    Then, with ``stop``, it sets ``model.stop_training`` (the epoch's records and
    checkpoint are still written, after this callback) and keeps a :class:`CollapseError`
    in :attr:`collapse` for the caller to raise when ``fit`` returns; without, it warns.

    The spread before training is measured when training begins and kept in
    ``<run>/checkpoints/collapse_monitor.json``, so a resumed run compares with the same
    value and takes the collapsed epochs before the resume from ``history.csv``; it
    stops exactly where the uninterrupted run would.
    """

    def __init__(self, embedding: keras.Model, images: np.ndarray, labels: np.ndarray,
                 run_dir, hint: str, stop: bool = True, resume_after: int = 0,
                 history_path=None):
        """``hint``: the likely cause and a setting that trains (the variant's
        ``collapse_hint``); ``resume_after``: the epoch a resumed run continues from;
        ``history_path``: its ``history.csv``."""
        super().__init__()
        self.embedding, self.images, self.labels = embedding, images, labels
        self.state_path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
        self.hint, self.stop = hint, stop
        self.resume_after = resume_after
        self.reference = None  # the spread before training
        self.ratios = []  # val_spread_ratio of the trained epochs, the resumed ones first
        if resume_after and history_path is not None:
            self.ratios = [row.get("val_spread_ratio", math.nan)
                           for row in read_history(history_path, resume_after)]
        self.collapse: CollapseError | None = None

    def statistics(self) -> dict[str, float]:
        return embedding_statistics(embed_images(self.embedding, self.images), self.labels)

    def on_train_begin(self, logs=None):
        if not self.resume_after:
            self.reference = self.statistics()["spread"]
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.state_path, {"spread_before_training": self.reference})
        elif self.state_path.is_file():
            self.reference = json.loads(self.state_path.read_text())["spread_before_training"]
        else:
            log.warning("%s is missing (a checkpoint of an older version?): the collapse "
                        "check is off for the rest of this run", self.state_path)

    def on_epoch_end(self, epoch, logs=None):
        values = self.statistics()
        ratio = values["spread"] / self.reference if self.reference else math.nan
        self.ratios.append(ratio)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in values.items()})
            logs["val_spread_ratio"] = ratio
        recent = self.ratios[-COLLAPSE_EPOCHS:]
        if len(recent) < COLLAPSE_EPOCHS or not all(r < COLLAPSE_FRACTION for r in recent):
            return
        shares = " and ".join(f"{r:.1%}" for r in recent)
        epochs = " and ".join(str(e) for e in range(epoch + 2 - COLLAPSE_EPOCHS, epoch + 2))
        what = (f"the embeddings collapsed: their spread fell to {shares} of its value before "
                f"training in epochs {epochs}")
        if not self.stop:
            log.warning("%s (--no-stop-on-collapse: training on); %s", what, self.hint)
            return
        self.collapse = CollapseError(f"{what}, so training stopped (--no-stop-on-collapse "
                                      f"trains on); {self.hint}", epoch + 1)
        self.model.stop_training = True
