"""Metric-learning losses in Keras core style: a functional form plus a registered class.

Pair label convention: ``y_true = 1`` means the two images show the SAME class,
``y_true = 0`` DIFFERENT classes. The Siamese model's output ``y_pred`` is the Euclidean
distance ``d`` between the two embeddings. Binary cross-entropy for the BCE Siamese model
is Keras' own ``keras.losses.BinaryCrossentropy``.

The online losses take a whole batch instead: ``y_true`` its class labels, ``y_pred`` its
embeddings; which pairs or triplets they train on is chosen by :mod:`keras_siamese.mining`.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_siamese import mining
from keras_siamese.distances import EPSILON


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


def online_triplet_loss(labels, embeddings, margin: float = 1.0, mining_rule="batch-hard",
                        references=None):
    """Triplet loss over the triplets of one batch that ``mining_rule`` selects.

    With ``d2`` the squared distances of the batch's embeddings (the anchors) to its
    references and ``S`` the selected triplets (:mod:`keras_siamese.mining`),

    ``l(a, p, n) = max(0, d2(a, p) - d2(a, n) + margin)``
    ``L = mean of l over S``, except for ``batch-all``: ``L = mean of l over the triplets of
    S with l > 0`` (Hermans et al. 2017), so easy triplets do not dilute the gradient.
    ``L = 0`` when nothing is selected (a batch without a valid triplet).

    Args:
        labels: (B,) or (B, 1) class labels of the batch.
        embeddings: (B, D).
        margin: as in :func:`triplet_loss` (squared units).
        mining_rule: one of ``mining.TRIPLET_MINERS``.
        references: a ``mining.References`` to take positives and negatives from (the
            batch and a cross-batch memory, :mod:`keras_siamese.cross_batch_memory`);
            None: the batch itself.

    Returns:
        The batch's loss, a scalar.

    Example: anchors 0 and 1 (class 0) with negative 2 cost max(0, 1 - 9 + 4) = 0 and
    max(0, 1 - 4 + 4) = 1; anchor 2 has no positive:
    >>> float(online_triplet_loss([0, 0, 1], [[0.0], [1.0], [3.0]], 4.0, "batch-hard"))
    0.5
    """
    refs = references if references is not None else mining.references(embeddings, labels)
    d2 = mining.reference_distances(embeddings, refs)
    selected = mining.TRIPLET_MINERS[mining_rule](tf.reshape(labels, (-1,)), d2, refs.labels,
                                                  refs.valid)
    losses = tf.maximum(d2[:, :, None] - d2[:, None, :] + margin, 0.0)
    if mining_rule == "batch-all":
        selected = selected & (losses > 0.0)
    count = tf.reduce_sum(tf.cast(selected, tf.float32))
    return tf.math.divide_no_nan(tf.reduce_sum(tf.where(selected, losses, 0.0)), count)


def online_contrastive_loss(labels, embeddings, margin: float = 1.0, references=None):
    """Contrastive loss over every positive pair of a batch and as many of its nearest
    negative pairs (``mining.hard_negative_pairs``):

    ``L = mean over the selected pairs of  y d^2 / 2 + (1 - y) max(0, margin - d)^2 / 2``

    with ``d = sqrt(max(d2, eps))`` as everywhere (finite gradients) and ``y = 1`` for a
    positive pair: :func:`contrastive_loss` on the batch's distance matrix. The positive
    pairs' terms (pulls) and the negative pairs' (pushes) are summed apart, then added.
    ``L = 0`` when nothing is selected.

    Args:
        labels: (B,) or (B, 1) class labels of the batch.
        embeddings: (B, D).
        margin: as in :func:`contrastive_loss`.
        references: a ``mining.References`` to pair the batch with (the batch and a
            cross-batch memory); None: the batch itself.

    Returns:
        The batch's loss, a scalar.
    """
    refs = references if references is not None else mining.references(embeddings, labels)
    d2 = mining.reference_distances(embeddings, refs)
    positive, negative = mining.hard_negative_pairs(tf.reshape(labels, (-1,)), d2, refs.labels,
                                                    refs.valid)
    d = tf.sqrt(tf.maximum(d2, EPSILON))
    # y is 0 or 1, so each pair's term is exactly its pull or its push.
    pairs = tf.reshape(contrastive_loss(tf.cast(positive, tf.float32), d, margin), tf.shape(d))
    pulls = tf.where(positive, pairs, 0.0)
    pushes = tf.where(negative, pairs, 0.0)
    count = tf.reduce_sum(tf.cast(positive, tf.float32) + tf.cast(negative, tf.float32))
    return tf.math.divide_no_nan(tf.reduce_sum(pulls) + tf.reduce_sum(pushes), count)


def _per_example(batch_loss, embeddings):
    """The batch's loss once per example. Keras reduces per-example losses to their mean
    and then divides it by the number of ``tf.distribute`` replicas (their gradients are
    summed); a scalar would skip that division and count every replica's loss in full.
    The copies are not per-example losses: hence :class:`_BatchLoss`."""
    return tf.fill(tf.shape(embeddings)[:1], batch_loss)


class _BatchLoss(keras.losses.Loss):
    """A loss that is one mean over the pairs or triplets mined from the WHOLE batch, not a
    mean of per-example losses: it refuses a ``reduction`` other than the mean and any
    ``sample_weight``, which would scale or weight copies of one number, not examples.

    Subclasses implement :meth:`batch_loss`, which can also mine against references
    beyond the batch: that is how a cross-batch memory
    (:mod:`keras_siamese.cross_batch_memory`) trains with any of them."""

    _over = "pairs or triplets"

    def __init__(self, reduction="sum_over_batch_size", **kwargs):
        if reduction != "sum_over_batch_size":
            raise ValueError(
                f"{type(self).__name__} takes only reduction='sum_over_batch_size', not "
                f"{reduction!r}: the loss is one mean over the {self._over} mined from the "
                "whole batch, not a loss per example that could be summed or left unreduced")
        super().__init__(reduction=reduction, **kwargs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} takes no sample_weight (nor class_weight): the loss "
                f"is one mean over the {self._over} mined from the whole batch, with no "
                "loss per example to weight")
        return super().__call__(y_true, y_pred)

    def call(self, y_true, y_pred):
        return _per_example(self.batch_loss(y_true, y_pred), y_pred)

    def batch_loss(self, y_true, y_pred, references=None):
        """The batch's loss (a scalar): labels ``y_true``, embeddings ``y_pred``, mined
        against ``references`` (a ``mining.References``; None: the batch itself)."""
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_siamese")
class OnlineTripletLoss(_BatchLoss):
    """Triplet loss over mined triplets of a batch (see :func:`online_triplet_loss`);
    ``y_true`` the labels, ``y_pred`` the embeddings. One mean over the batch's triplets:
    no other ``reduction``, no ``sample_weight`` (see :class:`_BatchLoss`)."""

    _over = "triplets"

    def __init__(self, margin: float = 1.0, mining_rule: str = "batch-hard",
                 reduction="sum_over_batch_size", name="online_triplet_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if mining_rule not in mining.TRIPLET_MINERS:
            raise ValueError(f"unknown triplet mining {mining_rule!r}")
        self.margin = margin
        self.mining_rule = mining_rule

    def batch_loss(self, y_true, y_pred, references=None):
        return online_triplet_loss(y_true, y_pred, self.margin, self.mining_rule, references)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "mining_rule": self.mining_rule}


@keras.saving.register_keras_serializable(package="keras_siamese")
class OnlineContrastiveLoss(_BatchLoss):
    """Contrastive loss over the positive and hard negative pairs of a batch (see
    :func:`online_contrastive_loss`); ``y_true`` the labels, ``y_pred`` the embeddings.
    One mean over the batch's pairs: no other ``reduction``, no ``sample_weight`` (see
    :class:`_BatchLoss`)."""

    _over = "pairs"

    def __init__(self, margin: float = 1.0, reduction="sum_over_batch_size",
                 name="online_contrastive_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = margin

    def batch_loss(self, y_true, y_pred, references=None):
        return online_contrastive_loss(y_true, y_pred, self.margin, references)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


def bernoulli_reconstruction_loss(images, logits):
    """Negative Bernoulli log-likelihood of an image under the decoder, per image, in nats:

    ``-log p(x | z) = sum over pixels of  -[x log s(l) + (1 - x) log(1 - s(l))]``

    with ``x = pixel / 255`` in [0, 1] (grey levels used as Bernoulli probabilities, as in
    Kingma & Welling's MNIST experiments), ``l`` the decoder's logit and ``s`` the sigmoid.

    Args:
        images: raw pixels 0..255, (batch, H, W, C).
        logits: the decoder's output, same shape.

    Returns:
        (batch,) nats per image.
    """
    targets = ops.cast(images, "float32") / 255.0
    per_pixel = ops.binary_crossentropy(targets, ops.cast(logits, "float32"), from_logits=True)
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], -1)), axis=1)


def gaussian_kl_loss(y_true, posterior):
    """KL divergence of q(z | x) = N(mean, diag(exp(log_var))) from the prior N(0, I):

    ``KL = -1/2 * sum_k (1 + log_var_k - mean_k^2 - exp(log_var_k))``

    Args:
        y_true: ignored.
        posterior: (batch, 2 * latent) holding ``[mean, log_var]``.

    Returns:
        (batch,) nats per image. With the reconstruction loss it makes the negative ELBO.
    """
    del y_true
    mean, log_var = ops.split(ops.cast(posterior, "float32"), 2, axis=-1)
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


@keras.saving.register_keras_serializable(package="keras_siamese")
class BernoulliReconstructionLoss(keras.losses.Loss):
    """VAE reconstruction term (see :func:`bernoulli_reconstruction_loss`); ``y_true`` the
    raw images, ``y_pred`` the decoder's logits."""

    def __init__(self, reduction="sum_over_batch_size", name="reconstruction_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return bernoulli_reconstruction_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="keras_siamese")
class GaussianKLLoss(keras.losses.Loss):
    """VAE prior term (see :func:`gaussian_kl_loss`) on ``y_pred = [mean, log_var]``."""

    def __init__(self, reduction="sum_over_batch_size", name="kl_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return gaussian_kl_loss(y_true, y_pred)
