"""Online mining: which pairs and triplets of a batch to train on.

Every function takes the batch's labels ``(B,)`` and its squared Euclidean distance
matrix ``d2 (B, B)`` and returns a boolean mask of what it selects; the loss arithmetic
lives in :mod:`keras_siamese.losses` (``online_triplet_loss``,
``online_contrastive_loss``). Terms, for an anchor ``a``: a positive ``p`` has its class
(``p != a``), a negative ``n`` another class; a triplet ``(a, p, n)`` is valid when both
hold.

- ``batch-all``: every valid triplet (the loss then averages over those with a positive
  loss; Hermans, Beyer, Leibe 2017).
- ``batch-hard``: per anchor, its farthest positive and nearest negative (Hermans et al.).
- ``semi-hard``: per positive pair ``(a, p)``, the nearest negative that is farther than the
  positive, ``d(a, n) > d(a, p)`` (Schroff et al. 2015, as TensorFlow Addons implements
  it). When an anchor has no such negative, the farthest negative is used instead, so no
  positive pair goes untrained (the study's reference selector ran out of semi-hard
  triplets and collapsed).
- ``hard-negative`` pairs: every positive pair, plus as many negative pairs, the nearest
  ones (the study's reference ``HardNegativePairSelector``).

Distances are compared squared: the order is the same, and no square root is needed.
"""

from __future__ import annotations

import tensorflow as tf

def squared_distances(embeddings) -> tf.Tensor:
    """``d2[i, j] = ||e_i - e_j||^2`` for a batch ``(B, D)``, exact zeros on the diagonal."""
    e = tf.cast(embeddings, tf.float32)
    norms = tf.reduce_sum(tf.square(e), axis=1)
    d2 = norms[:, None] - 2.0 * tf.matmul(e, e, transpose_b=True) + norms[None, :]
    # Rounding can make the expanded form slightly negative; the diagonal is exactly 0.
    return tf.linalg.set_diag(tf.maximum(d2, 0.0), tf.zeros_like(norms))


def pair_masks(labels) -> tuple[tf.Tensor, tf.Tensor]:
    """``(positive, negative)`` boolean ``(B, B)``: same class and not itself / other class."""
    labels = tf.reshape(labels, (-1,))
    same = tf.equal(labels[:, None], labels[None, :])
    itself = tf.eye(tf.size(labels), dtype=tf.bool)
    return tf.logical_and(same, tf.logical_not(itself)), tf.logical_not(same)


def valid_triplets(labels) -> tf.Tensor:
    """``(B, B, B)`` mask of valid triplets ``[a, p, n]``."""
    positive, negative = pair_masks(labels)
    return tf.logical_and(positive[:, :, None], negative[:, None, :])


def batch_all(labels, d2) -> tf.Tensor:
    """Every valid triplet (``d2`` is not needed; kept for one signature)."""
    del d2
    return valid_triplets(labels)


def batch_hard(labels, d2) -> tf.Tensor:
    """Per anchor with a positive and a negative: its farthest positive, nearest negative."""
    positive, negative = pair_masks(labels)
    far = tf.reduce_max(tf.where(positive, d2, -1.0), axis=1)  # -1: no positive
    near = tf.reduce_min(tf.where(negative, d2, float("inf")), axis=1)
    hardest_p = tf.argmax(tf.where(positive, d2, -1.0), axis=1)
    hardest_n = tf.argmin(tf.where(negative, d2, float("inf")), axis=1)
    usable = tf.logical_and(far >= 0.0, tf.math.is_finite(near))
    size = tf.size(far)
    chosen_p = tf.cast(tf.one_hot(hardest_p, size), tf.bool)
    chosen_n = tf.cast(tf.one_hot(hardest_n, size), tf.bool)
    return chosen_p[:, :, None] & chosen_n[:, None, :] & usable[:, None, None]


def semi_hard(labels, d2) -> tf.Tensor:
    """Per positive pair ``(a, p)``: the nearest negative with ``d2(a, n) > d2(a, p)``, or
    the farthest negative of ``a`` when there is none."""
    positive, negative = pair_masks(labels)
    d_an = d2[:, None, :]  # (B, 1, B): anchor a to candidate n
    d_ap = d2[:, :, None]  # (B, B, 1): anchor a to positive p
    farther = negative[:, None, :] & (d_an > d_ap)  # (B, B, B) semi-hard candidates
    nearest_farther = tf.argmin(tf.where(farther, d_an, float("inf")), axis=2)
    farthest = tf.argmax(tf.where(negative, d2, -1.0), axis=1)  # fallback per anchor
    has_semi_hard = tf.reduce_any(farther, axis=2)
    size = tf.size(farthest)
    choice = tf.where(has_semi_hard, nearest_farther,
                      tf.broadcast_to(farthest[:, None], tf.shape(nearest_farther)))
    has_negative = tf.reduce_any(negative, axis=1)
    selected = tf.cast(tf.one_hot(choice, size), tf.bool)
    return selected & positive[:, :, None] & has_negative[:, None, None]


# The triplet miners by ``--mining`` name (the variant table, :mod:`keras_siamese.variants`,
# says which loss trains with which rule).
TRIPLET_MINERS = {"batch-all": batch_all, "batch-hard": batch_hard, "semi-hard": semi_hard}


def hard_negative_pairs(labels, d2) -> tuple[tf.Tensor, tf.Tensor]:
    """``(positive_pairs, negative_pairs)`` boolean ``(B, B)``, each unordered pair once
    (``i < j``): every positive pair, and the ``k`` nearest negative pairs, ``k`` = the
    number of positive pairs (or every negative pair if there are fewer)."""
    positive, negative = pair_masks(labels)
    size = tf.size(tf.reshape(labels, (-1,)))
    upper = tf.linalg.band_part(tf.ones((size, size), tf.bool), 0, -1) & ~tf.eye(size,
                                                                                dtype=tf.bool)
    positive, negative = positive & upper, negative & upper
    k = tf.minimum(tf.math.count_nonzero(positive, dtype=tf.int32),
                   tf.math.count_nonzero(negative, dtype=tf.int32))
    flat = tf.reshape(tf.where(negative, -d2, -float("inf")), (-1,))
    _, nearest = tf.math.top_k(flat, k=k)
    chosen = tf.scatter_nd(nearest[:, None], tf.ones_like(nearest, tf.bool), tf.shape(flat))
    return positive, tf.reshape(chosen, (size, size))
