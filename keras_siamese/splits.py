"""Which images a run trains on and is scored on: its seen classes and, with
``--holdout-classes``, the unseen ones.

- The seen classes: the training images the run uses (without the held-out classes, then
  its class-balanced ``--limit`` subset drawn with its seed) as references, and the test
  images of those classes as queries.
- The held-out classes the net never saw: their test images queried against their
  training-split images, used only as a gallery. This is the one-shot setting Siamese
  networks were invented for.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_siamese.data import ImageData, balanced_subset
from keras_siamese.errors import ConfigError


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
    rows = _training_rows(data, holdout_classes, limit, seed)
    return data.x_train[rows], data.y_train[rows]


def _training_rows(data: ImageData, holdout_classes, limit: int | None, seed: int):
    """Positions in ``data.x_train`` of :func:`training_split`'s images, in order: rows
    rather than pixels, so streamed images (:mod:`image_cache`) are selected, not read."""
    rows = np.flatnonzero(~np.isin(data.y_train, holdout_classes))
    if limit is not None and limit < len(rows):
        rows, _ = balanced_subset(rows, data.y_train[rows], limit, seed)
    return rows


def used_images(data: ImageData, holdout_classes=(), limit: int | None = None,
                seed: int = 0) -> ImageData:
    """``data`` keeping only the training images a run uses: its :func:`training_split`
    followed by the held-out classes' images (their gallery). :func:`evaluation_sets` of
    the result equals that of ``data``; a run keeps no more than this in memory."""
    holdout = check_holdout(data, holdout_classes)
    rows = np.concatenate([_training_rows(data, holdout, limit, seed),
                           np.flatnonzero(np.isin(data.y_train, holdout))])
    return dataclasses.replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows])


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
