"""Scoring a trained embedding net: the metrics of ``metrics.json``, seen and unseen classes.

A run is scored by :func:`keras_siamese.metrics.embedding_metrics` on each split of
:mod:`keras_siamese.splits`: the classes it was trained on and, with
``--holdout-classes``, the held-out ones (reported under ``"unseen"``).

Verification and one-shot draw their pairs and episodes from the fixed ``EVAL_SEED``, so
every run, and ``siamese-keras evaluate`` on a finished run, is scored on the same
examples. One-shot accuracy is reported for N = 5 and 10 where the split has that many
classes, else for N = its number of classes. :class:`EvaluationLog` scores while training.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_siamese import models, streams
from keras_siamese.errors import DataError
from keras_siamese.metrics import Pairs, embedding_metrics
from keras_siamese.splits import EvaluationSets, Split

ONE_SHOT_WAYS = (5, 10)


def fixed_pairs(labels: np.ndarray) -> Pairs:
    """The fixed evaluation pairs of a label array (seed ``streams.EVAL_SEED``): one pair
    per item as the first element, half of them (rounded up) same-class. Every run is
    scored on them (ROC-AUC, verification) and ``calibrate`` chooses its threshold on them."""
    first, second, same = streams.sample_pairs(streams.class_index(labels), streams.EVAL_SEED, 0)
    return Pairs(first.numpy(), second.numpy(), same.numpy())


def split_metrics(embedding: keras.Model, split: Split) -> dict:
    """:func:`embedding_metrics` of one split (see the module doc for pairs and N)."""
    train_embeddings = models.embed_images(embedding, split.train_images)
    test_embeddings = models.embed_images(embedding, split.test_images)
    if not (np.isfinite(train_embeddings).all() and np.isfinite(test_embeddings).all()):
        raise DataError("the embeddings contain NaN or inf: the model diverged")
    classes = len(np.unique(split.test_labels))
    n_ways = tuple(n for n in ONE_SHOT_WAYS if n <= classes) or (classes,)
    return embedding_metrics(train_embeddings, split.train_labels, test_embeddings,
                             split.test_labels, fixed_pairs(split.test_labels),
                             fixed_pairs(split.train_labels), n_ways=n_ways,
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
