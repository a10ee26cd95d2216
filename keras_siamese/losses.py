"""Metric-learning losses in Keras core style: a functional form plus a registered class.

Pair label convention: ``y_true = 1`` means the two images show the SAME class,
``y_true = 0`` DIFFERENT classes. The Siamese model's output ``y_pred`` is the Euclidean
distance ``d`` between the two embeddings. Binary cross-entropy for the BCE Siamese model
is Keras' own ``keras.losses.BinaryCrossentropy``.
"""

import keras
from keras import ops


def contrastive_loss(y_true, y_pred, margin: float = 1.0):
    """Contrastive loss (Hadsell, Chopra, LeCun 2006), per pair.

    ``L = y * d^2 / 2 + (1 - y) * max(0, margin - d)^2 / 2``

    Same-class pairs (y = 1) are pulled together; different-class pairs (y = 0) are pushed
    apart until they are ``margin`` away, and cost nothing beyond it.

    Args:
        y_true: (batch,) or (batch, 1), 1 for same class, 0 for different.
        y_pred: distances ``d >= 0``, same shape.
        margin: the distance beyond which negative pairs stop contributing.

    Returns:
        The loss per pair, shape (batch,).

    Example:
    >>> float(contrastive_loss([1.0, 0.0], [0.5, 0.5], margin=1.0)[1])
    0.125
    """
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    d = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    positive = ops.square(d)
    negative = ops.square(ops.maximum(margin - d, 0.0))
    return 0.5 * (y_true * positive + (1.0 - y_true) * negative)


def triplet_loss(y_true, y_pred, margin: float = 1.0):
    """Triplet margin loss (Schroff, Kalenichenko, Philbin 2015, FaceNet), per triplet.

    ``L = max(0, d(a, p)^2 - d(a, n)^2 + margin)``

    on squared Euclidean distances, as FaceNet and the study's reference implementation use.

    Args:
        y_true: ignored (a triplet carries its own labels); any tensor with batch rows.
        y_pred: (batch, 2) holding ``[d(a, p), d(a, n)]`` per triplet.
        margin: how much closer the positive must be than the negative (squared units).

    Returns:
        The loss per triplet, shape (batch,).

    Example:
    >>> float(triplet_loss([0.0], [[1.0, 1.0]], margin=1.0)[0])
    1.0
    """
    del y_true
    y_pred = ops.cast(y_pred, "float32")
    positive, negative = y_pred[:, 0], y_pred[:, 1]
    return ops.maximum(ops.square(positive) - ops.square(negative) + margin, 0.0)


@keras.saving.register_keras_serializable(package="keras_siamese")
class ContrastiveLoss(keras.losses.Loss):
    """Contrastive loss (see :func:`contrastive_loss`); ``y_true`` 1 = same class."""

    def __init__(self, margin: float = 1.0, reduction="sum_over_batch_size",
                 name="contrastive_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = margin

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="keras_siamese")
class TripletLoss(keras.losses.Loss):
    """Triplet margin loss (see :func:`triplet_loss`) on ``y_pred = [d(a, p), d(a, n)]``."""

    def __init__(self, margin: float = 1.0, reduction="sum_over_batch_size",
                 name="triplet_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = margin

    def call(self, y_true, y_pred):
        return triplet_loss(y_true, y_pred, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}
