"""Losses over every pair of a P x K batch on the cosine similarity of unit embeddings:
Multi-Similarity (with its own pair mining), supervised contrastive (SupCon), and how
Keras' own Circle loss fits beside them.

Like the online losses of :mod:`keras_siamese.losses`, each takes a whole batch:
``y_true`` its class labels ``(B,)``, ``y_pred`` its embeddings ``(B, D)``, which must be
L2-normalised (``--normalize``, the default for these losses): then ``S = E E^T`` is the
matrix of cosine similarities, ``S_ij = cos(e_i, e_j)``. Each returns one loss per anchor
(per row of the batch), so Keras' usual mean over the batch, ``sample_weight`` and
``tf.distribute``'s division by the replicas all apply as they do to any per-example loss.

Terms, for an anchor ``i``: a positive ``k`` has its class (``k != i``), a negative ``k``
another class.

Circle (Sun et al. 2020) is Keras' own ``keras.losses.Circle(gamma=80, margin=0.4,
remove_diagonal=True)``: it takes exactly this input (integer labels, unit embeddings) and
returns one loss per anchor, so the variant table uses it as it is (``--margin`` is its
``m``) and there is no second copy here. Per anchor ``i`` it computes the paper's Eq. 6 on
the cosine similarities, with ``O_p = 1 + m``, ``O_n = -m``, ``D_p = 1 - m``, ``D_n = m``:

``L_i = log[1 + sum_{n} exp(gamma a_n (s_n - D_n)) * sum_{p} exp(-gamma a_p (s_p - D_p))]``
``a_p = max(0, O_p - s_p)``, ``a_n = max(0, s_n - O_n)``

(Keras writes it through the cosine distance ``1 - s``, clipped at 0, i.e. ``s <= 1``).
Its reduction differs from a plain mean in one respect: it marks the anchors whose loss
is exactly 0 as masked, so ``"sum_over_batch_size"`` averages over the anchors with a
non-zero loss. In a P x K batch (P, K >= 2) every anchor has K - 1 positives and
(P - 1) K negatives, and the loss of an anchor with both is never exactly 0 (``a_n = 0``
still leaves ``log(number of negatives)`` inside), so there the mean is over all B anchors;
only an anchor without positives or without negatives (a batch of one class, a class seen
once) drops out of the mean instead of diluting it. Its defaults are the paper's setting
for fine-grained image retrieval (gamma = 80, m = 0.4); it is registered by Keras itself,
so a ``.keras`` file that holds it reloads.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_siamese import mining


def log_one_plus_sum_exp(x, mask, axis: int = -1):
    """``log(1 + sum of exp(x) over the entries where mask holds)`` along ``axis``; 0 where
    nothing is selected. Computed as a log-sum-exp with a 0 beside the entries, so it never
    overflows and its gradient stays finite (0, not NaN) for an empty selection."""
    x = tf.where(mask, tf.cast(x, tf.float32), float("-inf"))
    zero = tf.zeros_like(tf.reduce_max(x, axis=axis, keepdims=True))
    return tf.reduce_logsumexp(tf.concat([zero, x], axis=axis), axis=axis)


def similarities(embeddings) -> tf.Tensor:
    """``S = E E^T``, the cosine similarities of a batch of unit embeddings ``(B, D)``."""
    e = tf.cast(embeddings, tf.float32)
    return tf.matmul(e, e, transpose_b=True)


def multi_similarity_pairs(labels, similarity, epsilon: float = 0.1, reference_labels=None,
                           valid=None):
    """The pair mining of Multi-Similarity (Wang et al. 2019, Eq. 4 and 5): per anchor ``i``,

    - a negative pair ``(i, j)`` is kept if ``S_ij > min_{k positive} S_ik - epsilon``
      (it is more similar than the anchor's least similar positive, up to epsilon);
    - a positive pair ``(i, j)`` is kept if ``S_ij < max_{k negative} S_ik + epsilon``
      (it is less similar than the anchor's most similar negative, up to epsilon).

    An anchor without positives keeps no negative, one without negatives no positive (the
    minimum and maximum over an empty set are +inf and -inf).

    Args:
        labels: (B,) or (B, 1) class labels.
        similarity: (B, M) similarities ``S`` of the batch to its references (the batch
            itself, M = B, unless ``reference_labels`` are given).
        epsilon: the paper's margin of the mining.
        reference_labels, valid: the references' labels (M,) and the usable pairs (B, M),
            as :func:`keras_siamese.mining.pair_masks` takes them (a cross-batch memory).

    Returns:
        ``(positive, negative)``, boolean (B, M) masks of the kept pairs.
    """
    positive, negative = mining.pair_masks(labels, reference_labels, valid)
    hardest_positive = tf.reduce_min(tf.where(positive, similarity, float("inf")), axis=1)
    hardest_negative = tf.reduce_max(tf.where(negative, similarity, float("-inf")), axis=1)
    return (positive & (similarity < hardest_negative[:, None] + epsilon),
            negative & (similarity > hardest_positive[:, None] - epsilon))


def all_pairs(labels, similarity, reference_labels=None, valid=None):
    """Every positive and negative pair of the batch (no mining; ``similarity`` unused)."""
    del similarity
    return mining.pair_masks(labels, reference_labels, valid)


# The pair miners by ``--mining`` name (the variant table says which loss uses which).
PAIR_MINERS = {"ms-mining": multi_similarity_pairs, "all-pairs": all_pairs}


def multi_similarity_loss(labels, embeddings, alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, epsilon: float = 0.1,
                          mining_rule: str = "ms-mining", references=None):
    """Multi-Similarity loss (Wang, Han, Huang, Dong, Scott 2019, CVPR, Eq. 6), per anchor:

    ``L_i = 1/alpha log[1 + sum_{k in P_i} exp(-alpha (S_ik - lambda))]``
    ``    + 1/beta  log[1 + sum_{k in N_i} exp( beta (S_ik - lambda))]``

    with ``S`` the cosine similarities, ``lambda = base`` and ``P_i``, ``N_i`` the positive
    and negative pairs of anchor ``i`` (within the batch, or with ``references`` against
    the batch and a cross-batch memory) that ``mining_rule`` keeps: ``"ms-mining"``, the
    paper's own (:func:`multi_similarity_pairs` with ``epsilon``), or ``"all-pairs"``.
    The batch's loss is the mean over its ``m`` anchors, ``L = 1/m sum_i L_i``, as in the
    paper; an empty ``P_i`` or ``N_i`` makes its term ``log 1 = 0``. (The authors' code
    skips an anchor whose mined ``P_i`` or ``N_i`` is empty altogether; the formula, followed
    here, keeps the other term.)

    Defaults: alpha = 2, beta = 50, epsilon = 0.1 as the paper states them, and lambda =
    0.5 as the authors' code (MalongTech/research-ms-loss, ``thresh``) and
    pytorch-metric-learning (``base``) set it.

    Args:
        labels: (B,) or (B, 1) class labels.
        embeddings: (B, D), L2-normalised.
        alpha, beta: the scales of the positive and the negative pairs.
        base: lambda, the similarity around which pairs are weighted.
        epsilon: the margin of the mining (``"ms-mining"`` only).
        mining_rule: a key of :data:`PAIR_MINERS`.
        references: a :class:`keras_siamese.mining.References` (batch, then memory), or
            None for the batch alone.

    Returns:
        (B,) the loss of each anchor.

    Example (two classes at opposite poles: over all pairs only the positive term, at
    S = 1, is left, 1/2 log(1 + e^-1); the paper's mining finds no informative pair):

    >>> e = [[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]
    >>> [round(float(x), 4) for x in multi_similarity_loss([0, 0, 1, 1], e,
    ...                                                    mining_rule="all-pairs")]
    [0.1566, 0.1566, 0.1566, 0.1566]
    >>> [float(x) for x in multi_similarity_loss([0, 0, 1, 1], e)]
    [0.0, 0.0, 0.0, 0.0]
    """
    labels = tf.reshape(labels, (-1,))
    if references is None:
        s, against = similarities(embeddings), {}
    else:
        s = tf.matmul(tf.cast(embeddings, tf.float32), references.embeddings, transpose_b=True)
        against = {"reference_labels": references.labels, "valid": references.valid}
    if mining_rule == "ms-mining":
        positive, negative = multi_similarity_pairs(labels, s, epsilon, **against)
    else:
        positive, negative = PAIR_MINERS[mining_rule](labels, s, **against)
    return (log_one_plus_sum_exp(-alpha * (s - base), positive) / alpha
            + log_one_plus_sum_exp(beta * (s - base), negative) / beta)


def supcon_loss(labels, embeddings, temperature: float = 0.1):
    """Supervised contrastive loss (Khosla et al. 2020, NeurIPS, Eq. 2, L^sup_out), per
    anchor:

    ``L_i = -1/|P(i)| sum_{p in P(i)} log[ exp(z_i.z_p / tau) / Z_i ]``,
    ``Z_i = sum_{a in A(i)} exp(z_i.z_a / tau)``

    with ``z`` the unit embeddings, ``A(i)`` every other item of the batch and ``P(i)`` the
    positives of ``i`` (same class, not ``i``). In a P x K batch each image is the paper's
    "multiviewed" batch: its K - 1 class-mates are its positives. The batch's loss is the
    mean over the anchors (the paper sums; its code averages); an anchor without a
    positive has ``L_i = 0``. Default: tau = 0.1, the paper's.

    Args:
        labels: (B,) or (B, 1) class labels.
        embeddings: (B, D), L2-normalised.
        temperature: tau.

    Returns:
        (B,) the loss of each anchor.

    Example (each anchor's positive is as similar, 0, as one of its negatives; the other
    negative, at -1, adds e^-10: a little over log 2 = 0.6931):

    >>> e = [[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]]
    >>> [round(float(x), 4) for x in supcon_loss([0, 0, 1, 1], e)]
    [0.6932, 0.6932, 0.6932, 0.6932]
    """
    labels = tf.reshape(labels, (-1,))
    logits = similarities(embeddings) / temperature
    positive, _ = mining.pair_masks(labels)
    others = ~tf.eye(tf.size(labels), dtype=tf.bool)
    # A large finite "minus infinity": a row without others stays finite (no NaN gradient).
    denominator = tf.reduce_logsumexp(tf.where(others, logits, -1e9), axis=1, keepdims=True)
    log_probability = logits - denominator
    count = tf.reduce_sum(tf.cast(positive, tf.float32), axis=1)
    return -tf.math.divide_no_nan(tf.reduce_sum(tf.where(positive, log_probability, 0.0),
                                                axis=1), count)


@keras.saving.register_keras_serializable(package="keras_siamese")
class MultiSimilarityLoss(keras.losses.Loss):
    """Multi-Similarity loss (see :func:`multi_similarity_loss`); ``y_true`` the labels,
    ``y_pred`` the unit embeddings of a batch; one loss per anchor."""

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 epsilon: float = 0.1, mining_rule: str = "ms-mining",
                 reduction="sum_over_batch_size", name="multi_similarity_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if mining_rule not in PAIR_MINERS:
            raise ValueError(f"unknown pair mining {mining_rule!r}: choose one of "
                             f"{', '.join(PAIR_MINERS)}")
        self.alpha, self.beta, self.base, self.epsilon = alpha, beta, base, epsilon
        self.mining_rule = mining_rule

    def call(self, y_true, y_pred):
        return multi_similarity_loss(y_true, y_pred, self.alpha, self.beta, self.base,
                                     self.epsilon, self.mining_rule)

    def batch_loss(self, y_true, y_pred, references=None):
        """The batch's loss, the mean over its anchors, mined against ``references`` (a
        cross-batch memory, :mod:`keras_siamese.cross_batch_memory`)."""
        return tf.reduce_mean(multi_similarity_loss(y_true, y_pred, self.alpha, self.beta,
                                                    self.base, self.epsilon,
                                                    self.mining_rule, references))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "base": self.base, "epsilon": self.epsilon, "mining_rule": self.mining_rule}


@keras.saving.register_keras_serializable(package="keras_siamese")
class SupConLoss(keras.losses.Loss):
    """Supervised contrastive loss (see :func:`supcon_loss`); ``y_true`` the labels,
    ``y_pred`` the unit embeddings of a batch; one loss per anchor."""

    def __init__(self, temperature: float = 0.1, reduction="sum_over_batch_size",
                 name="supcon_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        return supcon_loss(y_true, y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
