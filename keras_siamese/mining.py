"""Online mining: which pairs and triplets of a batch to train on.

Every miner takes the batch's labels ``(B,)`` and a squared Euclidean distance matrix
``d2`` and returns a boolean mask of what it selects; the loss arithmetic lives in
:mod:`keras_siamese.losses` (``online_triplet_loss``, ``online_contrastive_loss``). Terms,
for an anchor ``a``: a positive ``p`` has its class (``p != a``), a negative ``n`` another
class; a triplet ``(a, p, n)`` is valid when both hold.

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

Queries and references. The batch's ``B`` embeddings are the queries (anchors); what they
are mined against are the ``M`` references of a :class:`References`, built by
:func:`references`: the batch itself (``M = B``), optionally followed by the filled slots of
a cross-batch memory (:mod:`keras_siamese.cross_batch_memory`, ``M = B + N``). Its
``valid`` mask ``(B, M)`` says which (query, reference) pairs may be used: never a query
with itself, never an empty memory slot. ``d2`` is then ``(B, M)``, the pair masks
``(B, M)`` and a triplet mask ``(B, M, M)``: ``[a, p, n]`` with ``a`` a query and ``p``,
``n`` references. Without a memory every miner is exactly the batch-only rule above. A
pair-based loss mines against a memory by taking a ``References`` and calling
:func:`reference_distances` and :func:`pair_masks` (or a miner) on it; that is the one
interface the memory needs.

Distances are compared squared: the order is the same, and no square root is needed.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class References(NamedTuple):
    """What a batch's queries are mined against (see the module doc).

    ``embeddings`` ``(M, D)`` begin with the batch's own ``B`` embeddings (so reference
    ``i < B`` is query ``i`` itself); ``labels`` ``(M,)`` int32; ``valid`` ``(B, M)`` bool,
    False for a query with itself and for empty memory slots.
    """

    embeddings: tf.Tensor
    labels: tf.Tensor
    valid: tf.Tensor


def references(embeddings, labels, memory_embeddings=None, memory_labels=None,
               memory_filled=None) -> References:
    """The :class:`References` of a batch: the batch itself, then (if given) a memory of
    ``N`` slots, of which the first ``memory_filled`` hold entries. The memory's
    embeddings are detached (``tf.stop_gradient``): gradients reach the net only through
    the batch.

    Args:
        embeddings: (B, D) the batch's embeddings (the queries).
        labels: (B,) or (B, 1) their class labels.
        memory_embeddings: (N, D) or None.
        memory_labels: (N,) or None.
        memory_filled: how many memory slots hold entries (slots ``0 .. filled - 1``).

    Returns:
        ``References`` with ``M = B`` (no memory) or ``M = B + N``.
    """
    labels = tf.cast(tf.reshape(labels, (-1,)), tf.int32)
    batch = tf.size(labels)
    itself = tf.logical_not(tf.eye(batch, dtype=tf.bool))
    if memory_embeddings is None:
        return References(embeddings, labels, itself)
    slots = tf.shape(memory_labels)[0]
    filled = tf.range(slots) < tf.cast(memory_filled, tf.int32)
    valid = tf.concat([itself, tf.broadcast_to(filled[None, :], (batch, slots))], axis=1)
    return References(
        tf.concat([tf.cast(embeddings, tf.float32),
                   tf.stop_gradient(tf.cast(memory_embeddings, tf.float32))], axis=0),
        tf.concat([labels, tf.cast(memory_labels, tf.int32)], axis=0), valid)


def squared_distances(embeddings, others=None) -> tf.Tensor:
    """``d2[i, j] = ||e_i - o_j||^2`` for a batch ``(B, D)`` and ``others`` ``(M, D)``
    (default: the batch itself), exact zeros on the diagonal ``[i, i]`` (a query with
    itself, when ``others`` begins with the batch, as :class:`References` do)."""
    e = tf.cast(embeddings, tf.float32)
    o = e if others is None else tf.cast(others, tf.float32)
    norms = tf.reduce_sum(tf.square(e), axis=1)
    other_norms = norms if others is None else tf.reduce_sum(tf.square(o), axis=1)
    d2 = norms[:, None] - 2.0 * tf.matmul(e, o, transpose_b=True) + other_norms[None, :]
    # Rounding can make the expanded form slightly negative; the diagonal is exactly 0.
    return tf.linalg.set_diag(tf.maximum(d2, 0.0), tf.zeros_like(norms))


def reference_distances(embeddings, refs: References) -> tf.Tensor:
    """``d2`` ``(B, M)`` of the batch's embeddings to its references."""
    if refs.embeddings is embeddings:
        # The batch alone: one norm per embedding, used on both sides, so values and
        # gradients are bit for bit those of training without a memory.
        return squared_distances(embeddings)
    return squared_distances(embeddings, refs.embeddings)


def pair_masks(labels, reference_labels=None, valid=None) -> tuple[tf.Tensor, tf.Tensor]:
    """``(positive, negative)`` boolean ``(B, M)``: same class / other class, among the
    ``valid`` pairs. Defaults: the batch against itself, a query never paired with itself."""
    labels = tf.reshape(labels, (-1,))
    if reference_labels is None:
        reference_labels = labels
    if valid is None:
        valid = tf.logical_not(tf.eye(tf.size(labels), dtype=tf.bool))
    same = tf.equal(tf.cast(labels, tf.int32)[:, None],
                    tf.cast(reference_labels, tf.int32)[None, :])
    return tf.logical_and(same, valid), tf.logical_and(tf.logical_not(same), valid)


def valid_triplets(labels, reference_labels=None, valid=None) -> tf.Tensor:
    """``(B, M, M)`` mask of valid triplets ``[a, p, n]`` (see :func:`pair_masks`)."""
    positive, negative = pair_masks(labels, reference_labels, valid)
    return tf.logical_and(positive[:, :, None], negative[:, None, :])


def batch_all(labels, d2, reference_labels=None, valid=None) -> tf.Tensor:
    """Every valid triplet (``d2`` is not needed; kept for one signature)."""
    del d2
    return valid_triplets(labels, reference_labels, valid)


def batch_hard(labels, d2, reference_labels=None, valid=None) -> tf.Tensor:
    """Per anchor with a positive and a negative: its farthest positive, nearest negative."""
    positive, negative = pair_masks(labels, reference_labels, valid)
    far = tf.reduce_max(tf.where(positive, d2, -1.0), axis=1)  # -1: no positive
    near = tf.reduce_min(tf.where(negative, d2, float("inf")), axis=1)
    hardest_p = tf.argmax(tf.where(positive, d2, -1.0), axis=1)
    hardest_n = tf.argmin(tf.where(negative, d2, float("inf")), axis=1)
    usable = tf.logical_and(far >= 0.0, tf.math.is_finite(near))
    size = tf.shape(d2)[1]
    chosen_p = tf.cast(tf.one_hot(hardest_p, size), tf.bool)
    chosen_n = tf.cast(tf.one_hot(hardest_n, size), tf.bool)
    return chosen_p[:, :, None] & chosen_n[:, None, :] & usable[:, None, None]


def semi_hard(labels, d2, reference_labels=None, valid=None) -> tf.Tensor:
    """Per positive pair ``(a, p)``: the nearest negative with ``d2(a, n) > d2(a, p)``, or
    the farthest negative of ``a`` when there is none."""
    positive, negative = pair_masks(labels, reference_labels, valid)
    d_an = d2[:, None, :]  # (B, 1, M): anchor a to candidate n
    d_ap = d2[:, :, None]  # (B, M, 1): anchor a to positive p
    farther = negative[:, None, :] & (d_an > d_ap)  # (B, M, M) semi-hard candidates
    nearest_farther = tf.argmin(tf.where(farther, d_an, float("inf")), axis=2)
    farthest = tf.argmax(tf.where(negative, d2, -1.0), axis=1)  # fallback per anchor
    has_semi_hard = tf.reduce_any(farther, axis=2)
    size = tf.shape(d2)[1]
    choice = tf.where(has_semi_hard, nearest_farther,
                      tf.broadcast_to(farthest[:, None], tf.shape(nearest_farther)))
    has_negative = tf.reduce_any(negative, axis=1)
    selected = tf.cast(tf.one_hot(choice, size), tf.bool)
    return selected & positive[:, :, None] & has_negative[:, None, None]


# The triplet miners by ``--mining`` name (the variant table, :mod:`keras_siamese.variants`,
# says which loss trains with which rule).
TRIPLET_MINERS = {"batch-all": batch_all, "batch-hard": batch_hard, "semi-hard": semi_hard}


def hard_negative_pairs(labels, d2, reference_labels=None,
                        valid=None) -> tuple[tf.Tensor, tf.Tensor]:
    """``(positive_pairs, negative_pairs)`` boolean ``(B, M)``, each pair once: every
    positive pair, and the ``k`` nearest negative pairs, ``k`` = the number of positive
    pairs (or every negative pair if there are fewer). Within the batch a pair counts once
    (``i < j``); a query and a memory slot (``j >= B``) always form a distinct pair."""
    positive, negative = pair_masks(labels, reference_labels, valid)
    # j >= i: the upper triangle of the batch block and every memory column (j >= B > i);
    # the diagonal (a query with itself) is never valid.
    once = tf.linalg.band_part(tf.ones(tf.shape(d2), tf.bool), 0, -1)
    positive, negative = positive & once, negative & once
    k = tf.minimum(tf.math.count_nonzero(positive, dtype=tf.int32),
                   tf.math.count_nonzero(negative, dtype=tf.int32))
    flat = tf.reshape(tf.where(negative, -d2, -float("inf")), (-1,))
    _, nearest = tf.math.top_k(flat, k=k)
    chosen = tf.scatter_nd(nearest[:, None], tf.ones_like(nearest, tf.bool), tf.shape(flat))
    return positive, tf.reshape(chosen, tf.shape(d2))
