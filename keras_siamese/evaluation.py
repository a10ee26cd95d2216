"""Evaluating a trained embedding net: the metrics of ``metrics.json``, seen and unseen classes.

A run is scored by :func:`keras_siamese.metrics.embedding_metrics` on two splits of
the data (:class:`EvaluationSets`):

- the classes it was trained on: test images of those classes queried against the
  training images the run used (its ``--limit`` subset, if any);
- with ``--holdout-classes``, the held-out classes the net never saw, separately:
  their test images queried against their training-split images, used only as a
  gallery. This is the one-shot setting Siamese networks were invented for.

Verification and one-shot draw their pairs and episodes from the fixed ``EVAL_SEED``, so
every run, and ``siamese-keras evaluate`` on a finished run, is scored on the same
examples. One-shot accuracy is reported for N = 5 and 10 where the split has that many
classes, else for N = its number of classes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_siamese import models, streams
from keras_siamese.checkpoint import load_keras_file
from keras_siamese.data import ImageData, balanced_subset
from keras_siamese.errors import ConfigError, DataError
from keras_siamese.metrics import embedding_metrics

ONE_SHOT_WAYS = (5, 10)
NOT_SHOWN = {"seconds_per_epoch"}  # in metrics.json, but a training figure

# The order and wording of the printed table (and of metrics.json).
METRIC_NAMES = {
    "precision_at_1": "Precision@1 (test vs train, 1-NN)",
    "knn_accuracy": "k-NN accuracy (k=5, majority vote)",
    "r_precision": "R-precision (test, leave-one-out)",
    "map_at_r": "MAP@R (test, leave-one-out)",
    "roc_auc": "ROC-AUC (fixed test pairs)",
    "verification_accuracy": "Verification accuracy (threshold from train pairs)",
    "threshold": "Distance threshold (from train pairs)",
}


@dataclasses.dataclass(frozen=True)
class Split:
    """Reference (training-split) and query (test-split) images of some classes."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class EvaluationSets:
    """What a run is scored on: its seen classes and, with a holdout, the unseen ones."""

    seen: Split
    unseen: Split | None
    holdout_classes: tuple[int, ...]


def check_holdout(data: ImageData, holdout_classes) -> tuple[int, ...]:
    """The held-out class numbers, sorted; ConfigError unless they leave 2+ classes to train."""
    holdout = tuple(sorted(set(int(c) for c in holdout_classes)))
    wrong = [c for c in holdout if not 0 <= c < data.num_classes]
    if wrong:
        raise ConfigError(f"--holdout-classes {','.join(map(str, wrong))}: the dataset's "
                          f"classes are 0 to {data.num_classes - 1}")
    if data.num_classes - len(holdout) < 2:
        raise ConfigError(f"--holdout-classes leaves {data.num_classes - len(holdout)} class "
                          "to train on: keep at least 2")
    return holdout


def training_split(data: ImageData, holdout_classes=(), limit: int | None = None,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The training images and labels a run uses: without the held-out classes, then the
    class-balanced ``limit`` subset drawn with ``seed``."""
    keep = ~np.isin(data.y_train, holdout_classes)
    x, y = data.x_train[keep], data.y_train[keep]
    if limit is not None and limit < len(y):
        x, y = balanced_subset(x, y, limit, seed)
    return x, y


def used_images(data: ImageData, holdout_classes=(), limit: int | None = None,
                seed: int = 0) -> ImageData:
    """``data`` keeping only the training images a run uses: its :func:`training_split`
    followed by the held-out classes' images (their gallery). :func:`evaluation_sets` of
    the result equals that of ``data``; a run keeps no more than this in memory."""
    holdout = check_holdout(data, holdout_classes)
    x, y = training_split(data, holdout, limit, seed)
    unseen = np.isin(data.y_train, holdout)
    return dataclasses.replace(data, x_train=np.concatenate([x, data.x_train[unseen]]),
                               y_train=np.concatenate([y, data.y_train[unseen]]))


def evaluation_sets(data: ImageData, holdout_classes=(), limit: int | None = None,
                    seed: int = 0) -> EvaluationSets:
    """The seen and unseen splits of a run trained with these settings."""
    holdout = check_holdout(data, holdout_classes)
    train_images, train_labels = training_split(data, holdout, limit, seed)
    unseen_test = np.isin(data.y_test, holdout)
    seen = Split(train_images, train_labels, data.x_test[~unseen_test], data.y_test[~unseen_test])
    unseen = None
    if holdout:
        unseen_train = np.isin(data.y_train, holdout)
        unseen = Split(data.x_train[unseen_train], data.y_train[unseen_train],
                       data.x_test[unseen_test], data.y_test[unseen_test])
    return EvaluationSets(seen, unseen, holdout)


def _fixed_pairs(labels: np.ndarray):
    first, second, same = streams.sample_pairs(streams.class_index(labels), streams.EVAL_SEED, 0)
    return first.numpy(), second.numpy(), same.numpy()


def split_metrics(embedding: keras.Model, split: Split) -> dict:
    """:func:`embedding_metrics` of one split (see the module doc for pairs and N)."""
    train_embeddings = models.embed_images(embedding, split.train_images)
    test_embeddings = models.embed_images(embedding, split.test_images)
    if not (np.isfinite(train_embeddings).all() and np.isfinite(test_embeddings).all()):
        raise DataError("the embeddings contain NaN or inf: the model diverged")
    classes = len(np.unique(split.test_labels))
    n_ways = tuple(n for n in ONE_SHOT_WAYS if n <= classes) or (classes,)
    return embedding_metrics(train_embeddings, split.train_labels, test_embeddings,
                             split.test_labels, *_fixed_pairs(split.test_labels),
                             _fixed_pairs(split.train_labels), n_ways=n_ways,
                             seed=streams.EVAL_SEED)


def evaluate(embedding: keras.Model, sets: EvaluationSets) -> dict:
    """The metrics of an embedding net: the seen classes' at the top level, and the unseen
    classes' under ``"unseen"`` when classes were held out."""
    metrics = split_metrics(embedding, sets.seen)
    metrics["test_images"] = int(len(sets.seen.test_labels))
    metrics["train_images"] = int(len(sets.seen.train_labels))
    if sets.unseen is not None:
        metrics["holdout_classes"] = list(sets.holdout_classes)
        metrics["unseen"] = split_metrics(embedding, sets.unseen)
    return metrics


def metric_label(name: str) -> str:
    if name.startswith("one_shot_"):
        return f"{name[len('one_shot_'):-3]}-way one-shot accuracy (test)"
    return METRIC_NAMES.get(name, name)


def format_table(metrics: dict, class_names=None) -> str:
    """The metrics as an aligned text table: one column for the trained classes and, with
    a holdout, one for the held-out classes."""
    unseen = metrics.get("unseen")
    blocks = [metrics] + ([unseen] if unseen else [])
    names = [name for block in blocks for name, value in block.items()
             if name not in NOT_SHOWN and not isinstance(value, (dict, list, int))]
    header = ["metric", "trained classes"] + (["held-out classes"] if unseen else [])
    rows = [header]
    for name in dict.fromkeys(names):
        rows.append([metric_label(name)] + [_number(block.get(name)) for block in blocks])
    if unseen and class_names is not None:
        held = ", ".join(class_names[c] for c in metrics["holdout_classes"])
        rows.append(["held-out classes", "", held])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value) -> str:
    """4 decimals; "n/a" for a metric the split cannot have (NaN, None, missing)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def to_json(value):
    """``value`` with NaN replaced by None, so metrics.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def log_scalars(writer: tf.summary.SummaryWriter, metrics: dict, step: int) -> None:
    """Write the metrics as TensorBoard scalars ``metrics/<name>`` (``unseen/<name>``)."""
    with writer.as_default():
        for prefix, block in (("metrics", metrics), ("unseen", metrics.get("unseen") or {})):
            for name, value in block.items():
                if isinstance(value, float) and math.isfinite(value):
                    tf.summary.scalar(f"{prefix}/{name}", value, step=step)
    writer.flush()


class EvaluationLog(keras.callbacks.Callback):
    """Every ``every`` epochs (not after the last one: the run scores that itself),
    compute the metrics and log them to TensorBoard; ``writer`` belongs to the caller."""

    def __init__(self, embedding: keras.Model, sets: EvaluationSets, writer, every: int):
        super().__init__()
        self.embedding, self.sets, self.writer, self.every = embedding, sets, writer, every

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every == 0 and done < self.params.get("epochs", 0):
            log_scalars(self.writer, evaluate(self.embedding, self.sets), done)


def load_run_model(path) -> keras.Model:
    """The trained model of a finished run: ``path`` is its folder (``model.keras`` in it)
    or a ``.keras`` file. The package's ``__init__`` registers the custom layers and losses
    it needs."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise ConfigError(f"{path} not found: give the folder of a finished training run")
    return load_keras_file(path, compile=False, advice="retrain the run with --overwrite")


def load_embedding(run_dir) -> keras.Model:
    """The embedding net of the finished run in ``run_dir``."""
    return models.embedding_of(load_run_model(run_dir))


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: give the folder of a finished training run")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a JSON {type(value).__name__}, not an object: damaged")
    return value
