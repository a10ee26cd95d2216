"""Losses against learned class vectors: Proxy-Anchor, ArcFace and CosFace (with optional
sub-centres), and the head layer that holds those vectors.

Their model is image -> the shared ``embedding`` sub-model -> :class:`ClassProxies`, which
holds one learned vector per class (a proxy, or a class centre; ``sub_centers`` of them
per class for sub-center ArcFace) and outputs the cosine similarity of each embedding to
each class, ``(B, C)``. The losses take those cosines as ``y_pred`` and the integer labels
as ``y_true``, and apply their margins and scales to them. The embedding net is the
model's ``embedding`` sub-model as in every other model, so evaluation, export, the index
and serving use it unchanged; the class vectors are used only for training.

Keras 3 has no per-variable learning rate, and Proxy-Anchor trains its proxies 100 times
faster than the network. :class:`ClassProxies` stores ``V = P / c`` instead of the proxies
``P`` and computes ``P = c V``, with ``c = lr_multiplier``. The gradient with respect to
``V`` is ``c`` times that with respect to ``P``, and Adam divides each step by the running
root mean square of the gradient, so its step on ``V`` is the same as it would be on ``P``
(about ``lr`` per element), whatever that scale: ``P = c V`` then moves ``c`` times as far.
Exactly, Adam on ``V`` with learning rate ``lr`` and epsilon ``eps`` moves ``P`` as Adam on
``P`` with learning rate ``c lr`` and epsilon ``eps / c`` would: the paper's 100x proxy
learning rate, with an epsilon (1e-7 by default) that only matters for gradients near 0.
(With plain SGD the same trick would give ``c^2``, not ``c``.)
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from keras_siamese.distances import EPSILON
# The batch-loss base class of the online losses: one mean over the whole batch, spread
# over its rows (refuses other reductions and sample weights, see its docstring).
from keras_siamese.losses import _BatchLoss, _per_example
from keras_siamese.pair_losses import log_one_plus_sum_exp


@keras.saving.register_keras_serializable(package="keras_siamese")
class ClassProxies(keras.layers.Layer):
    """Learned class vectors: ``embeddings (B, D) -> cosines (B, C)``, the cosine similarity
    of each embedding to the nearest of its ``sub_centers`` vectors of each class.

    ``cos_ij = max_k  e_i . P_jk / (|e_i| |P_jk|)``  (Deng et al. 2020 for ``sub_centers`` > 1)

    The vectors are ``P = lr_multiplier * V`` with ``V`` the trained weight (see the module
    docstring): with Adam, ``P`` learns ``lr_multiplier`` times as fast as the rest of the
    model. ``P`` starts normal with standard deviation ``sqrt(2 / num_classes)``, as the
    Proxy-Anchor code initialises its proxies (Kaiming normal, fan-out).

    Args:
        num_classes: C.
        sub_centers: vectors per class, K (1: one proxy or centre per class).
        lr_multiplier: c, how much faster than the network the vectors learn.
    """

    def __init__(self, num_classes: int, sub_centers: int = 1, lr_multiplier: float = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1 or sub_centers < 1 or not lr_multiplier > 0:
            raise ValueError(f"ClassProxies needs num_classes >= 1, sub_centers >= 1 and "
                             f"lr_multiplier > 0, got {num_classes}, {sub_centers} and "
                             f"{lr_multiplier}")
        self.num_classes = num_classes
        self.sub_centers = sub_centers
        self.lr_multiplier = lr_multiplier

    def build(self, input_shape):
        std = math.sqrt(2.0 / self.num_classes) / self.lr_multiplier
        self.scaled_proxies = self.add_weight(
            shape=(self.num_classes * self.sub_centers, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=std), name="scaled_proxies",
            dtype="float32")

    @property
    def proxies(self):
        """``P``, (C, K, D): the class vectors the cosines are taken with."""
        p = self.lr_multiplier * ops.convert_to_tensor(self.scaled_proxies)
        return ops.reshape(p, (self.num_classes, self.sub_centers, -1))

    def call(self, embeddings):
        e = ops.normalize(ops.cast(embeddings, "float32"), axis=-1)
        p = ops.normalize(ops.reshape(self.proxies, (-1, ops.shape(self.proxies)[-1])), axis=-1)
        cosines = ops.reshape(ops.matmul(e, ops.transpose(p)),
                              (-1, self.num_classes, self.sub_centers))
        return ops.max(cosines, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "sub_centers": self.sub_centers, "lr_multiplier": self.lr_multiplier}


def _labels_and_cosines(labels, cosines):
    cosines = tf.cast(cosines, tf.float32)
    labels = tf.cast(tf.reshape(labels, (-1,)), tf.int32)
    return labels, cosines, tf.one_hot(labels, tf.shape(cosines)[1], on_value=True,
                                       off_value=False)


def proxy_anchor_loss(labels, cosines, alpha: float = 32.0, delta: float = 0.1):
    """Proxy-Anchor loss (Kim, Kim, Cho, Kwak 2020, CVPR, Eq. 4) of a batch:

    ``L = 1/|P+| sum_{p in P+} log[1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta))]``
    ``  + 1/|P|  sum_{p in P}  log[1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta))]``

    with ``s`` the cosine similarity, ``P`` all proxies, ``P+`` those with a positive (an
    image of their class) in the batch, ``X_p+`` and ``X_p-`` the batch's images of the
    proxy's class and of the others. Each proxy is an anchor: its positives pull it and
    its negatives push it, weighted by how hard they are. ``0`` for the first term when the
    batch has no labelled class (never, with labels). Defaults: alpha = 32, delta = 0.1,
    the paper's (it also trains the proxies 100x faster: :class:`ClassProxies`).

    Args:
        labels: (B,) or (B, 1) class labels, 0 .. C - 1.
        cosines: (B, C) cosine similarity of each image to each class's proxy.
        alpha: the scale.
        delta: the margin.

    Returns:
        The batch's loss, a scalar.

    Example (each image on its own proxy: the pulls cost nothing; the other proxy at 90
    degrees is still within the margin's reach, log(1 + e^{32 * 0.1}) per proxy; at 180
    degrees nothing is left):

    >>> round(float(proxy_anchor_loss([0, 1], [[1.0, 0.0], [0.0, 1.0]])), 4)
    3.24
    >>> float(proxy_anchor_loss([0, 1], [[1.0, -1.0], [-1.0, 1.0]]))
    0.0
    """
    _, cosines, positive = _labels_and_cosines(labels, cosines)
    pulls = log_one_plus_sum_exp(-alpha * (cosines - delta), positive, axis=0)  # (C,)
    pushes = log_one_plus_sum_exp(alpha * (cosines + delta), ~positive, axis=0)
    with_positive = tf.reduce_any(positive, axis=0)
    pull = tf.math.divide_no_nan(tf.reduce_sum(tf.where(with_positive, pulls, 0.0)),
                                 tf.reduce_sum(tf.cast(with_positive, tf.float32)))
    return pull + tf.reduce_mean(pushes)


def arcface_logits(labels, cosines, scale: float = 64.0, margin: float = 0.5):
    """ArcFace's logits: ``s cos(theta_y + m)`` for the image's class ``y``, ``s cos(theta_j)``
    for the others, ``theta`` the angle to the class centre.

    ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)``, with ``sin(theta) =
    sqrt(1 - cos^2)`` taken as exactly 0 where ``cos^2 >= 1`` (an image on its centre) and
    its gradient kept finite there (the square root's argument is at least eps). Where
    ``theta + m > pi`` (``cos(theta) < cos(pi - m)``), ``cos(theta + m)`` would grow again
    as ``theta`` grows; there the target logit is ``s (cos(theta) - m sin(m))``, as in the
    authors' code (insightface), so it keeps falling."""
    _, cosines, target = _labels_and_cosines(labels, cosines)
    sine_squared = 1.0 - tf.square(cosines)
    sine = tf.where(sine_squared > 0.0, tf.sqrt(tf.maximum(sine_squared, EPSILON)), 0.0)
    with_margin = tf.where(cosines > math.cos(math.pi - margin),
                           cosines * math.cos(margin) - sine * math.sin(margin),
                           cosines - margin * math.sin(margin))
    return scale * tf.where(target, with_margin, cosines)


def arcface_loss(labels, cosines, scale: float = 64.0, margin: float = 0.5):
    """ArcFace, additive angular margin loss (Deng, Guo, Xue, Zafeiriou 2019, CVPR, Eq. 3),
    per image:

    ``L_i = -log[ e^{s cos(theta_y + m)} / Z_i ]``,
    ``Z_i = e^{s cos(theta_y + m)} + sum_{j != y} e^{s cos(theta_j)}``

    with ``theta_j`` the angle between the image's embedding and class ``j``'s centre
    (with sub-centres, sub-center ArcFace, Deng et al. 2020: the nearest of its class's;
    :class:`ClassProxies` takes that maximum), ``y`` its class; see :func:`arcface_logits`
    for ``theta_y + m > pi``. Defaults: s = 64, m = 0.5, the paper's.

    Args:
        labels: (B,) or (B, 1) class labels.
        cosines: (B, C) ``cos(theta_j)``.
        scale: s.
        margin: m, in radians.

    Returns:
        (B,) the loss of each image.

    Example (an image 0.5 rad from both class centres: the margin puts it 1 rad from its
    own, so the loss is about 64 (cos 0.5 - cos 1)):

    >>> import math
    >>> round(float(arcface_loss([0], [[math.cos(0.5), math.cos(0.5)]])[0]), 2)
    21.59
    """
    labels, _, _ = _labels_and_cosines(labels, cosines)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels, arcface_logits(labels, cosines, scale, margin))


def cosface_loss(labels, cosines, scale: float = 64.0, margin: float = 0.35):
    """CosFace, large margin cosine loss (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu 2018,
    CVPR, Eq. 4), per image:

    ``L_i = -log[ e^{s (cos(theta_y) - m)} / Z_i ]``,
    ``Z_i = e^{s (cos(theta_y) - m)} + sum_{j != y} e^{s cos(theta_j)}``

    with ``theta_j`` the angle to class ``j``'s centre (the nearest sub-centre with
    ``sub_centers`` > 1) and ``y`` the image's class. Defaults: s = 64, m = 0.35, the
    paper's.

    Args:
        labels: (B,) or (B, 1) class labels.
        cosines: (B, C) ``cos(theta_j)``.
        scale: s.
        margin: m.

    Returns:
        (B,) the loss of each image.

    Example (two classes, both at the same angle: the margin alone is the loss,
    log(1 + e^{64 * 0.35})):

    >>> round(float(cosface_loss([0], [[0.5, 0.5]])[0]), 4)
    22.4
    """
    labels, cosines, target = _labels_and_cosines(labels, cosines)
    logits = scale * (cosines - margin * tf.cast(target, tf.float32))
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


@keras.saving.register_keras_serializable(package="keras_siamese")
class ProxyAnchorLoss(_BatchLoss):
    """Proxy-Anchor loss (see :func:`proxy_anchor_loss`); ``y_true`` the labels, ``y_pred``
    the cosines of :class:`ClassProxies`. One loss over the proxies of the whole batch:
    no other ``reduction``, no ``sample_weight`` (see ``losses._BatchLoss``)."""

    _over = "proxies"

    def __init__(self, alpha: float = 32.0, delta: float = 0.1,
                 reduction="sum_over_batch_size", name="proxy_anchor_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha, self.delta = alpha, delta

    def call(self, y_true, y_pred):
        return _per_example(proxy_anchor_loss(y_true, y_pred, self.alpha, self.delta), y_pred)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "delta": self.delta}


@keras.saving.register_keras_serializable(package="keras_siamese")
class ArcFaceLoss(keras.losses.Loss):
    """ArcFace (see :func:`arcface_loss`); ``y_true`` the labels, ``y_pred`` the cosines of
    :class:`ClassProxies`."""

    def __init__(self, scale: float = 64.0, margin: float = 0.5,
                 reduction="sum_over_batch_size", name="arcface_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scale, self.margin = scale, margin

    def call(self, y_true, y_pred):
        return arcface_loss(y_true, y_pred, self.scale, self.margin)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}


@keras.saving.register_keras_serializable(package="keras_siamese")
class CosFaceLoss(keras.losses.Loss):
    """CosFace (see :func:`cosface_loss`); ``y_true`` the labels, ``y_pred`` the cosines of
    :class:`ClassProxies`."""

    def __init__(self, scale: float = 64.0, margin: float = 0.35,
                 reduction="sum_over_batch_size", name="cosface_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scale, self.margin = scale, margin

    def call(self, y_true, y_pred):
        return cosface_loss(y_true, y_pred, self.scale, self.margin)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}
